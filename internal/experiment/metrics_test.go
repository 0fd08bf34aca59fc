package experiment

import (
	"maps"
	"math"
	"testing"
	"time"

	"github.com/affinityproxy/affinity/internal/harness"
)

// smp builds a sample: user, scheduled second, step, backend, error kind.
func smp(user string, at float64, st step, backend, kind string) Sample {
	return Sample{User: user, At: time.Duration(at * float64(time.Second)), Step: st, Backend: backend, Kind: kind, StoreOps: -1, Status: 200}
}

func TestSessionsLost(t *testing.T) {
	samples := []Sample{
		smp("a", 0, stepLogin, "b1", ""),
		smp("a", 1, stepAdd, "b2", kindSessionLost), // a broke
		smp("a", 2, stepLogin, "b2", ""),
		smp("a", 3, stepAdd, "b1", kindSessionLost), // twice: still one user
		smp("b", 0, stepLogin, "b1", ""),
		smp("b", 1, stepAdd, "b1", ""),
		smp("c", 0, stepLogin, "b3", ""),
		smp("c", 1, stepAdd, "b3", kindSessionStale), // stale counts as lost
		smp("d", 0, stepLogin, "b1", ""),
		smp("d", 1, stepAdd, "", "http_502"),        // not a session loss
		smp("e", 0, stepLogin, "", kindConnection),  // never logged in
		smp("e", 1, stepAdd, "b1", kindSessionLost), // so not counted
	}
	users, lost, retry := sessionsLost(samples)
	if users != 4 || lost != 50 || retry != 0 {
		t.Errorf("sessionsLost = %d users, %v%%, %v%% after failure; want 4 users (a-d), 50%% (a and c), 0%%", users, lost, retry)
	}
}

func TestSessionsLostAfterAFailedRequest(t *testing.T) {
	samples := []Sample{
		// a: an add failed in flight (502), its retry was stale: the only break.
		smp("a", 0, stepLogin, "b1", ""),
		smp("a", 1, stepAdd, "", "http_502"),
		smp("a", 2, stepAdd, "b2", kindSessionStale),
		// b: the same, then later a real loss.
		smp("b", 0, stepLogin, "b1", ""),
		smp("b", 1, stepAdd, "", harness.KindTimeout),
		smp("b", 2, stepAdd, "b2", kindSessionStale),
		smp("b", 3, stepLogin, "b2", ""),
		smp("b", 4, stepAdd, "b3", kindSessionLost),
		// c: stale without a failure before it.
		smp("c", 0, stepLogin, "b1", ""),
		smp("c", 1, stepAdd, "b1", kindSessionStale),
		// d: fine.
		smp("d", 0, stepLogin, "b1", ""),
	}
	// Completion order differs from arrival order.
	samples[1], samples[2] = samples[2], samples[1]
	users, lost, retry := sessionsLost(samples)
	if users != 4 || lost != 75 || retry != 25 {
		t.Errorf("sessionsLost = %d, %v%%, %v%%; want 4 users, 75%% lost (a, b, c), 25%% only after a failure (a)", users, lost, retry)
	}
}

func TestUsersMoved(t *testing.T) {
	samples := []Sample{
		// a: last before b1, first after b4: moved.
		smp("a", 1, stepAdd, "b2", ""), smp("a", 2, stepAdd, "b1", ""),
		smp("a", 6, stepAdd, "b4", ""), smp("a", 7, stepAdd, "b1", ""),
		// b: b3 on both sides (an error response from b3 counts: it came from b3).
		smp("b", 2.9, stepAdd, "b3", ""), smp("b", 5, stepAdd, "b3", kindSessionLost),
		// c: only before.
		smp("c", 1, stepAdd, "b1", ""),
		// d: during the change only, then after: not counted.
		smp("d", 3.5, stepAdd, "b1", ""), smp("d", 5, stepAdd, "b2", ""),
		// e: before on b2, after a proxy error, then b2: not moved.
		smp("e", 2, stepAdd, "b2", ""), smp("e", 4.5, stepAdd, "", "http_502"), smp("e", 5.5, stepAdd, "b2", ""),
		// f: moved.
		smp("f", 0.5, stepLogin, "b2", ""), smp("f", 8, stepLogin, "b3", ""),
	}
	m := movesAcross(samples, 3*time.Second, 4*time.Second)
	if got := m.movedPct(); len(m) != 4 || got == nil || math.Abs(*got-50) > 1e-9 {
		t.Errorf("movesAcross = %v, moved %v; want 50%% (a and f of a, b, e, f)", m, got)
	}
	if got := movesAcross(samples[:2], 3*time.Second, 4*time.Second).movedPct(); got != nil {
		t.Errorf("with no user after the change: %v, want nil", *got)
	}
}

