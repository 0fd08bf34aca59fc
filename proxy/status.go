package proxy

import (
	"embed"
	"fmt"
	"html/template"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/affinityproxy/affinity/balancer"
	"github.com/affinityproxy/affinity/config"
)

// backendView is a backend as the status page, the admin API and the
// metrics show it. Its states are read together under the pool's lock, so
// that they agree.
type backendView struct {
	backend   *balancer.Backend
	stats     *backendStats
	healthy   bool // the active checks pass, or there are none
	ejected   bool // passive health took it out
	available bool // in the picker's Set.Available: it takes new clients
	adminState
	// removed is set for a backend a reload took out of its pool, still
	// serving requests.
	removed bool
	// gone is when DNS stopped listing a discovered backend; zero while
	// it is listed, or configured.
	gone time.Time
	// warming is the fraction of its weight a backend in slow start takes
	// new clients by; 0 when it takes all of it.
	warming float64
}

// view returns every backend of p, in config order, with its state.
func (p *pool) view() []backendView {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]backendView, len(p.backends))
	for i := range p.backends {
		out[i] = p.viewLocked(i)
	}
	return out
}

// viewLocked returns backend i's view; p.mu must be held.
func (p *pool) viewLocked(i int) backendView {
	// The snapshot is published under mu, so it matches the members.
	b, m := p.backends[i], &p.members[i]
	return backendView{
		backend:    b,
		stats:      statsOf(b),
		healthy:    m.healthy,
		ejected:    m.ejected,
		available:  slices.Contains(p.snap.Load().available, b),
		adminState: m.adminState,
		gone:       m.gone,
		warming:    p.warmingOf(m, time.Now()),
	}
}

// removedView is the view of a backend a reload removed.
func removedView(r removedBackend) backendView {
	return backendView{
		backend:    r.backend,
		stats:      statsOf(r.backend),
		adminState: adminState{since: r.since},
		removed:    true,
	}
}

// health names v's health in one word: down (the active checks fail),
// ejected (passive health took it out) or up; unchecked for a removed
// backend, whose checks stopped.
func (v backendView) health() string {
	switch {
	case v.removed:
		return "unchecked"
	case !v.healthy:
		return "down"
	case v.ejected:
		return "ejected"
	}
	return "up"
}

// stateName names v's administrative state: ready, drain, maint, or
// removed; drain for a ready backend that left DNS.
func (v backendView) stateName() string {
	switch {
	case v.removed:
		return stateRemoved
	case v.leftDNS():
		return string(config.StateDrain)
	}
	return string(v.state)
}

// leftDNS reports whether v drains because DNS no longer lists it, rather
// than by a state an operator set.
func (v backendView) leftDNS() bool { return v.state == config.StateReady && !v.gone.IsZero() }

// stateSource tells where v's state comes from: config, api (set at run
// time), or dns for a backend draining because it left DNS.
func (v backendView) stateSource() string {
	if v.leftDNS() {
		return "dns"
	}
	return v.source()
}

// stateSince is when v entered the state stateName names.
func (v backendView) stateSince() time.Time {
	if v.leftDNS() {
		return v.gone
	}
	return v.since
}

const (
	// spreadSeconds is how far back the status page shows where requests
	// went, in one-second samples.
	spreadSeconds = 60
	// rateSeconds is the window of the request rate shown: long enough
	// to smooth bursts, short enough to follow a change.
	rateSeconds = 10
)

// sampler keeps, per backend, the requests answered in each of the last
// spreadSeconds seconds. One goroutine of the admin server samples the
// counters every second (admin.run); the request path is not involved.
type sampler struct {
	mu    sync.Mutex
	rings map[*backendStats]*ring
	round uint64 // samples taken, to forget backends a reload removed
}

// ring is one backend's recent samples.
type ring struct {
	counts [spreadSeconds]uint64 // requests per second; counts[next-1] is the newest
	next   int
	filled int    // samples held, up to spreadSeconds
	total  uint64 // the backend's requests() at the latest sample
	round  uint64 // the latest sampler round that saw the backend
}

func (r *ring) push(n uint64) {
	r.counts[r.next] = n
	r.next = (r.next + 1) % spreadSeconds
	r.filled = min(r.filled+1, spreadSeconds)
}

