package proxy

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/affinityproxy/affinity/config"
	"github.com/affinityproxy/affinity/internal/resolver"
)

// Discovery.
//
// A pool with a discover section takes its backends from the records of a
// DNS name, looked up every interval by a goroutine of its own, off the
// request path. A change of the records rebuilds the routing state as a
// reload does (newState, then swap): kept backends keep their health,
// counters, sessions and connections, a new address joins, and one that
// left DNS stays in the pool, draining (no new client; its pinned clients
// kept while it answers) until it is idle or discover.drain_timeout has
// passed. It comes back at once if DNS lists it again. A failed or empty
// answer changes nothing: the backends known last keep serving.
//
// What a discoverer knows is guarded by the server's reloadMu, under which
// every state is built; what the status page shows of it, by its own mu.

// goneIdle is how long a backend that left DNS must have had no request
// before it is removed: `affinity ctl drain --wait`'s default idle window.
const goneIdle = 10 * time.Second

// maxDiscovered bounds the backends one lookup may give a pool: records
// beyond it are ignored, so that an answer of thousands of records cannot
// make as many backends, each with its checks, connections and state.
const maxDiscovered = 256

// maxLookup bounds one lookup: a resolver that does not answer in this
// time is down, for this round.
const maxLookup = 5 * time.Second

// discoverer follows the DNS records of one pool.
type discoverer struct {
	pool string
	cfg  config.Discover
	res  *resolver.Resolver
	log  *zap.Logger

	// Guarded by the server's reloadMu:
	known map[string]*found // the backends DNS lists or listed, by name
	// held keeps, by name, the state an operator set at run time on a
	// backend removed after it left DNS, for it to have again when DNS
	// lists it again: an operator's maint outlives a flap of the records.
	held map[string]adminState
	// gen names the loop whose lookups apply: a loop replaced by a reload
	// may still be finishing one.
	gen    uint64
	cancel context.CancelFunc // stops the loop; nil until it starts

	errors atomic.Uint64 // failed lookups, empty answers among them
	// self is the proxy's own listening addresses, which no record may
	// make a backend; refused counts the records refused so, and
	// refusedNames, guarded by mu, those already logged.
	self         *selfAddrs
	refused      atomic.Uint64
	refusedNames map[string]bool
	// ignored counts the records left out for maxDiscovered; over, guarded
	// by mu, is set while answers are over it, so that it is logged once.
	ignored atomic.Uint64
	over    bool

	mu       sync.Mutex // guards what follows, which the status shows
	lastGood time.Time  // when DNS last answered with records; zero: never
	failure  error      // the current streak's first error; nil after an answer
	latest   error      // the current streak's latest error, which the status shows
	streak   int        // failed lookups in a row
}

// found is a backend as DNS gives it.
type found struct {
	url    *url.URL
	weight int
	record string    // what DNS said, for the log
	gone   time.Time // when DNS stopped listing it; zero while listed
}

// newDiscoverer makes the discoverer of a pool configured with c; prev,
// when not nil, is the pool's discoverer before a reload, whose backends
// it starts from, so that a change of settings drains what the new
// records leave out instead of cutting it.
func newDiscoverer(pool string, c config.Discover, log *zap.Logger, prev *discoverer) (*discoverer, error) {
	res, err := resolver.New(c.Resolver)
	if err != nil {
		return nil, fmt.Errorf("pool %q: discover: %w", pool, err)
	}
	d := &discoverer{pool: pool, cfg: c, res: res, log: log, known: map[string]*found{}, held: map[string]adminState{},
		refusedNames: map[string]bool{}}
	if prev != nil {
		for name, f := range prev.known {
			cp := *f
			d.known[name] = &cp
		}
		maps.Copy(d.held, prev.held)
		prev.mu.Lock()
		d.lastGood, d.failure, d.latest, d.streak = prev.lastGood, prev.failure, prev.latest, prev.streak
		prev.mu.Unlock()
		d.errors.Store(prev.errors.Load())
		d.refused.Store(prev.refused.Load())
		d.ignored.Store(prev.ignored.Load())
	}
	return d, nil
}

