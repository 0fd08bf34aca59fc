package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/affinityproxy/affinity/balancer"
	"github.com/affinityproxy/affinity/config"
)

// errClosed is returned by Reload once Shutdown has begun.
var errClosed = fmt.Errorf("proxy: reload: %w", http.ErrServerClosed)

// ReloadStats counts a Server's reloads and names the configuration it
// serves, for metrics and status pages.
type ReloadStats struct {
	OK     uint64 // reloads applied
	Failed uint64 // reloads refused: the file did not load, or Reload failed
	// Hash is the Hash of the configuration in use: the hex SHA-256 of its
	// file, or empty for a configuration built in code.
	Hash string
}

// reloadCounters are the counts of ReloadStats.
type reloadCounters struct {
	ok, failed atomic.Uint64
}

// ReloadStats returns the reload counts and the hash of the configuration
// in use.
func (s *Server) ReloadStats() ReloadStats {
	return ReloadStats{
		OK:     s.reloads.ok.Load(),
		Failed: s.reloads.failed.Load(),
		Hash:   s.state.Load().cfg.Hash,
	}
}

// Config returns the configuration in use. It is shared: callers must not
// change it.
func (s *Server) Config() *config.Config { return s.state.Load().cfg }

// ReloadFile loads the config file at path and checks it against this host
// with config.LoadChecked, as serve does at start, and applies it with
// ReloadLoaded.
func (s *Server) ReloadFile(path string) error {
	cfg, err := config.LoadChecked(path)
	return s.ReloadLoaded(path, cfg, err)
}

// ReloadLoaded applies what loading the config file at path gave, for a
// caller that loads it itself (serve reads it with a time limit): err, when
// loading failed, is logged, with every error at its FILE:LINE:COL as
// `affinity validate` reports it, counted as a failed reload and returned;
// otherwise cfg is applied with Reload, unless it has the same bytes as the
// configuration in use (the same Hash), which changes nothing. The config's
// warnings are logged.
func (s *Server) ReloadLoaded(path string, cfg *config.Config, err error) error {
	if err != nil {
		s.reloads.failed.Add(1)
		s.logFailure(path, err)
		return err
	}
	if cur := s.state.Load().cfg; cfg.Hash == cur.Hash && cur.File == cfg.File {
		s.log.Info("config unchanged", zap.String("file", path), zap.String("hash", cfg.Hash))
		return s.ReloadCertificate()
	}
	LogWarnings(s.log, cfg)
	return s.Reload(cfg)
}

// Reload makes cfg the configuration the server routes by. Everything is
// built before anything changes: if any of it fails (a pool that cannot be
// built, a new listen address that cannot be bound), Reload returns the
// error and the server goes on as it was. Otherwise the new routes and
// pools are swapped in at once: new requests use them, requests in flight
// finish where they are.
//
// A backend that stays (same pool name, same ID, same URL) keeps its
// balancer.Backend, with its counts of requests in flight and of failures,
// its health verdict and the rise/fall count towards the next one, its
// passive ejection and the time left of it, and its idle connections; its
// cookie tokens derive from its ID, so its sticky clients stay. If its
// weight changed, it gets a new Backend (Policies read weights when they
// build, and a Backend's never change) made by Backend.Reweighted, which
// counts the old one's requests in flight, failures and stats as its own:
// the requests still holding the old Backend are shown, waited for and
// drained as the kept backend's. A backend that goes takes no new request;
// its requests in flight finish, and its checks stop; its waiters go back
// to the balancer. Added back (same name and URL) while those requests
// run, it gets its Backend again, which counts them.
//
// Changed timeouts take a new transport: requests in flight finish on the
// old one, whose connections close as they go idle, and which is dropped
// once it has none; unchanged timeouts keep the transport and its idle
// connections. A changed listen address
// is bound before anything else changes, then served, then the old
// listener is closed: its connections finish their request in progress and
// close. The same address and port written otherwise (":8080" for
// "0.0.0.0:8080", a name for its address) keeps the listener. The log format, access log and admin listener are set up once and
// change at restart only; a reload that changes them logs a warning. The
// TLS listener's certificate and key are read again, whether their paths
// changed or not, and serve new handshakes (ReloadCertificate); a pair
// that does not load fails the reload. Turning TLS on or off needs a
// restart.
//
// Reload logs and counts its outcome (ReloadStats). After Shutdown it
// fails.
func (s *Server) Reload(cfg *config.Config) error {
	removed, err := s.reload(cfg)
	if err != nil {
		s.reloads.failed.Add(1)
		file := ""
		if cfg != nil {
			file = cfg.File
		}
		s.logFailure(file, err)
		return err
	}
	s.reloads.ok.Add(1)
	s.log.Info("config reloaded", zap.String("file", cfg.File), zap.String("hash", cfg.Hash),
		zap.Int("pools", len(cfg.Pools)), zap.Int("backends_removed", removed))
	return nil
}

