package proxy

import (
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/affinityproxy/affinity/balancer"
	"github.com/affinityproxy/affinity/config"
)

// The request path counts into plain atomics, reached from the picked
// backend without a lookup (statsOf); nothing of client_golang is on it. A
// collector reads the atomics when /metrics is scraped and turns them into
// constant metrics, so that the cost of labels is paid per scrape, not per
// request.

// statusClasses are the label values of responses by status / 100.
var statusClasses = [...]string{"1xx", "2xx", "3xx", "4xx", "5xx"}

// classOf returns the index in statusClasses of a status code. HTTP allows
// three-digit codes beyond 599 that no class names; they count as server
// errors, which is what a client makes of them.
func classOf(status int) int {
	c := status/100 - 1
	if c < 0 || c >= len(statusClasses) {
		return len(statusClasses) - 1
	}
	return c
}

// latencyBounds are the upper bounds of the upstream latency buckets,
// Prometheus' default buckets from 1 ms: a proxy's backends answer from
// about a millisecond to the response_header timeout.
var latencyBounds = [...]time.Duration{
	time.Millisecond, 2500 * time.Microsecond, 5 * time.Millisecond, 10 * time.Millisecond,
	25 * time.Millisecond, 50 * time.Millisecond, 100 * time.Millisecond, 250 * time.Millisecond,
	500 * time.Millisecond, time.Second, 2500 * time.Millisecond, 5 * time.Second, 10 * time.Second,
}

// epoch has a monotonic clock reading, which is all time.Since reads of
// it: clock costs one read of the clock where time.Now makes two (the wall
// clock too), and the request path reads it twice.
var epoch = time.Now()

// clock returns the monotonic time since epoch, for measuring durations.
func clock() time.Duration { return time.Since(epoch) }

// histogram counts durations in the fixed latencyBounds buckets. Each
// bucket counts its own observations (not cumulated) and the total count is
// their sum, so that observing is two atomic adds and a read sees a count
// consistent with its buckets.
type histogram struct {
	buckets [len(latencyBounds) + 1]atomic.Uint64 // the last is +Inf
	sum     atomic.Int64                          // nanoseconds
}

func (h *histogram) observe(d time.Duration) {
	i := 0
	for i < len(latencyBounds) && d > latencyBounds[i] {
		i++
	}
	h.buckets[i].Add(1)
	h.sum.Add(int64(d))
}

// read returns the histogram as Prometheus wants it: the count, the sum in
// seconds, and the cumulative count of each bound in seconds.
func (h *histogram) read() (count uint64, sum float64, buckets map[float64]uint64) {
	buckets = make(map[float64]uint64, len(latencyBounds))
	for i, le := range latencyBounds {
		count += h.buckets[i].Load()
		buckets[le.Seconds()] = count
	}
	count += h.buckets[len(latencyBounds)].Load()
	return count, time.Duration(h.sum.Load()).Seconds(), buckets
}

// backendStats counts what happened with one backend. The pool hangs it on
// its balancer.Backend (see newPool), where the request path finds it.
type backendStats struct {
	// responses counts the requests answered, by the class of the
	// status the client got: the backend's, or the proxy's own when the
	// backend could not answer (502, 504).
	responses [len(statusClasses)]atomic.Uint64
	// aborts counts the requests whose client went away before the
	// response started (logged as 499): nobody got a status, and the
	// backend is not at fault, so they are not among responses. Those
	// the drainer cut are in cut instead.
	aborts atomic.Uint64
	// latency is the time to the response headers of each attempt the
	// backend answered.
	latency histogram
	// wentDown and wentUp count the active checks' changes of verdict.
	wentDown, wentUp atomic.Uint64
	ejections        atomic.Uint64 // passive ejections
	check            atomic.Pointer[checkResult]

	// last is the clock() reading when the backend last had no request in
	// flight left; 0 for never.
	last atomic.Int64
	// configured is the clock() reading when the backend was configured:
	// at the proxy's start, or by the reload that added it.
	configured time.Duration
	// upgraded and streams count the responses that may last: upgraded
	// connections (101) and responses of unknown length (chunked, event
	// streams) still being relayed.
	upgraded, streams atomic.Int64
	// cut counts what the drainer closed for outliving drain_timeout.
	cut atomic.Uint64

	// maxConns is the backend's max_conns, 0 for none; a reload sets it.
	maxConns atomic.Int64
	// pinned are the requests waiting for this backend alone, oldest
	// first, guarded by line.mu; queued is their number, read without it.
	pinned []*waiter
	queued atomic.Int64
	// open is set while the backend takes new clients, to which waiters
	// for any backend may then go.
	open atomic.Bool
	// line is the queue of the backend's pool, set before the backend
	// serves and the same for every pool a reload makes of that one.
	line *line
}

