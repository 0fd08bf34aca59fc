package experiment

import (
	"time"

	"github.com/affinityproxy/affinity/internal/harness"
)

// span is a time range of a run, [from, to), from the start of the load.
type span struct{ from, to time.Duration }

// uptime returns, for each backend (the first initial of which were there
// from the start), the spans of [0, d) in which it was in rotation, as the
// faults applied say: out from the start of a kill, hang or remove, back
// (or in, for an add) once the proxy routed by the restart, resume or add.
func uptime(backends []string, initial int, faults []harness.Applied, d time.Duration) map[string][]span {
	since := map[string]time.Duration{} // backends in rotation, since when
	for _, b := range backends[:min(initial, len(backends))] {
		since[b] = 0
	}
	up := map[string][]span{}
	for _, f := range faults {
		if f.Err != "" {
			continue
		}
		switch f.Action {
		case harness.Kill, harness.Hang, harness.Remove:
			if from, ok := since[f.Target]; ok {
				up[f.Target] = append(up[f.Target], span{from, min(f.Start, d)})
				delete(since, f.Target)
			}
		case harness.Restart, harness.Resume, harness.Add:
			if _, ok := since[f.Target]; !ok {
				since[f.Target] = f.Since()
			}
		}
	}
	for b, from := range since {
		if from < d {
			up[b] = append(up[b], span{from, d})
		}
	}
	return up
}

// upThroughout reports whether spans cover [from, to) whole.
func upThroughout(spans []span, from, to time.Duration) bool {
	for _, s := range spans {
		if s.from <= from && to <= s.to {
			return true
		}
	}
	return false
}

// imbalance returns max/mean over the backends of their responses per
// second, each counted over the buckets it was in rotation throughout: 1
// when even, N when one of N took everything, 0 when nothing was answered.
// A backend out of rotation for part of the run is judged on the rest, so
// that a fault's outage does not read as imbalance.
func imbalance(buckets []Bucket, up map[string][]span) float64 {
	var rates []float64
	for name, spans := range up {
		n, width := 0, time.Duration(0)
		for _, b := range buckets {
			if upThroughout(spans, b.Start, b.Start+b.Width) {
				n += b.ByBackend[name]
				width += b.Width
			}
		}
		if width > 0 {
			rates = append(rates, float64(n)/width.Seconds())
		}
	}
	return maxOverMean(rates)
}

// bucketImbalance returns max/mean of b's responses per backend, over the
// backends in rotation throughout b; 0 when they answered nothing.
func bucketImbalance(b *Bucket, up map[string][]span) float64 {
	var counts []float64
	for name, spans := range up {
		if upThroughout(spans, b.Start, b.Start+b.Width) {
			counts = append(counts, float64(b.ByBackend[name]))
		}
	}
	return maxOverMean(counts)
}

// maxOverMean returns the largest of vs over their mean, 0 for none or all
// zero.
func maxOverMean(vs []float64) float64 {
	total, top := 0.0, 0.0
	for _, v := range vs {
		total += v
		top = max(top, v)
	}
	if total == 0 {
		return 0
	}
	return top / (total / float64(len(vs)))
}
