package proxy

import (
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"testing"
	"time"

	"go.uber.org/zap/zaptest/observer"

	"github.com/affinityproxy/affinity/balancer"
	"github.com/affinityproxy/affinity/config"
	"github.com/affinityproxy/affinity/internal/testutil"
)

func TestEjectTime(t *testing.T) {
	const s = time.Second
	tests := []struct {
		eject, maxEject time.Duration
		prior           int
		want            time.Duration
	}{
		{10 * s, 300 * s, 0, 10 * s},
		{10 * s, 300 * s, 1, 20 * s},
		{10 * s, 300 * s, 4, 160 * s},
		{10 * s, 300 * s, 5, 300 * s}, // 320 capped
		{10 * s, 300 * s, 1000, 300 * s},
		{10 * s, 10 * s, 3, 10 * s},
		{time.Duration(1 << 62), time.Duration(1<<63 - 1), 10, time.Duration(1<<63 - 1)}, // no overflow
	}
	for _, tt := range tests {
		if got := ejectTime(tt.eject, tt.maxEject, tt.prior); got != tt.want {
			t.Errorf("ejectTime(%v, %v, %d) = %v, want %v", tt.eject, tt.maxEject, tt.prior, got, tt.want)
		}
	}
}

func TestPassiveFailStatus(t *testing.T) {
	pv := newPassive(&config.Passive{Failures: 1, Eject: time.Second, MaxEject: time.Second, OnStatus: []int{500, 503, 599, 100}})
	for status, want := range map[int]bool{500: true, 503: true, 599: true, 100: true, 502: false, 200: false, 0: false, -1: false, 600: false, 1000: false} {
		if got := pv.failStatus(status); got != want {
			t.Errorf("failStatus(%d) = %v, want %v", status, got, want)
		}
	}
	if newPassive(nil) != nil {
		t.Error("no passive section made a passive")
	}
}

// passivePool is a round-robin pool over n never-dialled backends, ejecting
// after 3 failures for 50 ms, doubled up to 150 ms.
func passivePool(t *testing.T, n int) (*pool, *observer.ObservedLogs) {
	t.Helper()
	pc := &config.Pool{Name: "web", Balancer: config.Balancer{Type: "round-robin"},
		Passive: &config.Passive{Failures: 3, Eject: 50 * time.Millisecond, MaxEject: 150 * time.Millisecond, OnStatus: []int{503}}}
	for i := range n {
		u := &url.URL{Scheme: "http", Host: "127.0.0.1:" + strconv.Itoa(9000+i)}
		pc.Backends = append(pc.Backends, config.Backend{URL: u, Name: "b" + strconv.Itoa(i), Weight: 1})
	}
	log, logs := observed()
	p, err := newPool(pc, nil, log, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.stop)
	return p, logs
}

// ejections returns the "for" durations of the ejection lines logged so far.
func ejections(logs *observer.ObservedLogs) []time.Duration {
	var ds []time.Duration
	for _, e := range entries(logs, "backend ejected") {
		ds = append(ds, e.ContextMap()["for"].(time.Duration))
	}
	return ds
}

func TestPassiveEjection(t *testing.T) {
	p, logs := passivePool(t, 3)
	b0 := p.backends[0]
	readmitted := func(n int) {
		t.Helper()
		testutil.Eventually(t, waitFor, "b0 readmitted", func() bool {
			return len(entries(logs, "backend readmitted")) == n && len(available(p)) == 3
		})
	}
	ms := time.Millisecond

	// Failures below the threshold, or broken by a success, eject nothing.
	p.failed(b0)
	p.failed(b0)
	p.answered(b0, http.StatusOK)
	p.failed(b0)
	p.answered(b0, http.StatusServiceUnavailable) // on_status: a failure
	if len(available(p)) != 3 {
		t.Fatalf("ejected after a broken run: available %v", available(p))
	}
	p.failed(b0)
	if got := available(p); !slices.Equal(got, []string{"b1", "b2"}) {
		t.Fatalf("after 3 failures in a row: available %v, want b0 out", got)
	}
	e := entries(logs, "backend ejected")[0].ContextMap()
	if e["backend"] != "b0" || e["failures"] != int32(3) || e["for"] != 50*ms || e["available"] != int64(2) {
		t.Errorf("ejection line %v", e)
	}
	// Failures of requests in flight while ejected change nothing.
	p.failed(b0)
	readmitted(1)

	// Back from an ejection, the next failure ejects again, for twice as
	// long, up to the cap.
	p.failed(b0)
	readmitted(2)
	p.failed(b0)
	readmitted(3)
	p.failed(b0)
	if got, want := ejections(logs), []time.Duration{50 * ms, 100 * ms, 150 * ms, 150 * ms}; !slices.Equal(got, want) {
		t.Fatalf("ejection times %v, want %v", got, want)
	}
	// A success from a request started before the ejection proves nothing.
	p.answered(b0, http.StatusOK)
	readmitted(4)

	// A success after the return resets the doubling, and the count.
	p.answered(b0, http.StatusOK)
	p.failed(b0)
	p.failed(b0)
	if len(available(p)) != 3 {
		t.Fatal("ejected after 2 failures following a success")
	}
	p.failed(b0)
	if got := ejections(logs); got[len(got)-1] != 50*ms {
		t.Errorf("ejection after a recovery lasts %v, want 50ms again", got[len(got)-1])
	}
}