// newBackendStats returns the stats of a backend configured now.
func newBackendStats() *backendStats { return &backendStats{configured: clock()} }

// longKind tells whether a response may last, and why.
type longKind uint8

const (
	notLong      longKind = iota
	longUpgraded          // a protocol switch: the connection is relayed
	longStream            // a body of unknown length
)

// longOf classifies the response res of a backend to a request of method.
func longOf(method string, res *http.Response) longKind {
	switch {
	case res.StatusCode == http.StatusSwitchingProtocols:
		return longUpgraded
	case res.ContentLength < 0 && method != http.MethodHead:
		return longStream
	}
	return notLong
}

// began records a response that may last.
func (st *backendStats) began(k longKind) {
	switch {
	case st == nil:
	case k == longUpgraded:
		st.upgraded.Add(1)
	case k == longStream:
		st.streams.Add(1)
	}
}

// ended records the end of a request to the backend, whose response was of
// kind k.
func (st *backendStats) ended(k longKind) {
	switch {
	case st == nil:
	case k == longUpgraded:
		st.upgraded.Add(-1)
	case k == longStream:
		st.streams.Add(-1)
	}
}

// finished ends a request started with b.Begin. The time is read only when it
// was b's last request in flight: the time b went idle, which is all that
// how long it has been idle needs.
func finished(b *balancer.Backend) {
	n := b.Done()
	st := statsOf(b)
	if st == nil {
		return
	}
	if n == 0 {
		st.last.Store(int64(clock()))
	}
	if st.line != nil && st.line.waiting.Load() > 0 {
		st.line.dispatch(b)
	}
}

// idle returns how long the backend has had no request, as of the clock
// reading now: since its last request ended, or, when it has had none
// since it was configured (served is false), since it was configured. A
// proxy knows nothing of what the backend served before it started, so
// that is all it can tell of its idle time. It is only meaningful with no
// request in flight.
func (st *backendStats) idle(now time.Duration) (d time.Duration, served bool) {
	if st == nil {
		return 0, false
	}
	last := time.Duration(st.last.Load())
	if served = last != 0; !served {
		last = st.configured
	}
	return max(now-last, 0), served
}

func (st *backendStats) openUpgraded() int64 {
	if st == nil {
		return 0
	}
	return st.upgraded.Load()
}

func (st *backendStats) openStreams() int64 {
	if st == nil {
		return 0
	}
	return st.streams.Load()
}

// drainClosed records n requests closed for outliving drain_timeout.
func (st *backendStats) drainClosed(n int) {
	if st != nil {
		st.cut.Add(uint64(n))
	}
}

// checkResult is the outcome of a backend's latest active check.
type checkResult struct {
	OK     bool      `json:"ok"`
	Result string    `json:"result"` // "status 200", "timeout", ...
	Time   time.Time `json:"time"`
}

// statsOf returns the counters the pool hung on b, or nil for a backend no
// pool made; every method of a nil *backendStats counts nothing.
func statsOf(b *balancer.Backend) *backendStats {
	st, _ := b.Stats.(*backendStats)
	return st
}

// answered records a response with this status that took d to arrive.
func (st *backendStats) answered(status int, d time.Duration) {
	if st == nil {
		return
	}
	st.responses[classOf(status)].Add(1)
	st.latency.observe(d)
}

