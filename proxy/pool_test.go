package proxy

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"go.uber.org/zap/zaptest/observer"

	"github.com/affinityproxy/affinity/balancer"
	"github.com/affinityproxy/affinity/config"
	"github.com/affinityproxy/affinity/internal/testutil"
)

// testPool is a round-robin pool over backends b0…b(n-1) that are never
// dialled.
func testPool(t *testing.T, n int) (*pool, *observer.ObservedLogs) {
	t.Helper()
	pc := &config.Pool{Name: "web", Balancer: config.Balancer{Type: "round-robin"}}
	for i := range n {
		u := &url.URL{Scheme: "http", Host: "127.0.0.1:" + strconv.Itoa(9000+i)}
		pc.Backends = append(pc.Backends, config.Backend{URL: u, Name: "b" + strconv.Itoa(i), Weight: 1})
	}
	log, logs := observed()
	p, err := newPool(pc, nil, log, nil)
	if err != nil {
		t.Fatal(err)
	}
	return p, logs
}

// picked returns the IDs of n picks in a row.
func picked(t *testing.T, p *pool, n int) map[string]int {
	t.Helper()
	got := map[string]int{}
	r := httptest.NewRequest("GET", "/", nil)
	for range n {
		pk, err := p.pick(r)
		if err != nil {
			t.Fatalf("pick: %v", err)
		}
		got[pk.Backend.ID]++
	}
	return got
}