func TestPassiveNeverEjectsLast(t *testing.T) {
	p, logs := passivePool(t, 2)
	b0, b1 := p.backends[0], p.backends[1]
	for range 3 {
		p.failed(b0)
	}
	for range 10 {
		p.failed(b1)
	}
	if got := available(p); !slices.Equal(got, []string{"b1"}) {
		t.Fatalf("available %v, want b1 kept though failing", got)
	}
	spared := entries(logs, "not ejecting the last available backend")
	if len(spared) != 1 || spared[0].ContextMap()["backend"] != "b1" {
		t.Fatalf("spare lines %v, want one for b1", spared)
	}
	// A success ends the run; a new run is logged again.
	p.answered(b1, http.StatusOK)
	for range 3 {
		p.failed(b1)
	}
	if n := len(entries(logs, "not ejecting the last available backend")); n != 2 {
		t.Errorf("%d spare lines after a second run, want 2", n)
	}
}

// TestPassiveYieldsToActive: when the active checks take out every backend
// not ejected, the ejected ones serve rather than nobody.
func TestPassiveYieldsToActive(t *testing.T) {
	p, logs := passivePool(t, 2)
	for range 3 {
		p.failed(p.backends[0])
	}
	if err := p.setHealthy("b1", false); err != nil {
		t.Fatal(err)
	}
	if got := available(p); !slices.Equal(got, []string{"b0"}) {
		t.Errorf("available %v, want the ejected b0", got)
	}
	if n := len(entries(logs, "serving from ejected backends: no other is healthy")); n != 1 {
		t.Errorf("%d fallback lines, want 1", n)
	}
	if err := p.setHealthy("b1", true); err != nil {
		t.Fatal(err)
	}
	if got := available(p); !slices.Equal(got, []string{"b1"}) {
		t.Errorf("available %v once b1 is back, want b1 only: b0 is still ejected", got)
	}
}

// TestPassiveStopsTimers: a stopped pool readmits nobody and ejects nobody.
func TestPassiveStopsTimers(t *testing.T) {
	p, logs := passivePool(t, 3)
	for range 3 {
		p.failed(p.backends[0])
	}
	p.stop()
	p.mu.Lock()
	timer := p.members[0].timer
	p.mu.Unlock()
	if timer != nil {
		t.Error("stop left an ejection timer")
	}
	for range 3 {
		p.failed(p.backends[1])
	}
	if n := len(entries(logs, "backend ejected")); n != 1 {
		t.Errorf("%d ejections, want only the one before stop", n)
	}
}

// TestPassiveThroughProxy: real connection failures eject a dead backend,
// and retries hide them from clients meanwhile.
func TestPassiveThroughProxy(t *testing.T) {
	a := testutil.StartBackend(t, "a")
	pc := poolOf("web", "round-robin", balancer.Options{}, a)
	pc.Backends = append([]config.Backend{{URL: testutil.ClosedURL(t), Name: "dead", Weight: 1}}, pc.Backends...)
	pc.Passive = &config.Passive{Failures: 2, Eject: time.Minute, MaxEject: time.Minute}
	pc.Retries = config.Retries{Count: 1}
	log, logs := observed()
	s, u := startProxy(t, catchAll(pc), log)
	p := s.state.Load().pools[0]
	c := testutil.Client(t)
	for range 10 {
		if r := get(t, c, u.String()+"/", nil); r.status != http.StatusOK || r.body != "a" {
			t.Fatalf("got %d %q, want 200 from a", r.status, r.body)
		}
	}
	if got := available(p); !slices.Equal(got, []string{"a"}) {
		t.Errorf("available %v, want the dead backend ejected", got)
	}
	ej := entries(logs, "backend ejected")
	if len(ej) != 1 || ej[0].ContextMap()["backend"] != "dead" || ej[0].ContextMap()["failures"] != int32(2) {
		t.Errorf("ejection lines %v, want one for dead after 2 failures", ej)
	}
	if n := p.retried.Load(); n != 2 {
		t.Errorf("%d retries, want 2: none once the dead backend was ejected", n)
	}
}
