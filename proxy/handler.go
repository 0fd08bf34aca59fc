package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/affinityproxy/affinity/balancer"
	"github.com/affinityproxy/affinity/config"
)

// statusClientClosed is what the access log records, as nginx does, for a
// request whose client's side ended before the backend answered (or that
// shutdown or drain_timeout cut). It is never written to the client: the
// connection (an HTTP/2 stream) is closed without an answer. The backend
// is not at fault.
const statusClientClosed = 499

// exchange carries a request's pick from ServeHTTP to the ReverseProxy
// hooks (Rewrite, Transport, ErrorHandler), which are handed only the
// requests. They find it in the request's context.
//
// Getting it there is the cheapest way measured (BenchmarkHandoff). An
// HTTP/1 connection serves its requests one at a time, so each connection
// our http.Server accepts gets one exchange in its context (connContext),
// which its requests reuse without allocating; serve clears it after each.
// Any other request, HTTP/2 or one handed to ServeHTTP by another
// http.Server, gets an exchange and a context of its own (exchangeFor),
// whose allocations BenchmarkHandoff counts. Writing the backend into the
// inbound request's URL for Rewrite to read would also cost nothing, but
// the retrier and ErrorHandler would then see only an address in the
// outgoing request, not which pool and backend it belongs to.
type exchange struct {
	pool *pool
	// backend serves the request; a retry replaces it, and moves the
	// in-flight count with it.
	backend *balancer.Backend
	// setCookie is the Set-Cookie header value pinning the client to
	// backend, or "". The retrier adds it to the response rather than
	// serve to the ResponseWriter, so that a retry can replace it and the
	// client is pinned where it was served, never to a backend that failed.
	setCookie string
	// url is the outgoing URL before Rewrite pointed it at the backend,
	// which a retry points at another. Kept by value: no allocation.
	url url.URL
	// cookie backs the response's Set-Cookie header when the backend sets
	// none, so that adding setCookie allocates no slice; see addCookie.
	cookie [1]string
	// via is this proxy's Via entry, which Rewrite adds.
	via string
	// trusted is set when the client's peer is a trusted proxy, whose
	// forwarding headers Rewrite keeps and extends.
	trusted bool
	// attempts counts the backends the request was sent to, tried[:attempts]
	// (retries are at most MaxRetries). The retrier keeps them here: an
	// array on its stack would escape, through the Pinner, to the heap.
	attempts int
	tried    [config.MaxRetries + 1]*balancer.Backend
	// body is the client's body as guardBody wrapped it, nil for none:
	// ReverseProxy hands the retrier another wrapper of it.
	body *clientBody
	// access is the access log's wrapper of the ResponseWriter, so that
	// logging allocates none; serveLogged clears it once the request is
	// logged, as serve clears the rest once it is forwarded.
	access accessWriter
	// client tells the drainer which backend serves the request
	// (drain.go); it lives as long as the exchange, which serve keeps it
	// in when it clears the rest.
	client *client
	// long is set by the retrier when the response may last: an upgraded
	// connection or a body of unknown length.
	long longKind
}

// addCookie adds the sticky cookie to a backend's response header h.
// Adding it there rather than to the ResponseWriter before forwarding lets a
// retry choose it, and keeps it out of 1xx responses, which ReverseProxy
// builds from the ResponseWriter's header and then clears. A header slice
// backed by the exchange is safe: ReverseProxy copies the values to the
// client's header, and the response is gone before the exchange is reused.
func (ex *exchange) addCookie(h http.Header) {
	if v, ok := h["Set-Cookie"]; ok {
		h["Set-Cookie"] = append(v, ex.setCookie)
		return
	}
	ex.cookie[0] = ex.setCookie
	h["Set-Cookie"] = ex.cookie[:]
}

type exchangeKey struct{}

// connContext gives each client connection the exchange its HTTP/1 requests
// reuse; it is http.Server.ConnContext. The connection's client is found
// through its boundConn (drain.go).
func connContext(ctx context.Context, c net.Conn) context.Context {
	ex := &exchange{client: &client{conn: c}}
	if bc := boundOf(c); bc != nil {
		// Not in its binding's conns yet: connState adds it at
		// StateNew, after this.
		bc.client = ex.client
	}
	return context.WithValue(ctx, exchangeKey{}, ex)
}

