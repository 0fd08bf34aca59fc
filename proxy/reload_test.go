package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/affinityproxy/affinity/balancer"
	"github.com/affinityproxy/affinity/config"
	"github.com/affinityproxy/affinity/internal/testutil"
)

// weighted is a pool "web" of the given balancer over bs, each of weight 1
// unless weights says otherwise.
func weighted(kind string, weights map[string]int, bs ...*ctlBackend) *config.Pool {
	pc := &config.Pool{Name: "web", Balancer: config.Balancer{Type: kind, Options: cookieOptions()},
		Retries: config.DefaultRetries()}
	for _, b := range bs {
		w := weights[b.ID]
		if w == 0 {
			w = 1
		}
		pc.Backends = append(pc.Backends, config.Backend{URL: b.URL, Name: b.ID, Weight: w})
	}
	return pc
}

// byID returns p's backend called id and its position, failing t if p has
// none.
func byID(t *testing.T, p *pool, id string) (*balancer.Backend, int) {
	t.Helper()
	i := p.indexOf(id)
	if i < 0 {
		t.Fatalf("pool %s has no backend %s", p.name, id)
	}
	return p.backends[i], i
}

// reload applies cfg to s, failing t on an error.
func reload(t *testing.T, s *Server, cfg *config.Config) {
	t.Helper()
	if err := s.Reload(cfg); err != nil {
		t.Fatalf("Reload: %v", err)
	}
}

// stopped reports whether a state's checkers were stopped.
func stopped(st *state) bool {
	st.checks.mu.Lock()
	defer st.checks.mu.Unlock()
	return st.checks.stopped
}

// TestReloadCarriesState: a reload keeps the Backend, the health verdict
// and the ejection of each backend it keeps, gives a reweighted backend a
// new Backend with its failures, and sends traffic to an added one.
func TestReloadCarriesState(t *testing.T) {
	bs := startCtls(t, "a", "b", "c", "d")
	a, b, c, d := bs[0], bs[1], bs[2], bs[3]
	hc := testHealth(2, 1)
	pv := &config.Passive{Failures: 1, Eject: time.Minute, MaxEject: time.Minute}
	pc := weighted("round-robin", nil, a, b, c)
	pc.HealthCheck, pc.Passive = hc, pv
	log, logs := observed()
	s, u := startProxy(t, catchAll(pc), log)
	old := s.state.Load()
	op := old.pools[0]

	b.sick.Store(true)
	testutil.Eventually(t, detectWithin(hc, 1), "b taken down by its checks", func() bool {
		return !slices.Contains(available(op), "b")
	})
	oc, _ := byID(t, op, "c")
	op.failed(oc)
	oa, _ := byID(t, op, "a")
	oa.Fail()
	if got := available(op); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("before the reload: available %v, want [a]", got)
	}

	next := weighted("round-robin", map[string]int{"a": 3}, a, b, c, d)
	next.HealthCheck, next.Passive = hc, pv
	reload(t, s, catchAll(next))

	np := s.state.Load().pools[0]
	if got := available(np); !slices.Equal(got, []string{"a", "d"}) {
		t.Errorf("after the reload: available %v, want [a d]: b down, c ejected", got)
	}
	for _, id := range []string{"b", "c"} {
		ob, _ := byID(t, op, id)
		if nb, _ := byID(t, np, id); nb != ob {
			t.Errorf("backend %s: a new Backend after the reload, want the same", id)
		}
	}
	na, _ := byID(t, np, "a")
	if na == oa || na.Weight != 3 {
		t.Errorf("reweighted a: same Backend %v, weight %d; want a new one of weight 3", na == oa, na.Weight)
	}
	np.mu.Lock()
	_, ci := byID(t, np, "c")
	if m := np.members[ci]; !m.ejected || m.timer == nil || m.ejections != 1 || time.Until(m.until) < 50*time.Second {
		t.Errorf("c after the reload: ejected %v, timer %v, ejections %d, %v left; want the minute's ejection carried over",
			m.ejected, m.timer != nil, m.ejections, time.Until(m.until))
	}
	np.mu.Unlock()
	if n := na.Succeed(); n != 1 {
		t.Errorf("reweighted a: %d failures carried over, want 1", n)
	}
	if !stopped(old) {
		t.Error("the old state's checks still run")
	}

	c2 := testutil.Client(t)
	for range 8 {
		if r := get(t, c2, u.String()+"/", nil); r.status != http.StatusOK || (r.body != "a" && r.body != "d") {
			t.Fatalf("after the reload: %d from %q, want 200 from a or d", r.status, r.body)
		}
	}
	if d.hits.Load() == 0 {
		t.Error("the added backend got no request")
	}
	// The new checks go on from the old verdict: b comes back after its
	// rise, and is not up meanwhile.
	b.sick.Store(false)
	testutil.Eventually(t, detectWithin(hc, 2), "b back up by the new checks", func() bool {
		return slices.Contains(available(np), "b")
	})
	if n := len(entries(logs, "backend added")); n != 1 {
		t.Errorf("%d backend added lines, want 1", n)
	}
}

