package experiment

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
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
		{"same set", []statusPool{pool(poolName, up("b1"), up("b3"))}, []string{"b1", "b3"}, "", true},
		{"removed one still there", []statusPool{pool(poolName, up("b1"), up("b2"), up("b3"))}, []string{"b1", "b3"}, "", false},
		{"added one not there yet", []statusPool{pool(poolName, up("b1"), up("b2"))}, []string{"b1", "b2", "b3"}, "b3", false},
		{"added one not available", []statusPool{pool(poolName, up("b1"), up("b2"), down("b3"))}, []string{"b1", "b2", "b3"}, "b3", false},
		{"added one available", []statusPool{pool(poolName, up("b1"), up("b2"), up("b3"))}, []string{"b1", "b2", "b3"}, "b3", true},
		// A backend killed earlier stays configured, down: the set is
		// what counts.
		{"a configured backend down", []statusPool{pool(poolName, down("b1"), up("b3"))}, []string{"b1", "b3"}, "", true},
		{"other names", []statusPool{pool(poolName, up("b1"), up("b4"))}, []string{"b1", "b3"}, "", false},
		{"another pool", []statusPool{pool("web", up("b1"), up("b3"))}, []string{"b1", "b3"}, "", false},
		{"no pool", nil, []string{"b1"}, "", false},
	}
	for _, tt := range tests {
		st := &proxyStatus{Pools: tt.pools}
		if got := st.routes(tt.want, tt.added); got != tt.ok {
			t.Errorf("%s: routes = %v, want %v", tt.name, got, tt.ok)
		}
	}
}

// startCluster starts n real backends with the memory store and the proxy
// before them, with balancer; the test's cleanup kills them.
func startCluster(t *testing.T, balancer string, n int) *cluster {
	t.Helper()
	bin := affinityBinary(t)
	tr := &http.Transport{Proxy: nil}
	c := &cluster{
		exe: bin, dir: t.TempDir(), balancer: balancer, store: StoreMemory, work: time.Millisecond,
		client: &http.Client{Transport: tr, CheckRedirect: noRedirect},
	}
	t.Cleanup(func() {
		c.close()
		tr.CloseIdleConnections()
	})
	if err := c.start(context.Background(), n); err != nil {
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
					if b := resp.Header.Get(headerBackend); !slices.Contains(seen, b) {
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
	c := startCluster(t, "round-robin", 2)
	ctx := context.Background()
	proxy := c.proxy
	stop := traffic(t, c.proxyAddr)

	if err := c.apply(ctx, Fault{Action: Add, Target: "b3"}); err != nil {
		t.Fatal(err)
	}
	b2 := c.backends[1]
	b2proc := b2.proc
	if err := c.apply(ctx, Fault{Action: Remove, Target: "b2"}); err != nil {
		t.Fatal(err)
	}
	if b2.proc != nil || !b2proc.exited() {
		t.Error("b2 still running after its removal")
	}
	// Requests go on after the remove: none may reach b2 any more.
	for i := range 20 {
		if got := c.probe(ctx, "after-"+strconv.Itoa(i)); got != "b1" && got != "b3" {
			t.Fatalf("probe after the remove answered by %q, want b1 or b3", got)
		}
	}
	failures, seen := stop()

	if c.proxy != proxy || proxy.exited() {
		t.Error("the proxy process was replaced or died: add and remove must reload it")
	}
	if c.reloads != 2 {
		t.Errorf("reloads = %d, want 2", c.reloads)
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
	if !st.routes([]string{"b1", "b3"}, "") || st.Config.ReloadsOK != 2 {
		t.Errorf("status %+v, want b1 and b3 after 2 reloads", st)
	}
	cfg, err := os.ReadFile(c.configPath())
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(cfg), b2.addr) || !strings.Contains(string(cfg), c.backends[2].addr) {
		t.Errorf("proxy.yaml does not hold b1 and b3 only:\n%s", cfg)
	}
	if tmp, _ := filepath.Glob(filepath.Join(c.dir, "*.tmp")); len(tmp) > 0 {
		t.Errorf("temporary config files left: %v", tmp)
	}

	// A config the proxy refuses fails the reload at once, not after
	// the deadline.
	c.balancer = "no-such-balancer"
	start := time.Now()
	if err := c.reloadProxy(ctx, ""); !errors.Is(err, errReloadFailed) {
		t.Errorf("reload of a refused config = %v, want %v", err, errReloadFailed)
	}
	if time.Since(start) > readyTimeout/2 {
		t.Error("a refused reload waited for the deadline")
	}
}