// reload does the work of Reload, returning how many backends left.
func (s *Server) reload(cfg *config.Config) (int, error) {
	if cfg == nil {
		return 0, errors.New("proxy: reload: no configuration")
	}
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	if s.closed {
		return 0, errClosed
	}
	old := s.state.Load()
	disc, err := discoverers(cfg, s.log, s.discovery)
	if err != nil {
		return 0, fmt.Errorf("proxy: reload: %w", err)
	}
	next, err := newState(cfg, s.log, old, disc)
	if err != nil {
		return 0, fmt.Errorf("proxy: reload: %w", err)
	}
	// The listener's pair is read on every reload, whether its paths
	// changed or not: the files are what rotates.
	var cert *tls.Certificate
	if s.cert != nil && cfg.TLS != nil {
		if cert, err = loadListenerCert(cfg.TLS); err != nil {
			return 0, fmt.Errorf("proxy: reload: %w", err)
		}
	}
	var ln net.Listener
	respelled := cfg.Listen != old.cfg.Listen && sameListen(old.cfg.Listen, cfg.Listen)
	if cfg.Listen != old.cfg.Listen && !respelled {
		if ln, err = s.listenFn("tcp", cfg.Listen); err != nil {
			return 0, fmt.Errorf("proxy: reload: %w", err)
		}
	}
	// Nothing fails from here on.
	for name, d := range s.discovery {
		if disc[name] != d {
			d.stop()
		}
	}
	s.discovery = disc
	s.transport.set(cfg.Timeouts)
	if cert != nil {
		s.rotateCert(cert)
	}
	removed := s.swap(old, next)
	if s.started {
		for _, d := range disc {
			d.start(s)
		}
	}
	if respelled {
		// The same address written another way (":8080" for
		// "0.0.0.0:8080", a name for its address): binding it again
		// would fail on the listener that holds it, which stays.
		s.lnMu.Lock()
		s.listen = cfg.Listen
		s.lnMu.Unlock()
		s.log.Info("listen address written anew; the listener stays", zap.String("listen", cfg.Listen),
			zap.String("was", old.cfg.Listen))
	}
	if ln != nil {
		if s.rebind(ln, cfg.Listen) {
			s.log.Info("listening", zap.String("addr", ln.Addr().String()),
				zap.String("was", old.cfg.Listen))
		} else {
			// Not serving yet: ListenAndServe will bind the new address.
			_ = ln.Close()
		}
	}
	for _, key := range restartOnly(old.cfg, cfg) {
		s.log.Warn("setting changes at restart only", zap.String("key", key))
	}
	return removed, nil
}

// swap puts next in service in place of old, which it stops, handing it
// what old knew of the backends they share (takeOver); it returns how many
// backends left. s.reloadMu must be held.
func (s *Server) swap(old, next *state) (removed int) {
	for _, np := range next.pools {
		switch op := old.pool(np.name); {
		case op == nil:
		case op.policy == np.policy:
			op.mu.Lock()
			op.policyHandedOver = true
			op.mu.Unlock()
		default:
			// Other learn options: the sessions carry over, and
			// the new policy listens to the other replicas before
			// the old one, stopped below, no longer does.
			balancer.HandOver(op.policy, np.policy)
		}
	}
	old.stop()
	removed = s.takeOver(old, next)
	s.state.Store(next)
	if s.started {
		next.start()
	}
	return removed
}

// LogWarnings logs each of cfg's warnings, FILE:LINE:COL first.
func LogWarnings(log *zap.Logger, cfg *config.Config) {
	for _, w := range cfg.Warnings {
		log.Warn("config warning", zap.String("warning", w.Error()))
	}
}

// sameListen reports whether listen addresses a and b bind the same
// address and port, as net.Listen resolves them.
func sameListen(a, b string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), resolveTimeout)
	defer cancel()
	ba, err := config.ResolveListen(ctx, a)
	if err != nil {
		return false
	}
	bb, err := config.ResolveListen(ctx, b)
	return err == nil && ba == bb
}

