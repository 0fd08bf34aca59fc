package experiment

import (
	"cmp"
	"maps"
	"slices"
	"time"

	"github.com/affinityproxy/affinity/internal/harness"
)

// CellResult is everything measured in one cell of the matrix. The JSON names
// are the contract of results.json.
type CellResult struct {
	Balancer string `json:"balancer"`
	Store    string `json:"store"`
	// Variant holds the options of the balancer and the store that tell
	// this cell from another of the same two; absent when none.
	Variant Variant `json:"variant,omitempty"`

	// Requests counts the arrivals sent; Errors those that failed, for any
	// reason (lost sessions included, refused replays not), itemised in
	// ErrorKinds.
	Requests   int            `json:"requests"`
	Errors     int            `json:"errors"`
	ErrorKinds map[string]int `json:"error_kinds"`
	// Replays counts the requests made, after a logout, with the session
	// credential held before it (Spec.Logout), and ReplaysAccepted those
	// the server answered as if the user were logged in; null without
	// replays. A refused replay is no error.
	Replays         int  `json:"replays,omitempty"`
	ReplaysAccepted *int `json:"replays_accepted,omitempty"`
	// Skipped counts arrivals not sent because the user's previous request
	// was still in flight.
	Skipped int `json:"skipped"`
	// Users counts the users (identities) that logged in at least once.
	Users int `json:"users"`
	// BusiestTenthPct is the share of the requests sent by the busiest
	// tenth of the users who sent any: about 10 when users are alike.
	BusiestTenthPct float64 `json:"busiest_tenth_pct"`

	// SessionsLostPct is the share of Users whose workflow broke at least
	// once with session_lost or session_stale.
	SessionsLostPct float64 `json:"sessions_lost_pct"`
	// StaleAfterFailurePct is the part of SessionsLostPct whose only
	// breaks were a stale cart right after a request failed in flight: the
	// request had been applied, its answer was lost, and the retry was
	// stale. The session itself survived.
	StaleAfterFailurePct float64 `json:"stale_after_failure_pct"`
	// UsersMovedPct is the share of users, seen both before the first
	// fault that changes membership (kill, add, remove) and once the proxy
	// routed by it, whose backend differs across it: the last before
	// against the first after. Null without such a fault.
	UsersMovedPct *float64 `json:"users_moved_pct"`
	// UsersMovedOf is how many users UsersMovedPct compares: its
	// denominator, smaller than Users (those who logged in at any time).
	UsersMovedOf int `json:"users_moved_of"`
	// UsersMovedPredictedPct is, for a hash balancer, the share of the same
	// users that the hash itself moves across the change, computed from
	// the cell's config; null for other balancers.
	UsersMovedPredictedPct *float64 `json:"users_moved_predicted_pct"`
	// LeftFirstChoicePct is, for a hash balancer, the share of responses
	// not given by the backend the hash picks for the request's key over
	// the backends in rotation then: bounded loads and retries send
	// requests elsewhere. Null for other balancers.
	LeftFirstChoicePct *float64 `json:"left_first_choice_pct"`
	// VictimUsersPct is the share of users whose last backend before the
	// first kill was the killed one: what claim 1 expects to be lost.
	VictimUsersPct *float64 `json:"victim_users_pct"`
	// NewBackendPct is the share of requests served by added backends from
	// the end of the first add to the end of the run; null without an add.
	NewBackendPct *float64 `json:"new_backend_pct"`
	// NewcomersPct is the share of those requests that came from users first
	// seen after the add: a sticky balancer gives a new backend only those.
	NewcomersPct *float64 `json:"new_backend_newcomers_pct"`
	// Imbalance is max/mean over the backends of their responses per
	// second while each was in rotation (a killed, hung, removed or not yet
	// added backend is not counted while out); 1 is perfectly even.
	Imbalance float64 `json:"imbalance"`
	// ImbalancePeak is the highest imbalance of any one second of the run.
	ImbalancePeak float64 `json:"imbalance_peak"`

	// Latency of successful requests, from the scheduled arrival.
	P50Ms float64 `json:"p50_ms"`
	P95Ms float64 `json:"p95_ms"`
	P99Ms float64 `json:"p99_ms"`
	// ThroughputRPS is successful requests per second of load.
	ThroughputRPS float64 `json:"throughput_rps"`

	// Checkouts counts the carts the users tried to check out, each once
	// however often its checkout was sent; FailedCheckouts those that no
	// checkout answered with an order; CheckoutP99Ms is the p99 latency
	// of the successful checkouts.
	Checkouts       int     `json:"checkouts"`
	FailedCheckouts int     `json:"failed_checkouts"`
	CheckoutP99Ms   float64 `json:"checkout_p99_ms"`
	// CheckoutErrorKinds itemises the checkout requests among Errors, as
	// ErrorKinds does: a 504 is a checkout the proxy gave up on and did
	// not send elsewhere, a store failure the shop's, which a frozen
	// backend has no part in.
	CheckoutErrorKinds map[string]int `json:"checkout_error_kinds"`
	// Orders and DuplicateOrders are what the backends running at the end
	// counted (demoapp_orders_total, demoapp_duplicate_orders_total):
	// orders placed, and among them orders of a cart that already had one,
	// a checkout that ran twice.
	Orders          int `json:"orders"`
	DuplicateOrders int `json:"duplicate_orders"`

	// DeploySeconds is how long a rolling deploy took (a deploy fault),
	// from its start until the last backend was back in service; null
	// without one, or when it did not end. Deploys has each backend's
	// step.
	DeploySeconds *float64     `json:"deploy_seconds"`
	Deploys       []DeployStep `json:"deploys,omitempty"`

	// CacheHitPct is the near-cache hit rate from X-Cache; null when no
	// response carried it.
	CacheHitPct *float64 `json:"cache_hit_pct"`
	// StoreOpsPerRequest is the mean X-Store-Ops; null when absent.
	StoreOpsPerRequest *float64 `json:"store_ops_per_request"`
	// BytesPerRequest is the mean of request plus response bytes.
	BytesPerRequest float64 `json:"bytes_per_request"`
	// CookieBytesByItems[i] is the mean Cookie header length of successful
	// cart requests made with i items in the cart.
	CookieBytesByItems []float64 `json:"cookie_bytes_by_items"`

	Backends []BackendStats    `json:"backends"`
	Faults   []harness.Applied `json:"faults"`
	// ProxyReloads counts reloads of the proxy's config (add, remove),
	// each by the running proxy, which keeps its connections.
	ProxyReloads int `json:"proxy_reloads"`

	// Timeline holds one bucket per second, for timeline.csv; Fine holds
	// the finer buckets the charts draw, so that a short run still shows
	// the shape of a fault.
	Timeline []Bucket `json:"-"`
	Fine     []Bucket `json:"-"`
}

