package harness

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/affinityproxy/affinity/internal/testutil"
)

func TestProxyStatusRoutes(t *testing.T) {
	pool := func(name string, backends ...statusBackend) statusPool {
		return statusPool{Name: name, Backends: backends}
	}
	up := func(name string) statusBackend { return statusBackend{Name: name, Available: true} }
	down := func(name string) statusBackend { return statusBackend{Name: name} }
	tests := []struct {
		name  string
		pools []statusPool
		want  []string
		added string
		ok    bool
	}{
		{"same set", []statusPool{pool(testPool, up("b1"), up("b3"))}, []string{"b1", "b3"}, "", true},
		{"removed one still there", []statusPool{pool(testPool, up("b1"), up("b2"), up("b3"))}, []string{"b1", "b3"}, "", false},
		{"added one not there yet", []statusPool{pool(testPool, up("b1"), up("b2"))}, []string{"b1", "b2", "b3"}, "b3", false},
		{"added one not available", []statusPool{pool(testPool, up("b1"), up("b2"), down("b3"))}, []string{"b1", "b2", "b3"}, "b3", false},
		{"added one available", []statusPool{pool(testPool, up("b1"), up("b2"), up("b3"))}, []string{"b1", "b2", "b3"}, "b3", true},
		// A backend killed earlier stays configured, down: the set is
		// what counts.
		{"a configured backend down", []statusPool{pool(testPool, down("b1"), up("b3"))}, []string{"b1", "b3"}, "", true},
		{"other names", []statusPool{pool(testPool, up("b1"), up("b4"))}, []string{"b1", "b3"}, "", false},
		{"another pool", []statusPool{pool("web", up("b1"), up("b3"))}, []string{"b1", "b3"}, "", false},
		{"no pool", nil, []string{"b1"}, "", false},
	}
	for _, tt := range tests {
		st := &proxyStatus{Pools: tt.pools}
		if got := st.routes(testPool, tt.want, tt.added); got != tt.ok {
			t.Errorf("%s: routes = %v, want %v", tt.name, got, tt.ok)
		}
	}
	st := &proxyStatus{Pools: []statusPool{pool(testPool, up("b1"), down("b2")), pool("web", up("b2"))}}
	for name, want := range map[string]bool{"b1": true, "b2": false, "b3": false} {
		if got := st.available(testPool, name); got != want {
			t.Errorf("available(%s) = %v, want %v", name, got, want)
		}
	}
}

// testPool is the pool of the tests' proxy config.
const testPool = "shop"

// testConfig renders a proxy config of one round-robin pool, with fast
// health checks and retries, for the tests' clusters.
func testConfig(p ProxyConfig) string {
	var b strings.Builder
	fmt.Fprintf(&b, "listen: %s\nadmin: %s\nlog: {level: warn}\n", p.Listen, p.Admin)
	fmt.Fprintf(&b, "pools:\n  %s:\n    balancer: {type: round-robin}\n", testPool)
	b.WriteString("    health_check: {interval: 100ms, timeout: 50ms, fall: 2, rise: 2}\n    retries: 2\n    backends:\n")
	for _, m := range p.Backends {
		fmt.Fprintf(&b, "      - {url: \"http://%s\", name: %s}\n", m.Addr, m.Name)
	}
	return b.String()
}

// startCluster starts n real backends and the proxy before them; the
// test's cleanup kills them.
func startCluster(t *testing.T, n int) *Cluster {
	t.Helper()
	c := &Cluster{Exe: testutil.AffinityBinary(t), Dir: t.TempDir(), Config: testConfig, Pool: testPool}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Error(err)
		}
	})
	if err := c.Start(t.Context(), n); err != nil {
		t.Fatal(err)
	}
	return c
}

// traffic sends requests through the proxy on kept-alive connections until
// stopped, and returns the failures it saw and the backends that answered.
func traffic(t *testing.T, proxyAddr string) (stop func() (failures []string, seen []string)) {
	t.Helper()
	tr := &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 4}
	client := &http.Client{Transport: tr, Timeout: 2 * time.Second}
	done := make(chan struct{})
	var (
		mu       sync.Mutex
		failures []string
		seen     []string
		wg       sync.WaitGroup
	)
	for range 4 {
		wg.Go(func() {
			// Bounded, should the test fail to stop it.
			for range 20000 {
				select {
				case <-done:
					return
				default:
				}
				resp, err := client.Get("http://" + proxyAddr + "/healthz")
				mu.Lock()
				switch {
				case err != nil:
					failures = append(failures, err.Error())
				case resp.StatusCode != http.StatusOK:
					failures = append(failures, resp.Status)
				default:
					if b := resp.Header.Get(HeaderBackend); !slices.Contains(seen, b) {
						seen = append(seen, b)
					}
				}
				mu.Unlock()
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					_ = resp.Body.Close()
				}
			}
		})
	}
	var once sync.Once
	stop = func() ([]string, []string) {
		once.Do(func() {
			close(done)
			wg.Wait()
			tr.CloseIdleConnections()
		})
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(failures), slices.Clone(seen)
	}
	t.Cleanup(func() { stop() })
	return stop
}

