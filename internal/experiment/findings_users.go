package experiment

// The findings of the presets about what users do: a few of them much
// heavier than the rest (claim 9), and logging out (claim 6).

import (
	"fmt"
	"slices"
	"strings"
)

// hotspot is how far above round-robin's a sticky cell's imbalance must be
// to count as a hotspot.
const hotspot = 0.15

// findHotUsers: with skewed users, sticky routing makes a hotspot of the
// heavy users' backends; bounded loads flatten it by sending some requests
// elsewhere.
func findHotUsers(res *Results) Finding {
	store, _ := storeWith(res, func(c *CellResult) bool { return c.Balancer == "round-robin" })
	rr := cell(res, "round-robin", store)
	var sticky []*CellResult
	for _, b := range []string{"cookie", "consistent-hash"} {
		if c := cell(res, b, store); c != nil {
			sticky = append(sticky, c)
		}
	}
	if rr == nil || len(sticky) == 0 {
		return notMeasured("round-robin and cookie or consistent-hash under one store")
	}
	var bounded *CellResult
	for i := range res.Cells {
		if c := &res.Cells[i]; c.Store == store && c.Balancer == "consistent-hash" && c.Variant["load_factor"] != "" {
			bounded = c
			break
		}
	}
	figures := []string{fmt.Sprintf("round-robin %.2f (worst second %.2f)", rr.Imbalance, rr.ImbalancePeak)}
	for _, c := range append(slices.Clone(sticky), bounded) {
		if c != nil {
			figures = append(figures, fmt.Sprintf("%s %.2f (worst second %.2f)", c.BalancerEntry(), c.Imbalance, c.ImbalancePeak))
		}
	}
	s := fmt.Sprintf("Measured (%s store; the busiest tenth of the users sent %.1f%% of the requests): imbalance, the busiest backend's "+
		"responses per second over the mean, %s.", store, rr.BusiestTenthPct, strings.Join(figures, ", "))
	var p99s []string
	for _, c := range append([]*CellResult{rr}, append(sticky, bounded)...) {
		if c != nil && len(c.Backends) > 0 {
			p99s = append(p99s, fmt.Sprintf("%s %s", c.BalancerEntry(), busiestP99(c)))
		}
	}
	s += " p99 of the busiest backend against the least busy: " + strings.Join(p99s, "; ") + "."
	headline := make([]string, 0, len(figures))
	for _, c := range append([]*CellResult{rr}, append(sticky, bounded)...) {
		if c != nil {
			headline = append(headline, fmt.Sprintf("%s %.2f", c.BalancerEntry(), c.Imbalance))
		}
	}
	f := Finding{Headline: "imbalance " + strings.Join(headline, ", "), Band: fmt.Sprintf("agrees when the imbalance of every sticky cell (cookie, consistent-hash) is at least %.2f above "+
		"round-robin's (%.2f) and bounded loads bring consistent-hash's down; partly when only some do", hotspot, rr.Imbalance+hotspot)}
	var hot, flat []string
	for _, c := range sticky {
		if c.Imbalance >= rr.Imbalance+hotspot {
			hot = append(hot, c.Balancer)
		} else {
			flat = append(flat, c.Balancer)
		}
	}
	ch := cell(res, "consistent-hash", store)
	helps := true
	if bounded != nil && ch != nil {
		s += fmt.Sprintf(" Bounded loads (%s) sent %s of the requests off their key's first choice (plain consistent-hash: %s).",
			bounded.BalancerEntry(), opt(bounded.LeftFirstChoicePct, "%.1f%%"), opt(ch.LeftFirstChoicePct, "%.1f%%"))
		helps = bounded.Imbalance < ch.Imbalance
		f.ForYou = fmt.Sprintf("with a few heavy users, sticky routing put %.2f× the mean load on the busiest server (%s, against %.2f× "+
			"with round-robin); bounding the load at %s× brought it to %.2f× by sending %s of requests elsewhere",
			ch.Imbalance, ch.Balancer, rr.Imbalance, bounded.Variant["load_factor"], bounded.Imbalance, opt(bounded.LeftFirstChoicePct, "%.0f%%"))
	} else {
		f.ForYou = fmt.Sprintf("with a few heavy users, sticky routing put %.2f× the mean load on the busiest server (%s), against %.2f× with round-robin",
			sticky[0].Imbalance, sticky[0].Balancer, rr.Imbalance)
	}
	switch {
	case len(hot) == 0:
		s += " Disagrees: no sticky cell was more uneven than round-robin by " + fmt.Sprintf("%.2f", hotspot) + "."
	case len(flat) > 0:
		s += " Partly: " + strings.Join(hot, " and ") + " made a hotspot, " + strings.Join(flat, " and ") + " did not."
	case !helps:
		s += " Partly: every sticky cell made a hotspot, and bounded loads did not flatten consistent-hash's."
	default:
		s += " Agrees: every sticky cell made a hotspot of the heavy users' backends"
		if bounded != nil {
			s += ", and bounded loads flattened it"
		}
		s += "."
	}
	f.Text = s
	return f
}