// exchangeOf returns the exchange in ctx, or nil.
func exchangeOf(ctx context.Context) *exchange {
	ex, _ := ctx.Value(exchangeKey{}).(*exchange)
	return ex
}

// connExchange returns the exchange of r's HTTP/1 connection, or nil.
func connExchange(r *http.Request) *exchange {
	if r.ProtoMajor != 1 {
		return nil
	}
	return exchangeOf(r.Context())
}

// exchangeFor returns an exchange free for r to use, and r carrying it. An
// exchange of the request's own has a client of its own, which the
// drainer finds in s.detached until done is called.
func (s *Server) exchangeFor(r *http.Request) (ex *exchange, _ *http.Request, done func()) {
	if ex := connExchange(r); ex != nil {
		return ex, r, nil
	}
	ctx, cancel := context.WithCancel(r.Context())
	ex = &exchange{client: &client{cancel: cancel}}
	s.detached.add(ex.client)
	return ex, r.WithContext(context.WithValue(ctx, exchangeKey{}, ex)), func() {
		s.detached.remove(ex.client)
		cancel()
	}
}

// outcome is what the access log tells about a request besides its status.
type outcome struct {
	client   string // the client's address, by the trusted_proxies rule
	pool     string
	backend  string
	attempts int // backends tried; 0 when none was (404, 503)
	sticky   balancer.Sticky
	queued   time.Duration // time waited in the pool's queue
	// refused says why the proxy answered 503 itself without trying a
	// backend, telling a full pool from one with none available: one of
	// the refused* values, "" otherwise.
	refused string
}

// Values of the access log's refused field.
const (
	refusedNoBackend    = "no-backend"
	refusedQueueFull    = "queue-full"
	refusedQueueTimeout = "queue-timeout"
)

// refusalOf returns the access log's refused field for a request admit
// did not admit with err; "" for a client that left (499).
func refusalOf(err error) string {
	switch {
	case errors.Is(err, errQueueFull):
		return refusedQueueFull
	case errors.Is(err, errQueueTimeout):
		return refusedQueueTimeout
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return ""
	}
	return refusedNoBackend
}

// ServeHTTP routes r to a pool, picks a backend and forwards r to it.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.RequestURI == "*" && r.Method == http.MethodOptions {
		serveOptions(w, r)
		return
	}
	if s.access != nil {
		s.serveLogged(w, r)
		return
	}
	var o outcome
	s.serve(w, r, &o)
}

