package experiment

import (
	"fmt"
	"math"
	"slices"
	"strings"

	"github.com/affinityproxy/affinity/internal/harness"
)

// claimText is each claim of CLAIMS.md in a line, for the findings.
var claimText = map[int]string{
	1:  "With sticky routing and in-memory sessions, a server crash loses exactly the sessions it held.",
	2:  "With state in an external store, any server can take any request and a crash loses nothing.",
	3:  "The external store costs a network hop on every request.",
	4:  "A local cache in front of the store wins back that cost only when routing is sticky.",
	5:  "Client-held tokens need no server store but every request carries the whole session.",
	6:  "A token can't be revoked before it expires without server-side state.",
	7:  "Sticky sessions are hard to rebalance: a new server only gets new users.",
	8:  "Consistent hashing moves only ~1/N of users when a server joins; modulo hashing moves most.",
	9:  "Sticky routing creates hotspots when some users are much heavier than others.",
	10: "Stateful servers need more memory per server.",
	11: "Draining a server for a deploy loses its sessions unless state lives elsewhere.",
	12: "The central store is a single point of failure.",
	13: "Retrying requests is safe only for idempotent operations.",
}

// Verdicts of a finding.
const (
	Agrees      = "agrees"
	Disagrees   = "disagrees"
	Partly      = "partly"
	NotMeasured = "not measured"
)

// Finding is what a run measured about one claim, from its numbers alone.
type Finding struct {
	Claim int `json:"claim"`
	// Verdict is Agrees, Disagrees, Partly or NotMeasured.
	Verdict string `json:"verdict"`
	// Text states the figures and the verdict in words.
	Text string `json:"text"`
	// Band says when the finding agrees, so that a reader can judge the
	// verdict; empty when nothing was measured.
	Band string `json:"band,omitempty"`
	// ForYou says what the figures mean for someone choosing a design, in
	// a sentence.
	ForYou string `json:"for_you,omitempty"`
	// Headline is the finding's main figure in a few words, for a summary
	// table of every claim; empty when nothing was measured.
	Headline string `json:"headline,omitempty"`
}

// verdictOf reads the verdict a finding's text ends with.
func verdictOf(text string) string {
	switch {
	case strings.HasPrefix(text, "Not measured"):
		return NotMeasured
	case strings.Contains(text, " Disagrees"):
		return Disagrees
	case strings.Contains(text, " Agrees on "), strings.Contains(text, " Partly:"):
		return Partly
	case strings.Contains(text, " Agrees"):
		return Agrees
	}
	return NotMeasured
}

// Findings returns a finding for each claim the run's spec names that the
// harness knows, in the spec's order.
func Findings(res *Results) []Finding {
	var out []Finding
	for _, n := range res.Spec.Claims {
		if _, ok := claimText[n]; ok {
			out = append(out, finding(n, res))
		}
	}
	return out
}

// finding states what the run measured about claim n, and whether that
// agrees with the claim, from the numbers alone.
func finding(n int, res *Results) Finding {
	f := measure(n, res)
	f.Claim = n
	if f.Verdict == "" {
		f.Verdict = verdictOf(f.Text)
	}
	if f.Verdict == NotMeasured {
		f.Band, f.ForYou, f.Headline = "", "", ""
	}
	return f
}

// measure dispatches to the finding of claim n.
func measure(n int, res *Results) Finding {
	switch n {
	case 1:
		return findCrash(res)
	case 2:
		return findExternalStore(res)
	case 3:
		return findStoreCost(res)
	case 4:
		return findNearCache(res)
	case 5:
		return findTokenBytes(res)
	case 6:
		return findRevoke(res)
	case 7:
		return findNewServer(res)
	case 8:
		return findMoved(res)
	case 9:
		return findHotUsers(res)
	case 10:
		return findMemory(res)
	case 11:
		return findDrain(res)
	case 12:
		return findStoreDown(res)
	case 13:
		return findRetrySafety(res)
	}
	return Finding{Text: "Not measured by this harness yet."}
}

// cell returns the result of balancer × store, each named as the spec's
// entries name them (a bare name is the cell without options), or nil if
// the run had none.
func cell(res *Results, balancer, store string) *CellResult {
	for i := range res.Cells {
		if c := &res.Cells[i]; c.BalancerEntry() == balancer && c.StoreEntry() == store {
			return c
		}
	}
	return nil
}

