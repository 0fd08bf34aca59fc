package experiment

import (
	"strings"
	"testing"
)

// retryRun is a retry-safety run whose cells, in the order safe/nokey,
// safe/key, all/nokey, all/key, have the duplicates and failures given.
func retryRun(dups, failed [4]int) *Results {
	var cells []CellResult
	for i, v := range []string{"retry=safe client=nokey", "retry=safe client=key", "retry=all client=nokey", "retry=all client=key"} {
		run, _ := parseChoice(v, ofRun)
		cells = append(cells, CellResult{Balancer: "cookie", Store: StoreRedis, Variant: variantOf(choice{name: "cookie"}, choice{name: StoreRedis}, run),
			Checkouts: 300, DuplicateOrders: dups[i], FailedCheckouts: failed[i], CheckoutP99Ms: 1400})
	}
	res := run(cells...)
	res.Settings.Faults = []string{"2s hang b2", "4.5s resume b2"}
	res.Settings.ResponseTimeoutMs, res.Settings.CheckoutWorkMs = 1000, 400
	return res
}

func TestRetrySafetyFindings(t *testing.T) {
	tests := []struct {
		name string
		res  *Results
		want []string
	}{
		{"only all without keys duplicates", retryRun([4]int{0, 0, 12, 0}, [4]int{9, 0, 0, 0}),
			[]string{"2s hang b2, 4.5s resume b2, the proxy waiting 1000 ms for an answer, a checkout taking 400 ms",
				"client=nokey retry=all: 300 checkouts, 12 duplicate orders, 0 failed", "client=nokey retry=safe: 300 checkouts, 0 duplicate orders, 9 failed",
				"Agrees: only the retry of a POST without a key ordered carts twice", "left 9 checkouts failed"}},
		{"keyed checkouts failed for other reasons", retryRun([4]int{0, 0, 12, 0}, [4]int{9, 2, 0, 1}),
			[]string{"Agrees", "with the key, the retries ordered no cart twice, and 3 checkouts failed"}},
		{"no duplicate at all", retryRun([4]int{0, 0, 0, 0}, [4]int{9, 0, 0, 0}), []string{"Disagrees: retrying every method ordered no cart twice"}},
		{"keys did not help", retryRun([4]int{0, 0, 12, 2}, [4]int{9, 0, 0, 0}), []string{"Disagrees: client=key retry=all ordered 2 carts twice"}},
		{"safe policy duplicated", retryRun([4]int{1, 0, 12, 0}, [4]int{9, 0, 0, 0}), []string{"Disagrees: client=nokey retry=safe ordered 1 carts twice"}},
		{"no variants", run(CellResult{Balancer: "cookie", Store: StoreRedis}), []string{"Not measured"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { wantFinding(t, 13, tt.res, tt.want...) })
	}
	f := finding(13, tests[0].res)
	if want := "when a backend froze, retrying every method (as nginx's non_idempotent does) ordered 12 of 300 carts twice; retrying only " +
		"idempotent requests ordered none but failed 9 checkouts; with an Idempotency-Key, 0 duplicates and 0 failures"; !strings.HasPrefix(f.ForYou, want) {
		t.Errorf("for you %q, want it to start %q", f.ForYou, want)
	}
	if f.Headline != "retry every method, no key: 12 carts ordered twice; idempotent-only or keyed: 0" {
		t.Errorf("headline %q", f.Headline)
	}
}

// deployCellOf is a cell of the rolling-deploy preset.
func deployCellOf(bal, store, mode string, lost float64, timedOut bool) CellResult {
	run, _ := parseChoice("mode="+mode, ofRun)
	steps := []DeployStep{{Target: "b1", TotalS: 1.2, TimedOut: timedOut}, {Target: "b2", TotalS: 1.1}, {Target: "b3", TotalS: 1.3}}
	return CellResult{Balancer: bal, Store: store, Variant: variantOf(choice{name: bal}, choice{name: store}, run),
		SessionsLostPct: lost, Deploys: steps, DeploySeconds: ptr(3.6)}
}

func TestRollingDeployFindings(t *testing.T) {
	rolling := func(cells ...CellResult) *Results {
		res := run(cells...)
		res.Settings.Variants = []string{"mode=remove", "mode=drain"}
		res.Settings.DrainTimeoutMs = 1800
		return res
	}
	tests := []struct {
		name string
		res  *Results
		want []string
	}{
		{"drain keeps memory sessions but with a hash ring", rolling(
			deployCellOf("cookie", StoreMemory, modeRemove, 8, false), deployCellOf("cookie", StoreMemory, modeDrain, 0, false),
			deployCellOf("consistent-hash", StoreMemory, modeRemove, 9, false), deployCellOf("consistent-hash", StoreMemory, modeDrain, 4, true),
			deployCellOf("cookie", StoreRedis, modeRemove, 0, false), deployCellOf("cookie", StoreRedis, modeDrain, 0, false)),
			[]string{"removed from the config: cookie 8.0%, consistent-hash 9.0%; drained until idle: cookie 0.0%, consistent-hash 4.0%",
				"With the sessions elsewhere, 2 of 2 cells lost none", "Whole deploys took 3.6 to 3.6 s with mode=remove, 3.6 to 3.6 s with mode=drain",
				"Partly:", "with drain, in-memory sticky sessions survive a full rolling deploy (cookie)",
				"Not with consistent-hash (its drains did not end within 1.8 s: new users whose key the drained backend owns keep coming to it)"}},
		{"drain loses too", rolling(deployCellOf("cookie", StoreMemory, modeRemove, 8, false), deployCellOf("cookie", StoreMemory, modeDrain, 3, false)),
			[]string{"Agrees: even drained until idle, the deploy lost in-memory sessions (cookie)"}},
		{"remove loses nothing", rolling(deployCellOf("cookie", StoreMemory, modeRemove, 0, false)), []string{"Disagrees: a balancer × memory removed"}},
		{"redis loses", rolling(deployCellOf("cookie", StoreMemory, modeRemove, 8, false), deployCellOf("cookie", StoreRedis, modeRemove, 2, false)),
			[]string{"Disagrees: sessions kept in Redis were lost: cookie × redis × mode=remove 2.0%"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { wantFinding(t, 11, tt.res, tt.want...) })
	}
	f := finding(11, tests[0].res)
	if want := "a rolling deploy that took each server out of the config logged out 8% of users with in-memory sessions; draining each " +
		"until idle first (ctl drain --wait) logged out nobody with cookie, for a deploy of 3.6 s instead of 3.6 s"; f.ForYou != want {
		t.Errorf("for you %q, want %q", f.ForYou, want)
	}
}