// TestAddAndRemoveReloadTheProxy applies an add and a remove to a real
// cell under traffic: the same proxy process takes both by reload, no
// request fails, and the removed backend is stopped.
func TestAddAndRemoveReloadTheProxy(t *testing.T) {
	c := startCluster(t, 2)
	ctx := t.Context()
	proxy := c.Proxy()
	stop := traffic(t, c.ProxyAddr())

	if err := c.Apply(ctx, Fault{Action: Add, Target: "b3"}); err != nil {
		t.Fatal(err)
	}
	if err := c.Apply(ctx, Fault{Action: Reload}); err != nil {
		t.Fatal(err)
	}
	b2 := c.Backends()[1]
	b2proc := b2.proc
	if err := c.Apply(ctx, Fault{Action: Remove, Target: "b2"}); err != nil {
		t.Fatal(err)
	}
	if b2.proc != nil || !b2proc.Exited() || b2.State != Removed {
		t.Error("b2 still running after its removal")
	}
	// Requests go on after the remove: none may reach b2 any more.
	for range 20 {
		if got := c.Probe(ctx); got != "b1" && got != "b3" {
			t.Fatalf("probe after the remove answered by %q, want b1 or b3", got)
		}
	}
	failures, seen := stop()

	if c.Proxy() != proxy || proxy.Exited() {
		t.Error("the proxy process was replaced or died: add and remove must reload it")
	}
	if c.Reloads() != 3 {
		t.Errorf("reloads = %d, want 3", c.Reloads())
	}
	if len(failures) > 0 {
		t.Errorf("%d requests failed across the reloads, want none: %v", len(failures), failures[:min(5, len(failures))])
	}
	slices.Sort(seen)
	// Round-robin spreads the traffic: b3 answered once it was in.
	if !slices.Equal(seen, []string{"b1", "b2", "b3"}) {
		t.Errorf("traffic answered by %v, want b1, b2 and b3", seen)
	}
	st, err := c.proxyStatus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !st.routes(testPool, []string{"b1", "b3"}, "") || st.Config.ReloadsOK != 3 {
		t.Errorf("status %+v, want b1 and b3 after 3 reloads", st)
	}
	cfg, err := os.ReadFile(c.ConfigPath())
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(cfg), b2.Addr) || !strings.Contains(string(cfg), c.Backends()[2].Addr) {
		t.Errorf("proxy.yaml does not hold b1 and b3 only:\n%s", cfg)
	}
	if tmp, _ := filepath.Glob(filepath.Join(c.Dir, "*.tmp")); len(tmp) > 0 {
		t.Errorf("temporary config files left: %v", tmp)
	}

	// A removed backend restarted goes back in the config, in its place.
	if err := c.Apply(ctx, Fault{Action: Restart, Target: "b2"}); err != nil {
		t.Fatal(err)
	}
	if st, err := c.proxyStatus(ctx); err != nil || !st.routes(testPool, []string{"b1", "b2", "b3"}, "b2") || c.Reloads() != 4 {
		t.Errorf("after restarting b2: status %+v (%v), %d reloads; want b1, b2 (available), b3 after 4", st, err, c.Reloads())
	}
	if b2.State != Running || b2.proc == nil {
		t.Errorf("b2 is %s after its restart, want running", b2.State)
	}

	// A config the proxy refuses fails the reload at once, not after
	// the deadline.
	c.Config = func(p ProxyConfig) string {
		return strings.Replace(testConfig(p), "round-robin", "no-such-balancer", 1)
	}
	start := time.Now()
	if err := c.Apply(ctx, Fault{Action: Reload}); !errors.Is(err, errReloadFailed) {
		t.Errorf("reload of a refused config = %v, want %v", err, errReloadFailed)
	}
	if time.Since(start) > readyTimeout/2 {
		t.Error("a refused reload waited for the deadline")
	}
}
