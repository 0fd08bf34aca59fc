package proxy

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
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http/httpguts"
)

// h1Client forwards the common request, one without a body and safe to
// repeat (GET, HEAD, OPTIONS, TRACE) to an http:// backend, over keep-alive
// connections of its own. http.Transport runs two goroutines per
// connection, and every request crosses between them and the caller over
// channels and a select; here the request is written and its response read
// in the caller's goroutine, which takes a fifth of the proxy's CPU per
// request off (under the peer harness's load, with this client and
// without: 125k against 158k user-space instructions per request counted
// by cachegrind, 119 against 149 µs of CPU time). Everything else
// (bodies, protocol switches, https) goes to the http.Transport, whose
// concurrent reading and writing those need.
//
// What goes over the wire is what http.Transport sends: the request is
// written as Request.Write writes it (writeHead, or Request.Write itself),
// and DisableCompression and the absence of a proxy leave the transport
// nothing to add. The transport's behaviour
// is kept where a backend or client can tell: the response-header timeout,
// the cap on response header bytes, 1xx responses relayed through the
// ClientTrace, a connection kept only when both sides allow it and the body
// was read to its end, idle connections closed after timeouts.idle_conn and
// capped as maxIdleConns and maxIdleConnsPerHost, and cancellation when the
// client leaves.
//
// So is the transport's guarantee about what a connection delivers: a
// response is read only for the request it answers. http.Transport reads
// every idle connection and drops one on which anything arrives (stray
// bytes after a response, a second response, the backend's close). This
// client reads a connection only while a request is out, so it checks
// instead, at the two points where the next request could take bytes that
// are not its answer: when a response ends, a connection with bytes
// buffered past it is closed; when an idle connection is taken for a
// request, it is first asked without blocking whether anything arrived
// while it was idle (quiet), and closed if so. Both leave the one window
// the transport has too: bytes a backend sends between that check and the
// request's arrival, which no client can tell from an answer. Tests with
// a backend on raw sockets (h1_test.go, conns_test.go) and a fuzz target
// driving this client and http.Transport over the same stream of responses
// and stray bytes (FuzzStream) hold the two to the same deliveries.
//
// A request is sent once. When a reused connection fails, the error goes
// back to the retrier, whose rule alone decides whether the request goes
// again and where (retry.go); a connection that quiet finds closed is
// dropped before anything is written, which is no send at all.
type h1Client struct {
	dial          func(ctx context.Context, network, addr string) (net.Conn, error)
	headerTimeout time.Duration // timeouts.response_header; 0: none
	idleTimeout   time.Duration // timeouts.idle_conn; 0: none
	maxHeader     int64         // bytes a response's headers may take

	mu    sync.Mutex
	idle  map[string][]*h1Conn // by host:port; the most recently used last
	nidle int                  // connections in idle
	// sweep closes the connections idle past idleTimeout when no request
	// comes to find them; armed is set while it is due to, which is
	// whenever a connection is idle. One timer, made on first use, is
	// reset rather than replaced, so that a sweep and a new arming that
	// race cannot leave two.
	sweep *time.Timer
	armed bool
}

// maxResponseHeaderBytes caps what a backend may send as response
// headers, http.Transport's default.
const maxResponseHeaderBytes = 10 << 20

func newH1Client(dial func(ctx context.Context, network, addr string) (net.Conn, error), headerTimeout, idleTimeout time.Duration) *h1Client {
	return &h1Client{
		dial: dial, headerTimeout: headerTimeout, idleTimeout: idleTimeout,
		maxHeader: maxResponseHeaderBytes, idle: make(map[string][]*h1Conn),
	}
}

