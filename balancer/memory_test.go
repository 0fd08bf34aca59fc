package balancer

import (
	"runtime"
	"testing"
)

// TestMemoryEstimate compares the estimate with the heap a built picker
// (and a filled learn table) holds: within a factor of two either way is
// what a warning of unusual memory needs.
func TestMemoryEstimate(t *testing.T) {
	const entries = 200_000
	hash := Options{Hash: HashOptions{Key: "ip", VirtualNodes: 160}}
	longPeriod := make([]int, 1000) // weights 1 to 1000: a period of 500,500
	for i := range longPeriod {
		longPeriod[i] = i + 1
	}
	tests := []struct {
		name    string
		typ     string
		o       Options
		weights []int
	}{
		{"round-robin, a long period", "round-robin", Options{}, longPeriod},
		{"consistent-hash, a ring at its cap", "consistent-hash", hash, []int{1, 2, 1000}},
		{"consistent-hash, 200 backends", "consistent-hash", hash, make([]int, 200)},
		{"learn, a full table", "learn", learnOpts(entries, 0), []int{1, 1, 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for i := range tt.weights {
				tt.weights[i] = max(tt.weights[i], 1)
			}
			if tt.typ == "learn" {
				tt.o.Learn.TTL = 1 << 40
			}
			s := Set{All: testBackends(&Group{}, tt.weights...), Group: &Group{}}
			s.Available = s.All
			before := heapInUse()
			p, err := New(tt.typ, tt.o)
			if err != nil {
				t.Fatal(err)
			}
			picker := p.Build(s)
			if lp, ok := p.(*learnPolicy); ok {
				fillLearn(lp, s, entries)
			}
			used := float64(heapInUse() - before)
			runtime.KeepAlive(picker)
			runtime.KeepAlive(p)
			est := float64(MemoryEstimate(tt.typ, tt.o, tt.weights))
			if est < used/2 || est > used*2 {
				t.Errorf("estimate %.0f bytes, measured %.0f", est, used)
			}
		})
	}
}