// BackendStats is one backend of a cell: the requests it answered, and its
// own figures scraped from /metrics at the end of the load (0 when it was
// not running then).
type BackendStats struct {
	Name     string `json:"name"`
	Requests int    `json:"requests"`
	// P99Ms is the latency of its successful responses.
	P99Ms     float64 `json:"p99_ms"`
	Sessions  int     `json:"sessions"`
	RSSBytes  int64   `json:"rss_bytes"`
	CacheHits int64   `json:"cache_hits"`
}

// summarize computes a cell's figures from its samples. backends names every
// backend the cell had, in start order, the added ones last; initial is how
// many it started with.
func summarize(balancer, store string, samples []Sample, skipped int, d time.Duration, backends []string, initial int, faults []harness.Applied) CellResult {
	r := CellResult{
		Balancer:   balancer,
		Store:      store,
		Requests:   len(samples),
		Skipped:    skipped,
		ErrorKinds: map[string]int{},
		Faults:     faults,

		CheckoutErrorKinds: map[string]int{},
	}
	var ok []time.Duration
	okBy := map[string][]time.Duration{}
	var bytes, wired, ops, opsN, hits, misses, accepted int
	perBackend := map[string]int{}
	for i := range samples {
		s := &samples[i]
		if s.Step == stepReplay {
			r.Replays++
			if s.OK() {
				accepted++
			}
		}
		switch {
		case s.OK():
			ok = append(ok, s.Latency)
			okBy[s.Backend] = append(okBy[s.Backend], s.Latency)
		case s.failed():
			r.Errors++
			r.ErrorKinds[s.Kind]++
			if s.Step == stepCheckout {
				r.CheckoutErrorKinds[s.Kind]++
			}
		}
		if s.Backend != "" {
			perBackend[s.Backend]++
		}
		if s.Status != 0 {
			bytes += s.ReqBytes + s.RespBytes
			wired++
		}
		if s.StoreOps >= 0 {
			ops += s.StoreOps
			opsN++
		}
		switch s.Cache {
		case cacheHit:
			hits++
		case cacheMiss:
			misses++
		}
	}
	if r.Replays > 0 {
		r.ReplaysAccepted = &accepted
	}
	slices.Sort(ok)
	for _, l := range okBy {
		slices.Sort(l)
	}
	r.P50Ms, r.P95Ms, r.P99Ms = ms(harness.Percentile(ok, 50)), ms(harness.Percentile(ok, 95)), ms(harness.Percentile(ok, 99))
	if d > 0 {
		r.ThroughputRPS = float64(len(ok)) / d.Seconds()
	}
	if wired > 0 {
		r.BytesPerRequest = float64(bytes) / float64(wired)
	}
	if opsN > 0 {
		r.StoreOpsPerRequest = ptr(float64(ops) / float64(opsN))
	}
	if hits+misses > 0 {
		r.CacheHitPct = ptr(pct(hits, hits+misses))
	}
	r.Users, r.SessionsLostPct, r.StaleAfterFailurePct = sessionsLost(samples)
	r.BusiestTenthPct = busiestTenth(samples)
	for _, name := range backends {
		r.Backends = append(r.Backends, BackendStats{Name: name, Requests: perBackend[name], P99Ms: ms(harness.Percentile(okBy[name], 99))})
	}
	if f, ok := harness.First(faults, harness.Action.ChangesMembership); ok {
		moves := movesAcross(samples, f.Start, f.Since())
		r.UsersMovedPct, r.UsersMovedOf = moves.movedPct(), len(moves)
	}
	if f, ok := harness.First(faults, func(a harness.Action) bool { return a == harness.Kill }); ok {
		r.VictimUsersPct = victimUsers(samples, f.Start, f.Target)
	}
	if f, ok := harness.First(faults, func(a harness.Action) bool { return a == harness.Add }); ok && initial < len(backends) {
		r.NewBackendPct = servedBy(samples, f.End, backends[initial:])
		r.NewcomersPct = newcomers(samples, f.Start, f.End, backends[initial:])
	}
	r.CookieBytesByItems = cookieBytesByItems(samples)
	r.Checkouts, r.FailedCheckouts, r.CheckoutP99Ms = checkouts(samples)
	r.setBalance(samples, d, uptime(backends, initial, faults, d))
	return r
}