// resolveTimeout bounds the lookups of sameListen.
const resolveTimeout = 5 * time.Second

// logFailure logs a failed reload of file: one line, with every error of a
// config.ErrorList as an entry of its own, FILE:LINE:COL first.
func (s *Server) logFailure(file string, err error) {
	var list config.ErrorList
	if errors.As(err, &list) {
		msgs := make([]string, len(list))
		for i, e := range list {
			msgs[i] = e.Error()
		}
		s.log.Error("config reload failed", zap.String("file", file), zap.Strings("errors", msgs))
		return
	}
	s.log.Error("config reload failed", zap.String("file", file), zap.Error(err))
}

// takeOver hands what old knew of its backends to next, before next serves
// (see Reload). old must be stopped, so that nothing changes what it knows
// meanwhile. It logs the backends that came and went, but for those of a
// pool that discovers them, whose discoverer logs them with their records,
// and returns how many went.
func (s *Server) takeOver(old, next *state) (removed int) {
	checks := make(map[checkKey]*checker, len(old.checks.list))
	for _, ck := range old.checks.list {
		checks[checkKey{ck.pool.name, ck.id}] = ck
	}
	for _, ck := range next.checks.list {
		prev, ok := checks[checkKey{ck.pool.name, ck.id}]
		if ok && prev.pool.index(ck.pool.backends[ck.pool.indexOf(ck.id)]) >= 0 {
			// Stopped, so its state is no longer written; the new
			// checker goes on counting from it.
			ck.state.up, ck.state.streak = prev.state.up, prev.state.streak
		}
	}
	for _, np := range next.pools {
		op := old.pool(np.name)
		np.queue.cur.Store(np)
		np.takeOver(op)
		if op != nil && !reflect.DeepEqual(op.balancer, np.balancer) {
			// Pinned by the old balancer's idea of stickiness, which
			// the new one may not share (round-robin pins nobody): the
			// waiters go back to it, and those it still sends to the
			// same backend wait again.
			for _, b := range op.backends {
				op.queue.evict(statsOf(b))
			}
		}
		for i, b := range np.backends {
			if op != nil && op.index(b) >= 0 {
				continue
			}
			if np.discovery == nil {
				s.log.Info("backend added", zap.String("pool", np.name), zap.String("backend", b.ID),
					zap.String("url", b.URL.Redacted()), zap.Int("weight", b.Weight),
					zap.String("state", string(np.members[i].state)))
			}
			op.droppedState(b, np.members[i].adminState)
			// Added back while its requests of before ran: it is no
			// longer removed.
			s.leaving.drop(np.name, b)
		}
	}
	now := time.Now()
	for _, op := range old.pools {
		np := next.pool(op.name)
		for i, b := range op.backends {
			if np != nil && np.index(b) >= 0 {
				continue
			}
			removed++
			if np == nil || np.discovery == nil {
				s.log.Info("backend removed", zap.String("pool", op.name), zap.String("backend", b.ID),
					zap.Int64("in_flight", b.InFlight()))
			}
			// Shown as removed until its requests end; drain_timeout
			// bounds them from now, or from when it left DNS, or from
			// when it left ready if earlier: the removal does not
			// restart a drain's clock.
			r := removedBackend{pool: op.name, backend: b, since: now}
			op.mu.Lock()
			m := &op.members[i]
			if !m.gone.IsZero() {
				r.since = m.gone
			}
			r.left = r.since
			if drains, since := m.draining(); drains && since.Before(r.left) {
				r.left = since
			} else if m.state == config.StateMaint && m.since.Before(r.left) {
				r.left = m.since
			}
			op.mu.Unlock()
			s.leaving.add(r)
			// It takes no new client: a place its requests free goes
			// to no waiter for any backend (only np's rebuilds say
			// which of its backends take them, and it is none of
			// those). A backend a later reload adds back opens again.
			if st := statsOf(b); st != nil {
				st.open.Store(false)
			}
			// Its waiters were sent nowhere yet: they go back to the
			// balancer, which picks on np.
			op.queue.evict(statsOf(b))
			if np != nil && b.InFlight() > 0 {
				np.keepRemoved(b)
			}
		}
	}
	return removed
}