func notMeasured(cells ...string) Finding {
	return Finding{Text: "Not measured: the run lacks the cell " + strings.Join(cells, " and ") + "."}
}

// agreesIf ends a finding's text with its verdict, when the band is all
// there is to say.
func agreesIf(ok bool) string {
	if ok {
		return " Agrees."
	}
	return " Disagrees."
}

// unmeasured is a finding that says why nothing was measured.
func unmeasured(why string) Finding { return Finding{Text: "Not measured: " + why} }

// findCrash: memory × cookie loses about the dead server's share.
func findCrash(res *Results) Finding {
	ck := cell(res, "cookie", StoreMemory)
	if ck == nil {
		return notMeasured("cookie × memory")
	}
	kill, ok := harness.First(ck.Faults, func(a harness.Action) bool { return a == harness.Kill })
	if !ok || ck.VictimUsersPct == nil {
		return unmeasured("no backend was killed in the cookie × memory cell.")
	}
	victim := *ck.VictimUsersPct
	f := Finding{Band: fmt.Sprintf("agrees when cookie × memory lost within %.1f points (the larger of 5 and a quarter of the share) "+
		"of the killed backend's share of users (%.1f%%), and more than nothing", max(5, victim/4), victim)}
	s := fmt.Sprintf("Measured: cookie × memory lost the session of %.1f%% of users when %s was killed at %.1f s; "+
		"%s was the backend of %.1f%% of users just before.", ck.SessionsLostPct, kill.Target, kill.Start.Seconds(), kill.Target, victim)
	rr := cell(res, "round-robin", StoreMemory)
	if rr != nil {
		s += fmt.Sprintf(" round-robin × memory: %.1f%%, fault or no fault, as no request follows its session.", rr.SessionsLostPct)
	}
	if ch := cell(res, "consistent-hash", StoreMemory); ch != nil {
		s += fmt.Sprintf(" consistent-hash × memory: %.1f%%.", ch.SessionsLostPct)
	}
	f.Headline = fmt.Sprintf("cookie × memory lost %.1f%% of users; %s held %.1f%%", ck.SessionsLostPct, kill.Target, victim)
	f.ForYou = fmt.Sprintf("with sessions in server memory, a crash of one of %d servers logged out %.0f%% of users even with sticky routing", res.Settings.Backends, ck.SessionsLostPct)
	if rr != nil {
		f.ForYou += fmt.Sprintf(" (%.0f%% without it, crash or not)", rr.SessionsLostPct)
	}
	switch d := ck.SessionsLostPct - victim; {
	case ck.SessionsLostPct == 0:
		s += " Disagrees: the sticky cell lost nothing."
	case math.Abs(d) <= max(5, victim/4):
		s += fmt.Sprintf(" Agrees: the sticky cell lost about the dead server's share (%+.1f points).", d)
	case d > 0:
		s += fmt.Sprintf(" Disagrees: the sticky cell lost %.1f points more than the dead server's share.", d)
	default:
		s += fmt.Sprintf(" Disagrees: the sticky cell lost %.1f points less than the dead server's share.", -d)
	}
	f.Text = s
	return f
}

// findExternalStore: no cell with an external or client-side store loses a
// session. A stale cart right after a request that failed in flight is told
// apart: the session survived, the answer did not.
func findExternalStore(res *Results) Finding {
	l := externalLosses(res)
	if l.cells == 0 {
		return notMeasured("with a redis, cached-redis or token store")
	}
	f := Finding{Band: "agrees when no cell with a redis, cached-redis or token store lost a session; a stale cart right after " +
		"a request failed in flight is counted apart, as the session survived (partly when those are all there is)"}
	s := fmt.Sprintf("Measured: %d of %d cells with redis, cached-redis or token stores saw no broken workflow.", l.zero, l.cells)
	f.Headline = fmt.Sprintf("%d of %d cells with redis, cached-redis or token lost a session", len(l.lossy), l.cells)
	f.ForYou = "with the session in Redis or in a signed token, a crash logged nobody out"
	if ck, rd := cell(res, "cookie", StoreMemory), cell(res, "round-robin", StoreRedis); ck != nil && rd != nil {
		s += fmt.Sprintf(" round-robin × redis: %.1f%% broken, p50 %.2f ms, against cookie × memory: %.1f%% broken, p50 %.2f ms (%+.2f ms).",
			rd.SessionsLostPct, rd.P50Ms, ck.SessionsLostPct, ck.P50Ms, rd.P50Ms-ck.P50Ms)
		f.ForYou += fmt.Sprintf("; Redis cost %+.1f ms at p50 here", rd.P50Ms-ck.P50Ms)
	}
	if len(l.retried) > 0 {
		s += " In " + strings.Join(l.retried, ", ") + " of users, a request failed in flight as the backend died after " +
			"applying it, and the retry found the cart one item ahead (session_stale): the session survived, the answer " +
			"to the request in flight did not, whatever the store."
	}
	switch {
	case len(l.lossy) > 0:
		s += " Disagrees: " + strings.Join(l.lossy, "; ") + "."
	case len(l.retried) > 0:
		s += " Agrees on sessions: none was lost; a crash still loses the answers of the requests in flight."
	default:
		s += " Agrees."
	}
	f.Text = s
	return f
}

