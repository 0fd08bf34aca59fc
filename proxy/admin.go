package proxy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/affinityproxy/affinity/config"
)

// admin is the admin listener: metrics, status, health and, when enabled,
// profiles, served apart from the proxied traffic. It has its own
// http.Server, which Server.Shutdown stops after the proxy has drained, so
// that /readyz can tell load balancers in front to stop sending meanwhile.
type admin struct {
	s      *Server
	log    *zap.Logger
	listen string // configured address; empty: ListenAndServe starts none
	pprof  bool
	http   *http.Server
	// sampler is fed by one goroutine, started with the first listener.
	sampler sampler
	// draining is set when Shutdown starts: /readyz answers 503 from then.
	draining atomic.Bool
	// tokenSum is the SHA-256 of the token API writes need; nil without
	// one (api.go).
	tokenSum []byte
	// exposed is set once the admin server serves a listener reachable
	// from other hosts.
	exposed atomic.Bool
	// host is the host of admin.listen, as hostOf gives it: a name the
	// listener's clients may give in Host (adminhost.go).
	host string

	mu      sync.Mutex
	cancel  context.CancelFunc // stops the sampler; nil until it runs
	stopped bool               // set by shutdown: nothing starts after it
	wg      sync.WaitGroup     // the sampler, and listeners started by start
}

const (
	// sampleEvery is the sampler's period: the status page shows requests
	// per second.
	sampleEvery = time.Second
	// adminHeaderTimeout and adminIdleTimeout bound the admin server's
	// client connections, as the proxy's own are, so that clients that
	// trickle bytes or stay idle cannot pile up; they are not
	// configurable, the admin server's clients being few and known.
	adminHeaderTimeout = 10 * time.Second
	adminIdleTimeout   = 2 * time.Minute
)

// newAdmin prepares the admin server of s; nothing listens until start or
// Server.ServeAdmin.
func newAdmin(s *Server, c config.Admin, errLog *log.Logger) (*admin, error) {
	a := &admin{s: s, log: s.log, listen: c.Listen, pprof: c.Pprof, host: hostOf(c.Listen)}
	tok, err := c.ReadToken()
	if err != nil {
		return nil, fmt.Errorf("proxy: %w", err)
	}
	if tok != "" {
		sum := sha256.Sum256([]byte(tok))
		a.tokenSum = sum[:]
	}
	// A registry per Server, not the global one: two servers in a
	// process (tests, an embedding program) must not collide.
	reg := prometheus.NewRegistry()
	for _, col := range []prometheus.Collector{
		collector{s},
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	} {
		if err := reg.Register(col); err != nil {
			return nil, fmt.Errorf("proxy: admin metrics: %w", err)
		}
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog:      errLog,
		ErrorHandling: promhttp.ContinueOnError,
	}))
	mux.HandleFunc("GET /{$}", a.servePage)
	mux.HandleFunc("GET /status", a.serveStatus)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { writeText(w, http.StatusOK, "ok\n") })
	mux.HandleFunc("GET /readyz", a.serveReady)
	a.routeAPI(mux)
	if c.Pprof {
		// The handlers of net/http/pprof, on this mux only: the package
		// also registers them on http.DefaultServeMux, which nothing here
		// serves.
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	a.http = &http.Server{
		Handler:           closeDoubtful(a.guardHost(mux)),
		ReadHeaderTimeout: adminHeaderTimeout,
		IdleTimeout:       adminIdleTimeout,
		ErrorLog:          errLog,
		// No WriteTimeout: a CPU profile streams for as long as asked.
		// "OPTIONS *" goes to the mux, which answers 400 and closes,
		// rather than to net/http's handler, which reads a chunked body
		// and goes on to the bytes after it.
		DisableGeneralOptionsHandler: true,
	}
	return a, nil
}

// ServeAdmin serves the admin endpoints on ln until Shutdown, then returns
// http.ErrServerClosed:
//
//	/          HTML status page, refreshing itself
//	/status    the same as JSON
//	/metrics   Prometheus metrics
//	/healthz   200 while the process runs
//	/readyz    200 when every pool has an available backend, else 503
//	/api/v1/   the runtime API (api.go): backends' states, read and set
//	/debug/pprof/  Go profiles, only with admin.pprof: true
//
// ListenAndServe calls it for the configured admin address; call it
// directly to serve a listener of your own. It warns when ln can be reached
// from other hosts, as the endpoints show backend addresses and traffic to
// anyone who connects.
func (s *Server) ServeAdmin(ln net.Listener) error { return s.admin.serve(ln) }

