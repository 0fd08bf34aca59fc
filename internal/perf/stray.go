package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/affinityproxy/affinity/internal/loopback"
	"github.com/affinityproxy/affinity/internal/testutil"
)

// strayOptions configure stray.
type strayOptions struct {
	clients  int           // concurrent clients, each on a connection of its own
	requests int           // requests each client sends
	share    float64       // share of answers followed by a stray response
	maxDelay time.Duration // a stray comes 0 to maxDelay after its answer
	haproxy  string        // the haproxy binary; "" or not found: not measured
}

// stray measures, side by side, how often a backend's unsolicited
// responses reach clients: through the proxy, through http.Transport
// straight to the backend, and through HAProxy when it is installed. The
// backend answers each request with its token and, for a share of them,
// sends a complete extra response ("STRAY-<n>") in a separate write a
// moment later. Each stray a client receives is classed by when the
// backend saw the connection's next request arrive, relative to the
// stray's write: before it (the request was out when the stray came:
// nothing in HTTP/1.1 tells it from the answer), or after it, by how long
// (the connection was idle with the stray in it: a check just before the
// request is written could see it).
func stray(ctx context.Context, bin string, o strayOptions, out io.Writer) error {
	type target struct {
		name  string
		start func(backend string) (addr string, stop func(), err error)
	}
	targets := []target{
		{"direct http.Transport", func(backend string) (string, func(), error) { return backend, func() {}, nil }},
		{"affinity", func(backend string) (string, func(), error) {
			p, err := startProxy(ctx, bin, &backends{urls: []string{"http://" + backend}}, proxyOptions{})
			if err != nil {
				return "", nil, err
			}
			return p.addr, p.stop, nil
		}},
	}
	if path, err := exec.LookPath(o.haproxy); o.haproxy != "" && err == nil {
		targets = append(targets, target{"haproxy", func(backend string) (string, func(), error) {
			return startHAProxy(ctx, path, backend)
		}})
	} else {
		fmt.Fprintf(out, "haproxy not found (%q): not measured\n", o.haproxy)
	}
	// http.Transport logs each unsolicited response it drops; the
	// table counts what reached clients.
	log.SetOutput(io.Discard)
	defer log.SetOutput(os.Stderr)
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "target\trequests\town\tstray\tshifted\terrors\tnext req before stray\t0-100µs after\t100µs-1ms\t1-10ms\t>10ms\tno next\t\n")
	for _, t := range targets {
		b, err := startStrayBackend(o.share, o.maxDelay)
		if err != nil {
			return err
		}
		addr, stop, err := t.start(b.addr())
		if err != nil {
			b.close()
			return fmt.Errorf("%s: %w", t.name, err)
		}
		r := driveStray(ctx, addr, o.clients, o.requests, t.name == "direct http.Transport")
		stop()
		b.close()
		classes := b.classify(r.strays)
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t", t.name, r.total, r.own, len(r.strays), r.shifted, r.errors)
		for _, n := range classes {
			fmt.Fprintf(tw, "%d\t", n)
		}
		fmt.Fprintln(tw)
	}
	return tw.Flush()
}

// strayResult is what the clients received.
type strayResult struct {
	total, own, shifted, errors int
	strays                      []int // the ids of the strays received
}

