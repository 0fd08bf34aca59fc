package h1

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptrace"
	"sync"
	"time"

	"golang.org/x/net/http/httpguts"
)

// Client sends the requests Handles accepts to http:// and https://
// backends over keep-alive connections of its own, as http.Transport made
// with the same Config would, and is held to that transport's guarantees
// (see the package comment). A Client is safe for concurrent use.
type Client struct {
	dial             func(ctx context.Context, network, addr string) (net.Conn, error)
	tls              *tls.Config   // nil: crypto/tls's defaults
	handshakeTimeout time.Duration // 0: none
	continueTimeout  time.Duration // 0: the body goes at once
	headerTimeout    time.Duration // 0: none
	bodyTimeout      time.Duration // between two reads of a response body; 0: none
	idleTimeout      time.Duration // 0: none
	maxIdle          int           // idle connections over all hosts
	maxIdlePerHost   int           // idle connections to one host:port
	maxHeader        int64         // bytes a response's headers may take
	max1xx           int           // interim responses before the final one
	unsolicited      func(addr string, first bool)

	mu    sync.Mutex
	idle  map[connKey][]*conn // the most recently used last
	nidle int                 // connections in idle
	// sweep closes the connections idle past idleTimeout when no request
	// comes to find them; armed is set while it is due to, which is
	// whenever a connection is idle. One timer, made on first use, is
	// reset rather than replaced, so that a sweep and a new arming that
	// race cannot leave two.
	sweep *time.Timer
	armed bool
	// wary holds, for each host that sent bytes no request asked for,
	// until when its connections serve one request each (see sighted).
	wary map[connKey]time.Duration
	// closed is set by Close: a connection given back is closed, not
	// kept.
	closed bool
}

// Config is what a Client dials with and the limits it keeps. Its fields
// mean what http.Transport's fields of the same names mean, so that a
// Client made from a transport's values behaves as that transport does.
type Config struct {
	// Dial opens a connection to a backend's host:port, as the
	// transport's DialContext.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// TLSClientConfig is what https backends are verified with; nil:
	// crypto/tls's defaults (the system's roots). Its ServerName, when
	// empty, is the host of each backend's URL.
	TLSClientConfig *tls.Config
	// TLSHandshakeTimeout bounds a TLS handshake; 0: no bound.
	TLSHandshakeTimeout time.Duration
	// ExpectContinueTimeout bounds the wait for a 100 Continue before the
	// body of a request with "Expect: 100-continue" is sent anyway; 0:
	// the body is sent at once.
	ExpectContinueTimeout time.Duration
	// ResponseHeaderTimeout bounds the wait for a response's headers once
	// the request is written; 0: no bound.
	ResponseHeaderTimeout time.Duration
	// ResponseBodyTimeout bounds the wait for each read of a response
	// body: a backend that sends nothing for that long after its head, or
	// between two parts of its body, has its connection closed and the
	// body ends in a timeout. It bounds the silence, not the transfer (as
	// nginx's proxy_read_timeout), so a long download that keeps coming is
	// never cut. http.Transport has no such bound; 0: none.
	ResponseBodyTimeout time.Duration
	// IdleConnTimeout closes a keep-alive connection idle that long; 0:
	// never.
	IdleConnTimeout time.Duration
	// MaxIdleConns caps the idle connections to all hosts; 0: no cap.
	MaxIdleConns int
	// MaxIdleConnsPerHost caps the idle connections to one host:port; 0:
	// http.DefaultMaxIdleConnsPerHost.
	MaxIdleConnsPerHost int
	// Unsolicited, when set, is told each time a host:port is seen to
	// send bytes no request asked for, and whether it is the first time
	// in WaryPeriod (the host was not under watch). http.Transport has no
	// such hook.
	Unsolicited func(addr string, first bool)
}

// WaryPeriod is how long a host that sent bytes no request asked for has
// its connections closed after each response instead of kept, counted
// from the last time it was seen to. One stray response shifts every
// answer after it on a busy connection until a check sees the extra bytes
// (docs/security.md); a backend that sent one is likely to send more, and
// each would start such a run on another connection.
const WaryPeriod = 30 * time.Second

