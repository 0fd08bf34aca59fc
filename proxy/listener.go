package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/affinityproxy/affinity/internal/park"
	"go.uber.org/zap"
)

// binding is one listener the Server accepts on. A reload that changes the
// listen address retires the bindings accepting then: their listeners close
// at once, so no new connection arrives there; the connections they
// accepted finish the request they are serving, then close as they go idle.
// A retired binding names the one that replaced it, for Serve to follow.
type binding struct {
	ln   net.Listener  // as given to Serve, before wrapping
	done chan struct{} // closed once http.Server.Serve of ln returned
	err  error         // what it returned; read once done is closed

	retired atomic.Bool // read by connState on every request's end
	next    *binding    // set when retired: the binding serving in its place; guarded by Server.lnMu

	mu    sync.Mutex // guards conns, taken once per connection opened and closed
	conns map[*boundConn]struct{}

	// parker holds the idle connections (internal/park); nil when they do
	// not park (TLS, or not Linux). Set before the first Accept.
	parker *park.Parker

	// h2 serves the HTTP/2 connections b accepted (serveH2); nil without
	// TLS. goingAway is set once they are to end (goAway).
	h2        *http.Server
	goingAway atomic.Bool
}

// bindLocked makes ln a current binding of s; s.lnMu must be held.
func (s *Server) bindLocked(ln net.Listener) *binding {
	b := &binding{ln: ln, done: make(chan struct{}), conns: make(map[*boundConn]struct{})}
	if s.tls != nil {
		b.h2 = h2Host(s.http)
	}
	s.bindings = append(s.bindings, b)
	return b
}

// h2Host returns a server that accepts nothing, made only to hold an HTTP/2
// server of Go's, net/http's own: it serves a binding's HTTP/2 connections,
// so that Shutdown of it tells them, and them only, to go away. net/http
// has no other way to end one HTTP/2 connection gracefully (GOAWAY, then
// its streams finish, then it closes); http.Server.Shutdown does it for
// every connection the server has. Closing the connection instead, as an
// HTTP/1 one between two requests, cuts a stream: Go's HTTP/2 server says
// a connection is idle once the last frame of its last stream is queued,
// not sent, and a new stream's HEADERS may already be read.
//
// Its settings come from hs, the server whose connections it serves, as
// net/http's own HTTP/2 would take them: HTTP2 per connection, and the idle
// timeout (or the read timeout without one) here.
func h2Host(hs *http.Server) *http.Server {
	h := &http.Server{IdleTimeout: hs.IdleTimeout, ReadTimeout: hs.ReadTimeout}
	// Serve sets HTTP/2 up (TLSNextProto) before it accepts; the
	// listener then fails at once.
	_ = h.Serve(closedListener{})
	return h
}

// closedListener is a listener that is closed.
type closedListener struct{}

func (closedListener) Accept() (net.Conn, error) { return nil, net.ErrClosed }
func (closedListener) Close() error              { return nil }
func (closedListener) Addr() net.Addr            { return &net.TCPAddr{} }

// serveH2 is the proxy's TLSNextProto for "h2": it serves c over HTTP/2 as
// net/http would, with the HTTP/2 server of c's binding.
func serveH2(hs *http.Server, c *tls.Conn, h http.Handler) {
	bc := boundOf(c)
	var serve func(*http.Server, *tls.Conn, http.Handler)
	if bc != nil && bc.b.h2 != nil {
		serve = bc.b.h2.TLSNextProto["h2"]
	}
	if serve == nil {
		// HTTP/2 turned off in net/http (GODEBUG=http2server=0).
		_ = c.Close()
		return
	}
	bc.h2.Store(true)
	serve(hs, c, awayHandler{h, bc})
}

// awayHandler serves the streams of an HTTP/2 connection, and tells the
// connection to go away at its first stream after its binding's goAway, if
// its serving began too late for goAway to know of it (a connection
// accepted just before, whose handshake came after). Its first streams are
// served, as an HTTP/1 connection's first request is (retire): GOAWAY
// names the last stream that will be, and the streams read by then are.
type awayHandler struct {
	http.Handler
	bc *boundConn
}

func (h awayHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if h.bc.b.goingAway.Load() && !h.bc.toldAway.Swap(true) {
		h.bc.b.goAway()
	}
	h.Handler.ServeHTTP(w, r)
}

// BaseContext passes on what net/http's handler gives the HTTP/2 server:
// the connection's context (http.Server's ConnContext).
func (h awayHandler) BaseContext() context.Context {
	if bc, ok := h.Handler.(interface{ BaseContext() context.Context }); ok {
		return bc.BaseContext()
	}
	return context.Background()
}

// goAway tells b's HTTP/2 connections to go away: each sends GOAWAY,
// finishes the streams it has begun, and closes. Those that begin to
// serve HTTP/2 later are told at their first stream (awayHandler).
func (b *binding) goAway() {
	if b.h2 == nil {
		return
	}
	b.goingAway.Store(true)
	// It accepts nothing and has no connection of its own: Shutdown
	// returns at once, having started the HTTP/2 server's graceful
	// shutdown of its connections.
	_ = b.h2.Shutdown(context.Background())
}