// serve does the work of ServeHTTP, filling in o as it goes so that the
// access log has it even when forwarding ends in a panic.
func (s *Server) serve(w http.ResponseWriter, r *http.Request, o *outcome) {
	if closesAfter(r) {
		w = &closingWriter{ResponseWriter: w}
	}
	if r.ProtoMajor == 2 && s.slow.send > 0 {
		sw := &streamWriter{ResponseWriter: w, lim: s.slow}
		defer sw.end()
		w = sw
	}
	if status := rejection(r); status != 0 {
		s.reject(w, r, status)
		return
	}
	if s.looped(r) {
		writeError(w, http.StatusLoopDetected)
		return
	}
	st := s.state.Load()
	p := st.router.match(r.Host, r.URL.Path)
	if p == nil {
		s.stats.unrouted.Add(1)
		writeError(w, http.StatusNotFound)
		return
	}
	o.pool = p.name
	if !guardBody(w, r, st.maxBody) {
		return
	}
	body, _ := r.Body.(*clientBody)
	if body != nil {
		body.watch(s.slow, w)
		defer body.stopReading(w)
	}
	trusted := st.trusted.trusts(r.RemoteAddr)
	pr := r
	if trusted && (p.hashesIP || s.access != nil) {
		o.client = st.trusted.client(r.Header, r.RemoteAddr)
		if p.hashesIP {
			pr = withClient(r, o.client)
		}
	}
	pk, err := p.pick(pr)
	if err != nil {
		o.refused = refusedNoBackend
		p.refused(err)
		body.closeUnlessRead(w.Header(), http.StatusServiceUnavailable)
		w.Header().Set("Retry-After", "1")
		writeError(w, http.StatusServiceUnavailable)
		return
	}
	p.served()
	a, err := p.admit(pr, pk)
	p, o.queued = a.pool, a.queued
	if err != nil {
		o.refused = refusalOf(err)
		p.queueRefused(w, r, body, err)
		return
	}
	b, setCookie := a.backend, a.setCookie
	o.backend, o.sticky = b.ID, a.sticky
	if a.sticky == balancer.StickyRepinned {
		p.repins.Add(1)
	}
	ex, r, done := s.exchangeFor(r)
	if done != nil {
		defer done()
	}
	if upgrading(r) {
		// http.Server.Shutdown does not wait for connections a handler
		// hijacks, as ReverseProxy does for a protocol switch, and
		// forgets them.
		s.tunnels.add(ex.client)
		defer s.tunnels.remove(ex.client)
		w = switchWriter{w}
	}
	ex.pool, ex.backend, ex.setCookie, ex.trusted = p, b, setCookie, trusted
	ex.via = s.via
	ex.body = body
	ex.client.begin(b)
	defer func() {
		finished(ex.backend)
		ex.client.end()
		statsOf(ex.backend).ended(ex.long)
		o.attempts = ex.attempts
		if ex.backend != b {
			// A retry moved the request, and with a pinning policy
			// the client too: the Pinner chose where, and moved its
			// cookie, session or key there.
			o.backend = ex.backend.ID
			if o.sticky == balancer.StickyKept && p.snap.Load().pinner != nil {
				o.sticky = balancer.StickyRepinned
				p.repins.Add(1)
			}
		}
		*ex = exchange{access: ex.access, client: ex.client}
	}()
	if r.ProtoMajor == 1 && r.ProtoMinor == 0 {
		w = finalOnly{w}
	}
	s.proxy.ServeHTTP(w, r)
}

// serveLogged is serve with one access log line per request. Only it pays
// for the clock and the status-recording wrapper.
func (s *Server) serveLogged(w http.ResponseWriter, r *http.Request) {
	start := clock()
	var aw *accessWriter
	if ex := connExchange(r); ex != nil {
		aw = &ex.access
	} else {
		aw = new(accessWriter)
	}
	aw.ResponseWriter = w
	o := outcome{client: r.RemoteAddr}
	s.unlogged.Add(1)
	defer func() {
		// ReverseProxy panics with http.ErrAbortHandler when a response
		// breaks off after its header was sent (the backend died, or the
		// client left); that request is logged too, then the panic goes on
		// to net/http, which drops the connection. proxyError panics so
		// too for a client taken as gone before any status was sent,
		// which is no response cut off.
		aborted := recover()
		s.logAccess(r, aw, &o, clock()-start, aborted != nil && !aw.unsent)
		s.unlogged.Add(-1)
		*aw = accessWriter{}
		if aborted != nil {
			panic(aborted)
		}
	}()
	s.serve(aw, r, &o)
}

// accessFieldCount is the number of fields of an access log line.
const accessFieldCount = 14

// accessFields holds the fields of access log lines: taken from a pool,
// fourteen fields are not 896 bytes more for each request to allocate. Cores
// copy what they keep of the fields they write (zap's do).
var accessFields = sync.Pool{New: func() any { return new([accessFieldCount]zap.Field) }}

func (s *Server) logAccess(r *http.Request, aw *accessWriter, o *outcome, d time.Duration, aborted bool) {
	status := aw.status
	if status == 0 {
		// Nothing was written, so net/http answers 200 with no body.
		status = http.StatusOK
	}
	// Sampling keeps every failure: those are the lines an operator
	// looks for. A 499 is one: the client gave up before the response.
	// rand.Uint64 draws from a per-thread source, no lock.
	failed := status >= 500 || status == statusClientClosed || aborted
	if s.accessSample != 0 && !failed && rand.Uint64() >= s.accessSample {
		return
	}
	ce := s.access.Check(zap.InfoLevel, "request")
	if ce == nil {
		return
	}
	fs := accessFields.Get().(*[accessFieldCount]zap.Field)
	fs[0] = zap.String("client", o.client)
	fs[1] = zap.String("method", r.Method)
	fs[2] = zap.String("host", r.Host)
	fs[3] = zap.String("path", r.URL.Path)
	fs[4] = zap.Int("status", status)
	fs[5] = zap.Int64("bytes", aw.bytes)
	fs[6] = zap.Duration("duration", d)
	fs[7] = zap.String("pool", o.pool)
	fs[8] = zap.String("backend", o.backend)
	fs[9] = zap.Int("attempts", o.attempts)
	fs[10] = zap.String("sticky", o.sticky.String())
	fs[11] = zap.Bool("aborted", aborted)
	fs[12] = zap.Duration("queued", o.queued)
	fs[13] = zap.String("refused", o.refused)
	ce.Write(fs[:]...)
	// Nothing of the request stays reachable from the pool.
	*fs = [accessFieldCount]zap.Field{}
	accessFields.Put(fs)
}