// busiestP99 gives the p99 of c's busiest backend and of its least busy.
func busiestP99(c *CellResult) string {
	most, least := c.Backends[0], c.Backends[0]
	for _, b := range c.Backends {
		if b.Requests > most.Requests {
			most = b
		}
		if b.Requests < least.Requests {
			least = b
		}
	}
	return fmt.Sprintf("%.1f ms (%s) against %.1f ms (%s)", most.P99Ms, most.Name, least.P99Ms, least.Name)
}

// findRevoke: after a logout, a token without server-side state is still
// accepted; a denylist in Redis, or sessions kept in Redis, refuse it.
func findRevoke(res *Results) Finding {
	var plain, revocable []*CellResult
	for i := range res.Cells {
		c := &res.Cells[i]
		switch {
		case c.ReplaysAccepted == nil:
		case c.Store == StoreToken && c.Variant["denylist"] == "":
			plain = append(plain, c)
		default:
			revocable = append(revocable, c)
		}
	}
	if len(plain) == 0 || len(revocable) == 0 {
		return unmeasured("the run lacks replays after logout with a token store and with one that keeps server-side state (logout: true).")
	}
	var figures []string
	for _, c := range append(slices.Clone(plain), revocable...) {
		figures = append(figures, fmt.Sprintf("%s × %s %d of %d", c.BalancerEntry(), c.StoreEntry(), *c.ReplaysAccepted, c.Replays))
	}
	s := "Measured: after logging out, users replayed the session cookie they held before; accepted: " + strings.Join(figures, ", ") + "."
	accepted := 0
	for _, c := range revocable {
		accepted += *c.ReplaysAccepted
	}
	f := Finding{Headline: fmt.Sprintf("replays accepted: token %d of %d; with server-side state %d", *plain[0].ReplaysAccepted, plain[0].Replays, accepted), Band: "agrees when the token store without a denylist accepted some replays and every store with server-side " +
		"state (a denylist, or the sessions themselves in Redis or memory) accepted none"}
	tk := plain[0]
	dl := cell(res, tk.BalancerEntry(), StoreToken+" denylist=redis")
	if dl != nil {
		s += fmt.Sprintf(" The denylist's cost: p50 %.2f ms against %.2f ms without it (%+.2f ms), %s store round trips per request against %s.",
			dl.P50Ms, tk.P50Ms, dl.P50Ms-tk.P50Ms, opt(dl.StoreOpsPerRequest, "%.2f"), opt(tk.StoreOpsPerRequest, "%.2f"))
		f.ForYou = fmt.Sprintf("logging out did not revoke a signed token: %d of %d replayed tokens were accepted; a denylist in Redis "+
			"refused %d of %d for %+.2f ms at p50 and a round trip on every request, the server-side state tokens were meant to avoid",
			*tk.ReplaysAccepted, tk.Replays, dl.Replays-*dl.ReplaysAccepted, dl.Replays, dl.P50Ms-tk.P50Ms)
	} else {
		f.ForYou = fmt.Sprintf("logging out did not revoke a signed token: %d of %d replayed tokens were accepted", *tk.ReplaysAccepted, tk.Replays)
	}
	var leaky, tight []string
	for _, c := range plain {
		if *c.ReplaysAccepted == 0 {
			tight = append(tight, c.BalancerEntry()+" × "+c.StoreEntry())
		}
	}
	for _, c := range revocable {
		if *c.ReplaysAccepted > 0 {
			leaky = append(leaky, fmt.Sprintf("%s × %s accepted %d", c.BalancerEntry(), c.StoreEntry(), *c.ReplaysAccepted))
		}
	}
	switch {
	case len(leaky) > 0:
		s += " Disagrees: a store with server-side state accepted replays: " + strings.Join(leaky, "; ") + "."
	case len(tight) > 0:
		s += " Disagrees: the token store refused every replay without a denylist: " + strings.Join(tight, ", ") + "."
	default:
		s += " Agrees: only the token without server-side state was still accepted after the logout."
	}
	f.Text = s
	return f
}
