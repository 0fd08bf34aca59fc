// Package proxy is affinity's data path. A Server routes each request to a
// pool by host and path, asks the pool's balancer for a backend, and
// forwards the request there with one httputil.ReverseProxy and one shared
// transport: the HTTP/1.1 client of internal/h1 for the common GET, a tuned
// http.Transport for every other request.
//
// Everything a request reads is an immutable snapshot behind an
// atomic.Pointer: the routing state of the Server and the Picker of each
// pool. A change (a backend's health, a new configuration) builds a new
// snapshot off the request path and swaps it in, so requests take no lock.
//
// A backend is available while its active health checks pass (health.go)
// and real traffic has not ejected it (passive.go). A request that fails
// before any of the response reached the client moves to another available
// backend when repeating it is safe (retry.go).
package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/affinityproxy/affinity/config"
)

// AccessLogName is the name of the logger, under the one given to
// NewServer, that writes the access log (log.access): one entry per
// request, at info level, message "request".
const AccessLogName = "access"

// Server is the proxy: an http.Handler, and the listener lifecycle around
// it. Create it with NewServer; its methods are safe for concurrent use.
type Server struct {
	log    *zap.Logger
	access *zap.Logger // nil when access logging is off
	// accessSample is log.access_sample as a bound on a random uint64: a
	// request that succeeded is logged when one drawn is below it. 0 logs
	// every request.
	accessSample uint64

	// state is the routing snapshot requests read, replaced whole when
	// the configuration changes.
	state     atomic.Pointer[state]
	transport *transportSwitch // of the current timeouts; see Reload
	retry     *retrier         // the ReverseProxy's Transport, over transport
	proxy     *httputil.ReverseProxy
	http      *http.Server
	// tls terminates TLS on every listener (listener.go); nil serves plain
	// HTTP. http.Server.TLSConfig cannot tell: Serve sets it up for HTTP/2
	// even on a plain listener.
	tls *tls.Config
	// cert is the pair tls serves, which reloads replace; nil without TLS.
	cert *listenerCert
	// cancel cancels the context every request derives from, aborting
	// whatever Shutdown could not wait for.
	cancel context.CancelFunc
	// tunnels holds the clients of protocol-switching requests, which
	// Shutdown waits for; detached the requests with a client of their
	// own (drain.go).
	tunnels, detached clientSet
	// leaving lists the backends reloads removed that still serve.
	leaving leaving
	// discovery holds the discoverer of each pool that takes its backends
	// from DNS, by pool name; guarded by reloadMu. discoveryLoops counts
	// their loops, which Shutdown waits for (discover.go).
	discovery      map[string]*discoverer
	discoveryLoops sync.WaitGroup
	// goneIdle is how long a backend that left DNS must be idle to be
	// removed: the constant goneIdle, but in tests; guarded by reloadMu.
	goneIdle time.Duration
	// via is the Via entry this proxy adds to the requests it forwards,
	// with a token of this process's own (loop.go).
	via string
	// stopDrainer stops the drainer that Serve starts; nil until then.
	stopDrainer func()
	stats       serverStats
	admin       *admin // the admin listener's server (admin.go)
	// cutting is set once Shutdown closes the connections of requests
	// still running, whose bodies then break off through no fault of
	// their clients'.
	cutting atomic.Bool
	// unlogged counts the requests whose access line is still to be
	// written: Shutdown waits a moment for those it cut (cutLogWait).
	unlogged atomic.Int64

	// reloadMu serialises Reload with the start of the checks by Serve
	// and with Shutdown, and guards started and closed.
	reloadMu sync.Mutex
	started  bool // Serve started the checks: a reload starts its state's
	closed   bool // Shutdown began: a reload is refused
	reloads  reloadCounters

	// lnMu guards listen and the bindings (listener.go).
	lnMu     sync.Mutex
	listen   string     // the configured address, which ListenAndServe binds
	bindings []*binding // the listeners accepting now
	// serving counts the Serve loops of listeners a reload opened, which
	// Shutdown waits for.
	serving sync.WaitGroup
	// parkAfter is server.park_after: how long a plain HTTP connection
	// is idle before it parks (internal/park); 0 never.
	parkAfter time.Duration
	// conns caps the client connections of every listener together
	// (server.max_conns; conns.go); nil for none.
	conns *connLimit

	// listenFn binds every listener: net.Listen, or UseListen's.
	// onListening, when not nil, runs once ListenAndServe has bound its
	// listeners; an error from it ends ListenAndServe before it accepts.
	// Both are set before serving.
	listenFn    func(network, addr string) (net.Listener, error)
	onListening func() error
	// shared is set when listenFn's sockets may be held by other
	// processes too (UseListen): a listener a reload moves away from is
	// then made to stop listening (unlisten), not only closed.
	shared bool
	// handedOver tells Shutdown that another process serves the same
	// sockets (HandOver).
	handedOver atomic.Bool
	// slow bounds slow clients (server.send_timeout and min_body_rate;
	// slow.go).
	slow *slowLimits
}