// rewrite is the ReverseProxy's Rewrite: it sends the outgoing request to
// the picked backend, keeps the client's Host header (backends serving
// several sites need it, and redirects they build stay right), and sets
// X-Forwarded-For, -Host and -Proto, and drops the request's trailers.
// ReverseProxy has already dropped any X-Forwarded-* and Forwarded the
// client sent, so a client cannot spoof them; only a trusted proxy's are
// put back (setForwarded).
func rewrite(pr *httputil.ProxyRequest) {
	ex := exchangeOf(pr.In.Context())
	if ex == nil || ex.backend == nil {
		// Only serve forwards requests, and it sets the exchange first.
		// Should that ever change, the URL stays without a scheme and the
		// transport's error becomes a 502 rather than a panic.
		return
	}
	ex.url = *pr.Out.URL
	pr.SetURL(ex.backend.URL)
	pr.Out.Host = pr.In.Host
	setForwarded(pr, ex.trusted)
	pr.Out.Header.Add("Via", ex.via)
	pr.Out.Close = ex.pool.closeConns
	// Request trailers are not passed on: they come after the body, once
	// the request was routed and its fields checked, and would reach the
	// backend unchecked (an X-Forwarded-For of the client's choosing).
	// ReverseProxy's clone of them has only their names, their values
	// coming later, but a backend told of trailers need not wait for any.
	pr.Out.Trailer = nil
}

// modifyResponse is the ReverseProxy's ModifyResponse: a response that
// comes while the client's body is still coming closes the connection
// (closeUnlessRead).
func modifyResponse(res *http.Response) error {
	if ex := exchangeOf(res.Request.Context()); ex != nil {
		ex.body.closeUnlessRead(res.Header, res.StatusCode)
	}
	return nil
}