// losses sorts the cells whose sessions live outside the backends (redis,
// cached-redis, token) by what their users lost.
type losses struct {
	cells, zero int // cells, and those where no workflow broke
	// retried names the cells whose only breaks were a stale cart right
	// after a request failed in flight, with that share; lossy the cells
	// that lost sessions, with the share and the error kinds.
	retried, lossy []string
}

func externalLosses(res *Results) losses {
	var l losses
	for _, c := range res.Cells {
		if c.Store == StoreMemory {
			continue
		}
		l.cells++
		switch {
		case c.SessionsLostPct == 0:
			l.zero++
		case c.SessionsLostPct-c.StaleAfterFailurePct < 1e-9:
			l.retried = append(l.retried, fmt.Sprintf("%s × %s %.1f%%", c.Balancer, c.Store, c.StaleAfterFailurePct))
		default:
			l.lossy = append(l.lossy, fmt.Sprintf("%s × %s %.1f%% (%s)", c.Balancer, c.Store, c.SessionsLostPct, kinds(c.ErrorKinds)))
		}
	}
	return l
}

// findNewServer: after an add, a sticky balancer sends the new backend far
// less than its share, and only users that arrived after it.
func findNewServer(res *Results) Finding {
	store, cells := storeWith(res, func(c *CellResult) bool { return c.NewBackendPct != nil })
	if len(cells) == 0 {
		return unmeasured("no backend was added.")
	}
	add, _ := harness.First(cells[0].Faults, func(a harness.Action) bool { return a == harness.Add })
	added := cells[0].Backends[len(cells[0].Backends)-1].Name
	fair := 100 / float64(len(cells[0].Backends))
	f := Finding{Band: fmt.Sprintf("agrees when the cookie balancer gave the new backend less than half its fair share (%.1f%%) "+
		"and at least 90%% of the new backend's requests came from users who arrived after it joined", fair/2)}
	share, fresh := make([]string, len(cells)), make([]string, 0, len(cells))
	for i, c := range cells {
		share[i] = fmt.Sprintf("%s %.1f%%", c.Balancer, *c.NewBackendPct)
		if c.NewcomersPct != nil {
			fresh = append(fresh, fmt.Sprintf("%s %.0f%%", c.Balancer, *c.NewcomersPct))
		}
	}
	s := fmt.Sprintf("Measured (%s store): after %s joined at %.1f s it served %s of the requests for the rest of the run "+
		"(a fair share is %.1f%%).", store, added, add.Start.Seconds(), strings.Join(share, ", "), fair)
	if len(fresh) > 0 {
		s += fmt.Sprintf(" Of %s's requests, the share from users who arrived after it joined: %s.", added, strings.Join(fresh, ", "))
	}
	ck := cell(res, "cookie", store)
	switch {
	case ck == nil:
		return notMeasured("cookie × " + store)
	case *ck.NewBackendPct >= fair/2:
		s += " Disagrees: the cookie balancer gave the new backend at least half its share."
	case ck.NewcomersPct != nil && *ck.NewcomersPct < 90:
		s += " Disagrees: the cookie balancer also moved existing users to the new backend."
	default:
		s += " Agrees: the cookie balancer gave the new backend only users that arrived after it, far below its share."
	}
	f.Text = s
	f.Headline = fmt.Sprintf("the new backend served %.1f%% with cookie; a fair share is %.1f%%", *ck.NewBackendPct, fair)
	f.ForYou = fmt.Sprintf("a server added behind cookie stickiness took %.0f%% of requests instead of %.0f%% for the rest of the run: "+
		"it fills only as new users arrive, so add capacity before a peak, not during it", *ck.NewBackendPct, fair)
	return f
}