// droppedState logs the state set at run time that p, the pool a reload
// replaces, held for a backend of b's ID at another URL: b is a new
// backend, in the state now it is configured in, and that one is dropped
// with the backend it was set for, unless the new pool carried it over
// (carryState: a discovered backend's state goes with its name). p may be
// nil.
func (p *pool) droppedState(b *balancer.Backend, now adminState) {
	if p == nil || now.setBy != "" {
		return
	}
	j := p.indexOf(b.ID)
	if j < 0 {
		return
	}
	p.mu.Lock()
	was := p.members[j].adminState
	p.mu.Unlock()
	if was.setBy != "" {
		p.log.Warn("backend state set at run time dropped: the backend's URL changed",
			zap.String("pool", p.name), zap.String("backend", b.ID), zap.String("state", string(now.state)),
			zap.String("dropped", string(was.state)), zap.String("url", b.URL.Redacted()),
			zap.String("was_url", p.backends[j].URL.Redacted()))
	}
}

// checkKey names a checker across states.
type checkKey struct{ pool, id string }

// takeOver copies the health of every backend p shares with prev (see
// index) from prev, which must be stopped, and publishes p's snapshot. A
// verdict only carries over where both pools have that kind of health
// check: a backend under checks that were just turned on starts in
// service, as at startup.
func (p *pool) takeOver(prev *pool) {
	if prev == nil {
		return
	}
	prev.mu.Lock()
	defer prev.mu.Unlock()
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	for i, b := range p.backends {
		j := prev.index(b)
		if j < 0 {
			// New to the pool: it has served nobody, and warms up.
			p.members[i].served = false
			p.carryState(prev, b.ID, &p.members[i].adminState)
			continue
		}
		om, m := &prev.members[j], &p.members[i]
		m.served, m.warm = om.served, om.warm
		p.takeOverState(b.ID, &m.adminState, om.adminState)
		if p.health != nil && prev.health != nil {
			m.healthy = om.healthy
		}
		if p.passive == nil || prev.passive == nil || !om.ejected {
			continue
		}
		m.ejected, m.ejections, m.spared, m.until = true, om.ejections, om.spared, om.until
		m.timer = time.AfterFunc(max(om.until.Sub(now), 0), func() { p.readmit(i) })
	}
	p.rebuildLocked()
}

// carryState gives a discovered backend new to p the state an operator
// set at run time on the backend of its name: in prev, at the address it
// had before DNS gave it a new one (an SRV target that moved), or held by
// the discoverer since it was removed and DNS listed it again. prev and p
// must be locked.
func (p *pool) carryState(prev *pool, id string, m *adminState) {
	if p.discovery == nil {
		return
	}
	from, why := adminState{}, ""
	if j := prev.indexOf(id); j >= 0 && prev.members[j].setBy != "" {
		from, why = prev.members[j].adminState, "its address changed"
	} else if a, ok := p.discovery.held[id]; ok {
		from, why = a, "DNS lists it again"
		delete(p.discovery.held, id)
	} else {
		return
	}
	m.state, m.setBy, m.since = from.state, from.setBy, from.since
	p.log.Info("backend state set at run time carried over", zap.String("pool", p.name), zap.String("backend", id),
		zap.String("state", string(m.state)), zap.String("why", why))
}

// index returns the position in p of the backend that b stands for: the
// one with b's ID and URL, whatever its weight; -1 if none.
func (p *pool) index(b *balancer.Backend) int {
	for i, o := range p.backends {
		if o.ID == b.ID && o.URL.String() == b.URL.String() {
			return i
		}
	}
	return -1
}

// indexOf returns the position in p of the backend with the given ID, which
// must be one of p's.
func (p *pool) indexOf(id string) int {
	return slices.IndexFunc(p.backends, func(b *balancer.Backend) bool { return b.ID == id })
}

// pool returns the state's pool named name, or nil; st may be nil.
func (st *state) pool(name string) *pool {
	if st == nil {
		return nil
	}
	for _, p := range st.pools {
		if p.name == name {
			return p
		}
	}
	return nil
}

// groupOrNew returns p's Group, or a new one when p is nil: a pool that
// replaces p counts its requests with p's, which are still finishing.
func (p *pool) groupOrNew() *balancer.Group {
	if p == nil {
		return new(balancer.Group)
	}
	return p.group
}