func TestSetHealthy(t *testing.T) {
	p, logs := testPool(t, 3)
	if got := picked(t, p, 30); got["b0"] != 10 || got["b1"] != 10 || got["b2"] != 10 {
		t.Fatalf("all up: picks %v, want 10 each", got)
	}

	if err := p.setHealthy("b1", false); err != nil {
		t.Fatal(err)
	}
	if got := picked(t, p, 30); got["b1"] != 0 || got["b0"] != 15 || got["b2"] != 15 {
		t.Errorf("b1 down: picks %v, want b0 and b2 only", got)
	}
	down := entries(logs, "backend down")
	if len(down) != 1 || down[0].ContextMap()["backend"] != "b1" || down[0].ContextMap()["available"] != int64(2) {
		t.Errorf("down lines = %v", down)
	}

	// Marking a backend as it already is changes nothing, not even the Picker.
	before := p.snap.Load()
	if err := p.setHealthy("b1", false); err != nil {
		t.Fatal(err)
	}
	if p.snap.Load() != before || len(entries(logs, "backend down")) != 1 {
		t.Error("repeating a mark rebuilt the picker or logged again")
	}

	if err := p.setHealthy("nope", false); !errors.Is(err, errUnknownBackend) {
		t.Errorf("unknown backend: %v, want errUnknownBackend", err)
	}

	for _, id := range []string{"b0", "b2"} {
		if err := p.setHealthy(id, false); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := p.pick(httptest.NewRequest("GET", "/", nil)); !errors.Is(err, balancer.ErrNoBackend) {
		t.Errorf("all down: pick error %v, want ErrNoBackend", err)
	}
	if n := len(entries(logs, "pool has no available backend")); n != 1 {
		t.Errorf("%d exhaustion lines, want 1", n)
	}

	if err := p.setHealthy("b1", true); err != nil {
		t.Fatal(err)
	}
	if got := picked(t, p, 4); got["b1"] != 4 {
		t.Errorf("b1 back: picks %v, want b1 only", got)
	}
	if n := len(entries(logs, "backend up")); n != 1 {
		t.Errorf("%d up lines, want 1", n)
	}
}

// TestSetHealthyConcurrentWithPicks lets the race detector watch picks
// overlap rebuilds, and checks that no pick sees a down backend.
func TestSetHealthyConcurrentWithPicks(t *testing.T) {
	p, _ := testPool(t, 4)
	if err := p.setHealthy("b0", false); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 4 {
		wg.Go(func() {
			r := httptest.NewRequest("GET", "/", nil)
			for {
				select {
				case <-stop:
					return
				default:
				}
				pk, err := p.pick(r)
				if err != nil || pk.Backend.ID == "b0" {
					t.Errorf("pick = %v, %v; want one of b1-b3", pk.Backend, err)
					return
				}
			}
		})
	}
	// One of b1-b3 at a time goes down and comes back.
	for i := range 300 {
		id := "b" + strconv.Itoa(1+i%3)
		if err := p.setHealthy(id, false); err != nil {
			t.Error(err)
		}
		if err := p.setHealthy(id, true); err != nil {
			t.Error(err)
		}
	}
	close(stop)
	wg.Wait()
}

func TestRoundRobinSpread(t *testing.T) {
	bs := startBackends(t, "a", "b", "c")
	_, u := startProxy(t, catchAll(poolOf("web", "round-robin", balancer.Options{}, bs...)), nil)
	c := testutil.Client(t)
	counts := map[string]int{}
	for range 30 {
		r := get(t, c, u.String()+"/", nil)
		if r.status != http.StatusOK {
			t.Fatalf("status %d, body %q", r.status, r.body)
		}
		counts[r.body]++
	}
	for _, b := range bs {
		if counts[b.ID] != 10 || b.Hits() != 10 {
			t.Errorf("backend %s: %d answers, %d hits; want 10 of 30", b.ID, counts[b.ID], b.Hits())
		}
	}
}

func TestCookieStickiness(t *testing.T) {
	bs := startBackends(t, "a", "b", "c")
	_, u := startProxy(t, catchAll(poolOf("web", "cookie", cookieOptions(), bs...)), nil)

	// Six clients are placed by rotation, two per backend; each then stays.
	clients := make([]*http.Client, 6)
	home := make([]string, len(clients))
	for i := range clients {
		clients[i] = jarClient(t)
		r := get(t, clients[i], u.String()+"/", nil)
		if !strings.HasPrefix(r.header.Get("Set-Cookie"), "aff=") {
			t.Fatalf("client %d: first response sets no sticky cookie: %v", i, r.header["Set-Cookie"])
		}
		home[i] = r.body
	}
	if got := slices.Sorted(slices.Values(home)); !slices.Equal(got, []string{"a", "a", "b", "b", "c", "c"}) {
		t.Errorf("new clients placed on %v, want two per backend", got)
	}
	for i, c := range clients {
		for range 5 {
			r := get(t, c, u.String()+"/page", nil)
			if r.body != home[i] {
				t.Fatalf("client %d moved from %s to %s", i, home[i], r.body)
			}
			if sc := r.header.Get("Set-Cookie"); sc != "" {
				t.Fatalf("client %d with a valid cookie was sent another: %q", i, sc)
			}
		}
	}

	// A rebuilt proxy with the backends in another order keeps every client
	// where it was: the cookie names a backend by ID, not position.
	_, u2 := startProxy(t, catchAll(poolOf("web", "cookie", cookieOptions(), bs[2], bs[0], bs[1])), nil)
	for i, c := range clients {
		if r := get(t, c, u2.String()+"/", nil); r.body != home[i] {
			t.Errorf("client %d: after reordering on %s, want %s", i, r.body, home[i])
		}
	}
}

func TestStickyCookieKeepsBackendCookies(t *testing.T) {
	bu := testutil.StartServer(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.SetCookie(w, &http.Cookie{Name: "session", Value: "s1"})
		_, _ = io.WriteString(w, "ok")
	}))
	cfg := catchAll(&config.Pool{Name: "web", Balancer: config.Balancer{Type: "cookie", Options: cookieOptions()},
		Backends: []config.Backend{{URL: bu, Name: "app"}}})
	_, u := startProxy(t, cfg, nil)
	r := get(t, testutil.Client(t), u.String()+"/", nil)
	var names []string
	for _, sc := range r.header["Set-Cookie"] {
		name, _, _ := strings.Cut(sc, "=")
		names = append(names, name)
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"aff", "session"}) {
		t.Errorf("Set-Cookie headers %q, want the sticky cookie and the backend's", r.header["Set-Cookie"])
	}
}

func TestConsistentHashByHeader(t *testing.T) {
	bs := startBackends(t, "a", "b", "c")
	o := balancer.Options{Hash: balancer.HashOptions{Key: "header:X-User", VirtualNodes: 100}}
	_, u := startProxy(t, catchAll(poolOf("web", "consistent-hash", o, bs...)), nil)
	c := testutil.Client(t)
	owner := map[string]string{}
	used := map[string]bool{}
	for round := range 3 {
		for k := range 30 {
			user := "user-" + strconv.Itoa(k)
			r := get(t, c, u.String()+"/", func(req *http.Request) { req.Header.Set("X-User", user) })
			if round == 0 {
				owner[user] = r.body
				used[r.body] = true
			} else if r.body != owner[user] {
				t.Fatalf("%s went to %s, earlier to %s", user, r.body, owner[user])
			}
		}
	}
	if len(used) < 2 {
		t.Errorf("30 keys all hashed to %v", used)
	}
}