// serveBinding runs the http.Server on b until its listener closes.
func (s *Server) serveBinding(b *binding) {
	var ln net.Listener = &boundListener{Listener: s.conns.wrap(b.ln), b: b}
	if s.slow.send > 0 {
		ln.(*boundListener).slow = s.slow
	}
	stopParking := func() {}
	if s.tls != nil {
		ln = tls.NewListener(ln, s.tls)
	} else if s.parkAfter > 0 && s.parkAfter < s.http.IdleTimeout {
		// A TLS connection cannot park: http.Server would send
		// close_notify as it let go of it.
		stopParking = s.parkIdle(b)
	}
	b.err = s.http.Serve(ln)
	stopParking()
	s.lnMu.Lock()
	for i, c := range s.bindings {
		if c == b {
			s.bindings = append(s.bindings[:i], s.bindings[i+1:]...)
			break
		}
	}
	s.lnMu.Unlock()
	close(b.done)
}

// parkIdle starts parking b's idle connections: b's parker and the Serve
// that takes them back. The returned stop closes the parked connections and
// waits for that Serve to return.
func (s *Server) parkIdle(b *binding) (stop func()) {
	p, err := park.New(b.ln.Addr(), s.parkAfter, s.http.IdleTimeout)
	if err != nil {
		if !errors.Is(err, errors.ErrUnsupported) {
			s.log.Warn("idle connections will not park", zap.Error(err))
		}
		return func() {}
	}
	// Under lnMu for the tests' sake; connections read it unlocked, as
	// they are accepted after this.
	s.lnMu.Lock()
	b.parker = p
	s.lnMu.Unlock()
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = s.http.Serve(p)
	}()
	return func() {
		_ = p.Close()
		<-served
	}
}

// clientConns counts the client connections of the listeners accepting
// now: those http.Server serves (active, or idle for less than parkAfter)
// and those parked.
func (s *Server) clientConns() (served, parked int) {
	s.lnMu.Lock()
	defer s.lnMu.Unlock()
	for _, b := range s.bindings {
		if b.parker != nil {
			parked += b.parker.Parked()
		}
	}
	return openConns(s.bindings), parked
}

// openConns counts the connections http.Server still serves on the
// listeners of bindings, closed or not.
func openConns(bindings []*binding) int {
	n := 0
	for _, b := range bindings {
		b.mu.Lock()
		n += len(b.conns)
		b.mu.Unlock()
	}
	return n
}

// freshConns counts the connections of bindings whose first request has
// not come yet.
func freshConns(bindings []*binding) int {
	n := 0
	for _, b := range bindings {
		b.mu.Lock()
		for c := range b.conns {
			if c.fresh.Load() {
				n++
			}
		}
		b.mu.Unlock()
	}
	return n
}

// outcome waits for b's serving to end and returns its error, following b
// to the binding that replaced it when a reload retired it.
func (s *Server) outcome(b *binding) error {
	for {
		<-b.done
		s.lnMu.Lock()
		next := b.next
		s.lnMu.Unlock()
		if next == nil {
			if s.handedOver.Load() && errors.Is(b.err, net.ErrClosed) {
				// Closed by Shutdown's handOver, before http.Server
				// knew of the shutdown.
				return http.ErrServerClosed
			}
			return b.err
		}
		b = next
	}
}

// rebind moves the server to ln, a listener on addr opened by a reload:
// ln serves from now on, and the bindings serving until now retire. It
// reports false, leaving ln to the caller, when nothing is being served
// (the address then only changes for a later ListenAndServe).
func (s *Server) rebind(ln net.Listener, addr string) bool {
	s.lnMu.Lock()
	old := s.bindings
	s.listen = addr
	if len(old) == 0 {
		s.lnMu.Unlock()
		return false
	}
	s.bindings = nil
	nb := s.bindLocked(ln)
	for _, b := range old {
		b.next = nb
	}
	s.lnMu.Unlock()
	s.serving.Go(func() { s.serveBinding(nb) })
	for _, b := range old {
		if s.shared {
			unlisten(b.ln)
		}
		s.retire(b)
	}
	return true
}

// retire closes b's listener, and those of its HTTP/1 connections that are
// idle between two requests; connState closes the others when their
// request is done. A connection whose first request has not arrived yet is
// left to serve it: closing it could lose a request the client already
// sent. Its HTTP/2 connections go away (goAway).
func (s *Server) retire(b *binding) {
	b.retired.Store(true)
	_ = b.ln.Close()
	b.goAway()
	b.mu.Lock()
	defer b.mu.Unlock()
	for c := range b.conns {
		if c.idle.Load() {
			_ = c.outer.Close()
		}
	}
}

