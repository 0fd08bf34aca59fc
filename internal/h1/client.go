package h1

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"os"
	"sync"
	"time"
)

// Client sends the requests Handles accepts to http:// backends over
// keep-alive connections of its own, as http.Transport made with the same
// Config would, and is held to that transport's guarantees (see the
// package comment). A Client is safe for concurrent use.
type Client struct {
	dial           func(ctx context.Context, network, addr string) (net.Conn, error)
	headerTimeout  time.Duration // 0: none
	idleTimeout    time.Duration // 0: none
	maxIdle        int           // idle connections over all hosts
	maxIdlePerHost int           // idle connections to one host:port
	maxHeader      int64         // bytes a response's headers may take

	mu    sync.Mutex
	idle  map[string][]*conn // by host:port; the most recently used last
	nidle int                // connections in idle
	// sweep closes the connections idle past idleTimeout when no request
	// comes to find them; armed is set while it is due to, which is
	// whenever a connection is idle. One timer, made on first use, is
	// reset rather than replaced, so that a sweep and a new arming that
	// race cannot leave two.
	sweep *time.Timer
	armed bool
}

// Config is what a Client dials with and the limits it keeps. Its fields
// mean what http.Transport's fields of the same names mean, so that a
// Client made from a transport's values behaves as that transport does.
type Config struct {
	// Dial opens a connection to a backend's host:port, as the
	// transport's DialContext.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// ResponseHeaderTimeout bounds the wait for a response's headers once
	// the request is written; 0: no bound.
	ResponseHeaderTimeout time.Duration
	// IdleConnTimeout closes a keep-alive connection idle that long; 0:
	// never.
	IdleConnTimeout time.Duration
	// MaxIdleConns caps the idle connections to all hosts; 0: no cap.
	MaxIdleConns int
	// MaxIdleConnsPerHost caps the idle connections to one host:port; 0:
	// http.DefaultMaxIdleConnsPerHost.
	MaxIdleConnsPerHost int
}

// maxResponseHeaderBytes caps what a backend may send as response
// headers, http.Transport's default.
const maxResponseHeaderBytes = 10 << 20

// New returns a Client with cfg's dialer and limits.
func New(cfg Config) *Client {
	c := &Client{
		dial: cfg.Dial, headerTimeout: cfg.ResponseHeaderTimeout, idleTimeout: cfg.IdleConnTimeout,
		maxIdle: cfg.MaxIdleConns, maxIdlePerHost: cfg.MaxIdleConnsPerHost,
		maxHeader: maxResponseHeaderBytes, idle: make(map[string][]*conn),
	}
	if c.maxIdle == 0 {
		c.maxIdle = math.MaxInt
	}
	if c.maxIdlePerHost == 0 {
		c.maxIdlePerHost = http.DefaultMaxIdleConnsPerHost
	}
	return c
}

// Handles reports whether c sends r: a request without a body and safe to
// repeat (GET, HEAD, OPTIONS, TRACE) to an http:// backend, that needs
// nothing of http.Transport's concurrent reading and writing (no protocol
// switch) and that the transport would not refuse. Any other request is
// the transport's to send; on systems where c cannot check an idle
// connection before reuse (not Linux), every request is.
func (c *Client) Handles(r *http.Request) bool {
	if !canPeek {
		return false
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
	default:
		return false
	}
	if (r.Body != nil && r.Body != http.NoBody) || r.URL.Scheme != "http" || r.URL.Host == "" ||
		r.Close || r.Cancel != nil || len(r.Trailer) > 0 {
		return false
	}
	// ReverseProxy keeps a Connection header only for a protocol switch,
	// which needs the transport's writable response body.
	if _, ok := r.Header["Connection"]; ok {
		return false
	}
	return validHeaders(r.Header) && isASCII(r.URL.Host)
}

// conn is one connection to a backend.
type conn struct {
	nc     net.Conn
	r      connReader // what br reads from
	br     *bufio.Reader
	bw     *bufio.Writer
	addr   string
	abort  func()        // closes nc; made once, for context.AfterFunc
	idleAt time.Duration // clock() when it went idle
	peek   idlePeek      // what quiet asks the socket with
}

// connReader reads a connection, limiting what response headers may take
// and noting when the backend closed its side, as http.Transport does.
type connReader struct {
	nc    net.Conn
	limit int64 // bytes left for the response headers; MaxInt64 for a body
	eof   bool  // the backend closed its side
}

func (r *connReader) Read(p []byte) (int, error) {
	if r.limit <= 0 {
		return 0, errHeaderTooLarge
	}
	if int64(len(p)) > r.limit {
		p = p[:r.limit]
	}
	n, err := r.nc.Read(p)
	if err == io.EOF {
		r.eof = true
	}
	r.limit -= int64(n)
	return n, err
}

var (
	errHeaderTooLarge = errors.New("backend response headers too large")
	errBodyReadClosed = errors.New("http: read on closed response body")
)