func TestVictimUsers(t *testing.T) {
	samples := []Sample{
		smp("a", 1, stepAdd, "b2", ""),
		smp("b", 1, stepAdd, "b2", ""), smp("b", 1.5, stepAdd, "b1", ""), // last before: b1
		smp("c", 1.9, stepAdd, "b2", ""),
		smp("d", 0.5, stepAdd, "b3", ""),
		smp("e", 2.5, stepAdd, "b2", ""), // after the kill
	}
	got := victimUsers(samples, 2*time.Second, "b2")
	if got == nil || *got != 50 {
		t.Errorf("victimUsers = %v, want 50%% (a, c of a-d)", got)
	}
}

func TestServedBy(t *testing.T) {
	samples := []Sample{
		smp("a", 1, stepAdd, "b4", ""), // before: not counted
		smp("a", 4, stepAdd, "b4", ""),
		smp("b", 4, stepAdd, "b1", ""),
		smp("c", 5, stepAdd, "b2", ""),
		smp("d", 6, stepAdd, "b4", ""),
		smp("e", 6, stepAdd, "", "http_502"), // no backend: not counted
	}
	got := servedBy(samples, 3*time.Second, []string{"b4"})
	if got == nil || *got != 50 {
		t.Errorf("servedBy = %v, want 50%%", got)
	}
}

func TestNewcomers(t *testing.T) {
	samples := []Sample{
		smp("old", 1, stepAdd, "b1", ""),
		smp("old", 5, stepAdd, "b4", ""),     // an old user on the new backend
		smp("new", 3.5, stepLogin, "b2", ""), // first seen during the add
		smp("new", 5, stepAdd, "b4", ""),
		smp("new2", 6, stepLogin, "b4", ""),
		smp("new2", 7, stepAdd, "b4", ""),
		smp("new3", 6, stepLogin, "b1", ""), // not on b4: not counted
	}
	got := newcomers(samples, 3*time.Second, 4*time.Second, []string{"b4"})
	if got == nil || *got != 75 {
		t.Errorf("newcomers = %v, want 75%% (3 of b4's 4 answers)", got)
	}
	if got := newcomers(samples, 3*time.Second, 8*time.Second, []string{"b4"}); got != nil {
		t.Errorf("nothing served after 8 s: %v, want nil", *got)
	}
}