// failed records a request the backend did not answer, to which the proxy
// answered status itself.
func (st *backendStats) failed(status int) {
	if st == nil {
		return
	}
	st.responses[classOf(status)].Add(1)
}

// checked records the outcome of an active check.
func (st *backendStats) checked(ok bool, result string, at time.Time) {
	if st == nil {
		return
	}
	st.check.Store(&checkResult{OK: ok, Result: result, Time: at})
}

// transition records a change of the active checks' verdict.
func (st *backendStats) transition(up bool) {
	switch {
	case st == nil:
	case up:
		st.wentUp.Add(1)
	default:
		st.wentDown.Add(1)
	}
}

// ejected records a passive ejection.
func (st *backendStats) ejected() {
	if st != nil {
		st.ejections.Add(1)
	}
}

// requests returns the number of requests answered so far.
func (st *backendStats) requests() uint64 {
	if st == nil {
		return 0
	}
	var n uint64
	for i := range st.responses {
		n += st.responses[i].Load()
	}
	return n
}

// failed records that ex's backend did not answer, and the proxy answered
// status instead; it does nothing for a request no backend was picked for.
func (ex *exchange) failed(status int) {
	if ex != nil && ex.backend != nil {
		statsOf(ex.backend).failed(status)
	}
}

// clientAborted records that the client of ex's request went away before
// the response started; it does nothing for a request no backend was
// picked for, nor for one the drainer cut (affinity_drain_closed_total
// counts those).
func (ex *exchange) clientAborted() {
	if ex != nil && ex.backend != nil && (ex.client == nil || !ex.client.cut.Load()) {
		if st := statsOf(ex.backend); st != nil {
			st.aborts.Add(1)
		}
	}
}

// poolStats counts what happened in a pool as a whole.
type poolStats struct {
	retried  atomic.Uint64 // attempts beyond a request's first
	refusals atomic.Uint64 // requests answered 503: no backend available
	repins   atomic.Uint64 // sticky clients moved to another backend
	// Backend requests (answered 503) and health checks (no verdict)
	// that failed for want of a local resource (resource.go).
	localRequests, localChecks atomic.Uint64
	// queue holds the requests waiting for a backend at max_conns.
	queue line

	// removed holds the backends reloads took out of the pool while
	// requests still ran on them, so that one added back (same name and
	// URL) counts those requests against its max_conns and its drain.
	removedMu sync.Mutex
	removed   []*balancer.Backend
}

// keepRemoved remembers b, which a reload took out of the pool, until its
// requests end.
func (ps *poolStats) keepRemoved(b *balancer.Backend) {
	ps.removedMu.Lock()
	defer ps.removedMu.Unlock()
	ps.pruneRemoved()
	if !slices.ContainsFunc(ps.removed, func(o *balancer.Backend) bool { return o.Stats == b.Stats }) {
		ps.removed = append(ps.removed, b)
	}
}

// removedAs returns the backend a reload took out of the pool that nb, with
// the same ID and URL, stands for while requests still run on it; nil if
// none.
func (ps *poolStats) removedAs(nb *balancer.Backend) *balancer.Backend {
	ps.removedMu.Lock()
	defer ps.removedMu.Unlock()
	ps.pruneRemoved()
	i := slices.IndexFunc(ps.removed, func(o *balancer.Backend) bool {
		return o.ID == nb.ID && o.URL.String() == nb.URL.String()
	})
	if i < 0 {
		return nil
	}
	return ps.removed[i]
}

// pruneRemoved forgets the removed backends with nothing in flight;
// removedMu must be held.
func (ps *poolStats) pruneRemoved() {
	ps.removed = slices.DeleteFunc(ps.removed, func(o *balancer.Backend) bool { return o.InFlight() == 0 })
}

// poolStatsOrNew returns p's counters, or new ones when p is nil: a pool
// replacing p on a reload counts on from p's.
func (p *pool) poolStatsOrNew() *poolStats {
	if p == nil {
		return new(poolStats)
	}
	return p.poolStats
}

// serverStats counts what concerns the server rather than a pool.
type serverStats struct {
	unrouted atomic.Uint64 // requests no route matched, answered 404
	rejected atomic.Uint64 // requests refused before routing (reject.go)
}

