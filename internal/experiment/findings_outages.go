package experiment

// The findings of the presets that take part of the system away on purpose:
// a backend drained for a deploy (claim 11) and the session store stopped
// (claim 12).

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/affinityproxy/affinity/internal/harness"
)

// findDrain: draining a backend loses the sessions it held when they live in
// its memory, and none when they live in Redis or in a token.
func findDrain(res *Results) Finding {
	if deployed(res) {
		return findRollingDeploy(res)
	}
	var sticky []*CellResult
	for _, b := range res.Settings.Balancers {
		if c := cell(res, b, StoreMemory); c != nil && b != "round-robin" {
			sticky = append(sticky, c)
		}
	}
	if len(sticky) == 0 {
		return notMeasured("cookie × memory (or another sticky balancer × memory)")
	}
	rm, ok := harness.First(sticky[0].Faults, func(a harness.Action) bool { return a == harness.Remove })
	if !ok {
		return unmeasured(fmt.Sprintf("no backend was removed in the %s × memory cell.", sticky[0].Balancer))
	}
	// Each sticky cell against the drained backend's share of its own
	// requests: a hash ring need not give it a third.
	var against, gaps, wrong, bands []string
	worst := 0.0
	for _, c := range sticky {
		f, ok := harness.First(c.Faults, func(a harness.Action) bool { return a == harness.Remove })
		share, measured := shareBefore(c, f.Target, f.Start)
		if !ok || !measured {
			continue
		}
		d := c.SessionsLostPct - share
		worst = max(worst, c.SessionsLostPct)
		against = append(against, fmt.Sprintf("%s %.1f%% against %.1f%%", c.Balancer, c.SessionsLostPct, share))
		bands = append(bands, fmt.Sprintf("%s within %.1f points of %.1f%%", c.Balancer, max(5, share/4), share))
		gaps = append(gaps, fmt.Sprintf("%s %+.1f", c.Balancer, d))
		switch {
		case c.SessionsLostPct == 0:
			wrong = append(wrong, fmt.Sprintf("%s × memory lost no session", c.Balancer))
		case math.Abs(d) > max(5, share/4):
			more := "more"
			if d < 0 {
				more = "fewer"
			}
			wrong = append(wrong, fmt.Sprintf("%s × memory lost %.1f points %s than the drained server's share", c.Balancer, math.Abs(d), more))
		}
	}
	if len(against) == 0 {
		return unmeasured(fmt.Sprintf("no response was recorded before %s was drained.", rm.Target))
	}
	f := Finding{
		Band: "agrees when each sticky balancer × memory lost within the larger of 5 points and a quarter of the drained " +
			"server's share of the requests until then (" + strings.Join(bands, ", ") + "), and no cell with the state " +
			"elsewhere lost a session",
		ForYou: fmt.Sprintf("draining a server for a deploy logged out up to %.0f%% of users when sessions lived in its memory; "+
			"with Redis or a token, nobody", worst),
	}
	s := fmt.Sprintf("Measured: %s was drained at %.1f s (taken out of the proxy's config, then stopped gracefully). With memory, "+
		"the users who lost their session, against %s's share of the requests until then: %s.",
		rm.Target, rm.Start.Seconds(), rm.Target, strings.Join(against, ", "))
	if rr := cell(res, "round-robin", StoreMemory); rr != nil {
		s += fmt.Sprintf(" round-robin × memory: %.1f%%, fault or no fault, as no request follows its session.", rr.SessionsLostPct)
	}
	l := externalLosses(res)
	f.Headline = fmt.Sprintf("%s removed: memory lost %s", rm.Target, strings.Join(against, ", "))
	if l.cells > 0 {
		f.Headline += fmt.Sprintf("; %d of %d cells with the state elsewhere lost a session", len(l.lossy), l.cells)
	}
	var elsewhere []string
	for _, st := range res.Settings.Stores {
		if st != StoreMemory && slices.ContainsFunc(res.Cells, func(c CellResult) bool { return c.Store == st }) {
			elsewhere = append(elsewhere, st)
		}
	}
	if l.cells > 0 {
		s += " With the state elsewhere: " + byStore(res, func(c *CellResult) string {
			if c.Store == StoreMemory {
				return ""
			}
			return fmt.Sprintf("%.1f%%", c.SessionsLostPct)
		}) + "."
	}
	if len(l.retried) > 0 {
		s += " In " + strings.Join(l.retried, ", ") + " of users, a request failed in flight and its retry found the cart " +
			"one item ahead (session_stale): the session survived, the answer to that request did not."
	}
	if len(l.lossy) > 0 {
		wrong = append(wrong, "with the state elsewhere, sessions were still lost: "+strings.Join(l.lossy, "; "))
	}
	switch {
	case len(wrong) > 0:
		s += " Disagrees: " + strings.Join(wrong, "; ") + "."
	case l.cells == 0:
		s += fmt.Sprintf(" Agrees on memory: each sticky balancer lost about the drained server's share (%s points); "+
			"the run has no cell with redis, cached-redis or token to show the other half.", strings.Join(gaps, ", "))
	default:
		s += fmt.Sprintf(" Agrees: with memory, each sticky balancer lost about the drained server's share (%s points), "+
			"and no cell with the state in %s lost a session.", strings.Join(gaps, ", "), strings.Join(elsewhere, " or "))
	}
	f.Text = s
	return f
}