// state is one immutable routing configuration: the routes, and the pools
// they lead to, in config order, with the background work that keeps their
// health up to date.
//
// A hot reload builds a new state, stops the old one, carries the health of
// kept backends over, swaps the new one in and starts it (reload.go).
// Requests in flight on the old state keep their pool and backend (see
// exchange) and finish there, retries included; stopping it only ends its
// checks and ejection timers, so its backends drain and none is cut.
type state struct {
	cfg    *config.Config // what the state was built from
	router router
	pools  []*pool
	checks *checkers
	// trusted are the peers whose forwarding headers are believed
	// (forwarded.go); maxBody caps request bodies, 0 for no limit
	// (harden.go).
	trusted trustedProxies
	maxBody int64
}

// start begins the state's health checks.
func (st *state) start() { st.checks.start() }

// stop ends the state's health checks and ejection timers, waiting for the
// checkers to return. It does not touch requests in flight.
func (st *state) stop() {
	st.checks.stop()
	for _, p := range st.pools {
		p.stop()
	}
}

// NewServer builds the proxy for cfg; it does not listen yet.
func NewServer(cfg *config.Config, log *zap.Logger) (*Server, error) {
	if cfg == nil {
		return nil, errors.New("proxy: no configuration")
	}
	if log == nil {
		log = zap.NewNop()
	}
	limits, err := serverLimits(cfg.Server)
	if err != nil {
		return nil, err
	}
	tlsConfig, cert, err := listenerTLS(cfg.TLS)
	if err != nil {
		return nil, err
	}
	if cert != nil {
		warnValidity(log, cert.cur.Load().Leaf)
	}
	disc, err := discoverers(cfg, log, nil)
	if err != nil {
		return nil, err
	}
	st, err := newState(cfg, log, nil, disc)
	if err != nil {
		return nil, err
	}
	errLog, err := zap.NewStdLogAt(log, zap.WarnLevel)
	if err != nil {
		return nil, fmt.Errorf("proxy: error log: %w", err)
	}
	base, cancel := context.WithCancel(context.Background())
	s := &Server{
		log:       log,
		listen:    cfg.Listen,
		transport: newTransportSwitch(cfg.Timeouts, log),
		cancel:    cancel,
		parkAfter: limits.ParkAfter,
		conns:     newConnLimit(limits.MaxConns, log),
		slow: &slowLimits{send: limits.SendTimeout, rate: int64(limits.MinBodyRate),
			grace: limits.MinBodyRateGrace, log: log},
		discovery: disc,
		goneIdle:  goneIdle,
		via:       newVia(),
		listenFn:  net.Listen,
	}
	s.retry = &retrier{next: s.transport, log: log}
	s.tls, s.cert = tlsConfig, cert
	if cfg.Log.Access {
		s.access = log.Named(AccessLogName)
		if f := cfg.Log.AccessSample; f > 0 && f < 1 {
			// Below 1, f·2⁶⁴ stays below 2⁶⁴.
			s.accessSample = uint64(f * (1 << 64))
		}
	}
	s.state.Store(st)
	if s.admin, err = newAdmin(s, cfg.Admin, errLog); err != nil {
		return nil, err
	}
	s.proxy = &httputil.ReverseProxy{
		Rewrite:        rewrite,
		Transport:      s.retry,
		BufferPool:     newBufferPool(),
		ModifyResponse: modifyResponse,
		ErrorHandler:   s.proxyError,
		ErrorLog:       errLog,
		// FlushInterval stays 0: ReverseProxy already flushes every write
		// of a response of unknown length (chunked, event streams), and a
		// response of known length is best sent in full buffers.
	}
	s.http = &http.Server{
		Addr:              cfg.Listen,
		Handler:           s,
		ReadHeaderTimeout: limits.ReadHeaderTimeout,
		ReadTimeout:       limits.ReadTimeout,
		IdleTimeout:       limits.IdleTimeout,
		MaxHeaderBytes:    limits.MaxHeaderBytes,
		TLSConfig:         tlsConfig, // nil: plain HTTP; see serveBinding
		HTTP2:             h2Config(),
		ErrorLog:          errLog,
		BaseContext:       func(net.Listener) context.Context { return base },
		ConnContext:       connContext,
		ConnState:         connState,
		// "OPTIONS *" comes to ServeHTTP, which answers it as net/http
		// would, but closes the connection as after any other request
		// whose framing is in doubt (framing.go).
		DisableGeneralOptionsHandler: true,
	}
	if tlsConfig != nil {
		// HTTP/2 as net/http serves it, by each binding's server, so
		// that a binding's connections can be told to go away alone.
		s.http.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){"h2": serveH2}
	}
	return s, nil
}