// discoverers returns the discoverer of every pool of cfg that discovers
// its backends: that of prev (a reload's current ones, or nil) when its
// settings are unchanged, else a new one that has looked its name up once.
// It changes nothing of prev's.
func discoverers(cfg *config.Config, log *zap.Logger, prev map[string]*discoverer) (map[string]*discoverer, error) {
	out := map[string]*discoverer{}
	var fresh []*discoverer // new ones, to look up
	var self *selfAddrs
	for _, pc := range cfg.Pools {
		if pc == nil || pc.Discover == nil {
			continue
		}
		if self == nil {
			self = newSelfAddrs(cfg.Listen, cfg.Admin.Listen)
		}
		old := prev[pc.Name]
		if old != nil && old.cfg == *pc.Discover {
			// The listen addresses may have changed; the next lookup
			// refuses the new ones.
			old.mu.Lock()
			old.self = self
			old.mu.Unlock()
			out[pc.Name] = old
			continue
		}
		d, err := newDiscoverer(pc.Name, *pc.Discover, log, old)
		if err != nil {
			return nil, err
		}
		d.self = self
		fresh = append(fresh, d)
		out[pc.Name] = d
	}
	lookupAll(fresh)
	return out, nil
}

// maxParallel bounds the first lookups that run at once.
const maxParallel = 16

// lookupAll looks the names of ds up, at most maxParallel at a time and
// all within maxLookup, and merges each outcome: a resolver that does not
// answer delays start-up or a reload by one lookup, not one per pool. A
// lookup that has not started by then fails; the pool's loop asks again.
func lookupAll(ds []*discoverer) {
	ctx, cancel := context.WithTimeout(context.Background(), maxLookup)
	defer cancel()
	recs := make([][]resolver.Record, len(ds))
	errs := make([]error, len(ds))
	sem := make(chan struct{}, maxParallel)
	var wg sync.WaitGroup
	for i, d := range ds {
		wg.Go(func() {
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				errs[i] = fmt.Errorf("%s %s: %w", d.cfg.DNS, d.cfg.Type, ctx.Err())
				return
			}
			defer func() { <-sem }()
			lctx, cancel := context.WithTimeout(ctx, d.lookupTimeout())
			recs[i], errs[i] = d.lookup(lctx)
			cancel()
		})
	}
	wg.Wait()
	now := time.Now()
	for i, d := range ds {
		d.merge(recs[i], errs[i], now)
	}
}

// members returns the backends of the pool, sorted by name, and those
// among them that left DNS, with when.
func (d *discoverer) members() ([]config.Backend, map[string]time.Time) {
	names := slices.Sorted(maps.Keys(d.known))
	out := make([]config.Backend, 0, len(names))
	gone := map[string]time.Time{}
	for _, name := range names {
		f := d.known[name]
		out = append(out, config.Backend{URL: f.url, Name: name, Weight: f.weight, State: config.StateReady, MaxConns: d.cfg.MaxConns})
		if !f.gone.IsZero() {
			gone[name] = f.gone
		}
	}
	return out, gone
}

func (d *discoverer) lookupTimeout() time.Duration { return min(d.cfg.Interval, maxLookup) }

// lookup asks DNS for the pool's records.
func (d *discoverer) lookup(ctx context.Context) ([]resolver.Record, error) {
	return d.res.Lookup(ctx, d.cfg.DNS, d.cfg.Type)
}

// run looks the name up every interval, with jitter, until ctx ends, and
// hands each outcome to s.
func (d *discoverer) run(ctx context.Context, gen uint64, s *Server) {
	t := time.NewTimer(jitter(d.cfg.Interval))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		lctx, cancel := context.WithTimeout(ctx, d.lookupTimeout())
		recs, err := d.lookup(lctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		s.discovered(d, gen, recs, err)
		t.Reset(jitter(d.cfg.Interval))
	}
}

