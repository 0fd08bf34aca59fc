package balancer

import (
	"net/http"
	"slices"
	"sync/atomic"
)

func init() {
	Register("round-robin", func(Options) (Policy, error) { return &roundRobin{}, nil })
}

// roundRobin spreads requests over the available backends in proportion to
// their weights, interleaved rather than in bursts.
type roundRobin struct {
	// next lives in the Policy, not the Picker, so that a rebuild on a health
	// change continues the rotation instead of sending the next request of
	// every rebuild to the first backend.
	next atomic.Uint64
}

// Build precomputes the rotation over s.Available.
func (p *roundRobin) Build(s Set) Picker {
	return rrPicker{w: newWRR(s.Available, s.Warming, &p.next)}
}

type rrPicker struct{ w wrr }

func (p rrPicker) Pick(*http.Request) (Pick, error) {
	i, ok := p.w.pick()
	if !ok {
		return Pick{}, ErrNoBackend
	}
	return Pick{Backend: p.w.backends[i], Sticky: StickyNone}, nil
}

// wrr is a smooth weighted rotation over a fixed list of backends: one period
// of seq holds backend i exactly w_i = Weight_i/g times (g the gcd of the
// weights), spread evenly. The sequence is precomputed so that a pick is one
// atomic add and two loads. The cookie and hash policies reuse it to place
// clients that carry no affinity yet.
type wrr struct {
	backends []*Backend     // input, in config order
	seq      []uint32       // derived: indexes into backends, one period
	next     *atomic.Uint64 // shared with the Policy, survives rebuilds
}

// newWRR precomputes the rotation over backends in O(W log n) time and
// 4 bytes per entry, W = sum of w_i being the period. A backend in warming
// takes that fraction of its weight (see warmWeights).
//
// Slot k of the period is time k/W. Backend i's n-th turn is released at
// (n-1)/w_i and due at n/w_i; each slot goes to the released turn due first
// (earliest eligible deadline first). Some turn is always released, every
// backend is at most one turn ahead of or behind its exact share at any slot,
// and each backend has exactly w_i slots per period. Without the release
// rule, turns pile up where deadlines coincide: 1:1:1:1:4 would send four
// requests in a row to the heavy backend.
func newWRR(backends []*Backend, warming map[*Backend]float64, next *atomic.Uint64) wrr {
	w := wrr{backends: backends, next: next}
	if len(backends) == 0 {
		return w
	}
	weights := warmWeights(backends, warming)
	g := 0
	for _, wi := range weights {
		g = gcd(g, wi)
	}
	ready := turns{due: true}
	var waiting turns
	total := 0
	for i := range backends {
		wi := weights[i] / g
		ready.push(turn{idx: uint32(i), n: 1, w: wi})
		total += wi
	}
	w.seq = make([]uint32, total)
	for k := range w.seq {
		for len(waiting.t) > 0 && waiting.t[0].released(k, total) {
			ready.push(waiting.pop())
		}
		t := ready.pop()
		w.seq[k] = t.idx
		t.n++
		waiting.push(t)
	}
	return w
}

// pick returns the index in backends of the next backend of the rotation,
// or false when there is none. It takes no lock and does not allocate.
func (w *wrr) pick() (int, bool) {
	if len(w.seq) == 0 {
		return 0, false
	}
	k := w.next.Add(1) - 1
	return int(w.seq[k%uint64(len(w.seq))]), true
}

// pickExcept returns the index of the next backend of the rotation, or the
// first after it in config order that is not in skip; false when skip holds
// every backend. It serves retries, which skip the backends they tried.
func (w *wrr) pickExcept(skip []*Backend) (int, bool) {
	i, ok := w.pick()
	if !ok {
		return 0, false
	}
	n := len(w.backends)
	for k := range n {
		if j := (i + k) % n; !slices.Contains(skip, w.backends[j]) {
			return j, true
		}
	}
	return 0, false
}

// WarmSteps is how finely a warming backend's share is counted: its
// weight is scaled by this, and a fraction of it taken, so that a ramp in
// steps of 1/WarmSteps of the weight is exact, and the rotation's period
// grows by at most this factor while any backend warms.
const WarmSteps = 20

// warmWeights returns the weights backends take new clients by: each
// backend's weight, or with any backend warming, every weight times
// WarmSteps, a warming one's times its fraction (at least 1).
func warmWeights(backends []*Backend, warming map[*Backend]float64) []int {
	out := make([]int, len(backends))
	for i, b := range backends {
		out[i] = weightOf(b)
		if len(warming) == 0 {
			continue
		}
		out[i] *= WarmSteps
		if f, ok := warming[b]; ok && f > 0 && f < 1 {
			out[i] = max(1, int(float64(out[i])*f))
		}
	}
	return out
}

// weightOf guards against a Backend built without NewBackend.
func weightOf(b *Backend) int {
	if b.Weight < 1 {
		return 1
	}
	return b.Weight
}

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// turn is backend idx's n-th turn of the period, released at (n-1)/w and due
// at n/w. Times are compared exactly by cross-multiplication; the products
// stay far below 2^63 for any realistic pool.
type turn struct {
	idx uint32
	n   int
	w   int
}

// released reports whether the turn may take slot k of a period of total.
func (t turn) released(k, total int) bool { return (t.n-1)*total <= k*t.w }

// turns is a binary min-heap of turns ordered by deadline (due) or by release
// time, ties broken by weight then config order so the sequence depends on
// nothing else.
type turns struct {
	t   []turn
	due bool
}

func (h *turns) less(a, b turn) bool {
	an, bn := a.n, b.n
	if !h.due {
		an, bn = an-1, bn-1
	}
	if l, r := an*b.w, bn*a.w; l != r {
		return l < r
	}
	// Of turns due together, the heavier backend goes first: it has the
	// shorter gap to its next turn, which would otherwise fall right after
	// this one (1:1:1:1:4 would end its period with the heavy backend twice).
	if a.w != b.w {
		return a.w > b.w
	}
	return a.idx < b.idx
}

func (h *turns) push(t turn) {
	h.t = append(h.t, t)
	for i := len(h.t) - 1; i > 0; {
		p := (i - 1) / 2
		if !h.less(h.t[i], h.t[p]) {
			break
		}
		h.t[i], h.t[p] = h.t[p], h.t[i]
		i = p
	}
}

func (h *turns) pop() turn {
	top := h.t[0]
	last := len(h.t) - 1
	h.t[0] = h.t[last]
	h.t = h.t[:last]
	for i := 0; ; {
		m := i
		if l := 2*i + 1; l < len(h.t) && h.less(h.t[l], h.t[m]) {
			m = l
		}
		if r := 2*i + 2; r < len(h.t) && h.less(h.t[r], h.t[m]) {
			m = r
		}
		if m == i {
			return top
		}
		h.t[i], h.t[m] = h.t[m], h.t[i]
		i = m
	}
}
