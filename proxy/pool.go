package proxy

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/affinityproxy/affinity/balancer"
	"github.com/affinityproxy/affinity/config"
)

var (
	errUnknownPool    = errors.New("unknown pool")
	errDuplicatePool  = errors.New("duplicate pool")
	errBadPool        = errors.New("invalid pool settings")
	errBadBackend     = errors.New("invalid backend")
	errUnknownBackend = errors.New("unknown backend")
)

// pool is a config.Pool made live: its backends, the policy that picks among
// them, and the current snapshot of who is available. Requests only load the
// snapshot; health changes rebuild it under mu and swap it in, so picks never
// wait.
type pool struct {
	name     string
	kind     string // balancer type, for logs
	policy   balancer.Policy
	balancer config.Balancer // what policy was made from, to reuse it on reload
	// policyHandedOver is set under mu when the pool replacing this one
	// on a reload took over its policy, which stop must then not close.
	policyHandedOver bool
	group            *balancer.Group
	backends         []*balancer.Backend // every configured backend, config order
	log              *zap.Logger

	health  *config.HealthCheck // nil: no active checks
	passive *passive            // nil: no passive ejection
	retries int                 // further attempts after the first
	maxBody int64               // largest request body buffered for a retry
	// slowStart is how long a backend that starts taking new clients
	// after serving nobody takes to reach its full weight (slowstart.go).
	slowStart time.Duration
	// closeConns sends each request with "Connection: close" on a
	// connection of its own (keepalive: false): the h1 client leaves
	// such a request to the transport, which keeps none.
	closeConns bool
	// transport forwards to the backends and checkClient checks them,
	// when the pool's tls section needs its own; nil: the server's shared
	// transport and the default check client (tls.go).
	transport   *backendTransport
	checkClient *http.Client
	// hashesIP is set when the policy hashes the client's address, which
	// the handler then resolves behind trusted proxies (forwarded.go).
	hashesIP bool
	// discovery follows the DNS records the backends come from; nil for a
	// pool of configured backends (discover.go).
	discovery *discoverer

	snap atomic.Pointer[snapshot]
	// exhausted is set while picks fail, so that running out of backends
	// is logged once per episode rather than once per refused request.
	exhausted atomic.Bool
	// starved is set while backend requests or checks fail for want of a
	// local resource, logged once per episode (resource.go).
	starved atomic.Bool
	// rotate spreads the attempts of retries over the other backends.
	rotate atomic.Uint64
	// poolStats counts requests for metrics (retried, refusals, repins);
	// a pool replacing this one on a reload counts on in the same.
	*poolStats

	mu      sync.Mutex  // serialises Build, which a Policy needs, and guards:
	members []member    // parallel to backends
	stopped bool        // set by stop: no more ejections or readmissions
	ramp    *time.Timer // the next rebuild of a slow start; nil when none is due
}

// snapshot is what requests read of a pool: immutable, swapped whole.
type snapshot struct {
	picker balancer.Picker
	// available is the Set.Available the picker was built from, in which
	// a retry looks for another backend; draining is its Set.Draining.
	available []*balancer.Backend
	draining  []*balancer.Backend
	// pinner is the picker as a balancer.Pinner, nil when it pins no
	// client; asserted here once rather than on every retry.
	pinner balancer.Pinner
	// learner is the picker as a balancer.Learner, nil when it learns
	// nothing from responses; asserted once, as pinner.
	learner balancer.Learner
}

// member is the pool's view of one backend's health and state. A backend is
// available when the active checks find it healthy, passive health has not
// ejected it, and its state is ready; it drains when it would be available
// but its state is drain.
type member struct {
	adminState
	healthy bool // active checks' verdict; true until they say otherwise
	ejected bool
	// ejections counts the ejections since the backend last answered well
	// after a return; each doubles the next ejection's length.
	ejections int
	// spared is set once ejecting the backend was declined because no
	// other would have been left, so that this is logged once a run.
	spared bool
	timer  *time.Timer // readmits an ejected backend; nil otherwise
	until  time.Time   // when timer fires, for a reload to carry it over
	// gone is when DNS stopped listing a discovered backend, which then
	// drains whatever its state; zero while it is listed, or configured.
	gone time.Time
	// served is set while the backend is in the snapshot, available or
	// draining; warm is when its slow start began, zero when it takes
	// its full weight (slowstart.go).
	served bool
	warm   time.Time
}