// RetryEveryMethod makes s retry a failed request whatever its method, as
// if every method were idempotent, as nginx's `proxy_next_upstream ...
// non_idempotent` does: a POST that reached a backend, whose answer did
// not come in time, is sent to another, and may run on both. It is no
// configuration key, on purpose: it exists so that `affinity experiment`
// can measure what it costs (the retry-safety preset), through a hidden
// flag of `affinity serve`. Call it before serving.
func (s *Server) RetryEveryMethod() {
	s.retry.everyMethod = true
	s.log.Warn("retrying requests of every method: a POST whose answer is late may run twice, on two backends (a setting for experiments)")
}

// newState builds the pools of cfg and the routes to them. prev, when not
// nil, is the state a reload replaces, whose pools the new ones of the same
// name take their kept backends from (see newPool); prev is only read. A
// pool that discovers its backends takes them from its discoverer in disc.
func newState(cfg *config.Config, log *zap.Logger, prev *state, disc map[string]*discoverer) (*state, error) {
	st := &state{cfg: cfg, pools: make([]*pool, 0, len(cfg.Pools))}
	byName := make(map[string]*pool, len(cfg.Pools))
	for i, pc := range cfg.Pools {
		if pc == nil {
			return nil, fmt.Errorf("pool %d: %w: missing", i+1, errUnknownPool)
		}
		if _, dup := byName[pc.Name]; dup {
			return nil, fmt.Errorf("pool %q: %w", pc.Name, errDuplicatePool)
		}
		var gone map[string]time.Time
		d := disc[pc.Name]
		if pc.Discover != nil {
			if d == nil {
				return nil, fmt.Errorf("pool %q: %w", pc.Name, errNoDiscovery)
			}
			found := *pc
			found.Backends, gone = d.members()
			pc = &found
		}
		p, err := newPool(pc, gone, log, prev.pool(pc.Name))
		if err != nil {
			return nil, err
		}
		if pc.Discover != nil {
			p.discovery = d
		}
		byName[p.name] = p
		st.pools = append(st.pools, p)
	}
	rt, err := newRouter(cfg.Routes, byName)
	if err != nil {
		return nil, err
	}
	st.router = rt
	if err := useBackendTLS(cfg, st.pools, log); err != nil {
		return nil, err
	}
	st.trusted, st.maxBody = cfg.TrustedProxies, cfg.Server.MaxBody
	st.checks = newCheckers(st.pools)
	return st, nil
}