// Metric descriptions, exported under the affinity_ namespace.
var (
	descRequests = prometheus.NewDesc("affinity_requests_total",
		"Requests answered, by pool, backend and class of the status sent to the client.",
		[]string{"pool", "backend", "class"}, nil)
	descUnsolicited = prometheus.NewDesc("affinity_backend_unsolicited_total",
		"Times the backend was seen sending bytes no request asked for (past a response, or on an idle connection), after each of which its connections serve one request each for 30s; by backend address, so pools sharing one show the same count.",
		[]string{"pool", "backend"}, nil)
	descAborts = prometheus.NewDesc("affinity_client_aborts_total",
		"Requests whose client went away before the response started (logged with status 499), by pool and backend; not in affinity_requests_total, nor those drain_timeout cut.",
		[]string{"pool", "backend"}, nil)
	descLatency = prometheus.NewDesc("affinity_upstream_latency_seconds",
		"Time from sending a request to a backend to its response headers, per attempt answered.",
		[]string{"pool", "backend"}, nil)
	descInFlight = prometheus.NewDesc("affinity_backend_in_flight",
		"Requests being forwarded to the backend.", []string{"pool", "backend"}, nil)
	descUp = prometheus.NewDesc("affinity_backend_up",
		"1 if the backend receives new requests, 0 if not.", []string{"pool", "backend"}, nil)
	descHealthy = prometheus.NewDesc("affinity_backend_healthy",
		"1 if the active health checks pass (or there are none), 0 if not.", []string{"pool", "backend"}, nil)
	descEjected = prometheus.NewDesc("affinity_backend_ejected",
		"1 while passive health has ejected the backend.", []string{"pool", "backend"}, nil)
	descTransitions = prometheus.NewDesc("affinity_health_transitions_total",
		"Changes of the active health checks' verdict, by the state entered.",
		[]string{"pool", "backend", "to"}, nil)
	descEjections = prometheus.NewDesc("affinity_passive_ejections_total",
		"Ejections of the backend by passive health.", []string{"pool", "backend"}, nil)
	descRetries = prometheus.NewDesc("affinity_retries_total",
		"Attempts beyond a request's first, on another backend.", []string{"pool"}, nil)
	descRepins = prometheus.NewDesc("affinity_sticky_repins_total",
		"Sticky clients moved to another backend because theirs was unavailable or failed.", []string{"pool"}, nil)
	descRefused = prometheus.NewDesc("affinity_requests_refused_total",
		"Requests answered 503 because the pool had no available backend.", []string{"pool"}, nil)
	descLocalErrors = prometheus.NewDesc("affinity_local_resource_errors_total",
		"Backend requests (answered 503) and health checks (no verdict) that failed for want of a resource of the proxy's host (descriptors, socket buffers), blamed on no backend; by pool and during (request or check).",
		[]string{"pool", "during"}, nil)
	descUnrouted = prometheus.NewDesc("affinity_requests_unrouted_total",
		"Requests no route matched, answered 404.", nil, nil)
	descRejected = prometheus.NewDesc("affinity_requests_rejected_total",
		"Requests rejected before routing: asking for a tunnel (501) or not forwardable as HTTP/1.1 (400).", nil, nil)
	descReloads = prometheus.NewDesc("affinity_config_reloads_total",
		"Configuration reloads, by result (ok or failed).", []string{"result"}, nil)
	descCertNotAfter = prometheus.NewDesc("affinity_tls_cert_not_after_timestamp_seconds",
		"When the certificate the TLS listener serves expires, as a Unix time.", nil, nil)
	descLearnEntries = prometheus.NewDesc("affinity_learn_entries",
		"Sessions held in the learn balancer's table (expired ones count until swept).", []string{"pool"}, nil)
	descLearnEvictions = prometheus.NewDesc("affinity_learn_evictions_total",
		"Sessions dropped from the learn balancer's table to stay within max_entries.", []string{"pool"}, nil)
	descLearnStoreErrors = prometheus.NewDesc("affinity_learn_store_errors_total",
		"Failed reads and writes of the learn balancer's shared (Redis) table, each counted once, whether a write was sent later or lost.", []string{"pool"}, nil)
	descLearnStoreLost = prometheus.NewDesc("affinity_learn_store_lost_total",
		"Writes to the learn balancer's shared (Redis) table never made: past the bounds of those held while Redis did not answer, left at shutdown, or refused by Redis.", []string{"pool"}, nil)
	descLearnStoreHeld = prometheus.NewDesc("affinity_learn_store_held",
		"Writes to the learn balancer's shared (Redis) table held while Redis does not answer, to be sent once it does.", []string{"pool"}, nil)
	descState = prometheus.NewDesc("affinity_backend_state",
		"1 for the backend's administrative state (ready, drain, maint, or removed while a removed backend still serves), 0 for the others.",
		[]string{"pool", "backend", "state"}, nil)
	descUpgraded = prometheus.NewDesc("affinity_backend_upgraded",
		"Upgraded connections (WebSocket) open to the backend.", []string{"pool", "backend"}, nil)
	descStreams = prometheus.NewDesc("affinity_backend_streams",
		"Responses of unknown length (chunked, event streams) being relayed from the backend.", []string{"pool", "backend"}, nil)
	descLastRequest = prometheus.NewDesc("affinity_backend_last_request_timestamp_seconds",
		"When the latest request to the backend ended, as a Unix time; absent before the first.", []string{"pool", "backend"}, nil)
	descDrainClosed = prometheus.NewDesc("affinity_drain_closed_total",
		"Requests and connections closed because they outlived drain_timeout on a backend that was not ready.",
		[]string{"pool", "backend"}, nil)
	descLearnSessions = prometheus.NewDesc("affinity_learn_sessions",
		"Live sessions the learn balancer's table pins to the backend.", []string{"pool", "backend"}, nil)
	descClientConns = prometheus.NewDesc("affinity_client_connections",
		"Open client connections of the listeners accepting now: served (active, or idle for less than server.park_after) or parked (idle longer, held without a goroutine).",
		[]string{"state"}, nil)
	descDiscoveryErrors = prometheus.NewDesc("affinity_discovery_errors_total",
		"Lookups of a pool's DNS name that failed or found no record; the backends known last kept serving.",
		[]string{"pool"}, nil)
	descDiscoveryRefused = prometheus.NewDesc("affinity_discovery_refused_total",
		"Discovered records refused because they point at the proxy's own listen or admin address.",
		[]string{"pool"}, nil)
	descDiscoveryIgnored = prometheus.NewDesc("affinity_discovery_ignored_total",
		"Discovered records left out because the answer listed more backends than a pool may take from DNS.",
		[]string{"pool"}, nil)
	descDiscoveryAnswer = prometheus.NewDesc("affinity_discovery_last_answer_timestamp_seconds",
		"When DNS last answered a pool's lookup with records, as a Unix time; absent before the first.",
		[]string{"pool"}, nil)
	descConnsMax = prometheus.NewDesc("affinity_client_connections_max",
		"server.max_conns: the client connections open at once past which the proxy accepts no more until one closes; absent when there is no limit.",
		nil, nil)
	descAcceptPauses = prometheus.NewDesc("affinity_accept_pauses_total",
		"Times the proxy stopped accepting because its client connections were at server.max_conns.",
		nil, nil)
	descSlowClients = prometheus.NewDesc("affinity_slow_clients_total",
		"Slow clients cut: reason send, a connection (an HTTP/2 stream) whose write made no progress for server.send_timeout; reason body, a request body slower than server.min_body_rate, answered 408.",
		[]string{"reason"}, nil)
	descConfig = prometheus.NewDesc("affinity_config_info",
		"Always 1; hash is the SHA-256 of the configuration file in use, empty for one built in code.",
		[]string{"hash"}, nil)
)