// proxyError is the ReverseProxy's ErrorHandler, called when the backend
// could not be reached or did not answer. The client gets a short status
// line and nothing about the backend; the log gets the details.
func (s *Server) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	ex := exchangeOf(r.Context())
	if ex != nil {
		ex.body.closeUnlessRead(w.Header(), http.StatusBadGateway)
	}
	if tooLarge(err) {
		// The body passed max_body: the transport cut the backend
		// request, and the client hears why (harden.go).
		ex.failed(http.StatusRequestEntityTooLarge)
		writeError(w, http.StatusRequestEntityTooLarge)
		return
	}
	if errors.Is(err, errRequestBody) && (s.cutting.Load() || ex != nil && ex.client != nil && ex.client.cut.Load()) {
		// The body broke off because the proxy closed the client's
		// connection (shutdown_timeout, a second signal, drain_timeout):
		// no fault of the client's, and nothing can reach it. Logged
		// 499, as below.
		ex.clientAborted()
		recordUnsent(w, statusClientClosed)
		panic(http.ErrAbortHandler)
	}
	if errors.Is(err, errRequestBody) {
		// The client's body broke off, or stalled until the backend
		// gave up on it: its request failed, not a backend, which must
		// not be blamed for it. This comes before the cancellation a
		// client's half-close, or server.read_timeout passing, also
		// causes: the client is still there to read why, 408 for a body
		// too slow (for read_timeout, or for the backend), 400 for any
		// other.
		status := http.StatusBadRequest
		if isTimeout(err) || errors.Is(err, errBodyStalled) || errors.Is(err, errTooSlow) {
			status = http.StatusRequestTimeout
		}
		s.log.Debug("client body failed", zap.Error(err))
		ex.failed(status)
		writeError(w, status)
		return
	}
	if errors.Is(err, errLocalResource) {
		// The proxy's host ran out of descriptors or buffers: the
		// pool logged it, and no backend is blamed (resource.go).
		s.log.Debug("backend request failed for want of a local resource", zap.Error(err))
		w.Header().Set("Retry-After", "1")
		writeError(w, http.StatusServiceUnavailable)
		return
	}
	var refused *switchRefusedError
	if errors.As(err, &refused) {
		// The backend answered; what it answered cannot be relayed
		// (retry.go). Clients choose what they offer, so this is no
		// news for the operator: debug, and nothing against the
		// backend, whose answer was counted.
		s.log.Debug("protocol switch not relayed", zap.Error(err))
		writeError(w, http.StatusBadGateway)
		return
	}
	if r.Context().Err() != nil {
		// The client's side ended (it left, or half-closed, which no
		// server tells apart before writing; Go's cancels the request
		// either way), or shutdown or the drainer cut the request. The
		// failure is not the backend's. Whatever status were written,
		// net/http would send it to a client that may still read, so
		// none is: the access log records 499, and the connection (the
		// stream) is aborted, as ReverseProxy aborts a response cut off.
		ex.clientAborted()
		recordUnsent(w, statusClientClosed)
		panic(http.ErrAbortHandler)
	}
	status := http.StatusBadGateway
	if isTimeout(err) {
		status = http.StatusGatewayTimeout
	}
	var pool, backend string
	if ex != nil && ex.backend != nil {
		pool, backend = ex.pool.name, ex.backend.ID
	}
	ex.failed(status)
	s.log.Warn("backend request failed",
		zap.String("pool", pool), zap.String("backend", backend),
		zap.Int("status", status), zap.Error(err))
	writeError(w, status)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

// writeError answers with a status line as plain text.
func writeError(w http.ResponseWriter, status int) {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	fmt.Fprintf(w, "%d %s\n", status, http.StatusText(status))
}

// accessWriter records the status and body size of a response for the
// access log. Unwrap lets http.ResponseController reach the writer's other
// methods; Flush and Hijack are also defined directly for code that still
// type-asserts http.Flusher or http.Hijacker.
type accessWriter struct {
	http.ResponseWriter
	status int   // first final status written; 0 until then
	bytes  int64 // body bytes written
	unsent bool  // status was recorded for the log alone, never written
}

func (a *accessWriter) WriteHeader(code int) {
	// 1xx responses (103 Early Hints) precede the final one.
	if a.status == 0 && code >= 200 {
		a.status = code
	}
	a.ResponseWriter.WriteHeader(code)
}

func (a *accessWriter) Write(p []byte) (int, error) {
	if a.status == 0 {
		a.status = http.StatusOK
	}
	n, err := a.ResponseWriter.Write(p)
	a.bytes += int64(n)
	return n, err
}

// Unwrap returns the wrapped writer, for http.ResponseController.
func (a *accessWriter) Unwrap() http.ResponseWriter { return a.ResponseWriter }

// recordUnsent has the access log record status for a response that is
// never sent, if w, or a writer it wraps, is the log's and has recorded
// none yet.
func recordUnsent(w http.ResponseWriter, status int) {
	for {
		switch x := w.(type) {
		case *accessWriter:
			if x.status == 0 {
				x.status, x.unsent = status, true
			}
			return
		case interface{ Unwrap() http.ResponseWriter }:
			w = x.Unwrap()
		default:
			return
		}
	}
}

// Flush sends buffered data to the client, for http.Flusher.
func (a *accessWriter) Flush() { _ = a.FlushError() }

// FlushError is Flush reporting failure, which http.ResponseController
// prefers.
func (a *accessWriter) FlushError() error {
	if a.status == 0 {
		a.status = http.StatusOK
	}
	return http.NewResponseController(a.ResponseWriter).Flush()
}

// Hijack takes over the connection for a protocol switch, for
// http.Hijacker; the 101 is then written by the hijacker, not through
// WriteHeader, so it is recorded here.
func (a *accessWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, rw, err := http.NewResponseController(a.ResponseWriter).Hijack()
	if err == nil {
		a.status = http.StatusSwitchingProtocols
	}
	return c, rw, err
}