// takesNew reports whether the backend may receive new clients.
func (m *member) takesNew() bool {
	return m.healthy && !m.ejected && m.state == config.StateReady && m.gone.IsZero()
}

// drains reports whether the backend takes its pinned clients only.
func (m *member) drains() bool {
	return m.healthy && !m.ejected && (m.state == config.StateDrain || m.state == config.StateReady && !m.gone.IsZero())
}

// draining reports whether the backend drains by its state or because it
// left DNS, whatever its health, and since when.
func (m *member) draining() (bool, time.Time) {
	switch {
	case m.state == config.StateDrain:
		return true, m.since
	case m.state == config.StateReady && !m.gone.IsZero():
		return true, m.gone
	}
	return false, time.Time{}
}

// newPool creates the backends of pc and a first snapshot with all of them
// available: a backend is in service from the start until its checks say
// otherwise, so that restarting the proxy does not answer 503 meanwhile.
//
// prev, when not nil, is the pool of the same name in the configuration a
// reload replaces: the new pool counts in prev's Group and takes over the
// Backend of each backend it keeps unchanged (see backendFor), so that
// requests in flight on either pool count alike.
//
// gone holds, for a pool whose backends DNS lists, those it has stopped
// listing, which drain, and since when; nil for configured backends.
func newPool(pc *config.Pool, gone map[string]time.Time, log *zap.Logger, prev *pool) (*pool, error) {
	policy, err := prev.policyFor(pc.Balancer)
	if err != nil {
		return nil, fmt.Errorf("pool %q: %w", pc.Name, err)
	}
	if err := checkPoolSettings(pc); err != nil {
		return nil, fmt.Errorf("pool %q: %w: %w", pc.Name, errBadPool, err)
	}
	if l, ok := policy.(balancer.Logged); ok {
		l.SetLogger(log.With(zap.String("pool", pc.Name)))
	}
	p := &pool{
		name:       pc.Name,
		kind:       pc.Balancer.Type,
		policy:     policy,
		balancer:   pc.Balancer,
		group:      prev.groupOrNew(),
		poolStats:  prev.poolStatsOrNew(),
		backends:   make([]*balancer.Backend, 0, len(pc.Backends)),
		members:    make([]member, len(pc.Backends)),
		log:        log,
		passive:    newPassive(pc.Passive),
		retries:    pc.Retries.Count,
		maxBody:    pc.Retries.MaxBody,
		slowStart:  pc.SlowStart,
		closeConns: pc.DisableKeepAlives,
	}
	if pc.HealthCheck != nil {
		hc := *pc.HealthCheck
		p.health = &hc
	}
	p.hashesIP = pc.Balancer.Type == "consistent-hash" && pc.Balancer.Options.Hash.Key == "ip"
	seen := make(map[string]bool, len(pc.Backends))
	for i, cb := range pc.Backends {
		if cb.URL == nil || (cb.URL.Scheme != "http" && cb.URL.Scheme != "https") || cb.URL.Host == "" {
			return nil, fmt.Errorf("pool %q: backend %d: %w: want an http:// or https:// URL with a host", pc.Name, i+1, errBadBackend)
		}
		id := cb.Name
		if id == "" {
			id = cb.URL.Host
		}
		if seen[id] {
			return nil, fmt.Errorf("pool %q: backend %q: %w: the id is used twice", pc.Name, id, errBadBackend)
		}
		seen[id] = true
		b := prev.backendFor(id, cb.URL, cb.Weight, p.group)
		if b.Stats == nil {
			// A backend new to the pool; one taken over from prev
			// counts on in its stats.
			b.Stats = newBackendStats()
		}
		st := statsOf(b)
		if st.line == nil {
			st.line = &p.queue
		}
		st.maxConns.Store(int64(cb.MaxConns))
		p.backends = append(p.backends, b)
		// Served already, as far as slow start is concerned: the
		// backends of a pool that starts are all cold alike.
		p.members[i].healthy, p.members[i].served = true, true
		p.members[i].adminState = newAdminState(cb.State)
		p.members[i].gone = gone[id]
	}
	p.queue.configure(pc.Queue.Max, pc.Queue.Timeout)
	if prev == nil {
		// In service as soon as made; a pool replacing prev is once
		// swapped in (Server.takeOver).
		p.queue.cur.Store(p)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rebuildLocked()
	return p, nil
}

// policyFor returns the policy of a pool configured with bc: prev's, when
// prev (the pool of the same name before a reload, or nil) has the same
// balancer settings, so that whatever the policy keeps (the learn policy's
// table, the rotation) survives the reload; a new one otherwise, which
// takes over what prev's learned where it can (see takeOver).
func (prev *pool) policyFor(bc config.Balancer) (balancer.Policy, error) {
	if prev == nil {
		return balancer.New(bc.Type, bc.Options)
	}
	if reflect.DeepEqual(prev.balancer, bc) {
		return prev.policy, nil
	}
	return balancer.NewFrom(prev.policy, bc.Type, bc.Options)
}

// checkPoolSettings rejects the values config.Load never produces but a
// Config built in code might, and that would otherwise make the proxy
// misbehave or panic (a zero check interval, say).
func checkPoolSettings(pc *config.Pool) error {
	if r := pc.Retries; r.Count < 0 || r.Count > config.MaxRetries || r.MaxBody < 0 {
		return fmt.Errorf("retries %d must be 0..%d and retry_max_body %d not negative", r.Count, config.MaxRetries, r.MaxBody)
	}
	if q := pc.Queue; q.Max < 0 || q.Timeout < 0 || q.Max > 0 && q.Timeout == 0 {
		return fmt.Errorf("queue max %d must not be negative, and timeout %v positive when max is not 0", q.Max, q.Timeout)
	}
	for _, b := range pc.Backends {
		if b.MaxConns < 0 {
			return fmt.Errorf("backend %q: max_conns %d must not be negative", b.Name, b.MaxConns)
		}
	}
	if h := pc.HealthCheck; h != nil {
		switch {
		case h.Interval <= 0 || h.Timeout <= 0:
			return fmt.Errorf("health_check interval %v and timeout %v must be positive", h.Interval, h.Timeout)
		case h.Rise < 1 || h.Fall < 1:
			return fmt.Errorf("health_check rise %d and fall %d must be at least 1", h.Rise, h.Fall)
		case h.StatusMin > h.StatusMax:
			return fmt.Errorf("health_check expect_status %d-%d is empty", h.StatusMin, h.StatusMax)
		}
		if err := checkHealthPath(h.Path); err != nil {
			return err
		}
	}
	if d := pc.Discover; d != nil && (d.Interval <= 0 || d.DrainTimeout < 0 || d.DNS == "") {
		return fmt.Errorf("discover dns %q, interval %v and drain_timeout %v: want a name, a positive interval and a drain_timeout not negative",
			d.DNS, d.Interval, d.DrainTimeout)
	}
	if pv := pc.Passive; pv != nil && (pv.Failures < 1 || pv.Eject <= 0 || pv.MaxEject < pv.Eject) {
		return fmt.Errorf("passive failures %d must be at least 1, eject %v positive and max_eject %v at least eject",
			pv.Failures, pv.Eject, pv.MaxEject)
	}
	return nil
}

// pick asks the current Picker for a backend.
func (p *pool) pick(r *http.Request) (balancer.Pick, error) {
	return p.snap.Load().picker.Pick(r)
}

// alternative returns an available backend not in tried, for a retry of r,
// and the Set-Cookie header that pins the client to it ("" when the policy
// pins nothing); nil when there is none. A pinning policy chooses, so that
// the retry lands where the client's later requests will; otherwise
// successive retries start their search at successive positions, so the
// attempts of many failing requests spread over the pool instead of all
// landing on its first backend.
func (p *pool) alternative(r *http.Request, tried []*balancer.Backend) (*balancer.Backend, string) {
	s := p.snap.Load()
	if s.pinner != nil {
		b, setCookie, _ := s.pinner.Repin(r, tried)
		return b, setCookie
	}
	n := len(s.available)
	if n == 0 {
		return nil, ""
	}
	start := int(p.rotate.Add(1) % uint64(n))
	for k := range n {
		if b := s.available[(start+k)%n]; !slices.Contains(tried, b) {
			return b, ""
		}
	}
	return nil, ""
}

// setHealthy records the active checks' verdict on the backend with the
// given id, and rebuilds the snapshot when that changes anything; why tells
// the log what led to it. It is safe for concurrent use and never blocks a
// request.
func (p *pool) setHealthy(id string, up bool, why ...zap.Field) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	i := slices.IndexFunc(p.backends, func(b *balancer.Backend) bool { return b.ID == id })
	if i < 0 {
		return fmt.Errorf("pool %q: %w %q", p.name, errUnknownBackend, id)
	}
	if p.members[i].healthy == up {
		return nil
	}
	p.members[i].healthy = up
	statsOf(p.backends[i]).transition(up)
	n := p.rebuildLocked()
	state := "up"
	if !up {
		state = "down"
	}
	fields := append([]zap.Field{zap.String("pool", p.name), zap.String("backend", id)}, why...)
	p.log.Info("backend "+state, append(fields, zap.Int("available", n), zap.Int("backends", len(p.backends)))...)
	if n == 0 {
		p.log.Warn("pool has no available backend", zap.String("pool", p.name))
	}
	return nil
}

