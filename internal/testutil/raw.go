package testutil

import (
	"bufio"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// RawBackend is an HTTP backend written by hand, for answers net/http
// would not send. Each connection it accepts is given to serve in a
// goroutine of its own; the test's cleanup closes the listener and every
// connection, and waits for those goroutines.
type RawBackend struct {
	ln       net.Listener
	scheme   string // http, or https when it speaks TLS
	accepted atomic.Int32
	closed   atomic.Int32 // connections serve returned from
	wg       sync.WaitGroup
	mu       sync.Mutex
	conns    []net.Conn
}

// StartRaw starts a RawBackend on a free loopback port that serves each
// connection with serve, br reading from c.
func StartRaw(t testing.TB, serve func(c net.Conn, br *bufio.Reader)) *RawBackend {
	t.Helper()
	return startRaw(t, nil, serve)
}

// StartRawTLS is StartRaw for a backend that speaks TLS with cfg: serve
// reads and writes the connection's plain text.
func StartRawTLS(t testing.TB, cfg *tls.Config, serve func(c net.Conn, br *bufio.Reader)) *RawBackend {
	t.Helper()
	return startRaw(t, cfg, serve)
}

func startRaw(t testing.TB, cfg *tls.Config, serve func(c net.Conn, br *bufio.Reader)) *RawBackend {
	rb := &RawBackend{ln: Listen(t), scheme: "http"}
	if cfg != nil {
		rb.scheme = "https"
	}
	rb.wg.Go(func() {
		for {
			c, err := rb.ln.Accept()
			if err != nil {
				return
			}
			if cfg != nil {
				c = tls.Server(c, cfg)
			}
			rb.accepted.Add(1)
			rb.mu.Lock()
			rb.conns = append(rb.conns, c)
			rb.mu.Unlock()
			rb.wg.Go(func() {
				defer rb.closed.Add(1)
				defer c.Close()
				serve(c, bufio.NewReader(c))
			})
		}
	})
	t.Cleanup(func() {
		_ = rb.ln.Close()
		rb.mu.Lock()
		for _, c := range rb.conns {
			_ = c.Close()
		}
		rb.mu.Unlock()
		rb.wg.Wait()
	})
	return rb
}

// URL is the backend's root, http://host:port/ (https:// with TLS).
func (rb *RawBackend) URL() string { return rb.scheme + "://" + rb.Addr() + "/" }

// Addr is the backend's host:port.
func (rb *RawBackend) Addr() string { return rb.ln.Addr().String() }

// Accepted is the number of connections accepted so far.
func (rb *RawBackend) Accepted() int32 { return rb.accepted.Load() }

// Closed is the number of connections served to their end so far.
func (rb *RawBackend) Closed() int32 { return rb.closed.Load() }

// DialRaw opens a client connection to addr, with a deadline of timeout
// for all it reads and writes, closed when the test ends.
func DialRaw(t testing.TB, addr string, timeout time.Duration) (net.Conn, *bufio.Reader) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(timeout))
	return conn, bufio.NewReader(conn)
}

// ConnBackend is a keep-alive HTTP/1.1 backend on raw sockets that writes
// whatever its test decides: it parses every request on every connection,
// records it with the connection it came on, and answers what answer
// returns for it. The test can write more on a connection later, and sees
// which connections the client closed.
type ConnBackend struct {
	*RawBackend
	answer func(r RawRequest) Reaction

	mu    sync.Mutex
	seen  []RawRequest
	conns []*rawConn
}

// RawRequest is a request a ConnBackend parsed.
type RawRequest struct {
	Method, Target, Body string
	Conn                 int  // index of the connection it came on
	Reused               bool // the connection carried a request before
}

// Reaction is what a ConnBackend does with a request: write Raw, then keep
// the connection, close it, or reset it.
type Reaction struct {
	Raw string
	End ConnEnd
}

// ConnEnd is what becomes of a connection after an answer.
type ConnEnd int

const (
	KeepConn  ConnEnd = iota
	CloseConn         // closed after the answer
	ResetConn         // closed with linger 0: the client reads a reset
)