func TestSummarize(t *testing.T) {
	samples := []Sample{
		{At: 0, User: "a", Step: stepLogin, Latency: 1 * time.Millisecond, Backend: "b1", Status: 200, StoreOps: 1, Cache: cacheMiss, ReqBytes: 100, RespBytes: 200},
		{At: time.Second, User: "a", Step: stepAdd, Latency: 3 * time.Millisecond, Backend: "b1", Status: 200, StoreOps: 2, Cache: cacheHit, ReqBytes: 100, RespBytes: 200, CookieBytes: 40},
		{At: time.Second, User: "b", Step: stepLogin, Latency: 2 * time.Millisecond, Backend: "b2", Status: 200, StoreOps: 1, Cache: cacheHit, ReqBytes: 100, RespBytes: 200},
		{At: 2 * time.Second, User: "b", Step: stepAdd, Backend: "b1", Status: 409, Kind: kindSessionLost, StoreOps: 1, ReqBytes: 100, RespBytes: 200, CookieBytes: 40},
		{At: 3 * time.Second, User: "b", Step: stepLogin, Kind: kindConnection, StoreOps: -1},
	}
	r := summarize("cookie", "redis", samples, 7, 4*time.Second, []string{"b1", "b2", "b3"}, 3, nil)
	check := func(name string, got, want float64) {
		t.Helper()
		if math.Abs(got-want) > 1e-9 {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	if r.Requests != 5 || r.Errors != 2 || r.Skipped != 7 || r.Users != 2 {
		t.Errorf("counts: %d requests, %d errors, %d skipped, %d users; want 5, 2, 7, 2", r.Requests, r.Errors, r.Skipped, r.Users)
	}
	if r.ErrorKinds[kindSessionLost] != 1 || r.ErrorKinds[kindConnection] != 1 {
		t.Errorf("error kinds %v", r.ErrorKinds)
	}
	check("sessions lost %", r.SessionsLostPct, 50)
	check("p50", r.P50Ms, 2)
	check("p99", r.P99Ms, 3)
	check("throughput", r.ThroughputRPS, 0.75) // 3 ok in 4 s
	check("bytes/request", r.BytesPerRequest, 300)
	check("store ops/request", *r.StoreOpsPerRequest, 5.0/4)
	check("cache hit %", *r.CacheHitPct, 200.0/3)
	// b1 answered 3, b2 1, b3 nothing, all in rotation throughout: the
	// busiest took 3 over a mean of 4/3 per 4 s.
	check("imbalance", r.Imbalance, 3/(4.0/3))
	check("imbalance of the worst second", r.ImbalancePeak, 3) // second 0: b1 alone answered
	if r.Backends[0].P99Ms != 3 || r.Backends[1].P99Ms != 2 || r.Backends[2].P99Ms != 0 {
		t.Errorf("p99 per backend %+v, want b1 3 ms, b2 2 ms, b3 none", r.Backends)
	}
	if r.UsersMovedPct != nil || r.NewBackendPct != nil || r.VictimUsersPct != nil {
		t.Error("figures of faults set without faults")
	}
	if len(r.CookieBytesByItems) != 1 || r.CookieBytesByItems[0] != 40 {
		t.Errorf("cookie bytes by items %v, want [40]", r.CookieBytesByItems)
	}
	if len(r.Backends) != 3 || r.Backends[0].Requests != 3 || r.Backends[2].Requests != 0 {
		t.Errorf("backends %+v", r.Backends)
	}
}

func TestSummarizeFaultFigures(t *testing.T) {
	samples := []Sample{
		smp("a", 1, stepAdd, "b2", ""), smp("a", 5, stepAdd, "b1", kindSessionLost),
		smp("b", 1, stepAdd, "b1", ""), smp("b", 5, stepAdd, "b1", ""),
		smp("c", 6, stepLogin, "b4", ""),
	}
	for i := range samples {
		samples[i].Latency = time.Millisecond
	}
	faults := []harness.Applied{
		// The proxy saw the kill 0.5 s after it.
		{Fault: harness.Fault{At: 2 * time.Second, Action: harness.Kill, Target: "b2"}, Start: 2 * time.Second, End: 2 * time.Second, Settled: 2500 * time.Millisecond},
		{Fault: harness.Fault{At: 3 * time.Second, Action: harness.Add}, Start: 3 * time.Second, End: 4 * time.Second, Settled: 4 * time.Second},
	}
	r := summarize("cookie", "memory", samples, 0, 8*time.Second, []string{"b1", "b2", "b3", "b4"}, 3, faults)
	if r.UsersMovedPct == nil || *r.UsersMovedPct != 50 || r.UsersMovedOf != 2 {
		t.Errorf("users moved %v of %d, want 50%% of 2 across the kill (a moved, b did not)", r.UsersMovedPct, r.UsersMovedOf)
	}
	if r.VictimUsersPct == nil || *r.VictimUsersPct != 50 {
		t.Errorf("victim users %v, want 50%%", r.VictimUsersPct)
	}
	if r.NewBackendPct == nil || math.Abs(*r.NewBackendPct-100.0/3) > 1e-9 {
		t.Errorf("new backend share %v, want 33.3%% (1 of 3 answers from 4 s)", r.NewBackendPct)
	}
	if r.NewcomersPct == nil || *r.NewcomersPct != 100 {
		t.Errorf("newcomers %v, want 100%% (c, first seen at 6 s, is b4's only user)", r.NewcomersPct)
	}
}

// The checkouts among the errors are itemised on their own: a test of the
// retry-safety preset tells the checkouts the proxy gave up on (504) from
// those the store failed.
func TestSummarizeItemisesCheckoutErrors(t *testing.T) {
	samples := []Sample{
		{User: "a", Step: stepCheckout, Backend: "b2", Status: 504, Kind: "http_504", StoreOps: -1},
		{User: "b", Step: stepCheckout, Backend: "b1", Status: 503, Kind: "store_unavailable", StoreOps: 0},
		{User: "b", Step: stepCheckout, Backend: "b1", Status: 200, StoreOps: 2},
		{User: "c", Step: stepAdd, Backend: "b2", Status: 504, Kind: "http_504", StoreOps: -1},
	}
	r := summarize("cookie", "redis", samples, 0, time.Second, []string{"b1", "b2"}, 2, nil)
	if want := map[string]int{"http_504": 2, "store_unavailable": 1}; !maps.Equal(r.ErrorKinds, want) {
		t.Errorf("error kinds %v, want %v", r.ErrorKinds, want)
	}
	if want := map[string]int{"http_504": 1, "store_unavailable": 1}; !maps.Equal(r.CheckoutErrorKinds, want) {
		t.Errorf("checkout error kinds %v, want %v", r.CheckoutErrorKinds, want)
	}
	if r.Checkouts != 2 || r.FailedCheckouts != 1 {
		t.Errorf("%d checkouts, %d failed; want 2 carts, user a's failed", r.Checkouts, r.FailedCheckouts)
	}
}