// findStoreDown: while Redis is down every request that needs it fails,
// whatever the balancer, and requests that don't need it carry on.
func findStoreDown(res *Results) Finding {
	var ref *CellResult
	for i := range res.Cells {
		if needsRedis(res.Cells[i].StoreEntry()) {
			ref = &res.Cells[i]
			break
		}
	}
	if ref == nil {
		return notMeasured("with a redis or cached-redis store")
	}
	down, ok := harness.First(ref.Faults, func(a harness.Action) bool { return a == harness.StoreDown })
	if !ok {
		return unmeasured("the store was not stopped.")
	}
	end, upText := time.Duration(res.Settings.DurationS*float64(time.Second)), "was not started again before the end"
	up, back := harness.First(ref.Faults, func(a harness.Action) bool { return a == harness.StoreUp })
	if back = back && up.Start > down.End; back {
		end, upText = up.Start, fmt.Sprintf("started again at %.1f s", up.Start.Seconds())
	}

	// Each cell's failures while the store was down, against those before:
	// round-robin × memory fails on lost sessions all the time, and that is
	// not the store's doing.
	type outage struct{ during, before float64 }
	out := map[*CellResult]outage{}
	for i := range res.Cells {
		c := &res.Cells[i]
		during, ok := errorShare(c, down.End, end)
		if !ok {
			continue
		}
		before, _ := errorShare(c, 0, down.Start)
		out[c] = outage{during, before}
	}
	if _, ok := out[ref]; !ok {
		return unmeasured("the store was down for less than one bucket of the timeline.")
	}
	s := fmt.Sprintf("Measured: Redis was stopped at %.1f s and %s. Share of the requests that failed while it was down "+
		"(and before it): %s.", down.Start.Seconds(), upText, byStore(res, func(c *CellResult) string {
		o, ok := out[c]
		if !ok {
			return "-"
		}
		return fmt.Sprintf("%.1f%% (%.1f%%)", o.during, o.before)
	}))
	if back {
		s += " Time from its return until requests that needed it stopped failing (the backends' Redis clients " +
			"connecting again): " + byStore(res, func(c *CellResult) string {
			o, ok := out[c]
			if !ok || !needsRedis(c.StoreEntry()) {
				return ""
			}
			if at, ok := recovered(c, up.Start, o.before); ok {
				return fmt.Sprintf("%.1f s", (at - up.Start).Seconds())
			}
			return "the rest of the run"
		}) + "."
	}
	s += " Users who lost their session: " + lostByStore(res) + "." + roundRobinMemoryNote(res)

	var wrong, cached []string
	independent := 0
	for i := range res.Cells {
		c := &res.Cells[i]
		o, ok := out[c]
		if !ok {
			continue
		}
		switch rise := o.during - o.before; {
		case needsRedis(c.StoreEntry()) && rise < 50:
			wrong = append(wrong, fmt.Sprintf("%s × %s failed only %.1f%% of its requests while the store was down", c.Balancer, c.Store, o.during))
		case needsRedis(c.StoreEntry()) && c.Store == StoreCachedRedis:
			cached = append(cached, c.Balancer)
		case !needsRedis(c.StoreEntry()) && rise > 5:
			wrong = append(wrong, fmt.Sprintf("%s × %s, which needs no store, failed %.1f points more while it was down", c.Balancer, c.Store, rise))
		case !needsRedis(c.StoreEntry()):
			independent++
		}
	}

	s += storeDataNote(res, back)
	if l := externalLosses(res); len(l.retried) > 0 {
		s += " A stale cart right after a failed request (session_stale, the session intact): " + strings.Join(l.retried, ", ") + "."
	}

	f := Finding{
		Band: "agrees when the failure share of every cell with redis or cached-redis rose by at least 50 points while the " +
			"store was down, and that of no memory or token cell by more than 5",
		ForYou: fmt.Sprintf("while Redis was down for %.1f s, %.0f%% of the requests that needed it failed, whatever the balancer; "+
			"sessions in memory or in a token served on", (end - down.Start).Seconds(), out[ref].during),
		Headline: fmt.Sprintf("Redis down %.1f s: %.0f%% of %s × %s's requests failed", (end - down.Start).Seconds(), out[ref].during, ref.Balancer, ref.StoreEntry()),
	}
	switch {
	case len(wrong) > 0:
		s += " Disagrees: " + strings.Join(wrong, "; ") + "."
	default:
		s += " Agrees: every cell whose sessions live in Redis failed its requests while Redis was down"
		if len(cached) > 0 {
			s += ", cached-redis included (its near cache still asks Redis for the session's version on every request)"
		}
		if independent == 0 {
			s += "; the run has no memory or token cell to compare."
		} else {
			s += ", while the cells with memory or token sessions served on."
		}
	}
	f.Text = s
	return f
}

