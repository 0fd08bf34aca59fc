package experiment

import (
	"strings"
	"testing"
)

// hotCell is a cell of the hot-users preset with the imbalance given.
func hotCell(entry string, imbalance float64, left *float64) CellResult {
	c, _ := parseChoice(entry, ofBalancer)
	return CellResult{Balancer: c.name, Store: StoreRedis, Variant: variantOf(c, choice{name: StoreRedis}), Imbalance: imbalance,
		ImbalancePeak: imbalance + 0.1, BusiestTenthPct: 64, LeftFirstChoicePct: left,
		Backends: []BackendStats{{Name: "b1", Requests: 500, P99Ms: 9}, {Name: "b2", Requests: 300, P99Ms: 5}}}
}

func TestHotUsersFindings(t *testing.T) {
	bounded := hotCell("consistent-hash load_factor=1.25", 1.15, ptr(18.0))
	tests := []struct {
		name string
		res  *Results
		want []string
	}{
		{"hotspots, flattened", run(hotCell("round-robin", 1.02, nil), hotCell("cookie", 1.4, nil), hotCell("consistent-hash", 1.6, ptr(0.0)), bounded),
			[]string{"the busiest tenth of the users sent 64.0%", "round-robin 1.02 (worst second 1.12)", "cookie 1.40", "consistent-hash 1.60",
				"consistent-hash load_factor=1.25 1.15", "9.0 ms (b1) against 5.0 ms (b2)", "sent 18.0% of the requests off their key's first choice (plain consistent-hash: 0.0%)",
				"Agrees: every sticky cell made a hotspot"}},
		{"bounded does not help", run(hotCell("round-robin", 1.02, nil), hotCell("consistent-hash", 1.3, ptr(0.0)), hotCell("consistent-hash load_factor=1.25", 1.4, ptr(5.0))),
			[]string{"Partly: every sticky cell made a hotspot, and bounded loads did not flatten"}},
		{"one sticky cell flat", run(hotCell("round-robin", 1.02, nil), hotCell("cookie", 1.05, nil), hotCell("consistent-hash", 1.6, ptr(0.0))),
			[]string{"Partly: consistent-hash made a hotspot, cookie did not."}},
		{"no hotspot", run(hotCell("round-robin", 1.02, nil), hotCell("cookie", 1.1, nil)), []string{"Disagrees: no sticky cell"}},
		{"no round-robin", run(hotCell("cookie", 1.5, nil)), []string{"Not measured"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { wantFinding(t, 9, tt.res, tt.want...) })
	}
	f := finding(9, run(hotCell("round-robin", 1.0, nil), hotCell("consistent-hash", 1.58, ptr(0.0)), bounded))
	if want := "with a few heavy users, sticky routing put 1.58× the mean load on the busiest server (consistent-hash, against 1.00× with round-robin); " +
		"bounding the load at 1.25× brought it to 1.15× by sending 18% of requests elsewhere"; f.ForYou != want {
		t.Errorf("for you %q, want %q", f.ForYou, want)
	}
}

func TestBusiestTenth(t *testing.T) {
	var samples []Sample
	for i, n := range []int{50, 10, 10, 10, 5, 5, 4, 3, 2, 1, 0, 0} {
		for range n {
			samples = append(samples, Sample{User: string(rune('a' + i))})
		}
	}
	// 10 users sent any; the busiest one sent 50 of 100.
	if got := busiestTenth(samples); got != 50 {
		t.Errorf("busiestTenth = %v, want 50", got)
	}
	if got := busiestTenth(nil); got != 0 {
		t.Errorf("busiestTenth of nothing = %v", got)
	}
}

// revokeCell is a cell of the revoke preset: store is an entry, such as
// "token denylist=redis".
func revokeCell(store string, accepted, replays int, p50 float64, ops *float64) CellResult {
	c, _ := parseChoice(store, ofStore)
	return CellResult{Balancer: "cookie", Store: c.name, Variant: variantOf(choice{name: "cookie"}, c),
		Replays: replays, ReplaysAccepted: &accepted, P50Ms: p50, StoreOpsPerRequest: ops}
}

func TestRevokeFindings(t *testing.T) {
	tests := []struct {
		name string
		res  *Results
		want []string
	}{
		{"only the plain token is accepted", run(revokeCell("token", 90, 90, 1.2, ptr(0.0)), revokeCell("token denylist=redis", 0, 88, 1.9, ptr(0.9)),
			revokeCell("redis", 0, 80, 4, ptr(1.7))),
			[]string{"accepted: cookie × token 90 of 90, cookie × token denylist=redis 0 of 88, cookie × redis 0 of 80",
				"p50 1.90 ms against 1.20 ms without it (+0.70 ms), 0.90 store round trips per request against 0.00", "Agrees"}},
		{"a denylist that leaks", run(revokeCell("token", 90, 90, 1, nil), revokeCell("token denylist=redis", 3, 88, 2, nil)),
			[]string{"Disagrees: a store with server-side state accepted replays: cookie × token denylist=redis accepted 3"}},
		{"a token refused without a denylist", run(revokeCell("token", 0, 90, 1, nil), revokeCell("redis", 0, 80, 4, nil)),
			[]string{"Disagrees: the token store refused every replay without a denylist"}},
		{"no logouts", run(CellResult{Balancer: "cookie", Store: StoreToken}, CellResult{Balancer: "cookie", Store: StoreRedis}),
			[]string{"Not measured"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { wantFinding(t, 6, tt.res, tt.want...) })
	}
	f := finding(6, tests[0].res)
	if want := "logging out did not revoke a signed token: 90 of 90 replayed tokens were accepted; a denylist in Redis refused 88 of 88 " +
		"for +0.70 ms at p50"; !strings.HasPrefix(f.ForYou, want) {
		t.Errorf("for you %q, want it to start %q", f.ForYou, want)
	}
}