// TestTakeOverCarriesCheckCounts: a kept backend's new checker starts from
// the old one's verdict and its count towards the next, so that a reload
// neither brings a down backend up nor restarts its rise.
func TestTakeOverCarriesCheckCounts(t *testing.T) {
	pc := &config.Pool{Name: "web", Balancer: config.Balancer{Type: "round-robin"}, HealthCheck: testHealth(3, 3)}
	pc.Backends = []config.Backend{
		{URL: &url.URL{Scheme: "http", Host: "127.0.0.1:9001"}, Name: "a", Weight: 1},
		{URL: &url.URL{Scheme: "http", Host: "127.0.0.1:9002"}, Name: "b", Weight: 1},
	}
	cfg := catchAll(pc)
	log, _ := observed()
	old, err := newState(cfg, log, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	old.checks.list[0].state.up, old.checks.list[0].state.streak = false, 2
	old.checks.list[1].state.streak = 1
	if err := old.pools[0].setHealthy("a", false); err != nil {
		t.Fatal(err)
	}

	// The new config moves b to another port: another backend to check.
	pc2 := *pc
	pc2.Backends = slices.Clone(pc.Backends)
	pc2.Backends[1].URL = &url.URL{Scheme: "http", Host: "127.0.0.1:9003"}
	next, err := newState(catchAll(&pc2), log, old, nil)
	if err != nil {
		t.Fatal(err)
	}
	old.stop()
	s := &Server{log: log}
	s.takeOver(old, next)
	got := []healthState{next.checks.list[0].state, next.checks.list[1].state}
	want := []healthState{{rise: 3, fall: 3, up: false, streak: 2}, {rise: 3, fall: 3, up: true}}
	if !slices.Equal(got, want) {
		t.Errorf("new checkers' states %+v, want %+v", got, want)
	}
	if got := available(next.pools[0]); !slices.Equal(got, []string{"b"}) {
		t.Errorf("available %v, want [b]: a still down, b new", got)
	}
}

// TestReloadDrainsRemovedBackend: a removed backend's request in flight
// finishes, and no new request reaches it.
func TestReloadDrainsRemovedBackend(t *testing.T) {
	su, started, release := blockingBackend(t)
	fast := startCtl(t, "fast")
	slow := &config.Pool{Name: "web", Balancer: config.Balancer{Type: "round-robin"},
		Backends: []config.Backend{{URL: su, Name: "slow", Weight: 1}}}
	s, u := startProxy(t, catchAll(slow), nil)

	done := make(chan reply, 1)
	go func() {
		resp, err := testutil.Client(t).Get(u.String() + "/")
		if err != nil {
			done <- reply{body: err.Error()}
			return
		}
		b, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		done <- reply{status: resp.StatusCode, body: string(b)}
	}()
	<-started
	reload(t, s, catchAll(weighted("round-robin", nil, fast)))

	c := testutil.Client(t)
	for range 5 {
		if r := get(t, c, u.String()+"/", nil); r.status != http.StatusOK || r.body != "fast" {
			t.Fatalf("after the reload: %d %q, want 200 from fast", r.status, r.body)
		}
	}
	if n := len(started); n != 0 {
		t.Errorf("%d requests reached the removed backend after the reload", n)
	}
	release()
	if r := <-done; r.status != http.StatusOK || r.body != "finished" {
		t.Errorf("in-flight request on the removed backend: %d %q, want 200 finished", r.status, r.body)
	}
}

// TestReloadRefused: a config that cannot be applied changes nothing, and
// is counted and logged.
func TestReloadRefused(t *testing.T) {
	bs := startCtls(t, "a", "b")
	taken := testutil.Listen(t)
	valid := func() *config.Config {
		pc := weighted("round-robin", nil, bs[0])
		pc.HealthCheck = testHealth(1, 1)
		return catchAll(pc)
	}
	tests := []struct {
		name string
		edit func(c *config.Config) *config.Config
	}{
		{"no config", func(*config.Config) *config.Config { return nil }},
		{"unknown balancer", func(c *config.Config) *config.Config {
			c.Pools[0].Balancer.Type = "nope"
			return c
		}},
		{"route to no pool", func(c *config.Config) *config.Config {
			c.Routes[0].Pool = "missing"
			return c
		}},
		{"bad health path", func(c *config.Config) *config.Config {
			c.Pools[0].HealthCheck.Path = "no-slash"
			return c
		}},
		{"listen address taken", func(c *config.Config) *config.Config {
			c.Listen = taken.Addr().String()
			return c
		}},
	}
	log, logs := observed()
	s, u := startProxy(t, valid(), log)
	client := testutil.Client(t)
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := s.state.Load()
			cfg := tt.edit(valid())
			if cfg != nil {
				// Would the change apply, b would serve too.
				cfg.Pools[0].Backends = append(cfg.Pools[0].Backends, config.Backend{URL: bs[1].URL, Name: "b", Weight: 1})
			}
			if err := s.Reload(cfg); err == nil {
				t.Fatal("Reload succeeded")
			}
			if s.state.Load() != before || stopped(before) {
				t.Error("a refused reload replaced or stopped the state")
			}
			if st := s.ReloadStats(); st.Failed != uint64(i+1) || st.OK != 0 {
				t.Errorf("stats %+v, want %d failed and none ok", st, i+1)
			}
			if n := len(entries(logs, "config reload failed")); n != i+1 {
				t.Errorf("%d failure lines, want %d", n, i+1)
			}
			for range 3 {
				if r := get(t, client, u.String()+"/", nil); r.status != http.StatusOK || r.body != "a" {
					t.Fatalf("after a refused reload: %d %q, want 200 from a", r.status, r.body)
				}
			}
		})
	}
}

