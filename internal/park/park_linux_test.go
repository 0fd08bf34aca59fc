package park

import (
	"bufio"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/affinityproxy/affinity/internal/testutil"
)

const (
	// testParkAfter is the parking delay of these tests.
	testParkAfter = 50 * time.Millisecond
	// waitFor bounds what a test waits for.
	waitFor = 5 * time.Second
)

// served is a connection as the test server serves it: a Conn whose Close
// parks it when Read handed it back.
type served struct{ Conn }

func (c *served) Close() error {
	if c.Parking() && c.Parker.Park(&c.Conn, c) {
		return nil
	}
	return c.Conn.Close()
}

// listener gives each connection it accepts to the server as a served
// Conn of p.
type listener struct {
	net.Listener
	p *Parker
}

func (l *listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &served{Conn{Conn: c, Parker: l.p}}, nil
}

// server is an http.Server on loopback whose idle connections park after
// testParkAfter: its listener's, and the Parker's that takes them back.
type server struct {
	addr string
	p    *Parker
	open atomic.Int64 // connections http.Server serves: StateNew less StateClosed
}

// startServer starts a server with the given idle and read timeouts, the
// read header timeout the proxy's by default, answering each request with
// what it received (echo); the test's cleanup closes it.
func startServer(t testing.TB, idle, read time.Duration) *server {
	t.Helper()
	ln := testutil.Listen(t)
	p, err := New(ln.Addr(), testParkAfter, idle)
	if err != nil {
		t.Fatal(err)
	}
	s := &server{addr: ln.Addr().String(), p: p}
	hs := &http.Server{
		Handler:           http.HandlerFunc(echo),
		ReadHeaderTimeout: 10 * time.Second, ReadTimeout: read, IdleTimeout: idle,
		ConnState: func(c net.Conn, cs http.ConnState) {
			switch cs {
			case http.StateNew:
				s.open.Add(1)
			case http.StateIdle:
				c.(*served).SetIdle()
			case http.StateHijacked, http.StateClosed:
				s.open.Add(-1)
			}
		},
	}
	var wg sync.WaitGroup
	wg.Go(func() { _ = hs.Serve(&listener{ln, p}) })
	wg.Go(func() { _ = hs.Serve(p) })
	t.Cleanup(func() {
		_ = hs.Close()
		_ = p.Close()
		wg.Wait()
	})
	return s
}

// echo answers "<path> <body length> <CRC-32 of the body>", what it
// received.
func echo(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return // a body cut short is no request to answer
	}
	fmt.Fprintf(w, "%s %d %08x", r.URL.Path, len(body), crc32.ChecksumIEEE(body))
}

// conns reports the connections s serves and those parked.
func (s *server) conns() (served, parked int) { return int(s.open.Load()), s.p.Parked() }

// waitParked waits until s holds n connections parked.
func (s *server) waitParked(t *testing.T, n int) {
	t.Helper()
	testutil.Eventually(t, waitFor, fmt.Sprintf("%d connections did not park", n), func() bool {
		return s.p.Parked() == n
	})
}

// waitGone waits until s neither serves nor holds a connection.
func (s *server) waitGone(t *testing.T) {
	t.Helper()
	testutil.Eventually(t, waitFor, "closed connections still held", func() bool {
		served, parked := s.conns()
		return served == 0 && parked == 0
	})
}

// get sends a GET of path on conn and checks that the echo answers it.
func get(conn net.Conn, br *bufio.Reader, path string) error {
	if _, err := io.WriteString(conn, getOf(path).raw); err != nil {
		return err
	}
	return readAnswer(br, getOf(path))
}

// pipelined is one request of a pipelining client, and what the echo must
// answer to it.
type pipelined struct {
	raw, want string
}

func postOf(path string, body []byte) pipelined {
	return pipelined{
		raw:  fmt.Sprintf("POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s", path, len(body), body),
		want: fmt.Sprintf("%s %d %08x", path, len(body), crc32.ChecksumIEEE(body)),
	}
}

func getOf(path string) pipelined {
	return pipelined{raw: "GET " + path + " HTTP/1.1\r\nHost: x\r\n\r\n", want: fmt.Sprintf("%s 0 %08x", path, 0)}
}

// readAnswer reads a response and checks that it is the echo's 200 with
// what rq sent.
func readAnswer(br *bufio.Reader, rq pipelined) error {
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return err
	}
	body, err := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || string(body) != rq.want {
		return fmt.Errorf("%d %q (%v), want 200 %q", resp.StatusCode, body, err, rq.want)
	}
	return nil
}

// readAnswers reads a response to each of reqs, in order, and checks each.
func readAnswers(t *testing.T, br *bufio.Reader, reqs []pipelined) {
	t.Helper()
	for i, rq := range reqs {
		if err := readAnswer(br, rq); err != nil {
			t.Fatalf("response %d of %d: %v", i+1, len(reqs), err)
		}
	}
}

// expectEOF fails t unless the server closes the connection br reads.
func expectEOF(t *testing.T, br *bufio.Reader, what string) {
	t.Helper()
	if _, err := br.ReadByte(); !errors.Is(err, io.EOF) {
		t.Errorf("%s: read %v, want EOF: the server should have closed it", what, err)
	}
}