// findMoved: consistent hashing moves ~1/N of users, modulo most.
func findMoved(res *Results) Finding {
	store, _ := storeWith(res, func(c *CellResult) bool {
		return c.UsersMovedPct != nil && (c.Balancer == "consistent-hash" || c.Balancer == ModuloHash)
	})
	ch, mod := cell(res, "consistent-hash", store), cell(res, ModuloHash, store)
	if ch == nil || mod == nil || ch.UsersMovedPct == nil || mod.UsersMovedPct == nil {
		return notMeasured("consistent-hash and modulo-hash with a membership change")
	}
	n := float64(len(ch.Backends))
	f := Finding{Band: fmt.Sprintf("agrees when consistent-hash moved fewer users than modulo-hash, and at most 1/N + 10 points (%.1f%%)", 100/n+10)}
	s := fmt.Sprintf("Measured (%s store): going to %.0f backends moved %.1f%% of users with consistent-hash "+
		"(1/N = %.1f%%) and %.1f%% with modulo-hash ((N-1)/N = %.1f%%), of the %d and %d users answered on both sides of the change.",
		store, n, *ch.UsersMovedPct, 100/n, *mod.UsersMovedPct, 100*(n-1)/n, ch.UsersMovedOf, mod.UsersMovedOf)
	if ch.UsersMovedPredictedPct != nil && mod.UsersMovedPredictedPct != nil {
		s += fmt.Sprintf(" The hashes themselves, built from the cells' configs, move %.1f%% and %.1f%% of the same users.",
			*ch.UsersMovedPredictedPct, *mod.UsersMovedPredictedPct)
	}
	var others []string
	for _, b := range []string{"cookie", "round-robin"} {
		if c := cell(res, b, store); c != nil && c.UsersMovedPct != nil {
			others = append(others, fmt.Sprintf("%s %.1f%%", b, *c.UsersMovedPct))
		}
	}
	if len(others) > 0 {
		s += " For comparison: " + strings.Join(others, ", ") + "."
	}
	f.Headline = fmt.Sprintf("moved: consistent-hash %.1f%%, modulo-hash %.1f%%", *ch.UsersMovedPct, *mod.UsersMovedPct)
	f.ForYou = fmt.Sprintf("when a server joined, a hash ring moved %.0f%% of users to another server and modulo hashing %.0f%%; "+
		"each move costs an in-memory session", *ch.UsersMovedPct, *mod.UsersMovedPct)
	f.Text = s + agreesIf(*ch.UsersMovedPct < *mod.UsersMovedPct && *ch.UsersMovedPct <= 100/n+10)
	return f
}

// findStoreCost: redis adds latency and round trips over memory.
func findStoreCost(res *Results) Finding {
	b := balancerWith(res, StoreMemory, StoreRedis)
	mem, rd := cell(res, b, StoreMemory), cell(res, b, StoreRedis)
	if mem == nil || rd == nil {
		return notMeasured("memory and redis under one balancer")
	}
	f := Finding{Band: "agrees when redis's p50 is above memory's under the same balancer"}
	s := fmt.Sprintf("Measured (%s balancer): p50 %.2f ms with redis against %.2f ms with memory (%+.2f ms), p99 %.2f against %.2f ms; "+
		"%s store round trips per request with redis.", b, rd.P50Ms, mem.P50Ms, rd.P50Ms-mem.P50Ms, rd.P99Ms, mem.P99Ms, opt(rd.StoreOpsPerRequest, "%.2f"))
	f.ForYou = fmt.Sprintf("Redis cost %.1f ms per request at p50 over memory", rd.P50Ms-mem.P50Ms)
	f.Headline = fmt.Sprintf("p50 %+.2f ms with redis over memory (%s); %s round trips per request", rd.P50Ms-mem.P50Ms, b, opt(rd.StoreOpsPerRequest, "%.2f"))
	if w := res.Settings.WorkMs; w > 0 {
		s += fmt.Sprintf(" Of the difference, %g ms per request is the backends' simulated work per session loaded (--work), "+
			"which the memory store never pays; the rest is the round trips.", w)
		f.ForYou = fmt.Sprintf("with this app's %g ms session load, ", w) + f.ForYou
	}
	if rd.P50Ms > mem.P50Ms {
		s += " Agrees."
	} else {
		s += " Disagrees: redis was not slower at the median."
	}
	f.Text = s
	return f
}

