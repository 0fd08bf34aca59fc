package experiment

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/affinityproxy/affinity/balancer"
	"github.com/affinityproxy/affinity/config"
	"github.com/affinityproxy/affinity/internal/harness"
)

// keyed reports whether bal picks a backend from the request's key alone
// (X-User), so that the harness can tell where the proxy sends a user: the
// hash balancers, not those that keep a client by a cookie or rotate.
func keyed(bal string) bool { return bal == "consistent-hash" || bal == ModuloHash }

// chooser computes what a keyed balancer picks, as the cell's proxy does:
// from the policy its config builds, over the backends in rotation.
type chooser struct {
	policy  balancer.Policy
	pickers map[string]balancer.Picker // by the names in rotation, joined
}

// newChooser builds the policy of the cell's own config for bal × store.
func newChooser(bal choice, store string) (*chooser, error) {
	text := proxyConfig(harness.ProxyConfig{Listen: "127.0.0.1:1", Admin: "127.0.0.1:2", Backends: []harness.Member{{Name: "b1", Addr: "127.0.0.1:3"}}}, bal, store, requestTimeout)
	cfg, err := config.Parse("proxy.yaml", []byte(text))
	if err != nil {
		return nil, fmt.Errorf("predict %s: %w", bal, err)
	}
	b := cfg.Pools[0].Balancer
	p, err := balancer.New(b.Type, b.Options)
	if err != nil {
		return nil, fmt.Errorf("predict %s: %w", bal, err)
	}
	return &chooser{policy: p, pickers: map[string]balancer.Picker{}}, nil
}

// pick returns the backend the balancer picks for user over the backends
// up (names, in config order), its key's first choice: with no requests
// counted in flight, a load bound never turns it away.
func (c *chooser) pick(user string, up []string) string {
	key := strings.Join(up, ",")
	p, ok := c.pickers[key]
	if !ok {
		var bs []*balancer.Backend
		for _, name := range up {
			bs = append(bs, balancer.NewBackend(name, nil, 1, nil))
		}
		p = c.policy.Build(balancer.Set{All: bs, Available: bs})
		c.pickers[key] = p
	}
	r := &http.Request{Header: http.Header{headerUser: {user}}}
	pk, err := p.Pick(r)
	if err != nil {
		return ""
	}
	return pk.Backend.ID
}

// inRotation returns the backends in rotation at t, in start order.
func inRotation(backends []string, up map[string][]span, t time.Duration) []string {
	var out []string
	for _, b := range backends {
		if slices.ContainsFunc(up[b], func(s span) bool { return s.from <= t && t < s.to }) {
			out = append(out, b)
		}
	}
	return out
}

// predict sets the figures of r that a keyed balancer's own picks explain:
// the share of the users compared across the first membership change that
// the hash moves (against which UsersMovedPct is measured), and the share
// of responses not from the key's first choice.
func predict(r *CellResult, c *chooser, samples []Sample, backends []string, initial int) {
	up := uptime(backends, initial, r.Faults, time.Duration(1<<62))
	if f, ok := harness.First(r.Faults, harness.Action.ChangesMembership); ok {
		before, after := inRotation(backends, up, f.Start-1), inRotation(backends, up, f.Since())
		m := movesAcross(samples, f.Start, f.Since())
		r.UsersMovedPredictedPct = m.share(func(user string, _ [2]string) bool {
			return c.pick(user, before) != c.pick(user, after)
		})
	}
	total, left := 0, 0
	for i := range samples {
		s := &samples[i]
		if s.Backend == "" {
			continue
		}
		total++
		if s.Backend != c.pick(s.User, inRotation(backends, up, s.At)) {
			left++
		}
	}
	if total > 0 {
		r.LeftFirstChoicePct = ptr(pct(left, total))
	}
}
