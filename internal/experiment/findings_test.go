package experiment

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/affinityproxy/affinity/internal/harness"
)

// run builds results from cells, for the findings.
func run(cells ...CellResult) *Results {
	r := &Results{Cells: cells, Settings: Settings{Users: 100, WorkMs: 2}}
	for _, c := range cells {
		if !strings.Contains(strings.Join(r.Settings.Balancers, ","), c.Balancer) {
			r.Settings.Balancers = append(r.Settings.Balancers, c.Balancer)
		}
		if !strings.Contains(strings.Join(r.Settings.Stores, ","), c.Store) {
			r.Settings.Stores = append(r.Settings.Stores, c.Store)
		}
	}
	return r
}

func killCell(bal, store string, lost, victim float64) CellResult {
	return CellResult{Balancer: bal, Store: store, SessionsLostPct: lost, VictimUsersPct: ptr(victim),
		Faults: []harness.Applied{{Fault: harness.Fault{At: 2 * time.Second, Action: harness.Kill, Target: "b2"}, Start: 2 * time.Second}}}
}

func addCell(bal string, moved, share, newcomers float64) CellResult {
	return CellResult{Balancer: bal, Store: StoreMemory, UsersMovedPct: ptr(moved), NewBackendPct: ptr(share), NewcomersPct: ptr(newcomers),
		Backends: []BackendStats{{Name: "b1"}, {Name: "b2"}, {Name: "b3"}, {Name: "b4"}},
		Faults:   []harness.Applied{{Fault: harness.Fault{At: 3 * time.Second, Action: harness.Add, Target: "b4"}, Start: 3 * time.Second}}}
}

func TestFindings(t *testing.T) {
	tests := []struct {
		name  string
		claim int
		res   *Results
		want  []string
	}{
		{"crash: sticky loses the dead share", 1, run(killCell("cookie", StoreMemory, 31, 33), killCell("round-robin", StoreMemory, 98, 33)),
			[]string{"31.0% of users", "b2 was the backend of 33.0%", "round-robin × memory: 98.0%", "Agrees"}},
		{"crash: sticky loses far more", 1, run(killCell("cookie", StoreMemory, 70, 33)), []string{"Disagrees", "37.0 points more"}},
		{"crash: nothing lost", 1, run(killCell("cookie", StoreMemory, 0, 33)), []string{"Disagrees: the sticky cell lost nothing"}},
		{"crash: no cell", 1, run(killCell("round-robin", StoreMemory, 98, 33)), []string{"Not measured", "cookie × memory"}},
		{"external store: none lost", 2, run(killCell("cookie", StoreRedis, 0, 33), killCell("round-robin", StoreToken, 0, 33)),
			[]string{"2 of 2 cells", "Agrees."}},
		{"external store: a stale retry is not a lost session", 2,
			run(func() CellResult {
				c := killCell("round-robin", StoreRedis, 1, 33)
				c.StaleAfterFailurePct = 1
				return c
			}()),
			[]string{"0 of 1 cells", "round-robin × redis 1.0%", "Agrees on sessions"}},
		{"external store: a real loss", 2,
			run(func() CellResult {
				c := killCell("round-robin", StoreRedis, 5, 33)
				c.ErrorKinds = map[string]int{"session_lost": 5}
				return c
			}()),
			[]string{"Disagrees: round-robin × redis 5.0% (session_lost 5)"}},
		{"new server: cookie gives only newcomers", 7, run(addCell("cookie", 0, 4, 100), addCell("consistent-hash", 25, 27, 8)),
			[]string{"after b4 joined at 3.0 s", "cookie 4.0%, consistent-hash 27.0%", "cookie 100%", "fair share is 25.0%", "Agrees"}},
		{"new server: cookie moved old users", 7, run(addCell("cookie", 0, 10, 50)), []string{"Disagrees: the cookie balancer also moved"}},
		{"moved: ring vs modulo", 8, run(addCell("consistent-hash", 27, 25, 8), addCell(ModuloHash, 74, 25, 4), addCell("cookie", 0, 4, 100)),
			[]string{"27.0% of users with consistent-hash (1/N = 25.0%)", "74.0% with modulo-hash", "cookie 0.0%", "Agrees."}},
		{"moved: ring moved too many", 8, run(addCell("consistent-hash", 60, 25, 8), addCell(ModuloHash, 74, 25, 4)), []string{"Disagrees."}},
		{"moved: no modulo cell", 8, run(addCell("consistent-hash", 27, 25, 8)), []string{"Not measured"}},
		{"store cost", 3, run(CellResult{Balancer: "cookie", Store: StoreMemory, P50Ms: 1}, CellResult{Balancer: "cookie", Store: StoreRedis, P50Ms: 3.5, StoreOpsPerRequest: ptr(1.7)}),
			[]string{"p50 3.50 ms with redis against 1.00 ms with memory (+2.50 ms)", "1.70 store round trips", "2 ms per request is the backends' simulated work", "Agrees."}},
		{"near cache", 4, run(CellResult{Balancer: "cookie", Store: StoreCachedRedis, CacheHitPct: ptr(99.0), P50Ms: 1.5}, CellResult{Balancer: "round-robin", Store: StoreCachedRedis, CacheHitPct: ptr(33.0), P50Ms: 3.6}),
			[]string{"99.0% with cookie against 33.0% with round-robin", "Agrees."}},
		{"token bytes", 5, run(CellResult{Balancer: "cookie", Store: StoreToken, BytesPerRequest: 700, CookieBytesByItems: []float64{200, 220, 260}},
			CellResult{Balancer: "cookie", Store: StoreRedis, BytesPerRequest: 400, CookieBytesByItems: []float64{66, 66, 66}}),
			[]string{"700 bytes per request with token against 400", "from 200 bytes with an empty cart to 260 with 2 items", "Agrees."}},
		{"memory per server", 10, run(
			CellResult{Balancer: "cookie", Store: StoreMemory, Backends: []BackendStats{{Name: "b1", Sessions: 50, RSSBytes: 20 << 20}}},
			CellResult{Balancer: "cookie", Store: StoreRedis, Backends: []BackendStats{{Name: "b1", RSSBytes: 16 << 20}}}),
			[]string{"memory 50 sessions, 20.0 MiB; redis 0 sessions, 16.0 MiB", "Agrees."}},
		{"memory per server: lost in noise", 10, run(
			CellResult{Balancer: "cookie", Store: StoreMemory, Backends: []BackendStats{{Name: "b1", Sessions: 50, RSSBytes: 16 << 20}}},
			CellResult{Balancer: "cookie", Store: StoreRedis, Backends: []BackendStats{{Name: "b1", RSSBytes: 17 << 20}}}),
			[]string{"Agrees on sessions held, not on memory at this scale"}},
		{"unknown claim", 99, run(), []string{"Not measured by this harness yet."}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := finding(tt.claim, tt.res)
			checkFinding(t, f)
			got := f.Text
			for _, w := range tt.want {
				if !strings.Contains(got, w) {
					t.Errorf("finding lacks %q:\n%s", w, got)
				}
			}
		})
	}
}

