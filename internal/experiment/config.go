package experiment

import (
	"fmt"
	"strings"
	"time"

	"github.com/affinityproxy/affinity/internal/harness"
)

// Settings of a cell's processes.
const (
	healthInterval = 200 * time.Millisecond // the proxy's active checks
	// poolName is the proxy's one pool.
	poolName = "shop"
)

// proxyConfig renders a cell's proxy config: one pool of the backends in p,
// with fast health checks and retries so that a dead backend costs little
// more than the sessions it held, and respTimeout to wait for an answer.
func proxyConfig(p harness.ProxyConfig, bal choice, store string, respTimeout time.Duration) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Written by affinity experiment for the cell %s × %s.\n", bal, store)
	fmt.Fprintf(&b, "listen: %s\nadmin: %s\nlog: {level: warn}\n", p.Listen, p.Admin)
	fmt.Fprintf(&b, "timeouts: {connect: 500ms, response_header: %s}\n", respTimeout)
	fmt.Fprintf(&b, "pools:\n  %s:\n    balancer:\n", poolName)
	fmt.Fprintf(&b, "      type: %s\n", bal.name)
	if bal.name == "learn" {
		// The shop's own session cookie, which a logout expires.
		fmt.Fprintf(&b, "      learn: {cookie: %s}\n", sessionCookie)
	}
	if bal.name == "consistent-hash" {
		lf := ""
		if v, ok := bal.opts["load_factor"]; ok {
			lf = ", load_factor: " + v
		}
		fmt.Fprintf(&b, "      hash: {key: \"header:%s\"%s}\n", headerUser, lf)
	}
	fmt.Fprintf(&b, "    health_check: {interval: %s, timeout: 100ms, fall: 2, rise: 2}\n", healthInterval)
	b.WriteString("    retries: 2\n    backends:\n")
	for _, m := range p.Backends {
		fmt.Fprintf(&b, "      - {url: \"http://%s\", name: %s}\n", m.Addr, m.Name)
	}
	return b.String()
}

// backendFlags are the flags of a cell's `affinity backend`s after
// --listen and --name.
func backendFlags(store choice, s *Spec, redis *redisStore, secret string) []string {
	args := []string{"--session-store", store.name, "--work", s.Work.String()}
	if s.CheckoutWork > 0 {
		args = append(args, "--checkout-work", s.CheckoutWork.String())
	}
	if redis != nil {
		args = append(args, "--redis-addr", redis.addr)
	}
	if store.name == StoreToken {
		args = append(args, "--token-secret", secret)
	}
	if store.opts["denylist"] != "" {
		args = append(args, "--token-denylist")
	}
	return args
}
