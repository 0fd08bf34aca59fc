package experiment

import (
	"fmt"
	"strings"
)

// deployCell returns the cell of balancer × store deployed by mode, or nil.
func deployCell(res *Results, balancer, store, mode string) *CellResult {
	for i := range res.Cells {
		c := &res.Cells[i]
		if c.BalancerEntry() == balancer && c.StoreEntry() == store && c.option("mode", modeRemove) == mode && c.Deploys != nil {
			return c
		}
	}
	return nil
}

// deployed reports whether a cell of the run had a rolling deploy.
func deployed(res *Results) bool {
	for _, c := range res.Cells {
		if c.Deploys != nil {
			return true
		}
	}
	return false
}

// findRollingDeploy: a rolling deploy that takes each backend out of the
// config loses its in-memory sessions, as the claim says, and none that
// live in Redis; one that drains each backend until idle before stopping
// it loses none even in memory, for the balancers whose drain ends.
func findRollingDeploy(res *Results) Finding {
	type row struct {
		bal           string
		remove, drain *CellResult
		timedOut      bool
	}
	var mem []row
	for _, b := range res.Settings.Balancers {
		r := row{bal: b, remove: deployCell(res, b, StoreMemory, modeRemove), drain: deployCell(res, b, StoreMemory, modeDrain)}
		if r.remove == nil && r.drain == nil {
			continue
		}
		if r.drain != nil {
			for _, d := range r.drain.Deploys {
				r.timedOut = r.timedOut || d.TimedOut
			}
		}
		mem = append(mem, r)
	}
	if len(mem) == 0 {
		return notMeasured("a sticky balancer × memory with a rolling deploy")
	}
	var lostRemove, lostDrain, survived, cut, kept, lostElsewhere []string
	took := map[string][2]float64{} // mode: shortest and longest deploy
	removeOK := true
	for _, r := range mem {
		if c := r.remove; c != nil {
			lostRemove = append(lostRemove, fmt.Sprintf("%s %.1f%%", r.bal, c.SessionsLostPct))
			removeOK = removeOK && c.SessionsLostPct > 0
		}
		if c := r.drain; c != nil {
			lostDrain = append(lostDrain, fmt.Sprintf("%s %.1f%%", r.bal, c.SessionsLostPct))
			switch {
			case c.SessionsLostPct == 0 && c.DeploySeconds != nil:
				survived = append(survived, r.bal)
			case r.timedOut:
				cut = append(cut, fmt.Sprintf("%s (its drains did not end within %.1f s: %s)", r.bal, res.Settings.DrainTimeoutMs/1000, drainNote(r.bal)))
			default:
				cut = append(cut, r.bal)
			}
		}
	}
	for i := range res.Cells {
		c := &res.Cells[i]
		if c.Deploys == nil {
			continue
		}
		if d := c.DeploySeconds; d != nil {
			mode := c.option("mode", modeRemove)
			t, seen := took[mode]
			if !seen {
				t = [2]float64{*d, *d}
			}
			took[mode] = [2]float64{min(t[0], *d), max(t[1], *d)}
		}
		if c.Store == StoreMemory {
			continue
		}
		if c.SessionsLostPct-c.StaleAfterFailurePct > 1e-9 {
			lostElsewhere = append(lostElsewhere, fmt.Sprintf("%s × %s × %s %.1f%%", c.BalancerEntry(), c.StoreEntry(), c.RunEntry(), c.SessionsLostPct))
		} else {
			kept = append(kept, c.BalancerEntry()+" × "+c.RunEntry())
		}
	}
	s := "Measured, users who lost their session in a rolling deploy of every backend, with memory sessions: removed from the config: " +
		strings.Join(lostRemove, ", ") + "; drained until idle: " + strings.Join(lostDrain, ", ") + "."
	if len(kept)+len(lostElsewhere) > 0 {
		s += fmt.Sprintf(" With the sessions elsewhere, %d of %d cells lost none.", len(kept), len(kept)+len(lostElsewhere))
	}
	var times []string
	for _, mode := range []string{modeRemove, modeDrain} {
		if t, ok := took[mode]; ok {
			times = append(times, fmt.Sprintf("%.1f to %.1f s with mode=%s", t[0], t[1], mode))
		}
	}
	if len(times) > 0 {
		s += " Whole deploys took " + strings.Join(times, ", ") + " (each backend's time in the results table)."
	}
	f := Finding{Band: "agrees that a deploy loses the sessions it stops unless they live elsewhere when every balancer × memory " +
		"removed from the config lost sessions and no cell with the sessions in Redis lost any; partly when, besides, draining until " +
		"idle kept every in-memory session of some balancer (its drains ended, nobody lost a session)"}
	f.Headline = "removed: memory lost " + strings.Join(lostRemove, ", ") + "; drained: " + strings.Join(lostDrain, ", ")
	if ck := deployCell(res, "cookie", StoreMemory, modeRemove); ck != nil {
		f.ForYou = fmt.Sprintf("a rolling deploy that took each server out of the config logged out %.0f%% of users with in-memory sessions", ck.SessionsLostPct)
		if len(survived) > 0 {
			f.ForYou += fmt.Sprintf("; draining each until idle first (ctl drain --wait) logged out nobody with %s", strings.Join(survived, " and "))
			if dr := deployCell(res, "cookie", StoreMemory, modeDrain); dr != nil && dr.DeploySeconds != nil && ck.DeploySeconds != nil {
				f.ForYou += fmt.Sprintf(", for a deploy of %.1f s instead of %.1f s", *dr.DeploySeconds, *ck.DeploySeconds)
			}
		}
	}
	switch {
	case !removeOK:
		s += " Disagrees: a balancer × memory removed from the config lost no session."
	case len(lostElsewhere) > 0:
		s += " Disagrees: sessions kept in Redis were lost: " + strings.Join(lostElsewhere, "; ") + "."
	case len(survived) > 0:
		s += " Partly: removing servers from the config lost their in-memory sessions, as claimed, and Redis lost none; but with " +
			"drain, in-memory sticky sessions survive a full rolling deploy (" + strings.Join(survived, ", ") + "): the drain kept each " +
			"server's users on it until they were done, and sent new users elsewhere."
		if len(cut) > 0 {
			s += " Not with " + strings.Join(cut, "; ") + "."
		}
	default:
		s += " Agrees: even drained until idle, the deploy lost in-memory sessions (" + strings.Join(cut, "; ") + ")."
	}
	f.Text = s
	return f
}

// drainNote says why a balancer's drain may not end.
func drainNote(bal string) string {
	if bal == "consistent-hash" {
		return "new users whose key the drained backend owns keep coming to it"
	}
	return "its users were still active"
}

// perBackend lists the time of each backend's deploy in c.
func perBackend(c *CellResult) string {
	parts := make([]string, len(c.Deploys))
	for i, d := range c.Deploys {
		parts[i] = fmt.Sprintf("%.1f", d.TotalS)
		if d.TimedOut {
			parts[i] += " timed out"
		}
	}
	return strings.Join(parts, ", ")
}