// newest returns the sum of the newest k samples, and how many there were.
func (r *ring) newest(k int) (sum uint64, n int) {
	n = min(k, r.filled)
	for i := 1; i <= n; i++ {
		sum += r.counts[(r.next-i+spreadSeconds)%spreadSeconds]
	}
	return sum, n
}

// series returns the samples oldest first, spreadSeconds long; seconds
// before the first sample count zero.
func (r *ring) series() []uint64 {
	out := make([]uint64, spreadSeconds)
	for i := range spreadSeconds {
		out[i] = r.counts[(r.next+i)%spreadSeconds]
	}
	return out
}

// sample takes one second's sample of every backend of st. A backend's
// first sample only sets its baseline.
func (sm *sampler) sample(st *state) {
	sm.mu.Lock()
	defer sm.mu.Unlock()
	if sm.rings == nil {
		sm.rings = make(map[*backendStats]*ring)
	}
	sm.round++
	for _, p := range st.pools {
		for _, b := range p.backends {
			bs := statsOf(b)
			if bs == nil {
				continue
			}
			n := bs.requests()
			r := sm.rings[bs]
			if r == nil {
				sm.rings[bs] = &ring{total: n, round: sm.round}
				continue
			}
			r.push(n - r.total)
			r.total, r.round = n, sm.round
		}
	}
	maps.DeleteFunc(sm.rings, func(_ *backendStats, r *ring) bool { return r.round != sm.round })
}

// spread is what the samples tell of one backend.
type spread struct {
	lastMinute uint64   // requests over the samples held (up to a minute)
	rate       float64  // requests per second over the last rateSeconds
	perSecond  []uint64 // spreadSeconds samples, oldest first
}

func (sm *sampler) spreadOf(bs *backendStats) spread {
	sm.mu.Lock()
	defer sm.mu.Unlock()
	r := sm.rings[bs]
	if r == nil {
		return spread{perSecond: make([]uint64, spreadSeconds)}
	}
	sp := spread{perSecond: r.series()}
	sp.lastMinute, _ = r.newest(spreadSeconds)
	if recent, n := r.newest(rateSeconds); n > 0 {
		sp.rate = float64(recent) / float64(n)
	}
	return sp
}

// statusDoc is the admin server's /status document, and what the HTML
// status page renders.
type statusDoc struct {
	Time     time.Time    `json:"time"`
	Ready    bool         `json:"ready"`
	NotReady []string     `json:"not_ready,omitempty"` // why not ready
	Config   configStatus `json:"config"`
	// Client connections of the listener: served by http.Server, or
	// parked while idle (internal/park).
	Connections struct {
		Served int `json:"served"`
		Parked int `json:"parked"`
	} `json:"connections"`
	Pools []poolStatus `json:"pools"`
}

type configStatus struct {
	Hash          string `json:"hash"` // empty for a Config built in code
	ReloadsOK     uint64 `json:"reloads_ok"`
	ReloadsFailed uint64 `json:"reloads_failed"`
	Unrouted      uint64 `json:"unrouted"` // requests answered 404
}

type poolStatus struct {
	Name      string `json:"name"`
	Balancer  string `json:"balancer"`  // empty for a pool a reload removed
	Available int    `json:"available"` // backends taking new clients
	Retries   uint64 `json:"retries"`
	Repins    uint64 `json:"repins"`
	Refused   uint64 `json:"refused"` // requests answered 503
	// Queued counts the requests waiting for a backend at max_conns;
	// QueueRefused those the queue answered 503 (full or timed out).
	Queued       int64           `json:"queued"`
	QueueRefused uint64          `json:"queue_refused"`
	Minute       uint64          `json:"last_minute"` // requests over the pool's backends
	Backends     []backendStatus `json:"backends"`
	// Removed holds the backends a reload removed from the pool that
	// still serve requests, upgraded connections or streams.
	Removed []backendStatus `json:"removed,omitempty"`
	// Discovery tells, for a pool that takes its backends from DNS, what
	// it asks and how its lookups fare.
	Discovery *discoveryStatus `json:"discovery,omitempty"`
}