// checkFinding checks what every finding must hold: a verdict that its
// text states, and a pass band unless nothing was measured.
func checkFinding(t *testing.T, f Finding) {
	t.Helper()
	words := map[string][]string{Agrees: {" Agrees"}, Disagrees: {" Disagrees"}, Partly: {" Agrees on ", " Partly:"}, NotMeasured: {"Not measured"}}
	if ws, ok := words[f.Verdict]; !ok || !slices.ContainsFunc(ws, func(w string) bool { return strings.Contains(f.Text, w) }) {
		t.Errorf("verdict %q does not match the text:\n%s", f.Verdict, f.Text)
	}
	if (f.Band == "") != (f.Verdict == NotMeasured) {
		t.Errorf("verdict %q with band %q: a measured finding states its pass band", f.Verdict, f.Band)
	}
	if (f.Headline == "") != (f.Verdict == NotMeasured) {
		t.Errorf("verdict %q with headline %q: a measured finding has a headline for the summary", f.Verdict, f.Headline)
	}
}

func TestConclude(t *testing.T) {
	res := run(killCell("cookie", StoreMemory, 31, 33), killCell("cookie", StoreRedis, 0, 33), killCell("round-robin", StoreMemory, 98, 33))
	res.Spec.Claims = []int{1, 2, 99}
	res.Settings.Backends = 3
	conclude(res)
	if len(res.Findings) != 2 || res.Findings[0].Claim != 1 || res.Findings[1].Claim != 2 {
		t.Fatalf("findings %+v, want claims 1 and 2 (99 is unknown)", res.Findings)
	}
	for _, want := range []string{"With sessions in server memory, a crash of one of 3 servers logged out 31% of users", "(98% without it", "; with the session in Redis"} {
		if !strings.Contains(res.ForYou, want) {
			t.Errorf("for you %q lacks %q", res.ForYou, want)
		}
	}
	// A run without claims says what its faults cost the worst cell.
	res.Spec.Claims = nil
	res.Settings.Faults = []string{"2s hang b2"}
	res.Cells[0].Requests, res.Cells[0].Errors, res.Cells[0].P99Ms = 100, 7, 2000
	res.Cells[1].Requests, res.Cells[2].Requests = 100, 100
	conclude(res)
	if want := "With 2s hang b2, the worst cell (cookie × memory) failed 7.0% of its requests with a p99 of 2000 ms"; !strings.HasPrefix(res.ForYou, want) {
		t.Errorf("for you %q, want it to start %q", res.ForYou, want)
	}
}

// wantFinding checks the finding of claim on res, and that its text holds
// each of want.
func wantFinding(t *testing.T, claim int, res *Results, want ...string) {
	t.Helper()
	f := finding(claim, res)
	checkFinding(t, f)
	for _, w := range want {
		if !strings.Contains(f.Text, w) {
			t.Errorf("finding lacks %q:\n%s", w, f.Text)
		}
	}
}
