package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/affinityproxy/affinity/config"
	"github.com/affinityproxy/affinity/internal/testutil"
)

// connBackend is a keep-alive HTTP/1.1 backend on raw sockets that writes
// whatever its test decides: it parses every request on every connection,
// records it with the connection it came on, and answers what answer
// returns for it. The test can write more on a connection later, and sees
// which connections the proxy closed. Its cleanup closes the listener and
// every connection and waits for their goroutines.
type connBackend struct {
	ln     net.Listener
	answer func(r backendRequest) reaction
	wg     sync.WaitGroup

	mu    sync.Mutex
	seen  []backendRequest
	conns []*backendConn
}

// backendRequest is a request a connBackend parsed.
type backendRequest struct {
	method, target, body string
	conn                 int  // index of the connection it came on
	reused               bool // the connection carried a request before
}

// reaction is what a connBackend does with a request: write raw, then keep
// the connection, close it, or reset it (linger 0).
type reaction struct {
	raw string
	end connEnd
}

type connEnd int

const (
	keepConn connEnd = iota
	closeConn
	resetConn
)

// backendConn is one connection a connBackend accepted.
type backendConn struct {
	net.Conn
	wmu    sync.Mutex  // serialises the answers and the test's writes
	closed atomic.Bool // reading it ended: the peer closed it, or the backend did
}

func startConnBackend(t testing.TB, answer func(r backendRequest) reaction) *connBackend {
	t.Helper()
	b := &connBackend{ln: testutil.Listen(t), answer: answer}
	b.wg.Go(func() {
		for {
			c, err := b.ln.Accept()
			if err != nil {
				return
			}
			bc := &backendConn{Conn: c}
			b.mu.Lock()
			i := len(b.conns)
			b.conns = append(b.conns, bc)
			b.mu.Unlock()
			b.wg.Go(func() { b.serve(i, bc) })
		}
	})
	t.Cleanup(func() {
		_ = b.ln.Close()
		b.mu.Lock()
		for _, c := range b.conns {
			_ = c.Close()
		}
		b.mu.Unlock()
		b.wg.Wait()
	})
	return b
}

func (b *connBackend) serve(i int, c *backendConn) {
	defer c.closed.Store(true)
	defer c.Close()
	br := bufio.NewReader(c)
	for served := 0; ; served++ {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		body, err := io.ReadAll(req.Body)
		if err != nil {
			return
		}
		r := backendRequest{method: req.Method, target: req.RequestURI, body: string(body), conn: i, reused: served > 0}
		b.mu.Lock()
		b.seen = append(b.seen, r)
		b.mu.Unlock()
		re := b.answer(r)
		c.wmu.Lock()
		_, err = io.WriteString(c, re.raw)
		c.wmu.Unlock()
		switch {
		case err != nil:
			return
		case re.end == resetConn:
			_ = c.Conn.(*net.TCPConn).SetLinger(0)
			return
		case re.end == closeConn:
			return
		}
	}
}

func (b *connBackend) url() *url.URL { return &url.URL{Scheme: "http", Host: b.ln.Addr().String()} }

// requests returns the requests parsed so far.
func (b *connBackend) requests() []backendRequest {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]backendRequest(nil), b.seen...)
}

// connOf returns the index of the connection the request for target came
// on, or -1.
func (b *connBackend) connOf(target string) int {
	for _, r := range b.requests() {
		if r.target == target {
			return r.conn
		}
	}
	return -1
}

// conn returns connection i.
func (b *connBackend) conn(i int) *backendConn {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.conns[i]
}

// write writes raw on connection i, as if late for the request it served;
// nothing, if the connection is gone.
func (b *connBackend) write(i int, raw string) {
	c := b.conn(i)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_, _ = io.WriteString(c, raw)
}

