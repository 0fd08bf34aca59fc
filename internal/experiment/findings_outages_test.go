package experiment

import (
	"strings"
	"testing"
	"time"

	"github.com/affinityproxy/affinity/internal/harness"
)

// drainCell is a cell where b2 is removed at 3 s, after answering share% of
// the requests; the second after the drain, which must not count in the
// share, goes to b1 and b3 only.
func drainCell(bal, store string, lost, share float64) CellResult {
	b2 := int(share * 10)
	var tl []Bucket
	for i := range 3 {
		tl = append(tl, Bucket{Start: time.Duration(i) * time.Second, Width: time.Second, Requests: 1000, OK: 1000,
			ByBackend: map[string]int{"b1": (1000 - b2) / 2, "b2": b2, "b3": 1000 - b2 - (1000-b2)/2}})
	}
	tl = append(tl, Bucket{Start: 3 * time.Second, Width: time.Second, Requests: 1000, OK: 1000, ByBackend: map[string]int{"b1": 1000}})
	return CellResult{Balancer: bal, Store: store, SessionsLostPct: lost, Fine: tl,
		Faults: []harness.Applied{{Fault: harness.Fault{At: 3 * time.Second, Action: harness.Remove, Target: "b2"}, Start: 3 * time.Second, End: 3200 * time.Millisecond}}}
}

// storeCell is a cell of an 8 s run whose store is down from 3 s to 5 s, and
// whose requests fail at before% up to 3 s, during% while the store is down
// and before% again after.
func storeCell(bal, store string, before, during, lost float64) CellResult {
	var tl []Bucket
	for i := range 8 {
		p := before
		if i == 3 || i == 4 {
			p = during
		}
		tl = append(tl, Bucket{Start: time.Duration(i) * time.Second, Width: time.Second, Requests: 400, Errors: int(p * 4), OK: 400 - int(p*4)})
	}
	return CellResult{Balancer: bal, Store: store, SessionsLostPct: lost, Fine: tl, Faults: []harness.Applied{
		{Fault: harness.Fault{At: 3 * time.Second, Action: harness.StoreDown}, Start: 3 * time.Second, End: 3 * time.Second},
		{Fault: harness.Fault{At: 5 * time.Second, Action: harness.StoreUp}, Start: 5 * time.Second, End: 5 * time.Second},
	}}
}

// eightSeconds sets the run's length, which a store that never comes back
// is down until.
func eightSeconds(r *Results) *Results {
	r.Settings.DurationS = 8
	return r
}