func TestReloadAfterShutdown(t *testing.T) {
	cfg := catchAll(poolOf("web", "round-robin", balancer.Options{}, testutil.StartBackend(t, "a")))
	s, err := NewServer(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := s.Reload(cfg); !errors.Is(err, http.ErrServerClosed) {
		t.Errorf("Reload after Shutdown = %v, want ErrServerClosed", err)
	}
}

// TestReloadFile: an invalid file is refused with every error at its
// position; the same bytes again change nothing; a new valid file applies.
func TestReloadFile(t *testing.T) {
	bs := startBackends(t, "a", "b")
	path := filepath.Join(t.TempDir(), "affinity.yaml")
	write := func(data string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	one := fmt.Sprintf("listen: 127.0.0.1:0\npools:\n  web:\n    backends: [{url: %q, name: a}]\n", bs[0].URL)
	write(one)
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	log, logs := observed()
	s, u := startProxy(t, cfg, log)
	if h := s.ReloadStats().Hash; h != cfg.Hash || h == "" {
		t.Fatalf("hash %q, want the file's %q", h, cfg.Hash)
	}

	write("listen: 127.0.0.1:0\npools:\n  web:\n    backends: [{url: nope}]\n    balancer: {type: nope}\n")
	err = s.ReloadFile(path)
	var list config.ErrorList
	if !errors.As(err, &list) || len(list) != 2 {
		t.Fatalf("ReloadFile of an invalid file = %v, want its 2 errors", err)
	}
	failed := entries(logs, "config reload failed")
	if len(failed) != 1 {
		t.Fatalf("%d failure lines, want 1", len(failed))
	}
	msgs, _ := failed[0].ContextMap()["errors"].([]any)
	if len(msgs) != 2 || !strings.HasPrefix(fmt.Sprint(msgs[0]), path+":4:") || !strings.HasPrefix(fmt.Sprint(msgs[1]), path+":5:") {
		t.Errorf("logged errors %q, want each at %s:LINE:COL", msgs, path)
	}

	write(one)
	if err := s.ReloadFile(path); err != nil {
		t.Fatal(err)
	}
	if n := len(entries(logs, "config unchanged")); n != 1 {
		t.Errorf("the same file again: %d unchanged lines, want 1", n)
	}

	two := strings.Replace(one, "name: a}]", fmt.Sprintf("name: a}, {url: %q, name: b}]", bs[1].URL), 1)
	write(two)
	if err := s.ReloadFile(path); err != nil {
		t.Fatal(err)
	}
	st := s.ReloadStats()
	if st.OK != 1 || st.Failed != 1 || st.Hash == cfg.Hash || st.Hash != s.Config().Hash {
		t.Errorf("stats %+v, want 1 ok, 1 failed and the new file's hash", st)
	}
	seen := map[string]bool{}
	c := testutil.Client(t)
	for range 4 {
		seen[get(t, c, u.String()+"/", nil).body] = true
	}
	if !seen["a"] || !seen["b"] {
		t.Errorf("served by %v after adding b, want a and b", seen)
	}
}

// TestReloadKeepsStickyClients: clients pinned to a backend the reload
// keeps stay there, without a new cookie: tokens derive from IDs.
func TestReloadKeepsStickyClients(t *testing.T) {
	bs := startCtls(t, "a", "b", "c", "d")
	s, u := startProxy(t, catchAll(weighted("cookie", nil, bs[:3]...)), nil)
	clients := make([]*http.Client, 6)
	home := make([]string, len(clients))
	for i := range clients {
		clients[i] = jarClient(t)
		r := get(t, clients[i], u.String()+"/", nil)
		home[i] = r.body
		if want := "aff=" + token(t, r.body) + "."; !strings.HasPrefix(r.header.Get("Set-Cookie"), want) {
			t.Fatalf("client %d: cookie %q, want it to start %q", i, r.header.Get("Set-Cookie"), want)
		}
	}
	// c goes, d comes, a is reweighted and the order changes.
	reload(t, s, catchAll(weighted("cookie", map[string]int{"a": 5}, bs[3], bs[1], bs[0])))
	for i, c := range clients {
		r := get(t, c, u.String()+"/", nil)
		switch {
		case home[i] == "c" && r.body == "c":
			t.Errorf("client %d still on the removed c", i)
		case home[i] != "c" && r.body != home[i]:
			t.Errorf("client %d moved from %s to %s", i, home[i], r.body)
		case home[i] != "c" && r.header.Get("Set-Cookie") != "":
			t.Errorf("client %d on %s got a new cookie %q", i, home[i], r.header.Get("Set-Cookie"))
		}
	}
}

// TestReloadTransport: changed timeouts take a new transport, unchanged
// ones keep it, idle connections and all.
func TestReloadTransport(t *testing.T) {
	cfg := catchAll(poolOf("web", "round-robin", balancer.Options{}, testutil.StartBackend(t, "a")))
	s, u := startProxy(t, cfg, nil)
	get(t, testutil.Client(t), u.String()+"/", nil)
	first := s.transport.cur.Load()
	same := *cfg
	same.Pools = slices.Clone(cfg.Pools)
	reload(t, s, &same)
	if s.transport.cur.Load() != first {
		t.Error("a reload with the same timeouts changed the transport")
	}
	slower := same
	slower.Timeouts.ResponseHeader *= 2
	reload(t, s, &slower)
	tr := s.transport.cur.Load()
	if tr == first || tr.ResponseHeaderTimeout != slower.Timeouts.ResponseHeader {
		t.Errorf("after new timeouts: same transport %v, response header timeout %v; want a new one with %v",
			tr == first, tr.ResponseHeaderTimeout, slower.Timeouts.ResponseHeader)
	}
	if r := get(t, testutil.Client(t), u.String()+"/", nil); r.status != http.StatusOK {
		t.Errorf("after new timeouts: %d", r.status)
	}
}

// TestReloadDropsOldTransports: reloads that change the timeouts leave no
// transport behind. One switched from while a request runs on it keeps
// that connection until the request ends, then closes it and is dropped;
// the current transport keeps its idle connection.
func TestReloadDropsOldTransports(t *testing.T) {
	var open, accepted atomic.Int64 // the backend's connections from the proxy
	hold := make(chan struct{})
	holding := make(chan struct{}, 1)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hold" {
			holding <- struct{}{}
			<-hold
		}
		_, _ = io.WriteString(w, "ok")
	}))
	srv.Config.ConnState = func(_ net.Conn, cs http.ConnState) {
		switch cs {
		case http.StateNew:
			open.Add(1)
			accepted.Add(1)
		case http.StateClosed, http.StateHijacked:
			open.Add(-1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	u, _ := url.Parse(srv.URL)
	cfg := catchAll(&config.Pool{Name: "web", Balancer: config.Balancer{Type: "round-robin"},
		Backends: []config.Backend{{URL: u, Name: "a", Weight: 1}}})
	cfg.Timeouts = testTimeouts
	s, pu := startProxy(t, cfg, nil)
	c := testutil.Client(t)
	next := *cfg
	for i := range 20 {
		next.Timeouts.ResponseHeader = testTimeouts.ResponseHeader + time.Duration(i+1)*time.Millisecond
		reload(t, s, &next)
		if r := get(t, c, pu.String()+"/", nil); r.status != http.StatusOK {
			t.Fatalf("reload %d: %d", i, r.status)
		}
	}
	held := make(chan reply, 1)
	go func() { held <- get(t, c, pu.String()+"/hold", nil) }()
	<-holding
	inUse := s.transport.cur.Load()
	next.Timeouts.ResponseHeader *= 2
	reload(t, s, &next)
	s.transport.mu.Lock()
	retired := slices.Clone(s.transport.retired)
	s.transport.mu.Unlock()
	if len(retired) != 1 || retired[0] != inUse {
		t.Errorf("%d transports kept after the switch, want only the one with a request in flight", len(retired))
	}
	close(hold)
	if r := <-held; r.status != http.StatusOK {
		t.Errorf("the request in flight across the switch: %d", r.status)
	}
	testutil.Eventually(t, waitFor, "the old transport to be dropped", func() bool {
		s.transport.mu.Lock()
		defer s.transport.mu.Unlock()
		return len(s.transport.retired) == 0 && inUse.conns.Load() == 0
	})
	c.CloseIdleConnections()
	if r := get(t, c, pu.String()+"/", nil); r.status != http.StatusOK {
		t.Fatal(r.status)
	}
	testutil.Eventually(t, waitFor, "the backend to hold the current transport's connection alone", func() bool {
		return open.Load() == 1 && s.transport.cur.Load().conns.Load() == 1
	})
	// The counted connections are reused as any: the socket check
	// before reuse reaches through them.
	before := accepted.Load()
	for range 3 {
		if r := get(t, c, pu.String()+"/", nil); r.status != http.StatusOK {
			t.Fatal(r.status)
		}
	}
	if n := accepted.Load() - before; n != 0 {
		t.Errorf("%d new backend connections for 3 requests in a row, want the idle one reused", n)
	}
}

// TestReloadUnderLoad reloads 20 times, alternating two configs that
// differ in weights and members, while clients keeping cookies send
// requests, each reload after at least 10 of them since the one before, so
// that every reload comes among requests however busy the machine: none
// may fail.
func TestReloadUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("seconds of load")
	}
	const (
		reloads   = 20
		perReload = 10 // requests sent between two reloads, at least
		clients   = 6
		interval  = 20 * time.Millisecond // between two requests of a client
	)
	bs := startCtls(t, "a", "b", "c")
	configs := []*config.Config{
		catchAll(weighted("cookie", nil, bs[0], bs[1])),
		catchAll(weighted("cookie", map[string]int{"a": 3}, bs[0], bs[1], bs[2])),
	}
	s, u := startProxy(t, configs[0], nil)

	var sent, failed atomic.Int64
	var firstErr atomic.Pointer[string]
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range clients {
		c := jarClient(t)
		wg.Go(func() {
			tick := time.NewTicker(interval)
			defer tick.Stop()
			for {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				sent.Add(1)
				resp, err := c.Get(u.String() + "/")
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					_ = resp.Body.Close()
					if err == nil && resp.StatusCode != http.StatusOK {
						err = fmt.Errorf("status %d", resp.StatusCode)
					}
				}
				if err != nil {
					failed.Add(1)
					msg := err.Error()
					firstErr.CompareAndSwap(nil, &msg)
				}
			}
		})
	}
	endLoad := sync.OnceFunc(func() {
		close(stop)
		wg.Wait()
	})
	defer endLoad()
	for i := range reloads {
		from := sent.Load()
		testutil.Eventually(t, waitFor, "the clients sent no requests", func() bool {
			return sent.Load() >= from+perReload
		})
		reload(t, s, configs[(i+1)%2])
	}
	endLoad()
	if n := failed.Load(); n != 0 {
		t.Errorf("%d of %d requests failed during %d reloads; first: %s", n, sent.Load(), reloads, *firstErr.Load())
	}
	if st := s.ReloadStats(); st.OK != reloads {
		t.Errorf("stats %+v, want %d ok", st, reloads)
	}
}

