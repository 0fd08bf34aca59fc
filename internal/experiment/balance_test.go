package experiment

import (
	"math"
	"reflect"
	"testing"
	"time"

	"github.com/affinityproxy/affinity/internal/harness"
)

func applied(action harness.Action, target string, start, settled time.Duration) harness.Applied {
	return harness.Applied{Fault: harness.Fault{At: start, Action: action, Target: target}, Start: start, End: start, Settled: settled}
}

func TestUptime(t *testing.T) {
	const s = time.Second
	faults := []harness.Applied{
		applied(harness.Kill, "b2", 2*s, 2500*time.Millisecond),
		applied(harness.Restart, "b2", 4*s, 4600*time.Millisecond), // back once the proxy saw it
		applied(harness.Add, "b4", 5*s, 5*s+300*time.Millisecond),
		applied(harness.Hang, "b1", 6*s, -1),
		applied(harness.Remove, "b3", 7*s, 7*s),
		{Fault: harness.Fault{Action: harness.Kill, Target: "b4"}, Start: 7 * s, Err: "failed"}, // not applied
	}
	got := uptime([]string{"b1", "b2", "b3", "b4"}, 3, faults, 10*s)
	want := map[string][]span{
		"b1": {{0, 6 * s}},
		"b2": {{0, 2 * s}, {4600 * time.Millisecond, 10 * s}},
		"b3": {{0, 7 * s}},
		"b4": {{5*s + 300*time.Millisecond, 10 * s}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("uptime = %v, want %v", got, want)
	}
}

func TestImbalanceCountsBackendsWhileUp(t *testing.T) {
	bucket := func(start int, counts map[string]int) Bucket {
		return Bucket{Start: time.Duration(start) * time.Second, Width: time.Second, ByBackend: counts}
	}
	// b2 was killed after the first second; b1 and b3 took its share.
	buckets := []Bucket{
		bucket(0, map[string]int{"b1": 10, "b2": 10, "b3": 10}),
		bucket(1, map[string]int{"b1": 15, "b3": 15}),
		bucket(2, map[string]int{"b1": 15, "b3": 15}),
	}
	up := map[string][]span{"b1": {{0, 3 * time.Second}}, "b2": {{0, time.Second}}, "b3": {{0, 3 * time.Second}}}
	// Per second up: b1 40/3, b2 10, b3 40/3; the outage is not imbalance.
	if got, want := imbalance(buckets, up), (40.0/3)/((40.0/3*2+10)/3); math.Abs(got-want) > 1e-9 {
		t.Errorf("imbalance = %v, want %v", got, want)
	}
	for i, want := range []float64{1, 1, 1} {
		if got := bucketImbalance(&buckets[i], up); got != want {
			t.Errorf("second %d: imbalance %v, want %v", i, got, want)
		}
	}
	// Had b2 been counted as up, the outage would read as imbalance.
	up["b2"] = []span{{0, 3 * time.Second}}
	if got := bucketImbalance(&buckets[1], up); math.Abs(got-1.5) > 1e-9 {
		t.Errorf("second 1 counting the dead b2: %v, want 1.5", got)
	}
}

func TestMaxOverMean(t *testing.T) {
	for _, tt := range []struct {
		vs   []float64
		want float64
	}{
		{[]float64{10, 10, 10}, 1},
		{[]float64{30, 0, 0}, 3},
		{[]float64{30, 20, 10}, 1.5},
		{nil, 0},
		{[]float64{0, 0}, 0},
	} {
		if got := maxOverMean(tt.vs); math.Abs(got-tt.want) > 1e-9 {
			t.Errorf("maxOverMean(%v) = %v, want %v", tt.vs, got, tt.want)
		}
	}
}