// rebuildLocked builds and publishes a snapshot over the available and
// draining backends, returning how many are available.
func (p *pool) rebuildLocked() int {
	avail := make([]*balancer.Backend, 0, len(p.backends))
	var draining []*balancer.Backend
	for i, b := range p.backends {
		switch m := &p.members[i]; {
		case m.takesNew():
			avail = append(avail, b)
		case m.drains():
			draining = append(draining, b)
		}
	}
	if len(avail) == 0 {
		// Passive ejection never empties a pool: when the active checks
		// take out every backend left, the healthy ones that are ejected
		// serve rather than the pool answering 503 to everyone.
		for i, b := range p.backends {
			if m := &p.members[i]; m.healthy && m.state == config.StateReady && m.gone.IsZero() {
				avail = append(avail, b)
			}
		}
		if len(avail) > 0 {
			p.log.Warn("serving from ejected backends: no other is healthy",
				zap.String("pool", p.name), zap.Int("available", len(avail)))
		}
	}
	warming := p.warmLocked(avail, draining, time.Now())
	pk := p.policy.Build(balancer.Set{All: p.backends, Available: avail, Draining: draining, Group: p.group, Warming: warming})
	s := &snapshot{picker: pk, available: avail, draining: draining}
	s.pinner, _ = pk.(balancer.Pinner)
	s.learner, _ = pk.(balancer.Learner)
	p.snap.Store(s)
	if p.queue.cur.Load() != p {
		// Not in service: a pool a reload replaced no longer says
		// which backends take whom, and one a reload builds does not
		// yet (a waiter it sent back would pick on the old one).
		return len(avail)
	}
	if !p.stopped {
		// Waiters for any backend go to those taking new clients.
		for _, b := range p.backends {
			st := statsOf(b)
			if st == nil {
				continue
			}
			st.open.Store(slices.Contains(avail, b))
			if !st.open.Load() && !slices.Contains(draining, b) {
				p.queue.evict(st)
			}
		}
	}
	p.wake()
	return len(avail)
}