// headerTimeoutError is the error of a backend that sent no response
// headers within ResponseHeaderTimeout: a net.Error whose Timeout is
// true, as http.Transport's is, so that a caller tells it from a failure
// (the proxy answers 504).
type headerTimeoutError struct{}

func (headerTimeoutError) Error() string   { return "timeout awaiting response headers" }
func (headerTimeoutError) Timeout() bool   { return true }
func (headerTimeoutError) Temporary() bool { return true }

// RoundTrip sends r, which Handles accepted, once, and returns the
// backend's response, as http.Transport's RoundTrip does. A failure after
// the request was written is returned, not retried: whether it goes again
// is the caller's to decide.
func (c *Client) RoundTrip(r *http.Request) (*http.Response, error) {
	ctx := r.Context()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	hc, err := c.get(ctx, hostPort(r.URL.Host))
	if err != nil {
		return nil, err
	}
	return c.exchange(ctx, hc, r)
}

// exchange sends r on hc and reads the response headers.
func (c *Client) exchange(ctx context.Context, hc *conn, r *http.Request) (res *http.Response, err error) {
	// The client leaving closes the connection, which ends whatever
	// read or write is under way; the connection is not used again.
	stop := context.AfterFunc(ctx, hc.abort)
	fail := func(err error) (*http.Response, error) {
		stop()
		_ = hc.nc.Close()
		if cerr := ctx.Err(); cerr != nil {
			return nil, cerr
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return nil, headerTimeoutError{}
		}
		return nil, err
	}
	trace := httptrace.ContextClientTrace(ctx)
	if !writeHead(hc.bw, r, trace) {
		err = r.Write(hc.bw)
	}
	if err == nil {
		err = hc.bw.Flush()
	}
	if err != nil {
		return fail(fmt.Errorf("writing the request: %w", err))
	}
	if c.headerTimeout > 0 {
		_ = hc.nc.SetReadDeadline(time.Now().Add(c.headerTimeout))
	}
	hc.r.limit = c.maxHeader
	// The first read fills the buffer, where parseResponse finds the
	// common head whole.
	if _, err := hc.br.Peek(1); err != nil {
		return fail(fmt.Errorf("reading the response: %w", err))
	}
	var wrap *respBody
	for {
		if res, wrap, err = readResponse(hc.br, r); err != nil {
			if hc.r.limit <= 0 {
				err = errHeaderTooLarge
			}
			return fail(fmt.Errorf("reading the response: %w", err))
		}
		// 1xx responses before the final one are relayed through the
		// trace (ReverseProxy's), then the next is read; 101 is final.
		code := res.StatusCode
		if code < 100 || code > 199 || code == http.StatusSwitchingProtocols {
			break
		}
		if trace != nil && trace.Got1xxResponse != nil {
			if err := trace.Got1xxResponse(code, textproto.MIMEHeader(res.Header)); err != nil {
				return fail(err)
			}
			hc.r.limit = c.maxHeader
		}
	}
	if c.headerTimeout > 0 {
		_ = hc.nc.SetReadDeadline(time.Time{})
	}
	hc.r.limit = math.MaxInt64
	keep := !res.Close && res.StatusCode > 199
	if r.Method == http.MethodHead || res.ContentLength == 0 {
		watched := stop()
		c.release(hc, keep && watched)
		return res, nil
	}
	if wrap == nil {
		wrap = new(respBody)
	}
	*wrap = respBody{body: res.Body, ctx: ctx, c: c, hc: hc, stop: stop, keep: keep}
	res.Body = wrap
	return res, nil
}

// respBody is a response body that gives its connection back once read to
// the end, and closes it if abandoned before. Like ReverseProxy's use of
// it, its Read and Close must not run concurrently.
type respBody struct {
	body   io.ReadCloser
	ctx    context.Context
	c      *Client
	hc     *conn       // nil once given back or closed
	stop   func() bool // ends the watch on ctx; false if it fired
	keep   bool        // the connection may serve another request
	closed bool
}

func (b *respBody) Read(p []byte) (int, error) {
	if b.closed {
		return 0, errBodyReadClosed
	}
	n, err := b.body.Read(p)
	if err != nil && b.hc != nil {
		if err == io.EOF {
			watched := b.stop()
			b.c.release(b.hc, b.keep && watched)
		} else {
			b.stop()
			_ = b.hc.nc.Close()
		}
		b.hc = nil
	}
	if err != nil && err != io.EOF {
		if cerr := b.ctx.Err(); cerr != nil {
			// The client left and the connection was closed under
			// the read, as http.Transport reports it.
			return n, cerr
		}
	}
	return n, err
}

func (b *respBody) Close() error {
	if b.closed {
		return nil
	}
	b.closed = true
	if b.hc != nil {
		b.stop()
		_ = b.hc.nc.Close()
		b.hc = nil
	}
	return nil
}