// boundListener tags each connection it accepts with its binding, so that
// connState knows which listener a connection came from. Any TLS layer
// goes on top of it, so that http.Server still sees the *tls.Conn.
type boundListener struct {
	net.Listener
	b    *binding
	slow *slowLimits // bounds the writes of each connection; nil: none
}

// Accept returns the next connection, tagged with the listener's binding.
func (l *boundListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &boundConn{Conn: park.Conn{Conn: c, Parker: l.b.parker}, b: l.b, sent: sentTo{lim: l.slow}}, nil
}

// boundConn is a client connection and the binding that accepted it.
type boundConn struct {
	// Conn is the connection as accepted, which parks when idle on a
	// binding with a parker.
	park.Conn
	b *binding
	// outer is the connection http.Server serves, this one or a TLS
	// connection over it; closing it sends TLS's close_notify. Set at
	// StateNew under the binding's mu.
	outer net.Conn
	// idle is set between two HTTP/1 requests, when closing the
	// connection loses nothing; fresh from its accepting until its first
	// request (Shutdown's handOver waits for those), or until it serves
	// HTTP/2; h2 once it serves HTTP/2 (serveH2), when it is never idle
	// in that sense.
	// toldAway is set once awayHandler told its binding's goAway again
	// for it.
	idle, fresh, h2, toldAway atomic.Bool
	// client is what the drainer knows of the connection (drain.go). Set
	// by connContext before StateNew, read under the binding's mu.
	client *client
	// handedBack is set while the connection is parked and the
	// StateClosed of its serving is still to come; guarded by the
	// binding's mu.
	handedBack bool
	// sent bounds each write by server.send_timeout (slow.go). The
	// connection is below any TLS, so that HTTP/2's frames, TLS records
	// and a tunnel's bytes are bounded alike.
	sent sentTo
}

// Write writes p, failing only when nothing left the socket for
// server.send_timeout.
func (c *boundConn) Write(p []byte) (int, error) {
	var n int
	for {
		c.sent.before(&c.Conn, c.Conn.Conn)
		m, err := c.Conn.Write(p[n:])
		n += m
		c.sent.written += int64(m)
		// A deadline passed leaves a net.Conn usable: the write goes on
		// under a new one, below any TLS, which never sees it.
		if err == nil || !c.sent.progressed(c.Conn.Conn, err) {
			c.sent.after(err)
			return n, err
		}
	}
}

// SetWriteDeadline sets a deadline of the caller's, which holds until
// it is cleared.
func (c *boundConn) SetWriteDeadline(t time.Time) error {
	c.sent.set(t)
	return c.Conn.SetWriteDeadline(t)
}

// SetDeadline sets a read and write deadline of the caller's.
func (c *boundConn) SetDeadline(t time.Time) error {
	c.sent.set(t)
	return c.Conn.SetDeadline(t)
}

// Close parks a connection that Read handed back (internal/park); any
// other close is real.
//
// The connection leaves its binding's table here, before the parker can
// wake it, rather than at the StateClosed that follows: by then the parker
// may have handed it to http.Server again, and StateNew put it back.
func (c *boundConn) Close() error {
	if c.Parking() {
		b := c.b
		b.mu.Lock()
		delete(b.conns, c)
		c.handedBack = true
		b.mu.Unlock()
		if b.parker.Park(&c.Conn, c) {
			return nil
		}
		b.mu.Lock()
		c.handedBack = false
		b.mu.Unlock()
	}
	return c.Conn.Close()
}

// connState is the http.Server's ConnState hook. It tracks each
// connection's binding and whether it is idle, and closes a connection of a
// retired binding as soon as its request is done. On the request path it
// costs two atomic operations.
func connState(c net.Conn, cs http.ConnState) {
	bc := boundOf(c)
	if bc == nil {
		return
	}
	switch cs {
	case http.StateNew:
		bc.b.mu.Lock()
		bc.outer = c
		// One the parker hands back was idle; its request is there, and a
		// retiring listener must let it be served, as it does a new
		// connection's first.
		bc.idle.Store(false)
		bc.fresh.Store(true)
		bc.b.conns[bc] = struct{}{}
		bc.b.mu.Unlock()
	case http.StateActive:
		bc.idle.Store(false)
		bc.fresh.Store(false)
	case http.StateIdle:
		if bc.h2.Load() {
			// GOAWAY ends it (goAway), never a close.
			return
		}
		bc.idle.Store(true)
		bc.SetIdle()
		if bc.b.retired.Load() {
			_ = c.Close()
		}
	case http.StateHijacked, http.StateClosed:
		bc.b.mu.Lock()
		if bc.handedBack {
			// Parked: Close took it out of conns.
			bc.handedBack = false
		} else {
			delete(bc.b.conns, bc)
		}
		bc.b.mu.Unlock()
	}
}

// boundOf returns the boundConn under c, or nil for a connection that came
// from elsewhere.
func boundOf(c net.Conn) *boundConn {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	bc, _ := c.(*boundConn)
	return bc
}