// collector exports a Server's counters to Prometheus. It reads the state
// in service at each scrape, so that a reload's pools and backends appear
// and those it removed go.
type collector struct{ s *Server }

// Describe sends every metric's description.
func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		descRequests, descAborts, descUnsolicited, descLatency, descInFlight, descUp, descHealthy, descEjected, descTransitions,
		descEjections, descRetries, descRepins, descRefused, descLocalErrors, descUnrouted, descRejected, descReloads, descCertNotAfter, descConfig, descClientConns, descConnsMax, descAcceptPauses, descSlowClients,
		descLearnEntries, descLearnEvictions, descLearnStoreErrors, descLearnStoreLost, descLearnStoreHeld, descLearnSessions,
		descState, descUpgraded, descStreams, descLastRequest, descDrainClosed,
		descDiscoveryErrors, descDiscoveryRefused, descDiscoveryIgnored, descDiscoveryAnswer,
		descQueueWaiting, descQueuePinned, descQueueWait, descQueueRefused, descMaxConns,
	} {
		ch <- d
	}
}

// Collect sends the current value of every metric.
func (c collector) Collect(ch chan<- prometheus.Metric) {
	s := c.s
	rs := s.ReloadStats()
	emit(ch, descUnrouted, prometheus.CounterValue, float64(s.stats.unrouted.Load()))
	emit(ch, descRejected, prometheus.CounterValue, float64(s.stats.rejected.Load()))
	emit(ch, descReloads, prometheus.CounterValue, float64(rs.OK), "ok")
	emit(ch, descReloads, prometheus.CounterValue, float64(rs.Failed), "failed")
	emit(ch, descConfig, prometheus.GaugeValue, 1, rs.Hash)
	if s.cert != nil {
		emit(ch, descCertNotAfter, prometheus.GaugeValue, float64(s.cert.cur.Load().Leaf.NotAfter.Unix()))
	}
	emit(ch, descSlowClients, prometheus.CounterValue, float64(s.slow.sends.Load()), "send")
	emit(ch, descSlowClients, prometheus.CounterValue, float64(s.slow.bodies.Load()), "body")
	served, parked := s.clientConns()
	emit(ch, descClientConns, prometheus.GaugeValue, float64(served), "served")
	emit(ch, descClientConns, prometheus.GaugeValue, float64(parked), "parked")
	if l := s.conns; l != nil {
		emit(ch, descConnsMax, prometheus.GaugeValue, float64(l.max))
		emit(ch, descAcceptPauses, prometheus.CounterValue, float64(l.pauses.Load()))
	}
	wall, mono := time.Now(), clock()
	type poolBackend struct{ pool, backend string }
	seen := map[poolBackend]bool{}
	for _, p := range s.state.Load().pools {
		emit(ch, descRetries, prometheus.CounterValue, float64(p.retried.Load()), p.name)
		emit(ch, descRepins, prometheus.CounterValue, float64(p.repins.Load()), p.name)
		emit(ch, descRefused, prometheus.CounterValue, float64(p.refusals.Load()), p.name)
		emit(ch, descLocalErrors, prometheus.CounterValue, float64(p.localRequests.Load()), p.name, "request")
		emit(ch, descLocalErrors, prometheus.CounterValue, float64(p.localChecks.Load()), p.name, "check")
		collectQueue(ch, p)
		if d := p.discovery; d != nil {
			st := d.status(wall, 0)
			emit(ch, descDiscoveryErrors, prometheus.CounterValue, float64(st.Errors), p.name)
			emit(ch, descDiscoveryRefused, prometheus.CounterValue, float64(d.refused.Load()), p.name)
			emit(ch, descDiscoveryIgnored, prometheus.CounterValue, float64(d.ignored.Load()), p.name)
			if st.LastAnswer != nil {
				emit(ch, descDiscoveryAnswer, prometheus.GaugeValue, float64(st.LastAnswer.UnixMilli())/1e3, p.name)
			}
		}
		if t, ok := p.policy.(balancer.StickTable); ok {
			emit(ch, descLearnEntries, prometheus.GaugeValue, float64(t.Len()), p.name)
			emit(ch, descLearnEvictions, prometheus.CounterValue, float64(t.Evictions()), p.name)
			emit(ch, descLearnStoreErrors, prometheus.CounterValue, float64(t.StoreErrors()), p.name)
			emit(ch, descLearnStoreLost, prometheus.CounterValue, float64(t.StoreLost()), p.name)
			emit(ch, descLearnStoreHeld, prometheus.GaugeValue, float64(t.StoreHeld()), p.name)
			for id, n := range t.Sessions() {
				emit(ch, descLearnSessions, prometheus.GaugeValue, float64(n), p.name, id)
			}
		}
		for _, m := range p.view() {
			seen[poolBackend{p.name, m.backend.ID}] = true
			collectBackend(ch, p.name, m, wall, mono)
		}
	}
	// A removed backend still serving, unless a backend of the same name
	// has taken its place, whose labels it would repeat.
	for _, r := range s.leaving.current() {
		if !seen[poolBackend{r.pool, r.backend.ID}] {
			collectBackend(ch, r.pool, removedView(r), wall, mono)
		}
	}
}