// MaxResponseHeaderBytes caps what a backend may send as a response's
// head (each 1xx's and the final one's). http.Transport's default, 10 MiB,
// is sized for a client talking to servers it chose; a proxy holds a head
// per request in flight, so a backend sending heads that large took 300 MB
// for 20 requests. HAProxy refuses a head past its 16 KiB buffer and nginx
// past proxy_buffer_size (4 or 8 KiB); 64 KiB is the limit the proxy keeps
// for its clients' heads (server.max_header_bytes' default), and leaves
// room for the large cookies and CSP headers real backends send.
const MaxResponseHeaderBytes = 64 << 10

// New returns a Client with cfg's dialer and limits.
func New(cfg Config) *Client {
	c := &Client{
		dial: cfg.Dial, tls: cfg.TLSClientConfig, handshakeTimeout: cfg.TLSHandshakeTimeout,
		continueTimeout: cfg.ExpectContinueTimeout,
		headerTimeout:   cfg.ResponseHeaderTimeout, bodyTimeout: cfg.ResponseBodyTimeout,
		idleTimeout: cfg.IdleConnTimeout,
		maxIdle:     cfg.MaxIdleConns, maxIdlePerHost: cfg.MaxIdleConnsPerHost,
		maxHeader: MaxResponseHeaderBytes, max1xx: max1xxResponses, idle: make(map[connKey][]*conn),
		unsolicited: cfg.Unsolicited, wary: make(map[connKey]time.Duration),
	}
	if c.maxIdle == 0 {
		c.maxIdle = math.MaxInt
	}
	if c.maxIdlePerHost == 0 {
		c.maxIdlePerHost = http.DefaultMaxIdleConnsPerHost
	}
	return c
}

// Handles reports whether c sends r: any request to an http:// or https://
// backend but a protocol switch, whose connection becomes the caller's,
// and those http.Transport would refuse or treat apart (a method that is
// not a token, CONNECT, a header it would not send, a host it would
// rewrite). Any other request is the transport's to send; on systems where
// c cannot check an idle connection before reuse (not Linux), every
// request is.
func (c *Client) Handles(r *http.Request) bool {
	if !canPeek {
		return false
	}
	if (r.URL.Scheme != "http" && r.URL.Scheme != "https") || r.URL.Host == "" || r.Close || r.Cancel != nil {
		return false
	}
	if r.Method != "" && (r.Method == http.MethodConnect || !httpguts.ValidHeaderFieldName(r.Method)) {
		return false
	}
	// ReverseProxy keeps a Connection header only for a protocol switch.
	if _, ok := r.Header["Connection"]; ok {
		return false
	}
	return validHeaders(r.Header) && isASCII(r.URL.Host)
}

// conn is one connection to a backend.
type conn struct {
	nc     net.Conn    // what requests are written to and read from
	raw    net.Conn    // the connection dialed: nc, or what nc speaks TLS over
	tls    *tls.Conn   // nc when it speaks TLS, or nil
	rec    *recordConn // what tls reads records from, or nil
	state  *tls.ConnectionState
	r      connReader // what br reads from
	br     *bufio.Reader
	w      countWriter // what bw writes to
	bw     *bufio.Writer
	key    connKey
	abort  func()        // closes raw; made once, for context.AfterFunc
	idleAt time.Duration // clock() when it went idle
	peek   idlePeek      // what quiet asks the socket with
}

// connKey is what idle connections are kept by: a connection serves the
// requests to one host:port, in TLS or not.
type connKey struct {
	addr string // host:port
	tls  bool
}

// countWriter writes to a connection and counts the bytes it took, so
// that a request of which no byte was written is known not to be sent.
type countWriter struct {
	nc net.Conn
	n  int64
}

func (w *countWriter) Write(p []byte) (int, error) {
	n, err := w.nc.Write(p)
	w.n += int64(n)
	return n, err
}