// findNearCache: the near cache hits often only under sticky routing.
func findNearCache(res *Results) Finding {
	ck, rr := cell(res, "cookie", StoreCachedRedis), cell(res, "round-robin", StoreCachedRedis)
	if ck == nil || rr == nil || ck.CacheHitPct == nil || rr.CacheHitPct == nil {
		return notMeasured("cookie × cached-redis and round-robin × cached-redis")
	}
	f := Finding{Band: "agrees when the near cache's hit rate with cookie is more than 20 points above round-robin's and its p50 no higher"}
	s := fmt.Sprintf("Measured: near-cache hit rate %.1f%% with cookie against %.1f%% with round-robin; p50 %.2f against %.2f ms.",
		*ck.CacheHitPct, *rr.CacheHitPct, ck.P50Ms, rr.P50Ms)
	f.Headline = fmt.Sprintf("near-cache hits %.0f%% with cookie, %.0f%% with round-robin", *ck.CacheHitPct, *rr.CacheHitPct)
	if rd := cell(res, "cookie", StoreRedis); rd != nil {
		s += fmt.Sprintf(" cookie × redis (no cache): p50 %.2f ms.", rd.P50Ms)
		f.ForYou = fmt.Sprintf("a near cache with sticky routing won %.1f ms of it back (hit rate %.0f%%; %.0f%% without stickiness)",
			rd.P50Ms-ck.P50Ms, *ck.CacheHitPct, *rr.CacheHitPct)
	}
	f.Text = s + agreesIf(*ck.CacheHitPct > *rr.CacheHitPct+20 && ck.P50Ms <= rr.P50Ms)
	return f
}

// findTokenBytes: a token makes every request carry the session, growing
// with the cart.
func findTokenBytes(res *Results) Finding {
	b := balancerWith(res, StoreToken, StoreRedis)
	tk, rd := cell(res, b, StoreToken), cell(res, b, StoreRedis)
	if tk == nil || rd == nil {
		return notMeasured("token and redis under one balancer")
	}
	first, last := cookieRange(tk.CookieBytesByItems)
	rf, rl := cookieRange(rd.CookieBytesByItems)
	f := Finding{
		Band: "agrees when token requests are larger than redis ones and the token's Cookie header grows with the cart",
		ForYou: fmt.Sprintf("a signed token added %.0f bytes to every request over a Redis session id, growing with the cart",
			tk.BytesPerRequest-rd.BytesPerRequest),
	}
	f.Headline = fmt.Sprintf("%.0f bytes per request with token, %.0f with redis; the token cookie %.0f to %.0f bytes", tk.BytesPerRequest, rd.BytesPerRequest, first, last)
	s := fmt.Sprintf("Measured (%s balancer): %.0f bytes per request with token against %.0f with redis; the Cookie header "+
		"grew from %.0f bytes with an empty cart to %.0f with %d items (redis: %.0f to %.0f).",
		b, tk.BytesPerRequest, rd.BytesPerRequest, first, last, len(tk.CookieBytesByItems)-1, rf, rl)
	f.Text = s + agreesIf(tk.BytesPerRequest > rd.BytesPerRequest && last > first)
	return f
}