// start starts d's loop; the server's reloadMu must be held.
func (d *discoverer) start(s *Server) {
	if d.cancel != nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	d.cancel = cancel
	d.gen++
	gen := d.gen
	s.discoveryLoops.Go(func() { d.run(ctx, gen, s) })
}

// stop stops d's loop without waiting for it; the server's reloadMu must
// be held. A lookup under way is dropped (see discovered).
func (d *discoverer) stop() {
	if d.cancel != nil {
		d.cancel()
		d.cancel = nil
		d.gen++
	}
}

// discovered applies the outcome of a lookup of d's loop gen: the records
// DNS gave, or the error. It rebuilds the routing state when a backend
// joined, left DNS, came back or changed, or is removed.
func (s *Server) discovered(d *discoverer, gen uint64, recs []resolver.Record, err error) {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	if s.closed || d.gen != gen || s.discovery[d.pool] != d {
		return
	}
	now := time.Now()
	changed := d.merge(recs, err, now)
	cur := s.state.Load()
	if p := cur.pool(d.pool); p != nil && d.sweep(p, now, s.goneIdle) {
		changed = true
	}
	if !changed {
		return
	}
	next, err := newState(cur.cfg, s.log, cur, s.discovery)
	if err != nil {
		// The configuration built before; only a discovered backend
		// could fail it, and they are checked as they come.
		s.log.Error("applying discovered backends", zap.String("pool", d.pool), zap.Error(err))
		return
	}
	s.swap(cur, next)
}

