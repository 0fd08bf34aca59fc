// Package proxy is affinity's data path. A Server routes each request to a
// pool by host and path, asks the pool's balancer for a backend, and
// forwards the request there with one httputil.ReverseProxy and one shared,
// tuned http.Transport.
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
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/affinityproxy/affinity/config"
)

const (
	// readHeaderTimeout bounds how long a client may take to send request
	// headers, so that connections trickling bytes cannot pile up. Bodies
	// are not bounded: uploads and tunnels may legitimately be slow.
	readHeaderTimeout = 10 * time.Second
	// clientIdleTimeout closes client keep-alive connections left idle
	// this long, which would otherwise hold a descriptor forever.
	clientIdleTimeout = 2 * time.Minute
)

// Server is the proxy: an http.Handler, and the listener lifecycle around
// it. Create it with NewServer; its methods are safe for concurrent use.
type Server struct {
	log    *zap.Logger
	access *zap.Logger // nil when access logging is off
	listen string

	// state is the routing snapshot requests read, replaced whole when
	// the configuration changes.
	state     atomic.Pointer[state]
	transport *http.Transport
	retry     *retrier // the ReverseProxy's Transport, over transport
	proxy     *httputil.ReverseProxy
	http      *http.Server
	// cancel cancels the context every request derives from, aborting
	// whatever Shutdown could not wait for.
	cancel  context.CancelFunc
	tunnels tracker
}

// state is one immutable routing configuration: the routes, and the pools
// they lead to, in config order, with the background work that keeps their
// health up to date.
//
// A hot reload will build a new state, start it, swap it in and stop the old
// one. Requests in flight on the old state keep their pool and backend (see
// exchange) and finish there, retries included; stopping it only ends its
// checks and ejection timers, so its backends drain and none is cut.
type state struct {
	router router
	pools  []*pool
	checks *checkers
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
	st, err := newState(cfg, log)
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
		transport: newTransport(cfg.Timeouts),
		cancel:    cancel,
	}
	s.retry = &retrier{next: s.transport, log: log}
	if cfg.Log.Access {
		s.access = log.Named("access")
	}
	s.state.Store(st)
	s.proxy = &httputil.ReverseProxy{
		Rewrite:      rewrite,
		Transport:    s.retry,
		BufferPool:   newBufferPool(),
		ErrorHandler: s.proxyError,
		ErrorLog:     errLog,
		// FlushInterval stays 0: ReverseProxy already flushes every write
		// of a response of unknown length (chunked, event streams), and a
		// response of known length is best sent in full buffers.
	}
	s.http = &http.Server{
		Addr:              cfg.Listen,
		Handler:           s,
		ReadHeaderTimeout: readHeaderTimeout,
		IdleTimeout:       clientIdleTimeout,
		ErrorLog:          errLog,
		BaseContext:       func(net.Listener) context.Context { return base },
		ConnContext:       connContext,
	}
	return s, nil
}

// newState builds the pools of cfg and the routes to them.
func newState(cfg *config.Config, log *zap.Logger) (*state, error) {
	st := &state{pools: make([]*pool, 0, len(cfg.Pools))}
	byName := make(map[string]*pool, len(cfg.Pools))
	for i, pc := range cfg.Pools {
		if pc == nil {
			return nil, fmt.Errorf("pool %d: %w: missing", i+1, errUnknownPool)
		}
		if _, dup := byName[pc.Name]; dup {
			return nil, fmt.Errorf("pool %q: %w", pc.Name, errDuplicatePool)
		}
		p, err := newPool(pc, log)
		if err != nil {
			return nil, err
		}
		byName[p.name] = p
		st.pools = append(st.pools, p)
	}
	rt, err := newRouter(cfg.Routes, byName)
	if err != nil {
		return nil, err
	}
	st.router = rt
	st.checks = newCheckers(st.pools)
	return st, nil
}

// ListenAndServe binds cfg.Listen and calls Serve.
func (s *Server) ListenAndServe() error {
	ln, err := net.Listen("tcp", s.listen)
	if err != nil {
		return fmt.Errorf("proxy: %w", err)
	}
	return s.Serve(ln)
}

// Serve accepts on ln until Shutdown; returns http.ErrServerClosed after a Shutdown.
// It logs the listener and the pools it serves as it starts, and starts the
// active health checks, which run until Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	s.log.Info("listening", zap.String("addr", ln.Addr().String()))
	st := s.state.Load()
	s.logState(st)
	st.start()
	return s.http.Serve(ln)
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
// the requests still running are aborted and ctx's error is returned.
// Health checks and ejection timers run until the requests are done, so
// that retries meanwhile still see which backends are available.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.http.Shutdown(ctx)
	if err == nil {
		err = s.tunnels.wait(ctx)
	}
	if err != nil {
		err = fmt.Errorf("proxy: shutdown: %w", err)
		// Close drops the client connections still active; cancel below
		// aborts their backend requests and tunnels.
		_ = s.http.Close()
	}
	s.cancel()
	s.state.Load().stop()
	s.transport.CloseIdleConnections()
	return err
}

// tracker counts requests that http.Server does not wait for on shutdown,
// so that Shutdown can. Only protocol-switching requests use it, so its
// mutex is never on the common path.
type tracker struct {
	mu   sync.Mutex
	n    int
	idle chan struct{} // closed when n drops to 0; nil until someone waits
}

func (t *tracker) add() {
	t.mu.Lock()
	t.n++
	t.mu.Unlock()
}

func (t *tracker) done() {
	t.mu.Lock()
	t.n--
	if t.n == 0 && t.idle != nil {
		close(t.idle)
		t.idle = nil
	}
	t.mu.Unlock()
}

// wait returns when no request is counted, or with ctx's error.
func (t *tracker) wait(ctx context.Context) error {
	t.mu.Lock()
	if t.n == 0 {
		t.mu.Unlock()
		return nil
	}
	if t.idle == nil {
		t.idle = make(chan struct{})
	}
	idle := t.idle
	t.mu.Unlock()
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
