package proxy

import (
	"errors"
	"net/http"
	"reflect"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/affinityproxy/affinity/balancer"
)

// A backend's max_conns and its pool's queue, as HAProxy's server maxconn
// and queue: a request whose backend is full waits, first come first served,
// for a place to free rather than being sent on. A request pinned to its
// backend (its sticky cookie, learned session or hash key points there)
// waits for that one; any other goes to a backend with room, and waits for
// whichever frees first only when none has room. Waiting is bounded by the
// pool's queue.max and queue.timeout; past either the client gets 503.
//
// The counts a limit is held to are the backends' in-flight counts, which
// every request keeps anyway (balancer.Backend.Begin), so that the requests
// begun before a reload set a limit count against it, and those begun on
// the pools a reload replaced count against the new pool's. A backend
// without max_conns costs its requests one atomic load more.

var (
	errQueueFull    = errors.New("queue full")
	errQueueTimeout = errors.New("queue timeout")
)

// Why the queue refused a request: an index of line.refused and of
// queueReasons, the metric's labels.
const (
	reasonFull = iota
	reasonTimeout
	// reasonLeft: the client left while waiting; it got no answer.
	reasonLeft
)

var queueReasons = [...]string{reasonFull: "full", reasonTimeout: "timeout", reasonLeft: "left"}

// line is a pool's waiting room. It lives in the pool's poolStats, so that
// the pools a reload makes of one configured pool share it: a place freed
// on any of them goes to the oldest waiter of all.
type line struct {
	// waiting counts the requests waiting, pinned or not. A request
	// whose place frees reads it after giving the place back, and a
	// waiter increments it before its last look for a free place, so
	// that neither misses the other; see dispatch.
	waiting atomic.Int64

	mu      sync.Mutex // guards the rest, and each backendStats.pinned
	seq     uint64     // numbers waiters in arrival order, across all queues
	loose   []*waiter  // waiters for any backend with room, oldest first
	max     int        // queue.max
	timeout time.Duration

	// cur is the pool in service of those sharing the line, from which a
	// waiter sent back to the balancer picks again: the pool it came in by
	// may have been replaced by a reload that moved it.
	cur atomic.Pointer[pool]

	waited histogram // time each request admitted after waiting waited
	// refused counts the requests the queue answered 503, by reason,
	// and those whose client left while waiting (reasonLeft).
	refused [len(queueReasons)]atomic.Uint64
}

// waiter is a request waiting for a place.
type waiter struct {
	seq uint64
	// got receives the backend on which the request was begun, once;
	// buffered so that dispatch never blocks.
	got chan *balancer.Backend
}

// configure sets the queue's bounds from a (re)loaded pool; its rebuild
// then lets in the waiters that a limit raised or removed makes room for.
func (l *line) configure(max int, timeout time.Duration) {
	l.mu.Lock()
	l.max, l.timeout = max, timeout
	l.mu.Unlock()
}

// retryAfter is the Retry-After a refused client gets: the queue's timeout
// in whole seconds, rounded up, at least 1.
func (l *line) retryAfter() string {
	l.mu.Lock()
	d := l.timeout
	l.mu.Unlock()
	return strconv.FormatInt(max(1, int64((d+time.Second-1)/time.Second)), 10)
}

// begin begins a request on b, or reports that b is full: it has a
// max_conns that its requests in flight reach, or pinned waiters who come
// first. A backend without max_conns is never full.
func begin(b *balancer.Backend) bool {
	st := statsOf(b)
	if st == nil {
		b.Begin()
		return true
	}
	if st.maxConns.Load() == 0 {
		b.Begin()
		return true
	}
	return st.queued.Load() == 0 && st.take(b)
}

// take begins a request on b, whose stats st are, if its max_conns leaves
// room, whoever waits for it.
func (st *backendStats) take(b *balancer.Backend) bool {
	if limit := st.maxConns.Load(); limit > 0 {
		return b.TryBegin(limit)
	}
	b.Begin()
	return true
}

// withRoom returns an available backend not in skip on which it began the
// request, and the Set-Cookie header that pins the client there; nil when
// every one is full or in skip. skip[0] is the request's first pick.
func (p *pool) withRoom(r *http.Request, skip []*balancer.Backend) (*balancer.Backend, string) {
	skip = slices.Clip(skip)
	for range len(p.snap.Load().available) {
		nb, setCookie := p.alternative(r, skip)
		if nb == nil {
			return nil, ""
		}
		if begin(nb) {
			return nb, setCookie
		}
		skip = append(skip, nb)
	}
	return nil, ""
}

