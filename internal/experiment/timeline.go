package experiment

import (
	"slices"
	"time"

	"github.com/affinityproxy/affinity/internal/harness"
)

// Bucket is a slice of a cell's timeline, by scheduled arrival time.
type Bucket struct {
	Start     time.Duration
	Width     time.Duration
	Requests  int
	OK        int
	Errors    int
	Lost      int // answered session_lost: the session was gone
	Stale     int // answered session_stale: the session was out of date
	P50Ms     float64
	P99Ms     float64
	ByBackend map[string]int // responses per backend
	// Imbalance is max/mean of the responses per backend over the
	// backends in rotation throughout the bucket.
	Imbalance float64
}

// fineBucket is the width of the buckets charts draw for a run of d: about
// sixty of them, at least 100 ms wide, so that each holds enough arrivals.
func fineBucket(d time.Duration) time.Duration {
	return max(100*time.Millisecond, (d / 60).Round(100*time.Millisecond))
}

// timeline buckets samples by their scheduled arrival, width apart; the last
// bucket may be cut short by the end of the run. up says when each backend
// was in rotation, for each bucket's imbalance.
func timeline(samples []Sample, d, width time.Duration, up map[string][]span) []Bucket {
	secs := make([]Bucket, int((d+width-1)/width))
	lat := make([][]time.Duration, len(secs))
	for i := range secs {
		start := time.Duration(i) * width
		secs[i] = Bucket{Start: start, Width: min(width, d-start), ByBackend: map[string]int{}}
	}
	for i := range samples {
		s := &samples[i]
		t := int(s.At / width)
		if t < 0 || t >= len(secs) {
			continue
		}
		sec := &secs[t]
		sec.Requests++
		switch {
		case s.OK():
			sec.OK++
			lat[t] = append(lat[t], s.Latency)
		case s.failed():
			sec.Errors++
		}
		switch {
		case !s.failed():
		case s.Kind == kindSessionLost:
			sec.Lost++
		case s.Kind == kindSessionStale:
			sec.Stale++
		}
		if s.Backend != "" {
			sec.ByBackend[s.Backend]++
		}
	}
	for i := range secs {
		slices.Sort(lat[i])
		secs[i].P50Ms, secs[i].P99Ms = ms(harness.Percentile(lat[i], 50)), ms(harness.Percentile(lat[i], 99))
		secs[i].Imbalance = bucketImbalance(&secs[i], up)
	}
	return secs
}