// Idle connections leave http.Server for the Parker, and a request on a
// parked connection is answered on it, round after round.
func TestParkIdleConnection(t *testing.T) {
	s := startServer(t, time.Minute, 0)
	const n = 20
	type client struct {
		conn net.Conn
		br   *bufio.Reader
	}
	clients := make([]client, n)
	for i := range clients {
		c, br := testutil.DialRaw(t, s.addr, waitFor)
		clients[i] = client{c, br}
		if err := get(c, br, "/first"); err != nil {
			t.Fatalf("first request: %v", err)
		}
	}
	testutil.Eventually(t, waitFor, "idle connections did not park", func() bool {
		served, parked := s.conns()
		return parked == n && served == 0
	})
	for round := range 2 {
		for i, c := range clients {
			if err := get(c.conn, c.br, "/again"); err != nil {
				t.Fatalf("round %d, connection %d: %v", round, i, err)
			}
		}
		s.waitParked(t, n)
	}
	// A client closing a parked connection wakes it, and the server lets
	// go.
	for _, c := range clients {
		_ = c.conn.Close()
	}
	s.waitGone(t)
}

// A client that goes quiet in the middle of a request keeps it: a
// connection with part of the next request read never parks, and the
// first bytes of a request are not cut short by the parking deadline.
func TestParkKeepsPartialRequests(t *testing.T) {
	s := startServer(t, time.Minute, 0)
	tests := []struct {
		name        string
		first, rest string // rest is sent after the connection would have parked
	}{
		{"pipelined with the first request", getOf("/a").raw + "GE", "T /b HTTP/1.1\r\nHost: x\r\n\r\n"},
		{"two bytes, then quiet", getOf("/a").raw, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn, br := testutil.DialRaw(t, s.addr, waitFor)
			if _, err := io.WriteString(conn, tt.first); err != nil {
				t.Fatal(err)
			}
			readAnswers(t, br, []pipelined{getOf("/a")})
			if tt.rest == "" {
				// Two bytes before the parking delay, then quiet past it.
				time.Sleep(testParkAfter / 2)
				if _, err := io.WriteString(conn, "GE"); err != nil {
					t.Fatal(err)
				}
				tt.rest = "T /b HTTP/1.1\r\nHost: x\r\n\r\n"
			}
			time.Sleep(4 * testParkAfter)
			if parked := s.p.Parked(); parked != 0 {
				t.Fatalf("%d connections parked with a request half read", parked)
			}
			if _, err := io.WriteString(conn, tt.rest); err != nil {
				t.Fatal(err)
			}
			readAnswers(t, br, []pipelined{getOf("/b")})
		})
	}
}

// A parked connection still closes at the idle timeout, not before.
func TestParkIdleTimeout(t *testing.T) {
	const idle = 1500 * time.Millisecond
	s := startServer(t, idle, 0)
	conn, br := testutil.DialRaw(t, s.addr, waitFor)
	if err := get(conn, br, "/"); err != nil {
		t.Fatal(err)
	}
	idleFrom := time.Now()
	s.waitParked(t, 1)
	expectEOF(t, br, "parked connection past its idle timeout")
	if d := time.Since(idleFrom); d < idle {
		t.Errorf("closed after %v idle, before the idle timeout %v", d, idle)
	}
}

// Closing the Parker closes the parked connections (they are idle:
// nothing is lost), and a Park after it reports false.
func TestParkerClose(t *testing.T) {
	s := startServer(t, time.Minute, 0)
	conn, br := testutil.DialRaw(t, s.addr, waitFor)
	if err := get(conn, br, "/"); err != nil {
		t.Fatal(err)
	}
	s.waitParked(t, 1)
	if err := s.p.Close(); err != nil {
		t.Fatal(err)
	}
	expectEOF(t, br, "parked connection of a closed Parker")
	if _, err := s.p.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept after Close: %v, want %v", err, net.ErrClosed)
	}
	client, _ := net.Pipe()
	defer client.Close()
	c := &Conn{Conn: client, Parker: s.p}
	if s.p.Park(c, c) {
		t.Error("a closed Parker took a connection")
	}
}

// Clients that go quiet for random spells, around the parking delay, while
// others keep sending: every request is answered on its own connection,
// whether it arrives as the connection parks, while parked or as it comes
// back. Bounded: 40 clients for 1.5 s.
func TestParkUnderLoad(t *testing.T) {
	s := startServer(t, time.Minute, 0)
	const clients = 40
	deadline := time.Now().Add(1500 * time.Millisecond)
	errs := make(chan error, clients)
	var answered atomic.Int64
	for i := range clients {
		go func() {
			conn, err := net.Dial("tcp", s.addr)
			if err != nil {
				errs <- err
				return
			}
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(waitFor))
			br := bufio.NewReader(conn)
			rng := rand.New(rand.NewPCG(uint64(i), 7))
			for time.Now().Before(deadline) {
				if err := get(conn, br, fmt.Sprintf("/c%d", i)); err != nil {
					errs <- fmt.Errorf("client %d: %v", i, err)
					return
				}
				answered.Add(1)
				if i%4 != 0 { // a quarter of the clients never pause
					time.Sleep(time.Duration(rng.Int64N(int64(3 * testParkAfter))))
				}
			}
			errs <- nil
		}()
	}
	mostParked := 0
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for done := 0; done < clients; {
		select {
		case err := <-errs:
			if err != nil {
				t.Error(err)
			}
			done++
		case <-tick.C:
			mostParked = max(mostParked, s.p.Parked())
		}
	}
	if n := answered.Load(); n < clients*2 {
		t.Errorf("%d requests answered, want at least %d", n, clients*2)
	}
	if mostParked == 0 {
		t.Error("no connection parked during the run")
	}
	s.waitGone(t)
	t.Logf("%d requests, up to %d connections parked at once", answered.Load(), mostParked)
}