// merge takes the outcome of a lookup as of now into d.known, logging
// each change, and reports whether there was one. An error, or an answer
// without records, changes nothing: it is counted, and logged once per
// streak.
func (d *discoverer) merge(recs []resolver.Record, err error, now time.Time) bool {
	if err == nil && len(recs) == 0 {
		err = resolver.ErrNoRecords
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err != nil {
		d.errors.Add(1)
		if d.streak == 0 {
			d.failure = err
			d.log.Warn("discovery lookup failed; the backends known keep serving", d.fields(
				zap.Error(err), zap.Int("known", len(d.known)))...)
		}
		d.latest = err
		d.streak++
		return false
	}
	if d.streak > 0 {
		d.log.Info("discovery lookup answered again", d.fields(zap.Int("failed", d.streak),
			zap.NamedError("after", d.failure))...)
	}
	d.streak, d.failure, d.latest, d.lastGood = 0, nil, nil, now
	listed := d.backendsOf(recs)
	changed := false
	for name, f := range listed {
		k, ok := d.known[name]
		switch {
		case !ok:
			d.known[name] = f
			d.log.Info("backend discovered", d.fields(zap.String("backend", name), zap.String("record", f.record),
				zap.String("url", f.url.String()), zap.Int("weight", f.weight))...)
		case !k.gone.IsZero():
			d.log.Info("backend listed again; it takes new clients", d.fields(zap.String("backend", name),
				zap.String("record", f.record), zap.Duration("gone_for", now.Sub(k.gone)))...)
			k.gone = time.Time{}
			fallthrough
		case k.url.String() != f.url.String() || k.weight != f.weight:
			if k.url.String() != f.url.String() || k.weight != f.weight {
				d.log.Info("discovered backend changed", d.fields(zap.String("backend", name), zap.String("record", f.record),
					zap.String("url", f.url.String()), zap.String("url_was", k.url.String()),
					zap.Int("weight", f.weight), zap.Int("weight_was", k.weight))...)
			}
			k.url, k.weight, k.record = f.url, f.weight, f.record
		default:
			continue
		}
		changed = true
	}
	for name, k := range d.known {
		if _, ok := listed[name]; ok || !k.gone.IsZero() {
			continue
		}
		k.gone = now
		changed = true
		d.log.Info("backend left DNS; draining", d.fields(zap.String("backend", name), zap.String("record", k.record),
			zap.Duration("drain_timeout", d.cfg.DrainTimeout))...)
	}
	return changed
}

// sweep removes from d.known the backends that left DNS and are drained,
// as p, the pool in service, shows them: idle (for idleFor), or gone for
// drain_timeout. It reports whether it removed any.
func (d *discoverer) sweep(p *pool, now time.Time, idleFor time.Duration) bool {
	var idle map[string]bool
	removed := false
	for name, k := range d.known {
		if k.gone.IsZero() {
			continue
		}
		reason := "drain_timeout"
		if now.Sub(k.gone) < d.cfg.DrainTimeout {
			if idle == nil {
				idle = p.idleBackends(idleFor)
			}
			if !idle[name] {
				continue
			}
			reason = "idle"
		}
		if a, ok := p.runtimeState(name); ok {
			d.held[name] = a
		}
		delete(d.known, name)
		removed = true
		d.log.Info("backend removed: it left DNS and is drained", d.fields(zap.String("backend", name),
			zap.String("record", k.record), zap.String("reason", reason), zap.Duration("gone_for", now.Sub(k.gone)))...)
	}
	return removed
}

// runtimeState returns the state an operator set at run time on backend
// id of p, if any.
func (p *pool) runtimeState(id string) (adminState, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if i := p.indexOf(id); i >= 0 && p.members[i].setBy != "" {
		return p.members[i].adminState, true
	}
	return adminState{}, false
}

// idleBackends returns the backends of p that have no request in flight,
// have had none for idleFor, and have no session left where the balancer
// knows them.
func (p *pool) idleBackends(idleFor time.Duration) map[string]bool {
	sessions := p.sessions()
	now := clock()
	out := map[string]bool{}
	for _, v := range p.view() {
		if v.backend.InFlight() > 0 || sessions[v.backend.ID] > 0 {
			continue
		}
		if d, ok := v.stats.idle(now); !ok || d >= idleFor {
			out[v.backend.ID] = true
		}
	}
	return out
}

// backendsOf turns records into backends by name: an address and the
// configured port for A and AAAA, named address:port; an SRV target and
// the record's port, named target:port, at the target's first address (or
// the one it has now, if still listed), weighted by the record.
func (d *discoverer) backendsOf(recs []resolver.Record) map[string]*found {
	out := map[string]*found{}
	addrs := map[string][]netip.Addr{}
	for _, r := range recs {
		port := uint16(d.cfg.Port)
		host := r.Addr.String()
		record := recordType(r.Addr) + " " + r.Addr.String()
		if d.cfg.Type == config.DiscoverSRV {
			port, host = r.Port, r.Target
			record = fmt.Sprintf("SRV %d %d %s. (%s)", r.Weight, r.Port, r.Target, r.Addr)
		}
		name := netip.AddrPortFrom(r.Addr, port).String()
		if d.cfg.Type == config.DiscoverSRV {
			name = host + ":" + strconv.Itoa(int(port))
		}
		if d.self.has(netip.AddrPortFrom(r.Addr, port)) {
			d.refuse(name, record)
			continue
		}
		addrs[name] = append(addrs[name], r.Addr)
		if _, ok := out[name]; ok {
			continue
		}
		out[name] = &found{weight: int(r.Weight), record: record,
			url: &url.URL{Scheme: d.cfg.Scheme, Host: netip.AddrPortFrom(r.Addr, port).String()}}
	}
	for name, f := range out {
		if k := d.known[name]; k != nil {
			if a, err := netip.ParseAddrPort(k.url.Host); err == nil && slices.Contains(addrs[name], a.Addr()) {
				f.url = k.url
			}
		}
	}
	d.bound(out)
	srvWeights(out, d.cfg.Type == config.DiscoverSRV)
	return out
}

// bound cuts backends to maxDiscovered, keeping those d knows first, then
// by name, and counts and logs what it leaves out; d.mu must be held.
func (d *discoverer) bound(backends map[string]*found) {
	extra := len(backends) - maxDiscovered
	if extra <= 0 {
		d.over = false
		return
	}
	names := slices.SortedFunc(maps.Keys(backends), func(a, b string) int {
		if ka, kb := d.known[a] != nil, d.known[b] != nil; ka != kb {
			if ka {
				return -1
			}
			return 1
		}
		return strings.Compare(a, b)
	})
	for _, name := range names[maxDiscovered:] {
		delete(backends, name)
	}
	d.ignored.Add(uint64(extra))
	if !d.over {
		d.over = true
		d.log.Warn("discovered backends over the limit; the others are ignored", d.fields(
			zap.Int("listed", len(names)), zap.Int("limit", maxDiscovered))...)
	}
}

// recordType is the type of the record that gave a: type A also takes
// AAAA records.
func recordType(a netip.Addr) string {
	if a.Is4() {
		return "A"
	}
	return "AAAA"
}

// refuse counts a record that points at the proxy's own listener or admin
// listener, and logs it the first time; d.mu must be held.
func (d *discoverer) refuse(name, record string) {
	d.refused.Add(1)
	if d.refusedNames[name] {
		return
	}
	d.refusedNames[name] = true
	d.log.Warn("discovered record refused: it is this proxy's own listen or admin address", d.fields(
		zap.String("backend", name), zap.String("record", record))...)
}

// srvWeights turns the weights of SRV records (0 to 65535) into backends'
// (1 to MaxWeight): scaled down to fit, in proportion, and divided by their
// common divisor, so that records whose weights all change together (as
// Kubernetes gives each of N endpoints 100/N) leave the backends as they
// were. Without SRV, every backend weighs 1.
func srvWeights(backends map[string]*found, srv bool) {
	top := 0
	for _, f := range backends {
		if !srv {
			f.weight = 1
		}
		top = max(top, f.weight)
	}
	g := 0
	for _, f := range backends {
		if top > config.MaxWeight {
			f.weight = f.weight * config.MaxWeight / top
		}
		f.weight = max(f.weight, 1)
		g = gcdInt(g, f.weight)
	}
	for _, f := range backends {
		f.weight /= g
	}
}

func gcdInt(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// fields starts a log line of d's pool.
func (d *discoverer) fields(more ...zap.Field) []zap.Field {
	return append([]zap.Field{zap.String("pool", d.pool), zap.String("dns", d.cfg.DNS), zap.String("type", d.cfg.Type)}, more...)
}

// discoveryStatus is what the status page and the API show of a pool's
// discovery.
type discoveryStatus struct {
	DNS      string `json:"dns"`
	Type     string `json:"type"`
	Resolver string `json:"resolver"` // the servers asked
	Interval string `json:"interval"`
	// LastAnswer is when DNS last answered with records; absent before
	// the first. AgeSeconds is how long ago.
	LastAnswer *time.Time `json:"last_answer,omitempty"`
	AgeSeconds *float64   `json:"last_answer_age_seconds,omitempty"`
	Errors     uint64     `json:"errors"` // failed lookups and empty answers
	// Failing is the error of the latest of the lookups failing now; empty when the
	// latest answered.
	Failing string `json:"failing,omitempty"`
	Listed  int    `json:"listed"` // backends the latest answer lists
}

// status describes d as of now; the server's reloadMu need not be held.
func (d *discoverer) status(now time.Time, listed int) *discoveryStatus {
	st := &discoveryStatus{DNS: d.cfg.DNS, Type: d.cfg.Type, Interval: d.cfg.Interval.String(),
		Errors: d.errors.Load(), Listed: listed}
	st.Resolver = fmt.Sprint(d.res.Servers())
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.lastGood.IsZero() {
		last, age := d.lastGood, now.Sub(d.lastGood).Seconds()
		st.LastAnswer, st.AgeSeconds = &last, &age
	}
	if d.latest != nil {
		st.Failing = d.latest.Error()
	}
	return st
}

// errNoDiscovery is wrapped when a discovered pool is built without its
// discoverer, which only a Config built in code could cause.
var errNoDiscovery = errors.New("no discoverer")