// ListenAndServe binds the configured listen address and serves it as
// Serve does. When an admin listener is configured, it binds that too and
// serves it (ServeAdmin) until Shutdown.
func (s *Server) ListenAndServe() error {
	adm, err := s.admin.bind()
	if err != nil {
		return err
	}
	s.lnMu.Lock()
	ln, err := s.listenFn("tcp", s.listen)
	if err != nil {
		s.lnMu.Unlock()
		s.admin.discard(adm)
		return fmt.Errorf("proxy: %w", err)
	}
	// Bound under the lock that Reload takes to move the listener, so
	// that a reload cannot change the address between the two.
	b := s.bindLocked(ln)
	s.lnMu.Unlock()
	if s.onListening != nil {
		if err := s.onListening(); err != nil {
			// Nothing was accepted on either listener: those who share
			// the sockets (the process an upgrade replaces) serve every
			// connection. Closed, not unlistened, for that reason.
			s.lnMu.Lock()
			s.bindings = slices.DeleteFunc(s.bindings, func(c *binding) bool { return c == b })
			s.lnMu.Unlock()
			_ = ln.Close()
			s.admin.discard(adm)
			return fmt.Errorf("proxy: %w", err)
		}
	}
	s.admin.start(adm)
	return s.serveBound(b)
}

// UseListen makes ListenAndServe, and a reload that moves the listen
// address, bind the proxy's and the admin listener with listen rather than
// net.Listen: internal/upgrade's, which takes over the sockets of the
// process it replaces (or those systemd passed), and keeps a copy of each
// socket to hand over to the next; a listener a reload moves away from is
// therefore made to stop listening (its address refuses connections)
// rather than only closed.
// onListening, when not nil, runs once ListenAndServe has bound both,
// before it serves them: the moment the new process can tell the old one
// that it is ready. When it fails, ListenAndServe closes both without
// having accepted on either, and returns its error. Call it before serving.
func (s *Server) UseListen(listen func(network, addr string) (net.Listener, error), onListening func() error) {
	s.listenFn, s.onListening, s.shared = listen, onListening, true
}

// HandOver tells Shutdown that another process now accepts on the same
// sockets (an in-place upgrade): it then closes the admin listener first,
// so that /readyz and /metrics are answered by the process that stays,
// never by this one draining (whose /readyz would say 503).
func (s *Server) HandOver() { s.handedOver.Store(true) }

// Serve accepts on ln until Shutdown; returns http.ErrServerClosed after a Shutdown.
// It logs the listener and the pools it serves as it starts, and starts the
// active health checks, which run until Shutdown. When a reload moves the
// proxy to another address, Serve goes on serving there (listener.go), and
// returns what that listener's serving returns.
func (s *Server) Serve(ln net.Listener) error {
	s.lnMu.Lock()
	b := s.bindLocked(ln)
	s.lnMu.Unlock()
	return s.serveBound(b)
}

// serveBound starts the checks and serves b, then follows b to the
// listeners that replaced it, if any, until one returns.
func (s *Server) serveBound(b *binding) error {
	s.log.Info("listening", zap.String("addr", b.ln.Addr().String()))
	s.reloadMu.Lock()
	if !s.closed {
		st := s.state.Load()
		s.logState(st)
		s.started = true
		st.start()
		for _, d := range s.discovery {
			d.start(s)
		}
		if s.stopDrainer == nil {
			s.stopDrainer = s.startDrainer()
		}
	}
	s.reloadMu.Unlock()
	s.serveBinding(b)
	return s.outcome(b)
}

// logState logs one line per pool and one per backend.
func (s *Server) logState(st *state) {
	for _, p := range st.pools {
		s.log.Info("pool", zap.String("pool", p.name), zap.String("balancer", p.kind),
			zap.Int("backends", len(p.backends)))
		for _, b := range p.backends {
			s.log.Info("backend", zap.String("pool", p.name), zap.String("backend", b.ID),
				zap.String("url", b.URL.Redacted()), zap.Int("weight", b.Weight))
		}
	}
}