func TestOutageFindings(t *testing.T) {
	with := func(c CellResult, f func(*CellResult)) CellResult {
		f(&c)
		return c
	}
	noUp := func(c *CellResult) {
		c.Faults = c.Faults[:1]
		for i := 5; i < len(c.Fine); i++ {
			c.Fine[i].OK, c.Fine[i].Errors = 0, c.Fine[i].Requests
		}
	}
	tests := []struct {
		name   string
		claim  int
		res    *Results
		want   []string
		reject []string
	}{
		{"drain: memory loses the drained share, the others nothing", 11, run(
			drainCell("round-robin", StoreMemory, 98, 33), drainCell("cookie", StoreMemory, 31, 33),
			drainCell("cookie", StoreRedis, 0, 33), drainCell("cookie", StoreToken, 0, 33)),
			[]string{"b2 was drained at 3.0 s", "against b2's share of the requests until then: cookie 31.0% against 33.0%.",
				"round-robin × memory: 98.0%, fault or no fault", "With the state elsewhere: redis: cookie 0.0%; token: cookie 0.0%.",
				"Agrees: with memory, each sticky balancer lost about the drained server's share (cookie -2.0 points)",
				"no cell with the state in redis or token lost a session"},
			[]string{"Disagrees", "elsewhere: memory"}},
		{"drain: each sticky balancer against its own share", 11, run(drainCell("cookie", StoreMemory, 31, 33), drainCell("consistent-hash", StoreMemory, 42, 41),
			drainCell("consistent-hash", StoreRedis, 0, 41)),
			[]string{"cookie 31.0% against 33.0%, consistent-hash 42.0% against 41.0%", "(cookie -2.0, consistent-hash +1.0 points)", "Agrees"}, nil},
		{"drain: the ring alone", 11, run(drainCell("consistent-hash", StoreMemory, 30, 34), drainCell("consistent-hash", StoreRedis, 0, 34)),
			[]string{"consistent-hash 30.0% against 34.0%", "Agrees"}, nil},
		{"drain: one sticky balancer off its share", 11, run(drainCell("cookie", StoreMemory, 31, 33), drainCell("consistent-hash", StoreMemory, 60, 41)),
			[]string{"Disagrees: consistent-hash × memory lost 19.0 points more than the drained server's share"}, []string{"Agrees"}},
		{"drain: a stale retry is not a lost session", 11, run(drainCell("cookie", StoreMemory, 31, 33),
			with(drainCell("cookie", StoreRedis, 1, 33), func(c *CellResult) { c.StaleAfterFailurePct = 1 })),
			[]string{"cookie × redis 1.0% of users, a request failed in flight", "Agrees"}, nil},
		{"drain: redis lost sessions", 11, run(drainCell("cookie", StoreMemory, 31, 33),
			with(drainCell("cookie", StoreRedis, 5, 33), func(c *CellResult) { c.ErrorKinds = map[string]int{"session_lost": 5} })),
			[]string{"Disagrees: with the state elsewhere, sessions were still lost: cookie × redis 5.0% (session_lost 5)"}, []string{"Agrees"}},
		{"drain: memory lost nothing", 11, run(drainCell("cookie", StoreMemory, 0, 33), drainCell("cookie", StoreRedis, 0, 33)),
			[]string{"Disagrees: cookie × memory lost no session"}, nil},
		{"drain: memory lost far more than the share", 11, run(drainCell("cookie", StoreMemory, 70, 33)),
			[]string{"Disagrees: cookie × memory lost 37.0 points more than the drained server's share"}, nil},
		{"drain: memory lost far fewer", 11, run(drainCell("cookie", StoreMemory, 10, 33)),
			[]string{"23.0 points fewer"}, nil},
		{"drain: memory only", 11, run(drainCell("cookie", StoreMemory, 30, 33)),
			[]string{"Agrees on memory", "no cell with redis, cached-redis or token"}, nil},
		{"drain: no sticky memory cell", 11, run(drainCell("round-robin", StoreMemory, 98, 33), drainCell("cookie", StoreRedis, 0, 33)),
			[]string{"Not measured", "cookie × memory"}, nil},
		{"drain: nothing removed", 11, run(killCell("cookie", StoreMemory, 31, 33)),
			[]string{"Not measured: no backend was removed in the cookie × memory cell."}, nil},

		{"store down: redis fails, the rest serves on", 12, eightSeconds(run(
			storeCell("cookie", StoreMemory, 0, 0, 0), storeCell("round-robin", StoreMemory, 60, 60, 98),
			storeCell("cookie", StoreRedis, 0, 100, 0), storeCell("cookie", StoreCachedRedis, 0, 100, 0), storeCell("cookie", StoreToken, 0, 0, 0))),
			[]string{"Redis was stopped at 3.0 s and started again at 5.0 s",
				"memory: cookie 0.0% (0.0%), round-robin 60.0% (60.0%); redis: cookie 100.0% (0.0%); cached-redis: cookie 100.0% (0.0%); token: cookie 0.0% (0.0%)",
				"(the backends' Redis clients connecting again): redis: cookie 0.0 s; cached-redis: cookie 0.0 s.",
				"Users who lost their session: memory: cookie 0.0%, round-robin 98.0%",
				"No session kept in Redis was lost", "a Redis restarted without persistence comes back empty",
				"Agrees: every cell whose sessions live in Redis failed", "cached-redis included", "while the cells with memory or token sessions served on"},
			[]string{"Disagrees"}},
		{"store down: failing on after the store was back", 12, eightSeconds(run(
			with(storeCell("cookie", StoreRedis, 0, 100, 0), func(c *CellResult) { c.Fine[5].Errors, c.Fine[5].OK = 200, 200 }),
			with(storeCell("round-robin", StoreRedis, 0, 100, 0), func(c *CellResult) { c.Fine[7].Errors, c.Fine[7].OK = 400, 0 }))),
			[]string{"connecting again): redis: cookie 1.0 s, round-robin the rest of the run.", "Agrees"}, nil},
		{"store down: the near cache carried the outage", 12, eightSeconds(run(
			storeCell("cookie", StoreRedis, 0, 100, 0), storeCell("cookie", StoreCachedRedis, 0, 10, 0), storeCell("cookie", StoreMemory, 0, 0, 0))),
			[]string{"Disagrees: cookie × cached-redis failed only 10.0% of its requests while the store was down"}, []string{"Agrees"}},
		{"store down: memory failed too", 12, eightSeconds(run(
			storeCell("cookie", StoreRedis, 0, 100, 0), storeCell("cookie", StoreMemory, 0, 30, 0))),
			[]string{"Disagrees: cookie × memory, which needs no store, failed 30.0 points more while it was down"}, nil},
		{"store down: sessions lost in redis", 12, eightSeconds(run(
			with(storeCell("cookie", StoreRedis, 0, 100, 40), func(c *CellResult) { c.ErrorKinds = map[string]int{"session_lost": 60} }),
			storeCell("cookie", StoreToken, 0, 0, 0))),
			[]string{"Sessions kept in Redis were lost", "cookie × redis 40.0% (session_lost 60)", "Agrees"}, []string{"No session kept in Redis was lost"}},
		{"store down: never back up", 12, eightSeconds(run(
			with(storeCell("cookie", StoreRedis, 0, 100, 0), noUp))),
			[]string{"was not started again before the end", "cookie 100.0% (0.0%)", "not measured: the store did not come back",
				"no memory or token cell to compare"}, []string{"came back with every session"}},
		{"store down: no redis cell", 12, eightSeconds(run(storeCell("cookie", StoreMemory, 0, 0, 0))),
			[]string{"Not measured", "redis or cached-redis"}, nil},
		{"store down: store never stopped", 12, run(CellResult{Balancer: "cookie", Store: StoreRedis}),
			[]string{"Not measured: the store was not stopped."}, nil},
		{"store down: shorter than a bucket", 12, eightSeconds(run(with(storeCell("cookie", StoreRedis, 0, 100, 0), func(c *CellResult) {
			c.Faults[1].Start = 3500 * time.Millisecond
		}))),
			[]string{"Not measured: the store was down for less than one bucket"}, nil},
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
			for _, r := range tt.reject {
				if strings.Contains(got, r) {
					t.Errorf("finding has %q:\n%s", r, got)
				}
			}
		})
	}
}