// BenchmarkReload measures a reload of 4 pools of 16 backends each, half
// of the backends reweighted each time, on a server not serving (no
// checks to stop and start).
func BenchmarkReload(b *testing.B) {
	configs := make([]*config.Config, 2)
	for v := range configs {
		cfg := &config.Config{Listen: "127.0.0.1:0", Timeouts: testTimeouts}
		for p := range 4 {
			pc := &config.Pool{Name: fmt.Sprintf("p%d", p), Balancer: config.Balancer{Type: "cookie", Options: cookieOptions()},
				Retries: config.DefaultRetries(), Passive: &config.Passive{Failures: 3, Eject: time.Second, MaxEject: time.Minute}}
			for i := range 16 {
				u := &url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", 9000+16*p+i)}
				pc.Backends = append(pc.Backends, config.Backend{URL: u, Name: fmt.Sprintf("b%d", i), Weight: 1 + v*(i%2)})
			}
			cfg.Pools = append(cfg.Pools, pc)
			cfg.Routes = append(cfg.Routes, config.Route{Match: config.Match{Path: "/" + pc.Name}, Pool: pc.Name})
		}
		configs[v] = cfg
	}
	s, err := NewServer(configs[0], discardLogger())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = s.Shutdown(context.Background()) })
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		if err := s.Reload(configs[i%2]); err != nil {
			b.Fatal(err)
		}
	}
}