// backendFor returns the Backend a pool replacing p uses for backend id at
// u with weight w: p's own when p has it with that URL and weight, so that
// its counters go on; one reweighted from p's, which counts with it, when
// only the weight differs; the same from a backend an earlier reload
// removed whose requests still run, which count against its max_conns
// and its drain as they would had it stayed; otherwise a new one counting
// in g.
func (p *pool) backendFor(id string, u *url.URL, w int, g *balancer.Group) *balancer.Backend {
	nb := balancer.NewBackend(id, u, w, g)
	if p == nil {
		return nb
	}
	ob := p.removedAs(nb)
	if i := p.index(nb); i >= 0 {
		ob = p.backends[i]
	}
	switch {
	case ob == nil:
		return nb
	case ob.Weight == nb.Weight:
		return ob
	}
	return ob.Reweighted(nb.Weight)
}

// restartOnly lists the settings that differ between old and cfg but are
// set up once, when the server is made.
func restartOnly(old, cfg *config.Config) []string {
	var keys []string
	if old.Log.Format != cfg.Log.Format {
		keys = append(keys, "log.format")
	}
	if old.Log.Access != cfg.Log.Access {
		keys = append(keys, "log.access")
	}
	if old.Log.AccessSample != cfg.Log.AccessSample {
		keys = append(keys, "log.access_sample")
	}
	if old.Admin != cfg.Admin {
		keys = append(keys, "admin")
	}
	// server.max_body is read from the state, and changes with it; the
	// other limits are the http.Server's.
	was, is := old.Server, cfg.Server
	was.MaxBody, is.MaxBody = 0, 0
	if was != is {
		keys = append(keys, "server")
	}
	// Other files for tls are read as a rotation is; turning TLS on or
	// off changes the listener itself.
	if (old.TLS == nil) != (cfg.TLS == nil) {
		keys = append(keys, "tls")
	}
	return keys
}

// transportSwitch is the RoundTripper requests are sent with: the
// backendTransport of the current timeouts. A reload that changes them
// switches to a new transport; one that does not keeps it, with its idle
// connections.
type transportSwitch struct {
	cur atomic.Pointer[backendTransport]

	mu       sync.Mutex // guards what follows, and serialises set
	timeouts config.Timeouts
	log      *zap.Logger
	// retired are the transports switched from that still have a
	// connection open. Each sweep closes their idle connections, those
	// of requests that ended since, and drops the transports left with
	// none; a sweep runs on every switch, then every sweepEvery while
	// any is left.
	retired []*backendTransport
	sweep   *time.Timer // the next sweep; nil when none is due
	closed  bool        // Shutdown ran: no sweep is scheduled any more
}

// sweepEvery is how long a connection of a retired transport stays idle at
// most once its request ended.
const sweepEvery = time.Second

func newTransportSwitch(t config.Timeouts, log *zap.Logger) *transportSwitch {
	ts := &transportSwitch{timeouts: t, log: log}
	ts.cur.Store(newBackendTransport(t, nil, log))
	return ts
}

// RoundTrip sends r with the current transport.
func (ts *transportSwitch) RoundTrip(r *http.Request) (*http.Response, error) {
	return ts.cur.Load().RoundTrip(r)
}

// set switches to a transport with timeouts t, unless they are the
// current ones.
func (ts *transportSwitch) set(t config.Timeouts) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if t == ts.timeouts {
		return
	}
	ts.timeouts = t
	ts.retired = append(ts.retired, ts.cur.Swap(newBackendTransport(t, nil, ts.log)))
	ts.sweepLocked()
}

// sweepLocked closes the idle connections of the retired transports, drops
// those with no connection left, and schedules the next sweep while any
// is. ts.mu must be held.
func (ts *transportSwitch) sweepLocked() {
	kept := ts.retired[:0]
	for _, tr := range ts.retired {
		tr.CloseIdleConnections()
		if tr.conns.Load() > 0 {
			kept = append(kept, tr)
		}
	}
	clear(ts.retired[len(kept):])
	ts.retired = kept
	if len(kept) > 0 && ts.sweep == nil && !ts.closed {
		ts.sweep = time.AfterFunc(sweepEvery, func() {
			ts.mu.Lock()
			defer ts.mu.Unlock()
			ts.sweep = nil
			ts.sweepLocked()
		})
	}
}

// close closes every transport at Shutdown, once no request is left to
// send: their idle connections now, and those of requests still ending
// (backendTransport.Close) as they end, which no sweep waits for; it stops
// the sweeps.
func (ts *transportSwitch) close() {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	ts.closed = true
	if ts.sweep != nil {
		ts.sweep.Stop()
		ts.sweep = nil
	}
	ts.cur.Load().Close()
	for _, tr := range ts.retired {
		tr.Close()
	}
	ts.retired = nil
}
