package experiment

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/affinityproxy/affinity/config"
)

func TestProxyConfigIsValid(t *testing.T) {
	for _, bal := range []string{"round-robin", "cookie", "consistent-hash", ModuloHash} {
		c := &cluster{balancer: bal, store: StoreMemory, proxyAddr: "127.0.0.1:8080", adminAddr: "127.0.0.1:8081", backends: []*backendProc{
			{name: "b1", addr: "127.0.0.1:9001", state: running},
			{name: "b2", addr: "127.0.0.1:9002", state: killed},
			{name: "b3", addr: "127.0.0.1:9003", state: removed},
			{name: "b4", addr: "127.0.0.1:9004", state: hung},
		}}
		cfg, err := config.Parse("proxy.yaml", []byte(c.config()))
		if err != nil {
			t.Fatalf("%s: %v\n%s", bal, err, c.config())
		}
		if cfg.Admin.Listen != c.adminAddr {
			t.Errorf("%s: admin %q, want %q: reloads are seen on its /status", bal, cfg.Admin.Listen, c.adminAddr)
		}
		p := cfg.Pools[0]
		if p.Balancer.Type != bal {
			t.Errorf("%s: balancer %q", bal, p.Balancer.Type)
		}
		var names []string
		for _, b := range p.Backends {
			names = append(names, b.Name)
		}
		// A killed or hung backend stays configured (it crashed; it was not
		// taken out); a removed one is gone.
		if got := strings.Join(names, ","); got != "b1,b2,b4" {
			t.Errorf("%s: backends %s, want b1,b2,b4", bal, got)
		}
		if p.HealthCheck == nil || p.HealthCheck.Interval != healthInterval || p.Retries.Count != 2 {
			t.Errorf("%s: health check %+v, retries %d", bal, p.HealthCheck, p.Retries.Count)
		}
		if bal == "consistent-hash" && p.Balancer.Options.Hash.Key != "header:X-User" {
			t.Errorf("consistent-hash key %q", p.Balancer.Options.Hash.Key)
		}
	}
}

func TestWaitReadyFailsFastWhenTheProcessDies(t *testing.T) {
	c := &cluster{dir: t.TempDir()}
	p := startHelper(t)
	if err := p.kill(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err := c.waitReady(context.Background(), p, func() bool { return false })
	if err == nil || !strings.Contains(err.Error(), "exited before it was ready") {
		t.Errorf("waitReady = %v, want an exit error", err)
	}
	if time.Since(start) > readyTimeout/2 {
		t.Error("waitReady waited for its timeout on a dead process")
	}
}

func TestProbeNamesTheBackend(t *testing.T) {
	srv, client := startShop(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(headerBackend, "b"+r.Header.Get(headerUser))
	}))
	c := &cluster{proxyAddr: strings.TrimPrefix(srv.URL, "http://"), client: client}
	if got := c.probe(context.Background(), "7"); got != "b7" {
		t.Errorf("probe = %q, want b7", got)
	}
	if !c.healthy(context.Background(), c.proxyAddr) {
		t.Error("healthy = false for a 200")
	}
}