type backendStatus struct {
	Name string `json:"name"`
	URL  string `json:"url"`
	// State is the administrative state: ready, drain, maint, or removed
	// for a backend a reload removed that still serves.
	State string `json:"state"`
	// StateSource is config, api for a state set at run time, or dns for
	// a discovered backend draining because DNS no longer lists it.
	StateSource string    `json:"state_source"`
	StateSince  time.Time `json:"state_since"`
	Health      string    `json:"health"`    // up, down or ejected
	Available   bool      `json:"available"` // takes new clients
	Weight      int       `json:"weight"`
	// SlowStart is, for a backend in slow start, the fraction of its
	// weight it takes new clients by now; absent at its full weight.
	SlowStart *float64 `json:"slow_start,omitempty"`
	InFlight  int64    `json:"in_flight"`
	// MaxConns is the backend's max_conns, absent when it has none;
	// Queued counts the requests waiting for it alone.
	MaxConns *int64 `json:"max_conns,omitempty"`
	Queued   int64  `json:"queued"`
	// Upgraded and Streams count the requests in flight that may last:
	// upgraded connections, and responses of unknown length.
	Upgraded int64 `json:"upgraded"`
	Streams  int64 `json:"streams"`
	// IdleSeconds is how long the backend has had no request in flight;
	// 0 while it has one. When it has had none since it was configured,
	// Unused is set and IdleSeconds counts from the configuration: a drain
	// waiting for an idle window waits out the proxy's uptime too.
	IdleSeconds *float64 `json:"idle_seconds,omitempty"`
	Unused      bool     `json:"unused"`
	// Sessions counts the sessions pinned to the backend, where the
	// balancer knows them (learn).
	Sessions    *int         `json:"sessions,omitempty"`
	DrainClosed uint64       `json:"drain_closed"` // closed for outliving drain_timeout
	Requests    uint64       `json:"requests"`     // since the backend was configured
	Rate        float64      `json:"rate"`         // requests per second, last 10 s
	Minute      uint64       `json:"last_minute"`
	Share       float64      `json:"share"` // of the pool's requests in the last minute, 0..1
	PerSecond   []uint64     `json:"per_second"`
	Ejections   uint64       `json:"ejections"`
	Check       *checkResult `json:"check,omitempty"` // nil: no check yet
}

// status describes the server as it is at now.
func (a *admin) status(now time.Time) statusDoc {
	s := a.s
	rs := s.ReloadStats()
	doc := statusDoc{
		Time: now,
		Config: configStatus{
			Hash:          rs.Hash,
			ReloadsOK:     rs.OK,
			ReloadsFailed: rs.Failed,
			Unrouted:      s.stats.unrouted.Load(),
		},
		Pools: a.pools(),
	}
	doc.Connections.Served, doc.Connections.Parked = s.clientConns()
	doc.NotReady = a.unready()
	doc.Ready = len(doc.NotReady) == 0
	return doc
}

// pools describes every pool in service, and the removed backends still
// serving: under their pool, or under a pool of their own, with no
// balancer and no backends, when a reload removed the whole pool.
func (a *admin) pools() []poolStatus { return a.poolsNamed(nil) }

// poolsNamed is pools, for the pools whose name want accepts only; nil
// accepts every one.
func (a *admin) poolsNamed(want func(string) bool) []poolStatus {
	now := clock()
	var out []poolStatus
	for _, p := range a.s.state.Load().pools {
		if want != nil && !want(p.name) {
			continue
		}
		ps := poolStatus{
			Name:         p.name,
			Balancer:     p.kind,
			Retries:      p.retried.Load(),
			Repins:       p.repins.Load(),
			Refused:      p.refusals.Load(),
			Queued:       p.queue.waiting.Load(),
			QueueRefused: p.queue.refused[reasonFull].Load() + p.queue.refused[reasonTimeout].Load(),
			// A discovering pool may have none: [] then, not null.
			Backends: []backendStatus{},
		}
		sessions := p.sessions()
		listed := 0
		for _, v := range p.view() {
			ps.Backends = append(ps.Backends, a.backendStatus(v, now, sessions))
			if v.gone.IsZero() {
				listed++
			}
		}
		if p.discovery != nil {
			ps.Discovery = p.discovery.status(time.Now(), listed)
		}
		out = append(out, ps)
	}
	for _, r := range a.s.leaving.current() {
		if want != nil && !want(r.pool) {
			continue
		}
		i := slices.IndexFunc(out, func(ps poolStatus) bool { return ps.Name == r.pool })
		if i < 0 {
			out = append(out, poolStatus{Name: r.pool, Backends: []backendStatus{}})
			i = len(out) - 1
		}
		out[i].Removed = append(out[i].Removed, a.backendStatus(removedView(r), now, nil))
	}
	for i := range out {
		ps := &out[i]
		for _, bs := range ps.Backends {
			ps.Minute += bs.Minute
			if bs.Available {
				ps.Available++
			}
		}
		for j := range ps.Backends {
			if ps.Minute > 0 {
				ps.Backends[j].Share = float64(ps.Backends[j].Minute) / float64(ps.Minute)
			}
		}
	}
	return out
}