// ReadFrom writes what it reads from r to the connection as each read
// returns it. The bufio.Writer over w hands a request body's copy to it
// once the head is flushed, which Request.Write does before a body that is
// not in memory: so a body goes to the backend as the client sends it, as
// http.Transport's does (through the socket's ReadFrom), not held until the
// buffer fills. A backend waiting for a slow body would otherwise see none
// of it for as long, and give up on a client that sends steadily.
func (w *countWriter) ReadFrom(r io.Reader) (int64, error) {
	buf := copyBuffers.Get().(*[copyBufferSize]byte)
	defer copyBuffers.Put(buf)
	var total int64
	for {
		n, err := r.Read(buf[:])
		if n > 0 {
			m, werr := w.Write(buf[:n])
			total += int64(m)
			if werr != nil {
				return total, werr
			}
		}
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// copyBufferSize is the size of the buffers ReadFrom copies bodies
// through, io.Copy's.
const copyBufferSize = 32 << 10

var copyBuffers = sync.Pool{New: func() any { return new([copyBufferSize]byte) }}

// connReader reads a connection, limiting what response headers may take
// and noting when the backend closed its side, as http.Transport does.
// While a body is read it bounds the wait of each read that reaches the
// socket: one deadline per read, set only when the buffer is empty, costs
// a timer update where a watchdog per response would cost a goroutine or
// a timer of its own.
type connReader struct {
	nc    net.Conn
	limit int64         // bytes left for the response headers; MaxInt64 for a body
	eof   bool          // the backend closed its side
	wait  time.Duration // the most a read of a body may wait; 0: no bound
	// armed is set once a read of a body set a deadline, which must not
	// outlive the body: the next exchange clears it.
	armed bool
}

func (r *connReader) Read(p []byte) (int, error) {
	if r.limit <= 0 {
		return 0, errHeaderTooLarge
	}
	if r.wait > 0 {
		_ = r.nc.SetReadDeadline(time.Now().Add(r.wait))
		r.armed = true
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

// ErrNotSent is in the error of a request of which nothing reached the
// backend: its connection could not be made (the dial or the TLS
// handshake failed), or failed before a byte of the request was written.
// Such a request may go to a backend again whatever its method.
var ErrNotSent = errors.New("request not sent")

// notSentError is the error of a request not sent: err, which it reads
// as, and ErrNotSent.
type notSentError struct{ err error }

func (e notSentError) Error() string   { return e.err.Error() }
func (e notSentError) Unwrap() []error { return []error{ErrNotSent, e.err} }

// RoundTrip sends r, which Handles accepted, once, and returns the
// backend's response, as http.Transport's RoundTrip does. A failure after
// the request was written is returned, not retried: whether it goes again
// is the caller's to decide. RoundTrip closes r's body, and reads it no
// more once it has returned an error.
func (c *Client) RoundTrip(r *http.Request) (*http.Response, error) {
	ctx := r.Context()
	if err := ctx.Err(); err != nil {
		closeBody(r)
		return nil, err
	}
	https := r.URL.Scheme == "https"
	hc, err := c.get(ctx, connKey{addr: hostPort(r.URL.Host, https), tls: https})
	if err != nil {
		closeBody(r)
		return nil, notSentError{err}
	}
	if trace := httptrace.ContextClientTrace(ctx); trace != nil && trace.GotConn != nil {
		// As http.Transport reports it: the connection requests are
		// written to (TLS, if it speaks it), and whether it served
		// one before.
		info := httptrace.GotConnInfo{Conn: hc.nc, Reused: hc.idleAt != 0}
		if info.Reused {
			info.WasIdle, info.IdleTime = true, clock()-hc.idleAt
		}
		trace.GotConn(info)
	}
	return c.exchange(ctx, hc, r)
}

// closeBody closes r's body, if it has one.
func closeBody(r *http.Request) {
	if r.Body != nil {
		_ = r.Body.Close()
	}
}

// get returns an idle connection for key that nothing arrived on while it
// was idle, or a new one.
func (c *Client) get(ctx context.Context, key connKey) (*conn, error) {
	now := clock()
	for {
		c.mu.Lock()
		conns := c.idle[key]
		if len(conns) == 0 {
			c.mu.Unlock()
			break
		}
		hc := conns[len(conns)-1]
		conns[len(conns)-1] = nil
		c.idle[key] = conns[:len(conns)-1]
		c.nidle--
		c.mu.Unlock()
		if c.idleTimeout > 0 && now-hc.idleAt > c.idleTimeout {
			// The sweep has not come yet; every other idle
			// connection for key is older still.
			_ = hc.nc.Close()
			c.closeIdle(key)
			break
		}
		if hc.quiet() {
			return hc, nil
		}
		// Bytes no request asked for, or the backend's close: the
		// connection is dropped, as http.Transport drops it, and the
		// next one tried.
		_ = hc.nc.Close()
		if hc.peek.data {
			c.sighted(key)
		}
	}
	raw, err := c.dial(ctx, "tcp", key.addr)
	if err != nil {
		return nil, err
	}
	hc := &conn{nc: raw, raw: raw, key: key}
	hc.abort = func() { _ = raw.Close() }
	hc.peek.init(raw)
	if key.tls {
		if err := c.handshake(ctx, hc); err != nil {
			_ = raw.Close()
			return nil, err
		}
	}
	hc.r = connReader{nc: hc.nc, limit: math.MaxInt64}
	hc.br = bufio.NewReaderSize(&hc.r, 4<<10)
	hc.w = countWriter{nc: hc.nc}
	hc.bw = bufio.NewWriterSize(&hc.w, 4<<10)
	return hc, nil
}

// quiet reports whether nothing arrived on hc while it was idle: no byte,
// no end of stream, no error, in its socket or, for TLS, in what the TLS
// connection holds.
func (hc *conn) quiet() bool {
	if !hc.peek.quiet() {
		return false
	}
	return hc.tls == nil || tlsQuiet(hc)
}

// release gives hc back to the idle connections if keep and nothing
// rules it out, and closes it otherwise.
func (c *Client) release(hc *conn, keep bool) {
	// Bytes after the response, or the backend's end of stream, leave
	// nothing a next request could be sure to read its response from.
	// Closed as a connection in use is: without waiting to tell a TLS
	// backend, whose side may not be reading.
	if !keep || hc.r.eof || hc.br.Buffered() > 0 {
		hc.abort()
		if keep && !hc.r.eof && hc.br.Buffered() > 0 {
			c.sighted(hc.key)
		}
		return
	}
	hc.idleAt = clock()
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		_ = hc.nc.Close()
		return
	}
	if len(c.wary) > 0 {
		if until, ok := c.wary[hc.key]; ok {
			if hc.idleAt < until {
				c.mu.Unlock()
				hc.abort()
				return
			}
			delete(c.wary, hc.key)
		}
	}
	conns := c.idle[hc.key]
	if len(conns) >= c.maxIdlePerHost || c.nidle >= c.maxIdle {
		c.mu.Unlock()
		_ = hc.nc.Close()
		return
	}
	c.idle[hc.key] = append(conns, hc)
	c.nidle++
	if c.idleTimeout > 0 && !c.armed {
		c.armLocked(c.idleTimeout)
	}
	c.mu.Unlock()
}

// sighted puts key under watch for WaryPeriod from now: bytes no request
// asked for came from it. Its idle connections are closed, as any may hold
// the next such bytes unseen yet, and until the period ends each of its
// connections serves one request (release closes it), so that a stray
// response can reach no later request on it.
func (c *Client) sighted(key connKey) {
	now := clock()
	c.mu.Lock()
	first := c.wary[key] <= now
	c.wary[key] = now + WaryPeriod
	c.mu.Unlock()
	c.closeIdle(key)
	if c.unsolicited != nil {
		c.unsolicited(key.addr, first)
	}
}

// sweepIdle closes the connections idle past idleTimeout, and arms the
// next sweep for when the oldest left will be.
func (c *Client) sweepIdle() {
	now := clock()
	var expired []*conn
	c.mu.Lock()
	oldest := time.Duration(math.MaxInt64)
	for key, conns := range c.idle {
		n := 0
		for n < len(conns) && now-conns[n].idleAt >= c.idleTimeout {
			n++
		}
		expired = append(expired, conns[:n]...)
		if n == len(conns) {
			delete(c.idle, key)
			continue
		}
		c.idle[key] = append(conns[:0], conns[n:]...)
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

// closeIdle closes the idle connections for key.
func (c *Client) closeIdle(key connKey) {
	c.mu.Lock()
	conns := c.idle[key]
	delete(c.idle, key)
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
	c.idle = make(map[connKey][]*conn)
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

// Close closes every idle connection, and from then on every connection
// given back as its request ends, for a client that sends no more
// requests. CloseIdleConnections alone would leave one given back later
// idle until IdleConnTimeout: a request whose body was still being written
// when its response ended gives its connection back up to writeWait after.
func (c *Client) Close() {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.CloseIdleConnections()
}

// hostPort returns a URL's host with the port made explicit (443 for
// https, 80 for http), as http.Transport dials it; only a host without one
// allocates.
func hostPort(host string, https bool) string {
	port := ":80"
	if https {
		port = ":443"
	}
	for i := len(host) - 1; i >= 0; i-- {
		switch host[i] {
		case ':':
			return host
		case ']':
			return host + port
		}
	}
	return host + port
}

// epoch has a monotonic clock reading, which is all time.Since reads of
// it: clock costs one read of the clock where time.Now makes two (the wall
// clock too).
var epoch = time.Now()

// clock returns the monotonic time since epoch, for the idle connections'
// ages.
func clock() time.Duration { return time.Since(epoch) }