// stop ends the pool's background work, its ejection timers; the backends
// stay as they are. Requests in flight are not touched: they finish on the
// backends they hold. A hot reload stops the pools of the configuration it
// replaces, which then only drain.
func (p *pool) stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stopped = true
	if p.ramp != nil {
		p.ramp.Stop()
		p.ramp = nil
	}
	for i := range p.members {
		if t := p.members[i].timer; t != nil {
			t.Stop()
			p.members[i].timer = nil
		}
	}
	if p.transport != nil {
		// A pool's own transport is made with the pool (tls.go) and
		// serves no later one: connections still busy close as their
		// requests end.
		p.transport.Close()
	}
	if c, ok := p.policy.(io.Closer); ok && !p.policyHandedOver {
		// The policy's own connections and goroutines (the learn
		// policy's Redis writer, after the writes it has queued); its
		// pickers keep answering requests in flight without them.
		if err := c.Close(); err != nil {
			p.log.Warn("closing the balancer", zap.String("pool", p.name), zap.Error(err))
		}
	}
}

// refused records a failed pick. The first of a run of them is logged; the
// client gets a 503 each time.
func (p *pool) refused(err error) {
	p.refusals.Add(1)
	if p.exhausted.CompareAndSwap(false, true) {
		p.log.Warn("no backend available, answering 503", zap.String("pool", p.name), zap.Error(err))
	}
}

// served records a successful pick, ending a run of failed ones. On the
// common path it is one atomic load of a value nobody writes.
func (p *pool) served() {
	if p.exhausted.Load() && p.exhausted.CompareAndSwap(true, false) {
		p.log.Info("backend available again", zap.String("pool", p.name))
	}
}
