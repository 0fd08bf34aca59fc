package balancer

import (
	"errors"
	"io"
	"net/http/httptest"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"
)

// rrSequence returns the IDs of n consecutive picks.
func rrSequence(t *testing.T, p Picker, n int) []string {
	t.Helper()
	r := httptest.NewRequest("GET", "/", nil)
	ids := make([]string, n)
	for i := range ids {
		pk := mustPick(t, p, r)
		if pk.Sticky != StickyNone || pk.SetCookie != "" {
			t.Fatalf("round-robin pick %+v: want no affinity and no cookie", pk)
		}
		ids[i] = pk.Backend.ID
	}
	return ids
}

func TestRoundRobinDistribution(t *testing.T) {
	tests := []struct {
		weights []int
		period  int // sum of weights divided by their gcd
		maxRun  int // longest run of one backend allowed, across periods
	}{
		{[]int{1}, 1, 1 << 30},
		{[]int{1, 1, 1}, 3, 1},
		{[]int{1, 2, 3}, 6, 1},
		{[]int{2, 4, 6}, 6, 1},
		{[]int{5, 1}, 6, 5},
		{[]int{3, 7, 11}, 21, 2},
		{[]int{1, 1, 1, 1, 4}, 8, 1},
		{[]int{1000, 1}, 1001, 1000},
		{[]int{10, 10, 10, 10, 10, 1}, 51, 1},
	}
	for _, tt := range tests {
		t.Run(idsName(tt.weights), func(t *testing.T) {
			bs := testBackends(nil, tt.weights...)
			p := mustPolicy(t, "round-robin", Options{}).Build(allAvailable(bs))
			// Start off a period boundary: any window of whole periods is exact.
			rrSequence(t, p, tt.period/2+1)
			const periods = 3
			ids := rrSequence(t, p, periods*tt.period)
			g := 0
			for _, w := range tt.weights {
				g = gcd(g, w)
			}
			for i, b := range bs {
				got := countOf(ids, b.ID)
				if want := periods * tt.weights[i] / g; got != want {
					t.Errorf("%s: %d picks over %d periods, want %d", b.ID, got, periods, want)
				}
			}
			if run := longestRun(ids); run > tt.maxRun {
				t.Errorf("longest run %d > %d: %v", run, tt.maxRun, ids[:min(len(ids), 40)])
			}
			// Smoothness: in every window, each backend's count stays
			// within 2 of its exact share, so no backend is starved or
			// flooded for a stretch.
			total := tt.period * g
			for i, b := range bs {
				prefix := make([]int, len(ids)+1)
				for k, id := range ids {
					prefix[k+1] = prefix[k]
					if id == b.ID {
						prefix[k+1]++
					}
				}
				for size := 1; size <= tt.period; size++ {
					share := float64(size*tt.weights[i]) / float64(total)
					for start := 0; start+size <= len(ids); start++ {
						n := prefix[start+size] - prefix[start]
						if d := float64(n) - share; d >= 2 || d <= -2 {
							t.Fatalf("window [%d,+%d): %s has %d picks, share %.2f", start, size, b.ID, n, share)
						}
					}
				}
			}
		})
	}
}

func TestRoundRobinInterleavesOneTwoThree(t *testing.T) {
	bs := testBackends(nil, 1, 2, 3)
	p := mustPolicy(t, "round-robin", Options{}).Build(allAvailable(bs))
	ids := rrSequence(t, p, 600)
	for i, want := range []int{100, 200, 300} {
		if got := countOf(ids, bs[i].ID); got != want {
			t.Errorf("%s: %d picks, want %d", bs[i].ID, got, want)
		}
	}
	if want := []string{"b2", "b1", "b2", "b1", "b2", "b0"}; !slices.Equal(ids[:6], want) {
		t.Errorf("first period %v, want %v", ids[:6], want)
	}
}

func TestRoundRobinSkipsUnavailable(t *testing.T) {
	bs := testBackends(nil, 1, 5, 2, 1)
	p := mustPolicy(t, "round-robin", Options{}).Build(Set{All: bs, Available: []*Backend{bs[0], bs[2]}})
	ids := rrSequence(t, p, 300)
	if got := countOf(ids, "b0"); got != 100 {
		t.Errorf("b0: %d picks, want 100", got)
	}
	if got := countOf(ids, "b2"); got != 200 {
		t.Errorf("b2: %d picks, want 200", got)
	}
}

