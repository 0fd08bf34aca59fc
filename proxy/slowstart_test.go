package proxy

import (
	"net/http"
	"testing"
	"time"

	"github.com/affinityproxy/affinity/balancer"
	"github.com/affinityproxy/affinity/config"
	"github.com/affinityproxy/affinity/internal/testutil"
)

func TestWarmth(t *testing.T) {
	const window = 20 * time.Second
	tests := []struct {
		elapsed time.Duration
		want    float64
	}{
		{0, 0.1}, {time.Second, 0.1}, {10 * time.Second, 0.55}, {19 * time.Second, 0.95},
		{window, 1}, {time.Hour, 1},
	}
	for _, tt := range tests {
		f, next := warmth(tt.elapsed, window)
		if f < tt.want-1e-9 || f > tt.want+1e-9 {
			t.Errorf("warmth(%v) = %v, want %v", tt.elapsed, f, tt.want)
		}
		if f < 1 {
			// The next step is due when the line reaches it.
			g, _ := warmth(tt.elapsed+next, window)
			if g <= f {
				t.Errorf("warmth(%v) = %v, and %v later still %v", tt.elapsed, f, next, g)
			}
		}
	}
}

// TestSlowStart measures a backend's share of real requests as it joins
// a round-robin pool by a reload: a tenth of its weight at first, then
// all of it once slow_start has passed. A backend that drained and is
// ready again takes all of it at once.
func TestSlowStart(t *testing.T) {
	bs := startBackends(t, "b1", "b2")
	pc := poolOf("web", "round-robin", balancer.Options{}, bs[0])
	pc.SlowStart = 3 * time.Second
	cfg := catchAll(pc)
	s, u := startProxy(t, cfg, nil)
	share := func(n int) float64 {
		b2 := 0
		for range n {
			r := get(t, testutil.Client(t), u.String(), nil)
			if r.status != http.StatusOK {
				t.Fatalf("status %d", r.status)
			}
			if r.header.Get(testutil.IDHeader) == "b2" {
				b2++
			}
		}
		return float64(b2) / float64(n)
	}
	pc2 := poolOf("web", "round-robin", balancer.Options{}, bs[0], bs[1])
	pc2.SlowStart = pc.SlowStart
	if err := s.Reload(catchAll(pc2)); err != nil {
		t.Fatal(err)
	}
	// At a tenth of its weight, b2 takes 1 request in 11; after the
	// first third of the window, 4 in 14 at most.
	if got := share(110); got > 4.0/14 {
		t.Errorf("b2's share right after it joined: %.2f, want about 1/11", got)
	}
	testutil.Eventually(t, 2*pc.SlowStart, "slow start ends", func() bool {
		return viewOf(s, "web")["b2"].warming == 0
	})
	if got := share(100); got != 0.5 {
		t.Errorf("b2's share after slow start: %.2f, want 0.5", got)
	}
	// Back from maint: warms again; back from drain: at once.
	for _, tt := range []struct {
		state config.State
		warms bool
	}{{config.StateMaint, true}, {config.StateDrain, false}} {
		p := s.state.Load().pool("web")
		if _, err := p.setState("b2", tt.state, "test"); err != nil {
			t.Fatal(err)
		}
		if _, err := p.setState("b2", config.StateReady, "test"); err != nil {
			t.Fatal(err)
		}
		if w := viewOf(s, "web")["b2"].warming; (w > 0) != tt.warms {
			t.Errorf("back from %s: warming %v, want warming %v", tt.state, w, tt.warms)
		}
	}
}
