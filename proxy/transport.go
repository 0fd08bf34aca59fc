package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/affinityproxy/affinity/config"
	"github.com/affinityproxy/affinity/internal/h1"
)

const (
	// maxIdleConns caps the keep-alive connections parked over all backends.
	// Each is a file descriptor on both ends; 1024 stays well below common
	// descriptor limits and still lets four busy backends keep a full
	// maxIdleConnsPerHost each.
	maxIdleConns = 1024
	// maxIdleConnsPerHost is the keep-alive connections kept per backend.
	// http.Transport's default of 2 is sized for a client, not a proxy:
	// with more than 2 requests in flight to one backend, every extra
	// connection is closed after its response and dialed again for the next,
	// burning a handshake and leaving a socket in TIME_WAIT each time, which
	// exhausts ephemeral ports under load. 256 lets a backend hold that many
	// concurrent requests without churn; beyond it the backend is overloaded
	// anyway.
	maxIdleConnsPerHost = 256
	// tcpKeepAlive probes idle backend connections so a backend that
	// vanished without a FIN is noticed before a request is sent on them.
	tcpKeepAlive = 30 * time.Second
	// expectContinueTimeout bounds how long a request body announced with
	// "Expect: 100-continue" waits for the backend's go-ahead before it is
	// sent anyway.
	expectContinueTimeout = time.Second
)

// newTransport returns the http.Transport of the requests the h1 client
// does not send (protocol switches, and the few it declines), with
// timeouts t. It keeps no connection for a next request: one it kept would
// be handed to a request waiting for a connection as soon as its response
// ended, before the transport's reader could see bytes the backend sent
// past that response, which the waiting request would then take for its
// answer (see Security, Backend connections). A connection of its own
// also means the transport never sends a request again by itself, which it
// does only on a reused connection: whether a request goes again is the
// retrier's alone to decide.
func newTransport(t config.Timeouts) *http.Transport {
	d := &net.Dialer{Timeout: t.Connect, KeepAlive: tcpKeepAlive}
	return &http.Transport{
		// Backends are addressed directly: a proxy taken from the
		// environment would silently reroute them.
		Proxy:             nil,
		DialContext:       d.DialContext,
		DisableKeepAlives: true,
		// A TLS handshake is part of connecting to an https backend.
		TLSHandshakeTimeout:   t.Connect,
		ResponseHeaderTimeout: t.ResponseHeader,
		// The h1 client's limit, so that a head is refused alike
		// whichever client sends the request.
		MaxResponseHeaderBytes: h1.MaxResponseHeaderBytes,
		ExpectContinueTimeout:  expectContinueTimeout,
		// Backends speak HTTP/1.1; with a custom DialContext this keeps the
		// transport from negotiating HTTP/2 with a TLS backend.
		ForceAttemptHTTP2: false,
		// The client asked for (or not) compression itself; bodies pass
		// through byte for byte instead of being inflated by the proxy.
		DisableCompression: true,
	}
}

// backendTransport is the RoundTripper requests are forwarded with: every
// request but a protocol switch goes through the h1 client
// (internal/h1), which keeps connections to each backend for the next
// requests and checks each before it reuses it; a protocol switch goes
// through the embedded http.Transport, on a connection of its own. Both
// dial alike and keep the same timeouts. The server has one, shared by all
// routes and pools without a tls section; a pool with one has its own
// (tls.go).
type backendTransport struct {
	*http.Transport
	h1 *h1.Client
	// bodyWait is timeouts.response_body, which the transport keeps by
	// a read deadline on its connection (countedConn); 0: none.
	bodyWait time.Duration
	// conns counts the connections both have open, idle or in use, so
	// that a transport a reload switched from is dropped once it has
	// none (transportSwitch).
	conns atomic.Int64
}

// newBackendTransport returns a backendTransport with timeouts t that
// verifies https backends with tc (nil: the system's roots, each for the
// host of its URL), and logs to log the backends it sees send responses
// no request asked for.
func newBackendTransport(t config.Timeouts, tc *tls.Config, log *zap.Logger) *backendTransport {
	bt := &backendTransport{Transport: newTransport(t), bodyWait: t.ResponseBody}
	bt.TLSClientConfig = tc
	dial := bt.DialContext
	bt.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		bt.conns.Add(1)
		return &countedConn{Conn: c, open: &bt.conns}, nil
	}
	bt.h1 = h1.New(h1.Config{
		Dial:                  bt.DialContext,
		TLSClientConfig:       tc,
		TLSHandshakeTimeout:   bt.TLSHandshakeTimeout,
		ExpectContinueTimeout: bt.ExpectContinueTimeout,
		ResponseHeaderTimeout: bt.ResponseHeaderTimeout,
		ResponseBodyTimeout:   t.ResponseBody,
		IdleConnTimeout:       t.IdleConn,
		MaxIdleConns:          maxIdleConns,
		MaxIdleConnsPerHost:   maxIdleConnsPerHost,
		Unsolicited:           watchStrays(log),
	})
	return bt
}

// unsolicited counts, by backend host:port, the times the h1 client saw a
// backend send bytes no request asked for (affinity_backend_unsolicited_total).
// It is the process's, not a transport's, so that a reload that makes new
// transports does not reset it.
var unsolicited sync.Map // host:port → *atomic.Int64