// handles reports whether the client sends r; http.Transport sends any
// other request.
func (c *h1Client) handles(r *http.Request) bool {
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

// h1Conn is one connection to a backend.
type h1Conn struct {
	nc     net.Conn
	r      h1Reader // what br reads from
	br     *bufio.Reader
	bw     *bufio.Writer
	addr   string
	abort  func()        // closes nc; made once, for context.AfterFunc
	idleAt time.Duration // clock() when it went idle
	peek   idlePeek      // what quiet asks the socket with
}

// h1Reader reads a connection, limiting what response headers may take
// and noting when the backend closed its side, as http.Transport does.
type h1Reader struct {
	nc    net.Conn
	limit int64 // bytes left for the response headers; MaxInt64 for a body
	eof   bool  // the backend closed its side
}

func (r *h1Reader) Read(p []byte) (int, error) {
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
// headers within timeouts.response_header: a net.Error whose Timeout is
// true, so that the client gets 504.
type headerTimeoutError struct{}

func (headerTimeoutError) Error() string   { return "timeout awaiting response headers" }
func (headerTimeoutError) Timeout() bool   { return true }
func (headerTimeoutError) Temporary() bool { return true }

// RoundTrip sends r, which handles accepted, and returns the backend's
// response.
func (c *h1Client) RoundTrip(r *http.Request) (*http.Response, error) {
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
func (c *h1Client) exchange(ctx context.Context, hc *h1Conn, r *http.Request) (res *http.Response, err error) {
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
	var wrap *h1Body
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
		wrap = new(h1Body)
	}
	*wrap = h1Body{body: res.Body, ctx: ctx, c: c, hc: hc, stop: stop, keep: keep}
	res.Body = wrap
	return res, nil
}

// h1Body is a response body that gives its connection back once read to
// the end, and closes it if abandoned before. Like ReverseProxy's use of
// it, its Read and Close must not run concurrently.
type h1Body struct {
	body   io.ReadCloser
	ctx    context.Context
	c      *h1Client
	hc     *h1Conn     // nil once given back or closed
	stop   func() bool // ends the watch on ctx; false if it fired
	keep   bool        // the connection may serve another request
	closed bool
}

func (b *h1Body) Read(p []byte) (int, error) {
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

func (b *h1Body) Close() error {
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
func (c *h1Client) get(ctx context.Context, addr string) (*h1Conn, error) {
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
	hc := &h1Conn{nc: nc, addr: addr, r: h1Reader{nc: nc, limit: math.MaxInt64}}
	hc.br = bufio.NewReaderSize(&hc.r, 4<<10)
	hc.bw = bufio.NewWriterSize(nc, 4<<10)
	hc.abort = func() { _ = nc.Close() }
	hc.peek.init(nc)
	return hc, nil
}

// release gives hc back to the idle connections if keep and nothing
// rules it out, and closes it otherwise.
func (c *h1Client) release(hc *h1Conn, keep bool) {
	// Bytes after the response, or the backend's end of stream, leave
	// nothing a next request could be sure to read its response from.
	if !keep || hc.r.eof || hc.br.Buffered() > 0 {
		_ = hc.nc.Close()
		return
	}
	hc.idleAt = clock()
	c.mu.Lock()
	conns := c.idle[hc.addr]
	if len(conns) >= maxIdleConnsPerHost || c.nidle >= maxIdleConns {
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
func (c *h1Client) sweepIdle() {
	now := clock()
	var expired []*h1Conn
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
func (c *h1Client) armLocked(d time.Duration) {
	c.armed = true
	if c.sweep == nil {
		c.sweep = time.AfterFunc(d, c.sweepIdle)
		return
	}
	c.sweep.Reset(d)
}

// closeIdle closes the idle connections to addr.
func (c *h1Client) closeIdle(addr string) {
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
func (c *h1Client) CloseIdleConnections() {
	c.mu.Lock()
	idle := c.idle
	c.idle = make(map[string][]*h1Conn)
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

// writeHead writes the head of a body-less GET or HEAD byte for byte as
// Request.Write does, without its fmt.Fprintf calls (2 % of the proxy's CPU
// under the peer harness). It reports false, having written nothing, for
// any request where Request.Write would do more than the common case does:
// another method or framing, a host it would rewrite or drop, a URL it
// would refuse, no User-Agent key (ReverseProxy always sets one), or a
// trace that wants to hear of the writing.
func writeHead(bw *bufio.Writer, r *http.Request, trace *httptrace.ClientTrace) bool {
	if (r.Method != http.MethodGet && r.Method != http.MethodHead) || len(r.TransferEncoding) > 0 || r.ContentLength != 0 {
		return false
	}
	if trace != nil && (trace.WroteHeaderField != nil || trace.WroteHeaders != nil || trace.WroteRequest != nil) {
		return false
	}
	host := r.Host
	if host == "" {
		host = r.URL.Host
	}
	// Request.Write would punycode a non-ASCII host, empty an invalid one
	// and strip an IPv6 zone.
	if !isASCII(host) || !httpguts.ValidHostHeader(host) || strings.IndexByte(host, '%') >= 0 {
		return false
	}
	ruri := r.URL.RequestURI()
	for i := 0; i < len(ruri); i++ {
		if ruri[i] < ' ' || ruri[i] == 0x7f {
			return false
		}
	}
	uas, ok := r.Header["User-Agent"]
	if !ok {
		return false
	}
	ua := ""
	if len(uas) > 0 {
		ua = uas[0]
	}
	if strings.ContainsAny(ua, "\r\n") {
		return false
	}
	bw.WriteString(r.Method)
	bw.WriteByte(' ')
	bw.WriteString(ruri)
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(host)
	bw.WriteString("\r\n")
	if ua != "" { // even when trimming leaves nothing, as Request.Write
		bw.WriteString("User-Agent: ")
		bw.WriteString(textproto.TrimString(ua))
		bw.WriteString("\r\n")
	}
	writeFields(bw, r.Header)
	bw.WriteString("\r\n")
	return true
}

// headerField is a header's name and values.
type headerField struct {
	name   string
	values []string
}

// writeFields writes the lines of h as Header.WriteSubset does for
// Request.Write: sorted by name, each value trimmed, without the headers
// Request.Write writes itself (net/http's reqWriteExcludeHeader). The
// fields are sorted on the stack where WriteSubset takes a slice from a
// pool and looks each name up in a map of the excluded. h1Client.handles
// checked every value (validHeaders), so none holds the CR or LF that
// WriteSubset would replace.
func writeFields(bw *bufio.Writer, h http.Header) {
	var stack [16]headerField
	fields := stack[:0]
	for name, values := range h {
		switch name {
		case "Host", "User-Agent", "Content-Length", "Transfer-Encoding", "Trailer":
			continue
		}
		fields = append(fields, headerField{name, values})
	}
	slices.SortFunc(fields, func(a, b headerField) int { return strings.Compare(a.name, b.name) })
	for _, f := range fields {
		for _, v := range f.values {
			bw.WriteString(f.name)
			bw.WriteString(": ")
			bw.WriteString(textproto.TrimString(v))
			bw.WriteString("\r\n")
		}
	}
}

// validHeaders reports whether http.Transport would send h rather than
// refuse it, by the checks it makes (httpguts): every name a token, no value
// holding a control character other than tab. The server checked the
// client's already; what fails here goes to the transport, for its error.
func validHeaders(h http.Header) bool {
	for k, vs := range h {
		if !httpguts.ValidHeaderFieldName(k) {
			return false
		}
		for _, v := range vs {
			if !httpguts.ValidHeaderFieldValue(v) {
				return false
			}
		}
	}
	return true
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}