// storeDataNote says what became of the sessions in Redis across the
// outage. What store-down does to the data is the harness's doing, not
// Redis's, so the note says which case the numbers show and what the other
// would have been.
func storeDataNote(res *Results, back bool) string {
	if !back {
		return " Whether the sessions in Redis survive is not measured: the store did not come back before the end."
	}
	var lost []string
	for _, c := range res.Cells {
		if needsRedis(c.StoreEntry()) && c.SessionsLostPct-c.StaleAfterFailurePct > 1e-9 {
			lost = append(lost, fmt.Sprintf("%s × %s %.1f%% (%s)", c.Balancer, c.Store, c.SessionsLostPct, kinds(c.ErrorKinds)))
		}
	}
	if len(lost) > 0 {
		return " Sessions kept in Redis were lost, although the embedded Redis keeps its data across the stop and start: " +
			strings.Join(lost, "; ") + "."
	}
	return " No session kept in Redis was lost: the harness stops its embedded Redis by closing its listener and connections, " +
		"and the data stays in memory, so the store came back with every session. That is an outage of the store, " +
		"not a loss of its data; a Redis restarted without persistence comes back empty, and every session in it is lost."
}

// recovered returns when c's requests stopped failing more than at the
// share before (plus 5 points), looking from "from" on: the end of the last
// bucket that failed more, or "from" if none did. It is false when the last
// bucket of the run still failed more.
func recovered(c *CellResult, from time.Duration, before float64) (time.Duration, bool) {
	at, bs := from, buckets(c)
	for i, b := range bs {
		if b.Start+b.Width <= from || b.Requests == 0 || pct(b.Errors, b.Requests) <= before+5 {
			continue
		}
		if i == len(bs)-1 {
			return 0, false
		}
		at = b.Start + b.Width
	}
	return at, true
}

// roundRobinMemoryNote explains the round-robin × memory cell, if the run
// has one, whose losses are no fault's.
func roundRobinMemoryNote(res *Results) string {
	if cell(res, "round-robin", StoreMemory) == nil {
		return ""
	}
	return " round-robin × memory loses sessions fault or no fault, as no request follows its session."
}

// lostByStore lists the sessions lost of every cell, grouped by store.
func lostByStore(res *Results) string {
	return byStore(res, func(c *CellResult) string { return fmt.Sprintf("%.1f%%", c.SessionsLostPct) })
}

// byStore lists a figure of every cell, grouped by store in the run's order:
// "memory: cookie 31.0%, round-robin 98.0%; redis: ...". A cell whose figure
// is empty is left out.
func byStore(res *Results, figure func(*CellResult) string) string {
	var parts []string
	for _, st := range res.Settings.Stores {
		var cs []string
		for _, b := range res.Settings.Balancers {
			if c := cell(res, b, st); c != nil {
				if f := figure(c); f != "" {
					cs = append(cs, b+" "+f)
				}
			}
		}
		if len(cs) > 0 {
			parts = append(parts, st+": "+strings.Join(cs, ", "))
		}
	}
	return strings.Join(parts, "; ")
}

// buckets returns the finest timeline of c.
func buckets(c *CellResult) []Bucket {
	if len(c.Fine) > 0 {
		return c.Fine
	}
	return c.Timeline
}

// shareBefore returns the share of c's responses that backend gave, over the
// timeline buckets that end by at; false when those hold no response.
func shareBefore(c *CellResult, backend string, at time.Duration) (float64, bool) {
	total, n := 0, 0
	for _, b := range buckets(c) {
		if b.Start+b.Width > at {
			continue
		}
		for name, k := range b.ByBackend {
			total += k
			if name == backend {
				n += k
			}
		}
	}
	return pct(n, total), total > 0
}

// errorShare returns the share of failed requests over c's timeline buckets
// that lie wholly in [from, to); false when those hold no request.
func errorShare(c *CellResult, from, to time.Duration) (float64, bool) {
	reqs, errs := 0, 0
	for _, b := range buckets(c) {
		if b.Start >= from && b.Start+b.Width <= to {
			reqs += b.Requests
			errs += b.Errors
		}
	}
	return pct(errs, reqs), reqs > 0
}