// noticed reports whether a client of the backend can see what arrived on
// connection i: http.Transport closes a connection anything arrives on
// while it is idle, and h1Client's idle connection has it waiting for the
// check before its next use. h1 is the h1Client in use, or nil.
func (b *connBackend) noticed(h1 *h1Client, i int) bool {
	if b.conn(i).closed.Load() {
		return true
	}
	if h1 == nil {
		return false
	}
	h1.mu.Lock()
	defer h1.mu.Unlock()
	for _, hc := range h1.idle[b.ln.Addr().String()] {
		if !hc.peek.quiet() {
			return true
		}
	}
	return false
}

// Paths a proxy test runs on: the common GET through h1Client, and every
// request through http.Transport.
const (
	viaH1        = "h1Client"
	viaTransport = "http.Transport"
)

var paths = []string{viaH1, viaTransport}

// startVia starts a proxy for cfg that sends requests the way path says:
// through the server's shared transport, whose h1Client takes the common
// GET, or through an http.Transport made as the server makes its own,
// given to every pool as a pool with a tls section gets one.
func startVia(t *testing.T, path string, cfg *config.Config, log *zap.Logger) (*Server, *url.URL) {
	t.Helper()
	s, err := NewServer(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	if path == viaTransport {
		tr := newTransport(cfg.Timeouts)
		t.Cleanup(tr.CloseIdleConnections)
		for _, p := range s.state.Load().pools {
			p.transport = tr
		}
	}
	return s, testutil.Serve(t, s)
}

// h1Of returns the h1Client s sends the common GET with on path, or nil.
func h1Of(s *Server, path string) *h1Client {
	if path == viaH1 {
		return s.transport.cur.Load().h1
	}
	return nil
}

// freshGet sends a request on a connection of its own.
func freshGet(t *testing.T, method, target string) reply {
	t.Helper()
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: waitFor}
	return send(t, c, method, target, nil, nil)
}

// echoToken answers GET /ok?t=TOKEN with TOKEN.
func echoToken(r backendRequest) reaction {
	u, _ := url.Parse(r.target)
	tok := u.Query().Get("t")
	return reaction{raw: fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(tok), tok)}
}

// askEach has several clients, each on a connection of its own, ask for a
// token of their own, and fails t unless each got its own back.
func askEach(t *testing.T, u *url.URL) {
	t.Helper()
	for _, c := range []string{"B", "C", "D", "E"} {
		tok := "CLIENT-" + c
		r := freshGet(t, http.MethodGet, u.String()+"/ok?t="+tok)
		if r.status != http.StatusOK || r.body != tok {
			t.Errorf("client %s got %d %q, want 200 %q", c, r.status, r.body, tok)
		}
	}
}

const evilResponse = "HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\nEVIL-SMUGGLED"