func TestRoundRobinNoBackend(t *testing.T) {
	bs := testBackends(nil, 1, 1)
	pol := mustPolicy(t, "round-robin", Options{})
	for _, s := range []Set{{}, {All: bs}} {
		if _, err := pol.Build(s).Pick(httptest.NewRequest("GET", "/", nil)); !errors.Is(err, ErrNoBackend) {
			t.Errorf("Pick with %d backends, none available: %v, want ErrNoBackend", len(s.All), err)
		}
	}
}

// A health change rebuilds the picker; the rotation must carry on rather
// than send the next request to the first backend again.
func TestRoundRobinRebuildContinues(t *testing.T) {
	bs := testBackends(nil, 1, 1, 1)
	pol := mustPolicy(t, "round-robin", Options{})
	var ids []string
	for range 6 {
		ids = append(ids, rrSequence(t, pol.Build(allAvailable(bs)), 1)...)
	}
	if want := []string{"b0", "b1", "b2", "b0", "b1", "b2"}; !slices.Equal(ids, want) {
		t.Errorf("one pick per rebuild: %v, want %v", ids, want)
	}
}

func TestRoundRobinConcurrent(t *testing.T) {
	bs := testBackends(nil, 1, 3)
	p := mustPolicy(t, "round-robin", Options{}).Build(allAvailable(bs))
	const workers, each = 8, 1000
	counts := make([][]int, workers)
	var wg sync.WaitGroup
	for w := range workers {
		counts[w] = make([]int, len(bs))
		wg.Go(func() {
			r := httptest.NewRequest("GET", "/", nil)
			for range each {
				pk, err := p.Pick(r)
				if err != nil {
					t.Error(err)
					return
				}
				counts[w][pk.Backend.ID[1]-'0']++
			}
		})
	}
	wg.Wait()
	total := make([]int, len(bs))
	for _, c := range counts {
		for i, n := range c {
			total[i] += n
		}
	}
	// Every pick takes its own slot of the rotation, so the split is exact
	// however the workers interleave.
	if want := []int{2000, 6000}; !slices.Equal(total, want) {
		t.Errorf("picks per backend %v, want %v", total, want)
	}
}

func countOf(ids []string, id string) int {
	n := 0
	for _, v := range ids {
		if v == id {
			n++
		}
	}
	return n
}

func longestRun(ids []string) int {
	best, run := 0, 0
	for i := range ids {
		if i > 0 && ids[i] == ids[i-1] {
			run++
		} else {
			run = 1
		}
		best = max(best, run)
	}
	return best
}

func idsName(weights []int) string {
	s := "w"
	for _, w := range weights {
		s += "-" + strconv.Itoa(w)
	}
	return s
}

// TestWarming: a backend in slow start takes its fraction of its share of
// the rotation, whichever policy places new clients by it.
func TestWarming(t *testing.T) {
	tests := []struct {
		fraction float64
		weights  []int
		want     []int // picks per backend over one period
	}{
		{0.1, []int{1, 1}, []int{20, 2}},
		{0.5, []int{1, 1}, []int{20, 10}},
		{0.5, []int{2, 4}, []int{40, 40}},
		{0.01, []int{1, 1}, []int{20, 1}}, // at least one turn
		{1, []int{1, 1}, []int{1, 1}},     // full: not warming
	}
	for _, tt := range tests {
		bs := testBackends(nil, tt.weights...)
		warming := map[*Backend]float64{bs[1]: tt.fraction}
		for _, kind := range []string{"round-robin", "cookie", "learn"} {
			p, err := New(kind, Options{Cookie: CookieOptions{Name: "c", Path: "/"}, Learn: LearnOptions{Cookie: "s", MaxEntries: 10, TTL: time.Minute, Store: LearnStoreMemory}})
			if err != nil {
				t.Fatal(err)
			}
			pk := p.Build(Set{All: bs, Available: bs, Warming: warming})
			total := tt.want[0] + tt.want[1]
			got := []int{0, 0}
			for range total {
				b := mustPick(t, pk, httptest.NewRequest("GET", "/", nil)).Backend
				got[slices.Index(bs, b)]++
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("%s, weights %v, b1 warming at %v: picks %v, want %v", kind, tt.weights, tt.fraction, got, tt.want)
			}
			if c, ok := p.(io.Closer); ok {
				_ = c.Close()
			}
		}
	}
}
