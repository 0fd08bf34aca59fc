package proxy

import (
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/affinityproxy/affinity/balancer"
)

func TestClassOf(t *testing.T) {
	tests := []struct {
		status int
		class  string
	}{
		{101, "1xx"}, {200, "2xx"}, {299, "2xx"}, {304, "3xx"}, {404, "4xx"}, {499, "4xx"},
		{502, "5xx"}, {599, "5xx"}, {600, "5xx"}, {999, "5xx"}, {0, "5xx"},
	}
	for _, tt := range tests {
		if got := statusClasses[classOf(tt.status)]; got != tt.class {
			t.Errorf("classOf(%d) = %s, want %s", tt.status, got, tt.class)
		}
	}
}

func TestHistogram(t *testing.T) {
	var h histogram
	for _, d := range []time.Duration{
		0, time.Millisecond, // le 0.001: both, a bound being inclusive
		time.Millisecond + 1,   // le 0.0025
		300 * time.Millisecond, // le 0.5
		20 * time.Second,       // +Inf only
	} {
		h.observe(d)
	}
	count, sum, buckets := h.read()
	if count != 5 {
		t.Errorf("count = %d, want 5", count)
	}
	if want := (2*time.Millisecond + 1 + 300*time.Millisecond + 20*time.Second).Seconds(); sum != want {
		t.Errorf("sum = %v, want %v", sum, want)
	}
	want := map[float64]uint64{0.001: 2, 0.0025: 3, 0.005: 3, 0.25: 3, 0.5: 4, 10: 4}
	for le, n := range want {
		if buckets[le] != n {
			t.Errorf("bucket le=%v = %d, want %d", le, buckets[le], n)
		}
	}
	if len(buckets) != len(latencyBounds) {
		t.Errorf("%d buckets, want %d", len(buckets), len(latencyBounds))
	}
}

// TestNilStats checks that a backend no pool made counts nothing and does
// not panic.
func TestNilStats(t *testing.T) {
	b := balancer.NewBackend("stray", nil, 1, nil)
	st := statsOf(b)
	st.answered(http.StatusOK, time.Millisecond)
	st.failed(http.StatusBadGateway)
	st.checked(true, "status 200", time.Now())
	st.transition(true)
	st.ejected()
	if st != nil || st.requests() != 0 {
		t.Errorf("statsOf a stray backend = %v", st)
	}
	var ex *exchange
	ex.failed(http.StatusBadGateway)
}

// TestCollectorRejectsBadLabels checks that a label value Prometheus
// refuses fails the scrape of that metric with an error, not a panic.
func TestCollectorRejectsBadLabels(t *testing.T) {
	cfg := catchAll(poolAt("bad\xff", "round-robin", map[string]*url.URL{"a": {Scheme: "http", Host: "127.0.0.1:1"}}, "a"))
	s, err := NewServer(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(collector{s})
	fams, err := reg.Gather()
	if err == nil || !strings.Contains(err.Error(), "UTF-8") {
		t.Errorf("Gather = %v, want an error about UTF-8", err)
	}
	// The metrics without the pool's name are still there.
	if !slices.ContainsFunc(fams, func(f *dto.MetricFamily) bool {
		return f.GetName() == "affinity_requests_unrouted_total"
	}) {
		t.Error("no affinity_requests_unrouted_total besides the error")
	}
}

// BenchmarkBackendStats is what the request path adds for metrics: the
// clock around the backend's answer, and counting it.
func BenchmarkBackendStats(b *testing.B) {
	be := balancer.NewBackend("b", nil, 1, nil)
	be.Stats = new(backendStats)
	b.ReportAllocs()
	for b.Loop() {
		start := clock()
		statsOf(be).answered(http.StatusOK, clock()-start)
	}
}