// adminStates are the label values of affinity_backend_state.
var adminStates = [...]string{string(config.StateReady), string(config.StateDrain), string(config.StateMaint), stateRemoved}

// collectBackend sends the metrics of one backend; wall and mono are the
// same moment by the wall clock and by clock().
func collectBackend(ch chan<- prometheus.Metric, pool string, m backendView, wall time.Time, mono time.Duration) {
	id, st := m.backend.ID, m.stats
	if st == nil {
		return
	}
	for _, state := range adminStates {
		emit(ch, descState, prometheus.GaugeValue, flag(m.stateName() == state), pool, id, state)
	}
	emit(ch, descUpgraded, prometheus.GaugeValue, float64(st.openUpgraded()), pool, id)
	emit(ch, descStreams, prometheus.GaugeValue, float64(st.openStreams()), pool, id)
	if d, served := st.idle(mono); served {
		emit(ch, descLastRequest, prometheus.GaugeValue, float64(wall.Add(-d).UnixMilli())/1e3, pool, id)
	}
	emit(ch, descDrainClosed, prometheus.CounterValue, float64(st.cut.Load()), pool, id)
	for i, class := range statusClasses {
		emit(ch, descRequests, prometheus.CounterValue, float64(st.responses[i].Load()), pool, id, class)
	}
	emit(ch, descAborts, prometheus.CounterValue, float64(st.aborts.Load()), pool, id)
	emit(ch, descUnsolicited, prometheus.CounterValue, float64(unsolicitedFrom(m.backend.URL)), pool, id)
	count, sum, buckets := st.latency.read()
	if h, err := prometheus.NewConstHistogram(descLatency, count, sum, buckets, pool, id); err != nil {
		ch <- prometheus.NewInvalidMetric(descLatency, err)
	} else {
		ch <- h
	}
	emit(ch, descInFlight, prometheus.GaugeValue, float64(m.backend.InFlight()), pool, id)
	collectLimit(ch, pool, id, st)
	emit(ch, descUp, prometheus.GaugeValue, flag(m.available), pool, id)
	emit(ch, descHealthy, prometheus.GaugeValue, flag(m.healthy), pool, id)
	emit(ch, descEjected, prometheus.GaugeValue, flag(m.ejected), pool, id)
	emit(ch, descTransitions, prometheus.CounterValue, float64(st.wentUp.Load()), pool, id, "up")
	emit(ch, descTransitions, prometheus.CounterValue, float64(st.wentDown.Load()), pool, id, "down")
	emit(ch, descEjections, prometheus.CounterValue, float64(st.ejections.Load()), pool, id)
}

// emit sends one metric. Label values come from the configuration; one
// that Prometheus refuses (not UTF-8, in a Config built in code) fails that
// metric's scrape with an error rather than panicking.
func emit(ch chan<- prometheus.Metric, d *prometheus.Desc, t prometheus.ValueType, v float64, labels ...string) {
	m, err := prometheus.NewConstMetric(d, t, v, labels...)
	if err != nil {
		m = prometheus.NewInvalidMetric(d, err)
	}
	ch <- m
}

func flag(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