func (a *admin) serve(ln net.Listener) error {
	if !a.startSampler() {
		_ = ln.Close()
		return http.ErrServerClosed
	}
	addr := ln.Addr()
	a.log.Info("admin listening", zap.String("addr", addr.String()), zap.Bool("pprof", a.pprof))
	if !loopback(addr) {
		a.exposed.Store(true)
		a.log.Warn("admin listener is reachable from other hosts; it shows backend addresses and traffic to anyone who connects",
			zap.String("addr", addr.String()), zap.Bool("api_token", a.tokenSum != nil))
	}
	return a.http.Serve(ln)
}

// loopback reports whether addr can be reached from this host only.
func loopback(addr net.Addr) bool {
	switch a := addr.(type) {
	case *net.TCPAddr:
		return a.IP.IsLoopback()
	case *net.UnixAddr:
		return true
	}
	return false
}

// bind binds the configured admin address; nil when none is configured.
// ListenAndServe binds it before the proxy's, so that a wrong address
// stops the start before anything serves.
func (a *admin) bind() (net.Listener, error) {
	if a.listen == "" {
		return nil, nil
	}
	ln, err := a.s.listenFn("tcp", a.listen)
	if err != nil {
		return nil, fmt.Errorf("proxy: admin: %w", err)
	}
	return ln, nil
}

// discard closes a listener bind returned that will not be served.
func (a *admin) discard(ln net.Listener) {
	if ln != nil {
		_ = ln.Close()
	}
}

// start serves ln, from bind, until Shutdown; nil is no listener. A
// failure of the admin listener once it serves is logged: the proxy goes
// on without it.
func (a *admin) start(ln net.Listener) {
	if ln == nil {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.stopped {
		_ = ln.Close()
		return
	}
	a.wg.Go(func() {
		if err := a.serve(ln); !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("admin listener failed", zap.Error(err))
		}
	})
}

// startSampler starts the goroutine sampling request counts for the status
// page, unless it runs already; shutdown stops it. It reports false after
// shutdown, when nothing may start.
func (a *admin) startSampler() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.stopped {
		return false
	}
	if a.cancel != nil {
		return true
	}
	ctx, cancel := context.WithCancel(context.Background())
	a.cancel = cancel
	a.wg.Go(func() { a.run(ctx) })
	return true
}

// run samples the request counts every sampleEvery until ctx ends.
func (a *admin) run(ctx context.Context) {
	t := time.NewTicker(sampleEvery)
	defer t.Stop()
	for {
		a.sampler.sample(a.s.state.Load())
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// shutdown stops the admin server and its sampler, waiting for requests in
// flight until ctx ends and for its goroutines to return.
func (a *admin) shutdown(ctx context.Context) {
	a.mu.Lock()
	a.stopped = true
	cancel := a.cancel
	a.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	if err := a.http.Shutdown(ctx); err != nil {
		_ = a.http.Close()
	}
	a.wg.Wait()
}

// unready returns why the proxy should not be sent traffic; none when it
// is ready.
func (a *admin) unready() []string {
	if a.draining.Load() {
		return []string{"shutting down"}
	}
	st := a.s.state.Load()
	if st == nil {
		return []string{"no configuration loaded"}
	}
	var why []string
	for _, p := range st.pools {
		if len(p.snap.Load().available) == 0 {
			why = append(why, fmt.Sprintf("pool %q has no available backend", p.name))
		}
	}
	return why
}

func (a *admin) serveReady(w http.ResponseWriter, _ *http.Request) {
	if why := a.unready(); len(why) > 0 {
		writeText(w, http.StatusServiceUnavailable, "not ready: "+strings.Join(why, "; ")+"\n")
		return
	}
	writeText(w, http.StatusOK, "ready\n")
}

func (a *admin) serveStatus(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, a.status(time.Now()))
}

func (a *admin) servePage(w http.ResponseWriter, _ *http.Request) {
	// Rendered whole before anything is sent, so that a template error
	// becomes a 500 rather than half a page.
	var buf bytes.Buffer
	if err := statusPage.Execute(&buf, a.status(time.Now())); err != nil {
		a.fail(w, "status page", err)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	noStore(h)
	_, _ = buf.WriteTo(w)
}

// fail logs err and answers 500.
func (a *admin) fail(w http.ResponseWriter, what string, err error) {
	a.log.Error("admin: rendering failed", zap.String("what", what), zap.Error(err))
	writeError(w, http.StatusInternalServerError)
}

// writeText answers with a short plain-text body.
func writeText(w http.ResponseWriter, status int, body string) {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	noStore(h)
	w.WriteHeader(status)
	_, _ = io.WriteString(w, body)
}

// noStore keeps status answers out of caches: they are stale at once.
func noStore(h http.Header) {
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
}