// Shutdown stops accepting, waits for in-flight requests until ctx ends, and stops background work.
// Upgraded connections (WebSocket) count as in flight. When ctx ends first,
// the requests still running are aborted, and a *CutError tells how many
// connections that took (errors.Is finds ctx's error in it).
// Health checks and ejection timers run until the requests are done, so
// that retries meanwhile still see which backends are available.
func (s *Server) Shutdown(ctx context.Context) error {
	s.reloadMu.Lock()
	s.closed = true
	for _, d := range s.discovery {
		d.stop()
	}
	s.reloadMu.Unlock()
	// A loop applying a lookup finds the server closed, and returns.
	s.discoveryLoops.Wait()
	handedOver := s.handedOver.Load()
	// Their Serve loops end, and let go of them, once the listeners close.
	s.lnMu.Lock()
	bindings := slices.Clone(s.bindings)
	s.lnMu.Unlock()
	if handedOver {
		s.admin.shutdown(ctx)
		s.handOver(ctx, bindings)
	} else {
		s.admin.draining.Store(true)
		// http.Server.Shutdown would tell the HTTP/2 connections to go
		// away if its own HTTP/2 server served them; the bindings' do.
		for _, b := range bindings {
			b.goAway()
		}
	}
	err := s.http.Shutdown(ctx)
	if err == nil {
		err = s.tunnels.wait(ctx)
	}
	if err != nil {
		// The listeners are closed and the idle connections too: those
		// left have a request in flight.
		upgraded := 0
		s.tunnels.each(func(*client) { upgraded++ })
		err = &CutError{Connections: openConns(bindings), Upgraded: upgraded, Err: err}
		// Close drops the client connections still active; cancel below
		// aborts their backend requests and tunnels.
		s.cutting.Store(true)
		_ = s.http.Close()
	}
	// Every listener is closed by now, so the Serve loops reloads started
	// are returning.
	s.serving.Wait()
	s.cancel()
	s.reloadMu.Lock()
	if s.stopDrainer != nil {
		s.stopDrainer()
	}
	s.reloadMu.Unlock()
	s.state.Load().stop()
	s.transport.close()
	if err != nil {
		s.awaitLogged()
	}
	// The admin server goes last, so that /readyz tells the proxy is
	// draining until it is done.
	if !handedOver {
		s.admin.shutdown(ctx)
	}
	return err
}

// cutLogWait bounds how long Shutdown, having cut requests, waits for
// their handlers to return and write their access lines. The cut aborted
// their backend requests and closed their clients' connections, so they
// return at once; the bound is for the case they do not.
const cutLogWait = 2 * time.Second

// awaitLogged waits, for cutLogWait at most, until every request has
// written its access line, so that a process ending after Shutdown does
// not lose the lines of the requests it cut.
func (s *Server) awaitLogged() {
	deadline := time.Now().Add(cutLogWait)
	for s.unlogged.Load() > 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
}

// handOverWait bounds how long Shutdown, after HandOver, waits for the
// connections it accepted last to bring their first request.
const handOverWait = 5 * time.Second

// handOver stops accepting on bindings as a reload that moves the listener
// does (retire), and waits, until ctx ends or for handOverWait at most,
// for the connections they accepted last to bring their first request.
// http.Server.Shutdown, which runs next, would close such a connection
// unanswered if its request came after it began: a client that had just
// connected would see an error, while the process that took over serves
// everyone else. Connections serving a request are Shutdown's to wait for;
// idle ones close (retire), and their clients retry on a new connection.
func (s *Server) handOver(ctx context.Context, bindings []*binding) {
	for _, b := range bindings {
		s.retire(b)
	}
	ctx, cancel := context.WithTimeout(ctx, handOverWait)
	defer cancel()
	// Once its Serve returned, every connection a binding accepted is
	// known to connState.
	for _, b := range bindings {
		select {
		case <-b.done:
		case <-ctx.Done():
			return
		}
	}
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for freshConns(bindings) > 0 {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// CutError is Shutdown's error when its context ended before the requests
// in flight did, which were then cut by closing their connections.
type CutError struct {
	Connections int   // client connections closed with a request in flight
	Upgraded    int   // upgraded connections (WebSocket) closed
	Err         error // the context's error
}

func (e *CutError) Error() string {
	return fmt.Sprintf("proxy: shutdown: %v: cut %d connections with a request in flight and %d upgraded ones",
		e.Err, e.Connections, e.Upgraded)
}

// Unwrap returns the context's error.
func (e *CutError) Unwrap() error { return e.Err }