// get returns an idle connection to addr that nothing arrived on while it
// was idle, or a new one.
func (c *Client) get(ctx context.Context, addr string) (*conn, error) {
	now := clock()
	for {
		c.mu.Lock()
		conns := c.idle[addr]
		if len(conns) == 0 {
			c.mu.Unlock()
			break
		}
		hc := conns[len(conns)-1]
		conns[len(conns)-1] = nil
		c.idle[addr] = conns[:len(conns)-1]
		c.nidle--
		c.mu.Unlock()
		if c.idleTimeout > 0 && now-hc.idleAt > c.idleTimeout {
			// The sweep has not come yet; every other idle
			// connection to addr is older still.
			_ = hc.nc.Close()
			c.closeIdle(addr)
			break
		}
		if hc.peek.quiet() {
			return hc, nil
		}
		// Bytes no request asked for, or the backend's close: the
		// connection is dropped, as http.Transport drops it, and the
		// next one tried.
		_ = hc.nc.Close()
	}
	nc, err := c.dial(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	hc := &conn{nc: nc, addr: addr, r: connReader{nc: nc, limit: math.MaxInt64}}
	hc.br = bufio.NewReaderSize(&hc.r, 4<<10)
	hc.bw = bufio.NewWriterSize(nc, 4<<10)
	hc.abort = func() { _ = nc.Close() }
	hc.peek.init(nc)
	return hc, nil
}

// release gives hc back to the idle connections if keep and nothing
// rules it out, and closes it otherwise.
func (c *Client) release(hc *conn, keep bool) {
	// Bytes after the response, or the backend's end of stream, leave
	// nothing a next request could be sure to read its response from.
	if !keep || hc.r.eof || hc.br.Buffered() > 0 {
		_ = hc.nc.Close()
		return
	}
	hc.idleAt = clock()
	c.mu.Lock()
	conns := c.idle[hc.addr]
	if len(conns) >= c.maxIdlePerHost || c.nidle >= c.maxIdle {
		c.mu.Unlock()
		_ = hc.nc.Close()
		return
	}
	c.idle[hc.addr] = append(conns, hc)
	c.nidle++
	if c.idleTimeout > 0 && !c.armed {
		c.armLocked(c.idleTimeout)
	}
	c.mu.Unlock()
}

// sweepIdle closes the connections idle past idleTimeout, and arms the
// next sweep for when the oldest left will be.
func (c *Client) sweepIdle() {
	now := clock()
	var expired []*conn
	c.mu.Lock()
	oldest := time.Duration(math.MaxInt64)
	for addr, conns := range c.idle {
		n := 0
		for n < len(conns) && now-conns[n].idleAt >= c.idleTimeout {
			n++
		}
		expired = append(expired, conns[:n]...)
		if n == len(conns) {
			delete(c.idle, addr)
			continue
		}
		c.idle[addr] = append(conns[:0], conns[n:]...)
		clear(conns[len(conns)-n:])
		oldest = min(oldest, conns[0].idleAt)
	}
	c.nidle -= len(expired)
	c.armed = false
	if c.nidle > 0 {
		c.armLocked(oldest + c.idleTimeout - now)
	}
	c.mu.Unlock()
	for _, hc := range expired {
		_ = hc.nc.Close()
	}
}

// armLocked schedules a sweep in d; c.mu must be held.
func (c *Client) armLocked(d time.Duration) {
	c.armed = true
	if c.sweep == nil {
		c.sweep = time.AfterFunc(d, c.sweepIdle)
		return
	}
	c.sweep.Reset(d)
}

// closeIdle closes the idle connections to addr.
func (c *Client) closeIdle(addr string) {
	c.mu.Lock()
	conns := c.idle[addr]
	delete(c.idle, addr)
	c.nidle -= len(conns)
	c.mu.Unlock()
	for _, hc := range conns {
		_ = hc.nc.Close()
	}
}

// CloseIdleConnections closes every idle connection; those in use close
// or go idle when their requests end.
func (c *Client) CloseIdleConnections() {
	c.mu.Lock()
	idle := c.idle
	c.idle = make(map[string][]*conn)
	c.nidle = 0
	if c.sweep != nil {
		c.sweep.Stop()
	}
	c.armed = false
	c.mu.Unlock()
	for _, conns := range idle {
		for _, hc := range conns {
			_ = hc.nc.Close()
		}
	}
}

// hostPort returns a URL's host with the port made explicit, as
// http.Transport dials it; only a host without one allocates.
func hostPort(host string) string {
	for i := len(host) - 1; i >= 0; i-- {
		switch host[i] {
		case ':':
			return host
		case ']':
			return host + ":80"
		}
	}
	return host + ":80"
}

// epoch has a monotonic clock reading, which is all time.Since reads of
// it: clock costs one read of the clock where time.Now makes two (the wall
// clock too).
var epoch = time.Now()

// clock returns the monotonic time since epoch, for the idle connections'
// ages.
func clock() time.Duration { return time.Since(epoch) }