// setBalance sets the figures that count each backend only while it was in
// rotation, the spans of up: the timelines and the imbalance.
func (r *CellResult) setBalance(samples []Sample, d time.Duration, up map[string][]span) {
	r.Timeline = timeline(samples, d, time.Second, up)
	r.Fine = timeline(samples, d, fineBucket(d), up)
	r.Imbalance, r.ImbalancePeak = imbalance(r.Fine, up), 0
	for _, b := range r.Timeline {
		r.ImbalancePeak = max(r.ImbalancePeak, b.Imbalance)
	}
}

// checkouts returns the carts the users tried to check out (each user's
// cart once, however often its checkout was sent), those of them that no
// checkout answered with an order, and the p99 latency of the successful
// checkouts.
func checkouts(samples []Sample) (carts, failed int, p99Ms float64) {
	type cart struct {
		user string
		n    int
	}
	ordered := map[cart]bool{}
	var ok []time.Duration
	for i := range samples {
		s := &samples[i]
		if s.Step != stepCheckout {
			continue
		}
		k := cart{s.User, s.Cart}
		ordered[k] = ordered[k] || s.OK()
		if s.OK() {
			ok = append(ok, s.Latency)
		}
	}
	for _, done := range ordered {
		if !done {
			failed++
		}
	}
	slices.Sort(ok)
	return len(ordered), failed, ms(harness.Percentile(ok, 99))
}

// sessionsLost returns the users that logged in, the share of them whose
// workflow broke at least once, and the share whose every break was a
// session_stale right after a request of theirs failed without an answer
// from the shop (a 502, a timeout): that request had been applied before
// its backend died, so the session was intact and the client's retry was
// one item behind. Those users lost an answer, not a session.
func sessionsLost(samples []Sample) (users int, lostPct, afterFailurePct float64) {
	byUser := map[string][]*Sample{}
	for i := range samples {
		s := &samples[i]
		byUser[s.User] = append(byUser[s.User], s)
	}
	lost, afterFailure := 0, 0
	for _, ss := range byUser {
		slices.SortStableFunc(ss, func(a, b *Sample) int { return cmp.Compare(a.At, b.At) })
		in, broke, onlyRetry := false, false, true
		for i, s := range ss {
			if s.Step == stepLogin && s.OK() {
				in = true
			}
			if !s.lostSession() {
				continue
			}
			broke = true
			if s.Kind != kindSessionStale || i == 0 || ss[i-1].OK() || ss[i-1].lostSession() {
				onlyRetry = false
			}
		}
		if !in {
			continue
		}
		users++
		if broke {
			lost++
			if onlyRetry {
				afterFailure++
			}
		}
	}
	return users, pct(lost, users), pct(afterFailure, users)
}

// busiestTenth returns the share of samples sent by the busiest tenth
// (rounded up) of the users who sent any.
func busiestTenth(samples []Sample) float64 {
	per := map[string]int{}
	for i := range samples {
		per[samples[i].User]++
	}
	counts := slices.Sorted(maps.Values(per))
	slices.Reverse(counts)
	top := 0
	for _, n := range counts[:(len(counts)+9)/10] {
		top += n
	}
	return pct(top, len(samples))
}

// cookieBytesByItems returns, for each cart size, the mean Cookie header of
// the successful cart requests (add, cart, checkout) made with that many
// items.
func cookieBytesByItems(samples []Sample) []float64 {
	var sum, n []int
	for i := range samples {
		s := &samples[i]
		if !s.OK() || s.Step == stepLogin {
			continue
		}
		for len(sum) <= s.Items {
			sum, n = append(sum, 0), append(n, 0)
		}
		sum[s.Items] += s.CookieBytes
		n[s.Items]++
	}
	out := make([]float64, len(sum))
	for i := range sum {
		if n[i] > 0 {
			out[i] = float64(sum[i]) / float64(n[i])
		}
	}
	return out
}

func pct(n, of int) float64 {
	if of == 0 {
		return 0
	}
	return 100 * float64(n) / float64(of)
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func ptr[T any](v T) *T { return &v }
