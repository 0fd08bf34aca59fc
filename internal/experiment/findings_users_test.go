package experiment

import (
	"strings"
	"testing"
)

// hotCell is a cell of the hot-users preset with the imbalance given.
func hotCell(entry string, imbalance float64, left *float64) CellResult {
	c, _ := parseChoice(entry, true)
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
		t.Run(tt.name, func(t *testing.T) {
			f := finding(9, tt.res)
			checkFinding(t, f)
			for _, w := range tt.want {
				if !strings.Contains(f.Text, w) {
					t.Errorf("finding lacks %q:\n%s", w, f.Text)
				}
			}
		})
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