// admission is where admit began a request.
type admission struct {
	// pool is the pool that admitted it: the one it came in by, or the
	// one replacing it when a reload sent the request back to the
	// balancer while it waited.
	pool      *pool
	backend   *balancer.Backend
	setCookie string // the Set-Cookie header to send, "" for none
	// sticky is the pick's, or StickyRepinned when the request waited
	// for a backend that stopped taking it and went to another.
	sticky balancer.Sticky
	queued time.Duration // time waited in the queue, for the access log
}

// admit begins r's request on pk's backend, or, when that one is full, on
// another with room if the request is not pinned to it (see wait), or
// waits in the queue. The error is errQueueFull or errQueueTimeout when the
// queue refused the request, the context's when the client left while
// waiting.
func (p *pool) admit(r *http.Request, pk balancer.Pick) (admission, error) {
	return p.admitWaiting(r, pk, notQueued)
}

// notQueued is admitWaiting's since for a request that has not waited.
const notQueued time.Duration = -1

// admitWaiting is admit for a request that began waiting at since (a
// clock reading), or notQueued: one sent back to the balancer while it
// waited waits for what is left of its queue.timeout, not for a new one.
func (p *pool) admitWaiting(r *http.Request, pk balancer.Pick, since time.Duration) (admission, error) {
	b := pk.Backend
	if begin(b) {
		return admission{pool: p, backend: b, setCookie: pk.SetCookie, sticky: pk.Sticky}, nil
	}
	pinned := pk.Sticky == balancer.StickyKept
	a, err := p.wait(r, b, pinned, pk.SetCookie, since)
	if a.pool == nil {
		// Not sent back to the balancer (repick sets both).
		a.pool, a.sticky = p, pk.Sticky
		if err == nil && pk.Sticky == balancer.StickyRepinned && a.backend.Stats != b.Stats {
			// It waited for any backend, its own being out of
			// service, and got another than the one it was to be
			// moved to: its own, back meanwhile (maint, then
			// ready), keeps it.
			if now, perr := p.pick(r); perr == nil && now.Sticky == balancer.StickyKept && now.Backend.Stats == a.backend.Stats {
				a.sticky, a.setCookie = balancer.StickyKept, ""
			}
		}
	}
	return a, err
}