// TestStrayBytesReachNoClient: whatever a backend sends on a connection
// beyond the response to the request it received (a second response in the
// same write, bytes that come once the response has ended, a body to HEAD),
// no later client receives it as its answer: the connection is not used
// again. On both paths; the backend answers the first request, then clients
// B to E each ask on a connection of their own for their own token.
func TestStrayBytesReachNoClient(t *testing.T) {
	long := strings.Repeat("x", 10000)
	tests := []struct {
		name   string
		method string
		first  string // the answer to the first request
		late   string // written once the first client has its response
		body   string // what the first client receives
	}{
		{"second response in the same write", "GET",
			"HTTP/1.1 200 OK\r\nContent-Length: 10000\r\n\r\n" + long + evilResponse, "", long},
		{"late response after a Content-Length body", "GET",
			"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst", evilResponse, "first"},
		{"late response after an empty body", "GET",
			"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", evilResponse, ""},
		{"late response after a chunked body", "GET",
			"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n0\r\n\r\n", evilResponse, "first"},
		{"late response after 204", "GET", "HTTP/1.1 204 No Content\r\n\r\n", evilResponse, ""},
		{"late response after 304", "GET", "HTTP/1.1 304 Not Modified\r\nETag: \"a\"\r\n\r\n", evilResponse, ""},
		{"late response after a second one", "GET",
			"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst" + evilResponse, evilResponse, "first"},
		{"body sent to HEAD in the same write", "HEAD",
			"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\nEVIL-SMUGGLED", "", ""},
		{"body sent to HEAD late", "HEAD", "HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\n", "EVIL-SMUGGLED", ""},
		{"response sent to HEAD late", "HEAD", "HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\n", evilResponse, ""},
		{"end of a chunked body sent to HEAD late", "HEAD",
			"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "0\r\n\r\n", ""},
	}
	for _, path := range paths {
		for _, tt := range tests {
			t.Run(path+"/"+tt.name, func(t *testing.T) {
				t.Parallel()
				b := startConnBackend(t, func(r backendRequest) reaction {
					if r.target == "/a" {
						return reaction{raw: tt.first}
					}
					return echoToken(r)
				})
				pc := &config.Pool{Name: "web", Balancer: config.Balancer{Type: "round-robin"},
					Backends: []config.Backend{{URL: b.url(), Name: "b"}}}
				s, u := startVia(t, path, catchAll(pc), nil)
				r := freshGet(t, tt.method, u.String()+"/a")
				if r.status/100 != 2 && r.status != http.StatusNotModified || r.body != tt.body {
					t.Fatalf("first client got %d %q, want the first response", r.status, r.body)
				}
				first := b.connOf("/a")
				if tt.late != "" {
					b.write(first, tt.late)
				}
				testutil.Eventually(t, waitFor, "the proxy sees what came after the response",
					func() bool { return b.noticed(h1Of(s, path), first) })
				askEach(t, u)
				for _, r := range b.requests() {
					if r.target != "/a" && r.conn == first {
						t.Errorf("%s went on the connection the stray bytes came on", r.target)
					}
				}
			})
		}
	}
}

// TestStatusOutOfRange: a backend status below 100, which
// http.ReadResponse accepts and net/http's ResponseWriter refuses with a
// panic, is answered 502 and counted against the backend; later clients
// get their own answers.
func TestStatusOutOfRange(t *testing.T) {
	for _, path := range paths {
		for _, status := range []string{"000 Zero", "099 Low", "+12 Signed"} {
			t.Run(path+"/"+status, func(t *testing.T) {
				t.Parallel()
				b := startConnBackend(t, func(r backendRequest) reaction {
					if r.target == "/a" {
						return reaction{raw: "HTTP/1.1 " + status + "\r\nContent-Length: 2\r\n\r\nok"}
					}
					return echoToken(r)
				})
				pc := &config.Pool{Name: "web", Balancer: config.Balancer{Type: "round-robin"},
					Backends: []config.Backend{{URL: b.url(), Name: "b"}},
					Passive:  &config.Passive{Failures: 5, Eject: time.Minute, MaxEject: time.Minute}}
				log, logs := observed()
				s, u := startVia(t, path, catchAll(pc), log)
				if r := freshGet(t, http.MethodGet, u.String()+"/a"); r.status != http.StatusBadGateway {
					t.Errorf("got %d %q, want 502", r.status, r.body)
				}
				be := s.state.Load().pools[0].backends[0]
				if n := be.Succeed(); n != 1 {
					t.Errorf("%d failures counted against the backend, want 1", n)
				}
				askEach(t, u)
				if n := len(entries(logs, "backend request failed")); n != 1 {
					t.Errorf("%d failures logged, want 1", n)
				}
				for _, e := range logs.All() {
					if strings.Contains(e.Message, "panic") {
						t.Errorf("logged %q", e.Message)
					}
				}
			})
		}
	}
}

// streamStep is one exchange on a backend connection: the request's method,
// what the backend answers it with, and what it writes on the same
// connection once the client has read the response.
type streamStep struct {
	method, answer, late string
}

// delivery is what a client delivered for one request.
type delivery struct {
	err     bool // no response
	status  int
	header  string
	body    string
	bodyErr bool // reading the body failed
}

func (d delivery) String() string {
	if d.err {
		return "error"
	}
	return fmt.Sprintf("%d %q body %q (error %t)", d.status, d.header, d.body, d.bodyErr)
}

// endReader reads s, then returns io.EOF when eof is set; it notes
// whether anything read up to the end of s, where a client reading from a
// connection would wait for more.
type endReader struct {
	s   *strings.Reader
	eof bool
	hit bool // a read found s at its end
}

func (r *endReader) Read(p []byte) (int, error) {
	n, err := r.s.Read(p)
	if err == io.EOF {
		r.hit = true
		if !r.eof {
			err = io.ErrNoProgress
		}
	}
	return n, err
}

// expected is the oracle of FuzzStream, by http.ReadResponse: what a
// client reading answer as the response to a method request delivers.
// needsEnd reports that reading it reaches the end of answer and would wait
// past it (a body delimited by the connection's close, or an answer cut
// short): the backend then closes the connection after answer, and the
// delivery is what the close gives. extra reports bytes after the response.
func expected(method, answer string) (d delivery, needsEnd, extra bool) {
	read := func(eof bool) (delivery, bool, bool) {
		r := &endReader{s: strings.NewReader(answer), eof: eof}
		br := bufio.NewReader(r)
		var res *http.Response
		var err error
		for {
			if res, err = http.ReadResponse(br, &http.Request{Method: method}); err != nil {
				return delivery{err: true}, r.hit, false
			}
			if res.StatusCode < 100 || res.StatusCode > 199 || res.StatusCode == http.StatusSwitchingProtocols {
				break
			}
		}
		d := delivery{status: res.StatusCode, header: headerText(res.Header)}
		if res.StatusCode == http.StatusSwitchingProtocols {
			return d, false, true // the connection is the client's, or closed
		}
		body, err := io.ReadAll(res.Body)
		d.body, d.bodyErr = string(body), err != nil
		return d, r.hit, br.Buffered() > 0 || r.s.Len() > 0
	}
	if d, needsEnd, extra = read(false); needsEnd {
		d, _, _ = read(true)
	}
	return d, needsEnd, extra
}

// deliveries has rt send a request per step to a backend answering each as
// the step says, one after the other, and returns what rt delivered for
// each. Before each next request, a connection that anything came on past
// its response has been noticed (see connBackend.noticed), so that what rt
// does with it does not depend on timing. h1 is rt when it is an h1Client.
func deliveries(t *testing.T, rt http.RoundTripper, h1 *h1Client, steps []streamStep) []delivery {
	var mu sync.Mutex
	answered := make(map[int]bool)
	b := startConnBackend(t, func(r backendRequest) reaction {
		k, err := strconv.Atoi(strings.TrimPrefix(r.target, "/"))
		mu.Lock()
		again := answered[k]
		answered[k] = true
		mu.Unlock()
		if err != nil || k < 0 || k >= len(steps) || again {
			// Not one of ours (a port on a shared machine is soon
			// someone else's), or sent again, which the check below
			// reports.
			return reaction{end: closeConn}
		}
		_, needsEnd, _ := expected(steps[k].method, steps[k].answer)
		re := reaction{raw: steps[k].answer}
		if needsEnd {
			re.end = closeConn
		}
		return re
	})
	// As ReverseProxy asks, 1xx responses are heard of and passed over;
	// the exchange is the retrier's, which oneSend counts in.
	trace := &httptrace.ClientTrace{Got1xxResponse: func(int, textproto.MIMEHeader) error { return nil }}
	ctx := httptrace.WithClientTrace(t.Context(), trace)
	out := make([]delivery, len(steps))
	for k, st := range steps {
		ctx := context.WithValue(ctx, exchangeKey{}, new(exchange))
		ctx, cancel := context.WithTimeout(ctx, waitFor)
		req, err := http.NewRequestWithContext(ctx, st.method, b.url().String()+"/"+strconv.Itoa(k), nil)
		if err != nil {
			t.Fatal(err)
		}
		res, err := rt.RoundTrip(req)
		switch {
		case err != nil:
			out[k] = delivery{err: true}
		case res.StatusCode == http.StatusSwitchingProtocols:
			out[k] = delivery{status: res.StatusCode, header: headerText(res.Header)}
			_ = res.Body.Close()
		default:
			body, err := io.ReadAll(res.Body)
			_ = res.Body.Close()
			out[k] = delivery{status: res.StatusCode, header: headerText(res.Header), body: string(body), bodyErr: err != nil}
		}
		cancel()
		conn := b.connOf("/" + strconv.Itoa(k))
		sent := 0
		for _, r := range b.requests() {
			if r.target == "/"+strconv.Itoa(k) {
				sent++
			}
		}
		if sent != 1 {
			t.Fatalf("the backend saw request %d %d times: %+v", k, sent, b.requests())
		}
		_, _, extra := expected(st.method, st.answer)
		if st.late != "" {
			b.write(conn, st.late)
		}
		if extra || st.late != "" {
			testutil.Eventually(t, waitFor, "the client sees what came after the response",
				func() bool { return b.noticed(h1, conn) })
		}
	}
	return out
}

// FuzzStream: over the same stream of responses and stray bytes on
// keep-alive connections, h1Client and http.Transport (as the proxy makes
// it) deliver the same response to each request, the one http.ReadResponse
// reads from that request's answer alone. Three requests, GET or HEAD by
// the bits of heads; each answer may hold anything (a second response, a
// body to HEAD, a cut), and late bytes follow the first two.
func FuzzStream(f *testing.F) {
	const ok = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
	f.Add(uint8(0), "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none"+evilResponse, "", ok, "", ok)
	f.Add(uint8(0), "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none", evilResponse, ok, evilResponse, ok)
	f.Add(uint8(0), "HTTP/1.1 204 No Content\r\n\r\n", evilResponse, "HTTP/1.1 304 Not Modified\r\n\r\n", evilResponse, ok)
	f.Add(uint8(1), "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "0\r\n\r\n", ok, "", ok)
	f.Add(uint8(3), "HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\nEVIL-SMUGGLED", "", ok, "x", ok)
	f.Add(uint8(0), "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", "", "HTTP/1.1 200 OK\r\n\r\nto the end", "", ok)
	f.Add(uint8(0), "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"+ok, "", "HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\ncut", "", ok)
	f.Add(uint8(0), "HTTP/1.1 000 Zero\r\nContent-Length: 0\r\n\r\n", "", "HTTP/1.0 200 OK\r\n\r\nold", "", "")
	f.Add(uint8(0), "HTTP/1.1 101 Switching Protocols\r\n\r\n", "", ok, "HTTP/1.1 200 OK\r\n", ok)
	f.Fuzz(func(t *testing.T, heads uint8, a1, l1, a2, l2, a3 string) {
		method := func(i int) string {
			if heads&(1<<i) != 0 {
				return http.MethodHead
			}
			return http.MethodGet
		}
		steps := []streamStep{{method(0), a1, l1}, {method(1), a2, l2}, {method(2), a3, ""}}
		h1 := newH1Client((&net.Dialer{Timeout: time.Second}).DialContext, testTimeouts.ResponseHeader, testTimeouts.IdleConn)
		defer h1.CloseIdleConnections()
		tr := newTransport(testTimeouts)
		defer tr.CloseIdleConnections()
		got, want := deliveries(t, h1, h1, steps), deliveries(t, tr, nil, steps)
		for k, st := range steps {
			oracle, _, _ := expected(st.method, st.answer)
			if got[k] != want[k] || got[k] != oracle {
				t.Errorf("request %d (%s, answered %q):\nh1Client       %v\nhttp.Transport %v\nReadResponse   %v",
					k, st.method, st.answer, got[k], want[k], oracle)
			}
		}
	})
}