// sessions returns the sessions p's balancer pins to each backend, or nil
// when it does not know them.
func (p *pool) sessions() map[string]int {
	if t, ok := p.policy.(balancer.StickTable); ok {
		return t.Sessions()
	}
	return nil
}

// backendStatus describes v as of the clock reading now; sessions, when
// not nil, are the sessions pinned to each backend of v's pool.
func (a *admin) backendStatus(v backendView, now time.Duration, sessions map[string]int) backendStatus {
	sp := a.sampler.spreadOf(v.stats)
	bs := backendStatus{
		Name:        v.backend.ID,
		URL:         v.backend.URL.Redacted(),
		State:       v.stateName(),
		StateSource: v.stateSource(),
		StateSince:  v.stateSince(),
		Health:      v.health(),
		Available:   v.available,
		Weight:      v.backend.Weight,
		InFlight:    v.backend.InFlight(),
		Upgraded:    v.stats.openUpgraded(),
		Streams:     v.stats.openStreams(),
		Requests:    v.stats.requests(),
		Rate:        sp.rate,
		Minute:      sp.lastMinute,
		PerSecond:   sp.perSecond,
	}
	if v.warming > 0 {
		bs.SlowStart = &v.warming
	}
	if bs.InFlight > 0 {
		bs.IdleSeconds = new(float64)
	} else if v.stats != nil {
		d, served := v.stats.idle(now)
		sec := d.Seconds()
		bs.IdleSeconds, bs.Unused = &sec, !served
	}
	if sessions != nil {
		n := sessions[v.backend.ID]
		bs.Sessions = &n
	}
	if v.stats != nil {
		bs.Ejections = v.stats.ejections.Load()
		bs.Check = v.stats.check.Load()
		bs.DrainClosed = v.stats.cut.Load()
		bs.Queued = v.stats.queued.Load()
		if n := v.stats.maxConns.Load(); n > 0 {
			bs.MaxConns = &n
		}
	}
	return bs
}

// refreshSeconds is how often the status page reloads itself.
const refreshSeconds = 3

//go:embed status.html
var statusFiles embed.FS

// statusPage renders a statusDoc as HTML.
var statusPage = template.Must(template.New("status.html").Funcs(template.FuncMap{
	"percent": func(f float64) string { return fmt.Sprintf("%.0f%%", f*100) },
	"width":   func(f float64) string { return fmt.Sprintf("%.1f", f*100) },
	"rate":    func(f float64) string { return fmt.Sprintf("%.1f", f) },
	"short": func(h string) string {
		if len(h) > 12 {
			return h[:12]
		}
		return h
	},
	"ago": func(now, t time.Time) string {
		return now.Sub(t).Round(time.Second).String() + " ago"
	},
	"since": func(now, t time.Time) string {
		return "for " + now.Sub(t).Round(time.Second).String()
	},
	"seconds": func(f *float64) string {
		return (time.Duration(*f * float64(time.Second))).Round(time.Second).String()
	},
	"refresh": func() int { return refreshSeconds },
	"concat":  func(a, b []backendStatus) []backendStatus { return append(a[:len(a):len(a)], b...) },
}).ParseFS(statusFiles, "status.html"))