// findMemory: in-memory sessions cost backend memory that external ones don't.
func findMemory(res *Results) Finding {
	b := balancerWith(res, StoreMemory, StoreRedis)
	var parts []string
	per := map[string][2]float64{} // store → sessions, MiB per backend
	for _, st := range Stores {
		c := cell(res, b, st)
		if c == nil || len(c.Backends) == 0 {
			continue
		}
		var sess, rss float64
		for _, be := range c.Backends {
			sess += float64(be.Sessions)
			rss += float64(be.RSSBytes) / (1 << 20)
		}
		k := float64(len(c.Backends))
		per[st] = [2]float64{sess / k, rss / k}
		parts = append(parts, fmt.Sprintf("%s %.0f sessions, %.1f MiB", st, sess/k, rss/k))
	}
	mem, okm := per[StoreMemory]
	rd, okr := per[StoreRedis]
	if !okm || !okr {
		return notMeasured("memory and redis under one balancer")
	}
	f := Finding{
		Band: "agrees when memory backends held more sessions than redis ones and more than 5% more resident memory; " +
			"partly when only the sessions differ",
		ForYou: fmt.Sprintf("in-memory sessions held %.0f sessions per server and %+.1f MiB of resident memory against Redis at %d users",
			mem[0], mem[1]-rd[1], res.Settings.Users),
	}
	s := fmt.Sprintf("Measured (%s balancer, per backend at the end of the load): %s.", b, strings.Join(parts, "; "))
	f.Headline = fmt.Sprintf("memory %.0f sessions and %.1f MiB per backend, redis %.0f and %.1f MiB", mem[0], mem[1], rd[0], rd[1])
	switch {
	case mem[0] <= rd[0]:
		s += " Disagrees: memory backends held no more sessions than redis ones."
	case mem[1] > rd[1]*1.05:
		s += " Agrees."
	default:
		s += fmt.Sprintf(" Agrees on sessions held, not on memory at this scale: with %d users the memory backends' "+
			"resident memory (%.1f MiB) is not above the redis ones' (%.1f MiB); a session of a few hundred bytes is lost in the noise of a Go process.",
			res.Settings.Users, mem[1], rd[1])
	}
	f.Text = s
	return f
}

// storeWith returns the first store of the run (in spec order) with cells
// matching ok, and those cells.
func storeWith(res *Results, ok func(*CellResult) bool) (string, []*CellResult) {
	for _, st := range res.Settings.Stores {
		var cells []*CellResult
		for i := range res.Cells {
			if c := &res.Cells[i]; c.Store == st && ok(c) {
				cells = append(cells, c)
			}
		}
		if len(cells) > 0 {
			return st, cells
		}
	}
	return "", nil
}

// balancerWith returns the balancer to compare stores under: cookie when the
// run has it with every store named, else the first that has them all.
func balancerWith(res *Results, stores ...string) string {
	has := func(b string) bool {
		return !slices.ContainsFunc(stores, func(st string) bool { return cell(res, b, st) == nil })
	}
	if has("cookie") {
		return "cookie"
	}
	for _, b := range res.Settings.Balancers {
		if has(b) {
			return b
		}
	}
	return "cookie"
}

// cookieRange returns the mean Cookie header with an empty cart and with the
// fullest cart seen.
func cookieRange(byItems []float64) (first, last float64) {
	if len(byItems) == 0 {
		return 0, 0
	}
	return byItems[0], byItems[len(byItems)-1]
}

// conclude sets the findings of res and the line that says what they mean
// for you: each finding's, joined, or, for a run that names no claim, one
// from its worst cell.
func conclude(res *Results) {
	res.Findings = Findings(res)
	var parts []string
	for _, f := range res.Findings {
		if f.ForYou != "" {
			parts = append(parts, f.ForYou)
		}
	}
	if len(parts) == 0 {
		if s := worstCell(res); s != "" {
			parts = append(parts, s)
		}
	}
	res.ForYou = ""
	if len(parts) > 0 {
		line := strings.Join(parts, "; ")
		res.ForYou = strings.ToUpper(line[:1]) + line[1:] + "."
	}
}

// worstCell says what the run's faults cost the users of its worst cell,
// for a run that names no claim: its error rate and p99 against those of
// the best.
func worstCell(res *Results) string {
	if len(res.Cells) == 0 || len(res.Settings.Faults) == 0 {
		return ""
	}
	worst, best := &res.Cells[0], &res.Cells[0]
	for i := range res.Cells {
		c := &res.Cells[i]
		if pct(c.Errors, c.Requests) > pct(worst.Errors, worst.Requests) {
			worst = c
		}
		if pct(c.Errors, c.Requests) < pct(best.Errors, best.Requests) {
			best = c
		}
	}
	return fmt.Sprintf("with %s, the worst cell (%s × %s) failed %.1f%% of its requests with a p99 of %.0f ms; the best (%s × %s) %.1f%%, p99 %.0f ms",
		strings.Join(res.Settings.Faults, ", "), worst.Balancer, worst.Store, pct(worst.Errors, worst.Requests), worst.P99Ms,
		best.Balancer, best.Store, pct(best.Errors, best.Requests), best.P99Ms)
}