// rawConn is one connection a ConnBackend accepted.
type rawConn struct {
	net.Conn
	wmu    sync.Mutex  // serialises the answers and the test's writes
	closed atomic.Bool // reading it ended: the peer closed it, or the backend did
}

// StartConnBackend starts a ConnBackend on a free loopback port; the
// test's cleanup closes it.
func StartConnBackend(t testing.TB, answer func(r RawRequest) Reaction) *ConnBackend {
	t.Helper()
	b := &ConnBackend{answer: answer}
	b.RawBackend = StartRaw(t, b.serve)
	return b
}

// StartConnBackendTLS is StartConnBackend for a backend that speaks TLS
// with cfg (nil: plain HTTP).
func StartConnBackendTLS(t testing.TB, cfg *tls.Config, answer func(r RawRequest) Reaction) *ConnBackend {
	t.Helper()
	b := &ConnBackend{answer: answer}
	b.RawBackend = startRaw(t, cfg, b.serve)
	return b
}

func (b *ConnBackend) serve(nc net.Conn, br *bufio.Reader) {
	c := &rawConn{Conn: nc}
	b.mu.Lock()
	i := len(b.conns)
	b.conns = append(b.conns, c)
	b.mu.Unlock()
	defer c.closed.Store(true)
	defer c.Close()
	for served := 0; ; served++ {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		body, err := io.ReadAll(req.Body)
		if err != nil {
			return
		}
		r := RawRequest{Method: req.Method, Target: req.RequestURI, Body: string(body), Conn: i, Reused: served > 0}
		b.mu.Lock()
		b.seen = append(b.seen, r)
		b.mu.Unlock()
		re := b.answer(r)
		c.wmu.Lock()
		_, err = io.WriteString(c, re.Raw)
		c.wmu.Unlock()
		switch {
		case err != nil:
			return
		case re.End == ResetConn:
			_ = tcpConn(c.Conn).SetLinger(0)
			return
		case re.End == CloseConn:
			return
		}
	}
}

// BaseURL is the backend's URL without a path.
func (b *ConnBackend) BaseURL() *url.URL { return &url.URL{Scheme: b.scheme, Host: b.Addr()} }

// Requests returns the requests parsed so far.
func (b *ConnBackend) Requests() []RawRequest {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]RawRequest(nil), b.seen...)
}

// ConnOf returns the index of the connection the request for target came
// on, or -1.
func (b *ConnBackend) ConnOf(target string) int {
	for _, r := range b.Requests() {
		if r.Target == target {
			return r.Conn
		}
	}
	return -1
}

func (b *ConnBackend) conn(i int) *rawConn {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.conns[i]
}

// Write writes raw on connection i, as if late for the request it served;
// nothing, if the connection is gone.
func (b *ConnBackend) Write(i int, raw string) {
	c := b.conn(i)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_, _ = io.WriteString(c, raw)
}

// ConnClosed reports whether connection i is closed: the client closed
// it, or the backend did.
func (b *ConnBackend) ConnClosed(i int) bool { return b.conn(i).closed.Load() }

// Delivered reports whether the client's side of connection i has
// acknowledged every byte written on it: the bytes wait in its socket,
// where a client asking the socket finds them. False once the connection
// is closed.
func (b *ConnBackend) Delivered(i int) bool {
	c := b.conn(i)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	rc, err := tcpConn(c.Conn).SyscallConn()
	if err != nil {
		return false
	}
	queued := -1
	if err := rc.Control(func(fd uintptr) {
		// SIOCOUTQ: the bytes written that the peer has not acknowledged.
		if n, err := unix.IoctlGetInt(int(fd), unix.SIOCOUTQ); err == nil {
			queued = n
		}
	}); err != nil {
		return false
	}
	return queued == 0
}

// tcpConn is the TCP connection under c, which may speak TLS over it.
func tcpConn(c net.Conn) *net.TCPConn {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	return c.(*net.TCPConn)
}