// driveStray has clients send requests each, concurrently, every client on
// a connection of its own to addr, unless shared, when they share one
// http.Transport (the transport as a proxy would use it); each request
// carries a token the backend answers with.
func driveStray(ctx context.Context, addr string, clients, requests int, shared bool) strayResult {
	var (
		mu  sync.Mutex
		res strayResult
		wg  sync.WaitGroup
	)
	sharedTr := &http.Transport{Proxy: nil, MaxIdleConnsPerHost: clients, DisableCompression: true}
	for i := range clients {
		wg.Go(func() {
			tr := sharedTr
			if !shared {
				tr = &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 1, DisableCompression: true}
				defer tr.CloseIdleConnections()
			}
			c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
			for j := range requests {
				tok := fmt.Sprintf("c%d-%d", i, j)
				body, err := getToken(ctx, c, "http://"+addr+"/?t="+tok)
				mu.Lock()
				res.total++
				switch {
				case err != nil:
					res.errors++
				case body == tok:
					res.own++
				case strings.HasPrefix(body, "STRAY-"):
					if id, err := strconv.Atoi(body[len("STRAY-"):]); err == nil {
						res.strays = append(res.strays, id)
					}
				default:
					res.shifted++
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	sharedTr.CloseIdleConnections()
	return res
}

// getToken returns the body of a GET of url, or an error for any status
// but 200.
func getToken(ctx context.Context, c *http.Client, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	res, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer func() { _ = res.Body.Close() }()
	b, err := io.ReadAll(res.Body)
	if err == nil && res.StatusCode != http.StatusOK {
		err = fmt.Errorf("status %s", res.Status)
	}
	return string(b), err
}

// strayBackend answers each GET with the token of its query's t and, for a
// share of them, writes a complete extra response after a delay.
type strayBackend struct {
	ln       net.Listener
	share    float64
	maxDelay time.Duration
	wg       sync.WaitGroup

	mu     sync.Mutex
	conns  []*strayConn
	strays []strayRecord // by id
}

// strayConn is one connection to the backend.
type strayConn struct {
	nc  net.Conn
	wmu sync.Mutex // one write at a time
	// arrivals is when each request arrived, in order; under the
	// backend's mu.
	arrivals []time.Time
}

// strayRecord is a stray response: the connection and the request it
// followed the answer of, and when its write returned.
type strayRecord struct {
	conn    *strayConn
	after   int
	written time.Time
}

func startStrayBackend(share float64, maxDelay time.Duration) (*strayBackend, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	b := &strayBackend{ln: ln, share: share, maxDelay: maxDelay}
	b.wg.Go(b.accept)
	return b, nil
}

func (b *strayBackend) addr() string { return b.ln.Addr().String() }

func (b *strayBackend) accept() {
	for {
		nc, err := b.ln.Accept()
		if err != nil {
			return
		}
		c := &strayConn{nc: nc}
		b.mu.Lock()
		b.conns = append(b.conns, c)
		b.mu.Unlock()
		b.wg.Go(func() { b.serve(c) })
	}
}

func (b *strayBackend) serve(c *strayConn) {
	defer func() { _ = c.nc.Close() }()
	rc, err := c.nc.(*net.TCPConn).SyscallConn()
	if err != nil {
		return
	}
	if err := rxStampOn(rc); err != nil {
		return
	}
	br := bufio.NewReader(c.nc)
	for n := 0; ; n++ {
		// When the request's first byte reached the socket, as the
		// kernel stamped it: the time this goroutine reads it may be
		// much later on a busy machine.
		at := time.Now()
		if br.Buffered() == 0 {
			if at, err = rxStamp(rc); err != nil {
				return
			}
		}
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		b.mu.Lock()
		c.arrivals = append(c.arrivals, at)
		b.mu.Unlock()
		tok := req.URL.Query().Get("t")
		c.wmu.Lock()
		_, err = io.WriteString(c.nc, "HTTP/1.1 200 OK\r\nContent-Length: "+strconv.Itoa(len(tok))+"\r\n\r\n"+tok)
		c.wmu.Unlock()
		if err != nil {
			return
		}
		if rand.Float64() >= b.share {
			continue
		}
		delay := time.Duration(rand.Int64N(int64(b.maxDelay) + 1))
		b.wg.Go(func() {
			time.Sleep(delay)
			c.wmu.Lock()
			defer c.wmu.Unlock()
			b.mu.Lock()
			id := len(b.strays)
			b.strays = append(b.strays, strayRecord{conn: c, after: n})
			b.mu.Unlock()
			body := "STRAY-" + strconv.Itoa(id)
			_, _ = io.WriteString(c.nc, "HTTP/1.1 200 OK\r\nContent-Length: "+strconv.Itoa(len(body))+"\r\n\r\n"+body)
			// Once the write has returned: over loopback the bytes
			// are then in the peer's socket, so a request stamped
			// later left the peer with the stray already there.
			now := time.Now()
			b.mu.Lock()
			b.strays[id].written = now
			b.mu.Unlock()
		})
	}
}

// classify counts the strays ids by when the next request on their
// connection arrived, relative to the stray's write: before it, 0-100µs,
// 100µs-1ms, 1-10ms or more than 10 ms after it, or never.
func (b *strayBackend) classify(ids []int) [6]int {
	b.mu.Lock()
	defer b.mu.Unlock()
	var n [6]int
	for _, id := range ids {
		s := b.strays[id]
		if s.after+1 >= len(s.conn.arrivals) {
			n[5]++
			continue
		}
		switch gap := s.conn.arrivals[s.after+1].Sub(s.written); {
		case gap < 0:
			n[0]++
		case gap < 100*time.Microsecond:
			n[1]++
		case gap < time.Millisecond:
			n[2]++
		case gap < 10*time.Millisecond:
			n[3]++
		default:
			n[4]++
		}
	}
	return n
}

func (b *strayBackend) close() {
	_ = b.ln.Close()
	b.mu.Lock()
	for _, c := range b.conns {
		_ = c.nc.Close()
	}
	b.mu.Unlock()
	b.wg.Wait()
}

// startHAProxy runs HAProxy in front of backend with its default
// connection reuse (http-reuse safe) and returns its address.
func startHAProxy(ctx context.Context, path, backend string) (string, func(), error) {
	addrs, err := loopback.FreeAddrs(1)
	if err != nil {
		return "", nil, err
	}
	dir, err := os.MkdirTemp("", "affinity-stray")
	if err != nil {
		return "", nil, err
	}
	cfg := fmt.Sprintf("global\n  maxconn 1000\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n"+
		"frontend fe\n  bind %s\n  default_backend be\nbackend be\n  server b1 %s\n", addrs[0], backend)
	file := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(file, []byte(cfg), 0o600); err != nil {
		_ = os.RemoveAll(dir)
		return "", nil, err
	}
	log := &testutil.LockedBuffer{}
	cmd := exec.CommandContext(ctx, path, "-db", "-f", file)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		_ = os.RemoveAll(dir)
		return "", nil, err
	}
	stop := func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		_ = os.RemoveAll(dir)
	}
	deadline := time.Now().Add(startTimeout)
	for {
		if c, err := net.Dial("tcp", addrs[0]); err == nil {
			_ = c.Close()
			return addrs[0], stop, nil
		}
		if time.Now().After(deadline) {
			stop()
			return "", nil, fmt.Errorf("haproxy not listening: %s", log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
