package experiment

import (
	"strings"
	"testing"
	"time"

	"github.com/affinityproxy/affinity/config"
	"github.com/affinityproxy/affinity/internal/harness"
)

func TestProxyConfigIsValid(t *testing.T) {
	p := harness.ProxyConfig{Listen: "127.0.0.1:8080", Admin: "127.0.0.1:8081", Backends: []harness.Member{
		{Name: "b1", Addr: "127.0.0.1:9001"}, {Name: "b2", Addr: "127.0.0.1:9002"}, {Name: "b4", Addr: "127.0.0.1:9004"},
	}}
	for _, entry := range []string{"round-robin", "cookie", "consistent-hash", ModuloHash, "consistent-hash load_factor=1.25", "learn"} {
		c, err := parseChoice(entry, ofBalancer)
		if err != nil {
			t.Fatal(err)
		}
		bal := c.name
		text := proxyConfig(p, c, StoreMemory, 700*time.Millisecond)
		cfg, err := config.Parse("proxy.yaml", []byte(text))
		if err != nil {
			t.Fatalf("%s: %v\n%s", bal, err, text)
		}
		if cfg.Admin.Listen != p.Admin {
			t.Errorf("%s: admin %q, want %q: reloads are seen on its /status", bal, cfg.Admin.Listen, p.Admin)
		}
		pool := cfg.Pools[0]
		if pool.Name != poolName || pool.Balancer.Type != bal {
			t.Errorf("%s: pool %q, balancer %q", bal, pool.Name, pool.Balancer.Type)
		}
		var names []string
		for _, b := range pool.Backends {
			names = append(names, b.Name)
		}
		if got := strings.Join(names, ","); got != "b1,b2,b4" {
			t.Errorf("%s: backends %s, want b1,b2,b4", bal, got)
		}
		if pool.HealthCheck == nil || pool.HealthCheck.Interval != healthInterval || pool.Retries.Count != 2 {
			t.Errorf("%s: health check %+v, retries %d", bal, pool.HealthCheck, pool.Retries.Count)
		}
		if h := pool.Balancer.Options.Hash; bal == "consistent-hash" && h.Key != "header:X-User" {
			t.Errorf("consistent-hash key %q", h.Key)
		}
		if cfg.Timeouts.ResponseHeader != 700*time.Millisecond {
			t.Errorf("%s: response_header %v, want the spec's 700ms", bal, cfg.Timeouts.ResponseHeader)
		}
		if l := pool.Balancer.Options.Learn; bal == "learn" && l.Cookie != sessionCookie {
			t.Errorf("learn options %+v, want the shop's cookie %s", l, sessionCookie)
		}
		if lf, want := pool.Balancer.Options.Hash.LoadFactor, c.opts["load_factor"]; (lf != 0) != (want != "") || (want != "" && lf != 1.25) {
			t.Errorf("%s: load_factor %v", entry, lf)
		}
	}
}
