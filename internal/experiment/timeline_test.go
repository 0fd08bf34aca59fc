package experiment

import (
	"testing"
	"time"
)

func TestTimelineBuckets(t *testing.T) {
	samples := []Sample{
		{At: 100 * time.Millisecond, Latency: 2 * time.Millisecond, Backend: "b1"},
		{At: 900 * time.Millisecond, Latency: 4 * time.Millisecond, Backend: "b2"},
		{At: 1500 * time.Millisecond, Kind: kindSessionLost, Backend: "b1"},
		{At: 1600 * time.Millisecond, Kind: kindSessionStale, Backend: "b1"},
		{At: 2100 * time.Millisecond, Kind: kindConnection},
	}
	up := map[string][]span{"b1": {{0, 3 * time.Second}}, "b2": {{0, time.Second}}}
	got := timeline(samples, 2500*time.Millisecond, time.Second, up)
	if len(got) != 3 {
		t.Fatalf("%d buckets for 2.5 s, want 3", len(got))
	}
	s0, s1, s2 := got[0], got[1], got[2]
	if s0.Requests != 2 || s0.OK != 2 || s0.P50Ms != 2 || s0.P99Ms != 4 || s0.ByBackend["b2"] != 1 || s0.Imbalance != 1 {
		t.Errorf("second 0: %+v", s0)
	}
	// b2 is out of rotation from 1 s: b1 alone is even.
	if s1.Errors != 2 || s1.Lost != 1 || s1.Stale != 1 || s1.OK != 0 || s1.ByBackend["b1"] != 2 || s1.Imbalance != 1 {
		t.Errorf("second 1: %+v", s1)
	}
	if s2.Errors != 1 || s2.Lost != 0 || s2.Width != 500*time.Millisecond || s2.Start != 2*time.Second {
		t.Errorf("second 2: %+v, want one error and a 500ms bucket from 2s", s2)
	}
}

func TestFineBucket(t *testing.T) {
	for _, tt := range []struct{ d, want time.Duration }{
		{2 * time.Second, 100 * time.Millisecond},
		{6 * time.Second, 100 * time.Millisecond},
		{60 * time.Second, time.Second},
		{10 * time.Minute, 10 * time.Second},
	} {
		if got := fineBucket(tt.d); got != tt.want {
			t.Errorf("fineBucket(%v) = %v, want %v", tt.d, got, tt.want)
		}
	}
}