// wait queues r: for b when pinned, for any backend otherwise, unless a
// backend has room for it now. Other backends are looked at under the
// queue's lock, so that a place freed meanwhile goes to the oldest waiter.
// since is when r began waiting, if it waited before (see admitWaiting).
func (p *pool) wait(r *http.Request, b *balancer.Backend, pinned bool, setCookie string, since time.Duration) (a admission, err error) {
	l, st := &p.queue, statsOf(b)
	w := &waiter{got: make(chan *balancer.Backend, 1)}
	l.mu.Lock()
	l.waiting.Add(1)
	// A place may have freed since the first look, given back by a
	// request that saw nobody waiting.
	if pinned && len(st.pinned) == 0 && st.take(b) {
		l.waiting.Add(-1)
		l.mu.Unlock()
		return admission{backend: b, setCookie: setCookie}, nil
	}
	if !pinned {
		nb, c := b, setCookie
		if !begin(b) {
			nb, c = p.withRoom(r, []*balancer.Backend{b})
		}
		if nb != nil {
			l.waiting.Add(-1)
			l.mu.Unlock()
			return admission{backend: nb, setCookie: c}, nil
		}
	}
	if l.waiting.Load() > int64(l.max) {
		l.waiting.Add(-1)
		l.mu.Unlock()
		l.refused[reasonFull].Add(1)
		return admission{}, errQueueFull
	}
	start := since
	if start == notQueued {
		start = clock()
	}
	timeout := l.timeout - (clock() - start)
	if timeout <= 0 {
		// Sent back to the balancer with none of its wait left.
		l.waiting.Add(-1)
		l.mu.Unlock()
		l.refused[reasonTimeout].Add(1)
		return admission{}, errQueueTimeout
	}
	l.seq++
	w.seq = l.seq
	if pinned {
		st.pinned = append(st.pinned, w)
		st.queued.Add(1)
	} else {
		l.loose = append(l.loose, w)
	}
	l.mu.Unlock()

	moved := false
	defer func() {
		// The whole wait, moves back to the balancer included, is the
		// first wait's to tell: one sent back may wait again.
		if since == notQueued {
			a.queued = clock() - start
			if err == nil {
				l.waited.observe(a.queued)
			}
		}
		if gone := r.Context().Err(); gone != nil && !moved && errors.Is(err, gone) {
			l.refused[reasonLeft].Add(1)
		}
	}()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case nb := <-w.got:
		if nb == nil {
			// Its backend no longer takes it (down, maint, removed,
			// moved to another URL): the balancer moves it as it
			// moves the client's next requests.
			moved = true
			a, err = p.repick(r, start)
			if err == nil && pinned && a.backend.ID != b.ID && reflect.DeepEqual(a.pool.balancer, p.balancer) {
				// Moved off its sticky backend, whatever the pick
				// says of a cookie naming a backend it no longer
				// knows. Under a balancer a reload changed, the
				// pick says what the client is to it (new to a
				// cookie of another name, none to a hash without
				// its key, or round-robin).
				a.sticky = balancer.StickyRepinned
			}
			return a, err
		}
		return p.placed(r, nb, pinned, setCookie)
	case <-t.C:
		err = errQueueTimeout
	case <-r.Context().Done():
		err = r.Context().Err()
	}
	if !l.leave(w, st, pinned) {
		// dispatch handed it a place as it gave up: a timeout takes
		// it, a client gone gives it back.
		nb := <-w.got
		if nb == nil {
			return admission{}, err
		}
		if err == errQueueTimeout {
			return p.placed(r, nb, pinned, setCookie)
		}
		finished(nb)
		return admission{}, err
	}
	if err == errQueueTimeout {
		l.refused[reasonTimeout].Add(1)
	}
	return admission{}, err
}

// repick admits r anew, after the backend it waited for since then stopped
// taking it: on the pool now in service, which a reload may have made
// since r came in. A client pinned there and moved elsewhere is repinned.
func (p *pool) repick(r *http.Request, since time.Duration) (admission, error) {
	if cur := p.queue.cur.Load(); cur != nil {
		p = cur
	}
	pk, err := p.pick(r)
	if err != nil {
		p.refused(err)
		return admission{pool: p}, err
	}
	return p.admitWaiting(r, pk, since)
}

// evict sends the waiters pinned to a backend that takes nobody now (down,
// maint, removed) back to the balancer, rather than letting them wait out
// queue.timeout for it.
func (l *line) evict(st *backendStats) {
	if st == nil || st.queued.Load() == 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, w := range st.pinned {
		w.got <- nil
	}
	l.waiting.Add(-int64(len(st.pinned)))
	st.queued.Add(-int64(len(st.pinned)))
	st.pinned = nil
}

// placed returns what a waiter admitted on nb forwards to: nb as this pool
// knows it (a place may free on a Backend of the pool a reload replaced),
// and the cookie pinning the client there.
func (p *pool) placed(r *http.Request, nb *balancer.Backend, pinned bool, setCookie string) (admission, error) {
	st := statsOf(nb)
	if i := slices.IndexFunc(p.backends, func(o *balancer.Backend) bool { return o.Stats == st }); i >= 0 {
		nb = p.backends[i]
	}
	if pinned {
		return admission{backend: nb, setCookie: setCookie}, nil
	}
	s := p.snap.Load()
	if s.pinner == nil {
		return admission{backend: nb}, nil
	}
	// The pinner's choice among the others all skipped is nb, with the
	// cookie that pins the client there.
	skip := make([]*balancer.Backend, 0, len(s.available))
	for _, o := range s.available {
		if o.Stats != st {
			skip = append(skip, o)
		}
	}
	if c, cookie, ok := s.pinner.Repin(r, skip); ok && c.Stats == st {
		return admission{backend: nb, setCookie: cookie}, nil
	}
	return admission{backend: nb}, nil
}

// leave takes w out of its queue, and reports whether it was still there.
func (l *line) leave(w *waiter, st *backendStats, pinned bool) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	q := &l.loose
	if pinned {
		q = &st.pinned
	}
	i := slices.Index(*q, w)
	if i < 0 {
		return false
	}
	*q = slices.Delete(*q, i, i+1)
	l.waiting.Add(-1)
	if pinned {
		st.queued.Add(-1)
	}
	return true
}