// watchStrays returns what the h1 client tells of a backend seen sending
// bytes no request asked for: each sighting is counted, and the first of
// a watch period logged, once per period however many strays come.
func watchStrays(log *zap.Logger) func(addr string, first bool) {
	return func(addr string, first bool) {
		v, ok := unsolicited.Load(addr)
		if !ok {
			v, _ = unsolicited.LoadOrStore(addr, new(atomic.Int64))
		}
		v.(*atomic.Int64).Add(1)
		if first {
			log.Warn("backend sent bytes no request asked for; its connections serve one request each for a while",
				zap.String("addr", addr), zap.Duration("for", h1.WaryPeriod))
		}
	}
}

// unsolicitedFrom returns how many times the backend at u was seen sending
// bytes no request asked for.
func unsolicitedFrom(u *url.URL) int64 {
	port := u.Port()
	if port == "" {
		port = "80"
		if u.Scheme == "https" {
			port = "443"
		}
	}
	if v, ok := unsolicited.Load(net.JoinHostPort(u.Hostname(), port)); ok {
		return v.(*atomic.Int64).Load()
	}
	return 0
}

// countedConn is a connection counted in open until it is closed.
type countedConn struct {
	net.Conn
	open   *atomic.Int64
	closed sync.Once
	// bodyWait, once set, bounds each read from the connection: what
	// the transport reads is then a response body (see
	// backendTransport.RoundTrip).
	bodyWait atomic.Int64
	// closedAt is when it was closed, on the proxy's clock; 0 while
	// open. A transport closes a connection as soon as it reads the
	// backend's end of it, which clientBody.stalled compares with its
	// reads of the client's body.
	closedAt atomic.Int64
}

// Read reads from the connection, within bodyWait if it is set.
func (c *countedConn) Read(p []byte) (int, error) {
	if d := c.bodyWait.Load(); d > 0 {
		_ = c.Conn.SetReadDeadline(time.Now().Add(time.Duration(d)))
	}
	return c.Conn.Read(p)
}

// Close closes the connection and counts it out, once.
func (c *countedConn) Close() error {
	c.closed.Do(func() {
		c.closedAt.Store(int64(clock()))
		c.open.Add(-1)
	})
	return c.Conn.Close()
}

// backendConn returns the countedConn under c, a backend connection as a
// transport reports it to httptrace (itself, or TLS over it, as each
// client wraps it), or nil.
func backendConn(c net.Conn) *countedConn {
	for {
		switch x := c.(type) {
		case *countedConn:
			return x
		case interface{ NetConn() net.Conn }:
			c = x.NetConn()
		default:
			return nil
		}
	}
}

// SyscallConn reaches the socket under the connection, as *net.TCPConn's
// does, for the h1 client's check of an idle connection before reuse.
func (c *countedConn) SyscallConn() (syscall.RawConn, error) {
	sc, ok := c.Conn.(syscall.Conn)
	if !ok {
		return nil, errors.New("proxy: backend connection has no socket")
	}
	return sc.SyscallConn()
}

// RoundTrip sends r with whichever of the two takes it.
func (bt *backendTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if bt.h1.Handles(r) {
		return bt.h1.RoundTrip(r)
	}
	if bt.bodyWait <= 0 {
		return bt.Transport.RoundTrip(r)
	}
	// The transport has no bound on a response body's silence: the
	// connection it took is noted, and once the head is read, each read
	// of the body from it is given timeouts.response_body, as the h1
	// client gives its own. The transport keeps no connection, so the
	// deadline never reaches another request. A protocol switch is left
	// alone: its connection is a tunnel, silent as long as its
	// application likes.
	var conn atomic.Pointer[countedConn]
	trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) { conn.Store(backendConn(info.Conn)) }}
	res, err := bt.Transport.RoundTrip(r.WithContext(httptrace.WithClientTrace(r.Context(), trace)))
	if err == nil && res.StatusCode != http.StatusSwitchingProtocols {
		if c := conn.Load(); c != nil {
			c.bodyWait.Store(int64(bt.bodyWait))
		}
	}
	return res, err
}

// CloseIdleConnections closes the idle connections of both.
func (bt *backendTransport) CloseIdleConnections() {
	bt.Transport.CloseIdleConnections()
	bt.h1.CloseIdleConnections()
}

// Close closes the idle connections of both, and those of the h1 client's
// requests still ending as they end: for a transport that will send no
// more requests.
func (bt *backendTransport) Close() {
	bt.Transport.CloseIdleConnections()
	bt.h1.Close()
}

// bufSize is the size of the buffers response bodies are copied through,
// io.Copy's default.
const bufSize = 32 << 10

// bufferPool recycles the buffers ReverseProxy copies response bodies
// through, which it would otherwise allocate per response. It stores
// *[bufSize]byte rather than []byte: a pointer fits in the interface
// sync.Pool holds without an allocation, and converting the slice back to
// the array pointer on Put needs no second pool of slice headers.
type bufferPool struct{ p sync.Pool }

func newBufferPool() *bufferPool {
	return &bufferPool{p: sync.Pool{New: func() any { return new([bufSize]byte) }}}
}

// Get returns a buffer of bufSize bytes.
func (bp *bufferPool) Get() []byte { return bp.p.Get().(*[bufSize]byte)[:] }

// Put recycles a buffer obtained from Get; anything else is left to the
// garbage collector.
func (bp *bufferPool) Put(b []byte) {
	if cap(b) != bufSize {
		return
	}
	bp.p.Put((*[bufSize]byte)(b[:bufSize]))
}