// dispatch hands the places free on b to its waiters, oldest first: those
// pinned to it, and those waiting for any backend if b takes new clients.
// Called after a request on b ended whenever anyone waits (finished), and
// after b's limit or state changed.
func (l *line) dispatch(b *balancer.Backend) {
	st := statsOf(b)
	if st == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for {
		var w *waiter
		pinned := len(st.pinned) > 0
		if pinned {
			w = st.pinned[0]
		}
		if len(l.loose) > 0 && st.open.Load() && (w == nil || l.loose[0].seq < w.seq) {
			w, pinned = l.loose[0], false
		}
		if w == nil {
			return
		}
		if !st.take(b) {
			return
		}
		if pinned {
			st.pinned = slices.Delete(st.pinned, 0, 1)
			st.queued.Add(-1)
		} else {
			l.loose = slices.Delete(l.loose, 0, 1)
		}
		l.waiting.Add(-1)
		w.got <- b
	}
}

// wake hands free places on p's backends to waiters, after a rebuild or a
// reload that may have made room: a limit raised or removed, a backend that
// takes new clients again.
func (p *pool) wake() {
	if p.queue.waiting.Load() == 0 {
		return
	}
	for _, b := range p.backends {
		p.queue.dispatch(b)
	}
}

// queueRefused answers a request the queue did not admit: 503 with
// Retry-After when it was full or the wait timed out, nothing when the
// client left (the access log records 499).
func (p *pool) queueRefused(w http.ResponseWriter, r *http.Request, body *clientBody, err error) {
	if r.Context().Err() != nil && !errors.Is(err, errQueueFull) && !errors.Is(err, errQueueTimeout) {
		recordUnsent(w, statusClientClosed)
		panic(http.ErrAbortHandler)
	}
	body.closeUnlessRead(w.Header(), http.StatusServiceUnavailable)
	w.Header().Set("Retry-After", p.queue.retryAfter())
	writeError(w, http.StatusServiceUnavailable)
}

// The queue's metrics; see docs/operations.md.
var (
	descQueueWaiting = prometheus.NewDesc("affinity_queue_waiting",
		"Requests waiting for a backend of the pool at max_conns, pinned to one or not.", []string{"pool"}, nil)
	descQueuePinned = prometheus.NewDesc("affinity_queue_waiting_pinned",
		"Requests waiting for this backend alone: their sticky cookie, learned session or hash key pins them to it.",
		[]string{"pool", "backend"}, nil)
	descQueueWait = prometheus.NewDesc("affinity_queue_wait_seconds",
		"Time waited in the queue by each request that then got a backend.", []string{"pool"}, nil)
	descQueueRefused = prometheus.NewDesc("affinity_queue_refused_total",
		"Requests the queue did not admit, by reason: full (queue.max were waiting) or timeout (queue.timeout passed), answered 503; left (the client went away while waiting).",
		[]string{"pool", "reason"}, nil)
	descMaxConns = prometheus.NewDesc("affinity_backend_max_conns",
		"The backend's max_conns, against affinity_backend_in_flight; absent when it has none.", []string{"pool", "backend"}, nil)
)

// collectQueue sends the metrics of p's queue.
func collectQueue(ch chan<- prometheus.Metric, p *pool) {
	l := &p.queue
	emit(ch, descQueueWaiting, prometheus.GaugeValue, float64(l.waiting.Load()), p.name)
	for i, reason := range queueReasons {
		emit(ch, descQueueRefused, prometheus.CounterValue, float64(l.refused[i].Load()), p.name, reason)
	}
	count, sum, buckets := l.waited.read()
	if h, err := prometheus.NewConstHistogram(descQueueWait, count, sum, buckets, p.name); err != nil {
		ch <- prometheus.NewInvalidMetric(descQueueWait, err)
	} else {
		ch <- h
	}
}

// collectLimit sends the max_conns of a backend and its pinned waiters.
func collectLimit(ch chan<- prometheus.Metric, pool, id string, st *backendStats) {
	if n := st.maxConns.Load(); n > 0 {
		emit(ch, descMaxConns, prometheus.GaugeValue, float64(n), pool, id)
	}
	emit(ch, descQueuePinned, prometheus.GaugeValue, float64(st.queued.Load()), pool, id)
}
