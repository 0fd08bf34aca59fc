package proxy

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/affinityproxy/affinity/balancer"
	"github.com/affinityproxy/affinity/config"
	"github.com/affinityproxy/affinity/internal/demoapp"
	"github.com/affinityproxy/affinity/internal/testutil"
)

const sessionCookie = "JSESSIONID"

// sessionApp keeps sessions in memory as a servlet container does: a
// request without a session it knows gets a new one, in a Set-Cookie. It
// answers with its name.
type sessionApp struct {
	name     string
	mu       sync.Mutex
	sessions map[string]bool
	issued   int
}

func (a *sessionApp) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	if c, err := r.Cookie(sessionCookie); err != nil || !a.sessions[c.Value] {
		a.issued++
		sid := fmt.Sprintf("%s-%d", a.name, a.issued)
		a.sessions[sid] = true
		http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: sid, Path: "/", HttpOnly: true})
	}
	a.mu.Unlock()
	_, _ = io.WriteString(w, a.name)
}

// startSessionApps starts a sessionApp per name and returns them as a
// pool's backends.
func startSessionApps(t *testing.T, names ...string) []config.Backend {
	t.Helper()
	bs := make([]config.Backend, len(names))
	for i, n := range names {
		u := testutil.StartServer(t, &sessionApp{name: n, sessions: map[string]bool{}})
		bs[i] = config.Backend{URL: u, Name: n, Weight: 1}
	}
	return bs
}

func learnOptions() balancer.Options {
	return balancer.Options{Learn: balancer.LearnOptions{
		Cookie: sessionCookie, MaxEntries: 1000, TTL: time.Hour, Store: balancer.LearnStoreMemory,
	}}
}

// sessionGet sends a GET to target with the session cookie, if any, and
// returns the backend that answered and the session it set, if any.
func sessionGet(t *testing.T, c *http.Client, target, sid string) (backend, setSID string) {
	t.Helper()
	r := get(t, c, target, func(req *http.Request) {
		if sid != "" {
			req.AddCookie(&http.Cookie{Name: sessionCookie, Value: sid})
		}
	})
	if r.status != http.StatusOK {
		t.Fatalf("GET %s: status %d: %s", target, r.status, r.body)
	}
	for _, line := range r.header["Set-Cookie"] {
		if c, err := http.ParseSetCookie(line); err == nil && c.Name == sessionCookie {
			setSID = c.Value
		}
	}
	return r.body, setSID
}

// Clients stay on the backend that issued their session, which never has
// to issue a second one; new clients are spread over the pool.
func TestLearnSticksOnApplicationCookie(t *testing.T) {
	pc := &config.Pool{Name: "app", Balancer: config.Balancer{Type: "learn", Options: learnOptions()},
		Backends: startSessionApps(t, "app-1", "app-2", "app-3")}
	s, u := startProxy(t, catchAll(pc), nil)
	c := testutil.Client(t)
	reached := map[string]bool{}
	for client := range 6 {
		first, sid := sessionGet(t, c, u.String()+"/", "")
		if sid == "" {
			t.Fatalf("client %d: %s set no session", client, first)
		}
		reached[first] = true
		for i := range 10 {
			got, renewed := sessionGet(t, c, u.String()+"/cart", sid)
			if got != first || renewed != "" {
				t.Fatalf("client %d request %d: served by %s (new session %q), want %s keeping %s", client, i, got, renewed, first, sid)
			}
		}
	}
	if len(reached) != 3 {
		t.Errorf("new clients reached %v, want all three backends", reached)
	}
	table, ok := s.state.Load().pools[0].policy.(balancer.StickTable)
	if !ok {
		t.Fatal("the learn policy is not a balancer.StickTable")
	}
	if n := table.Len(); n != 6 {
		t.Errorf("the table holds %d sessions, want 6", n)
	}
}

// The session is learned for the backend that answered, not the one
// picked first: a retry moved the request off a dead backend.
func TestLearnFromRetriedBackend(t *testing.T) {
	live := startSessionApps(t, "live")[0]
	dead := config.Backend{URL: testutil.ClosedURL(t), Name: "dead", Weight: 1}
	pc := &config.Pool{Name: "app", Balancer: config.Balancer{Type: "learn", Options: learnOptions()},
		Backends: []config.Backend{dead, live}, Retries: config.Retries{Count: 1}}
	s, u := startProxy(t, catchAll(pc), nil)
	c := testutil.Client(t)
	p := s.state.Load().pools[0]
	for client := range 4 {
		got, sid := sessionGet(t, c, u.String()+"/", "")
		if got != "live" || sid == "" {
			t.Fatalf("client %d: served by %s with session %q, want live setting one", client, got, sid)
		}
		if pk := pickSession(t, p, sessionCookie, sid); pk.Backend.ID != "live" || pk.Sticky != balancer.StickyKept {
			t.Fatalf("client %d: next pick %v, want kept on live", client, pk)
		}
	}
}

// Two proxy processes share their learned sessions through a real Redis,
// which asks for a password and a client certificate over TLS: a session
// learned through one replica is routed to the same backend through the
// other, which never saw the client before.
func TestLearnReplicasShareSessions(t *testing.T) {
	bin := buildAffinity(t)
	certs := testutil.NewCerts(t)
	rds := testutil.StartRedisWith(t, testutil.RedisConfig{Args: []string{"--requirepass", "s3cret"}, Password: "s3cret", TLS: certs})
	password := filepath.Join(t.TempDir(), "redis-password")
	if err := os.WriteFile(password, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	apps := startSessionApps(t, "app-1", "app-2", "app-3")
	var pool strings.Builder
	fmt.Fprintf(&pool, `pools:
  app:
    balancer:
      type: learn
      learn:
        cookie: %s
        store: redis
        redis:
          addrs: ["%s"]
          timeout: 200ms
          password_file: %q
          tls: {ca: %q, cert: %q, key: %q}
    backends:
`, sessionCookie, rds.Addr, password, certs.CA, certs.ClientCert, certs.ClientKey)
	for _, a := range apps {
		fmt.Fprintf(&pool, "      - {url: %q, name: %s}\n", a.URL.String(), a.Name)
	}
	replicas := []*replica{startReplica(t, bin, pool.String()), startReplica(t, bin, pool.String())}
	c := testutil.Client(t)
	for client := range 6 {
		// Clients alternate the replica that learns their session.
		learner, follower := replicas[client%2], replicas[1-client%2]
		home, sid := sessionGet(t, c, learner.url+"/", "")
		if sid == "" {
			t.Fatalf("client %d: %s set no session", client, home)
		}
		// The learning replica writes to Redis after the response.
		testutil.Eventually(t, waitFor, fmt.Sprintf("client %d: %s not routed to %s", client, follower.url, home), func() bool {
			got, _ := sessionGet(t, c, follower.url+"/", sid)
			return got == home
		})
		for i := range 10 {
			got, renewed := sessionGet(t, c, replicas[i%2].url+"/cart", sid)
			if got != home || renewed != "" {
				t.Fatalf("client %d request %d via %s: served by %s (new session %q), want %s", client, i, replicas[i%2].url, got, renewed, home)
			}
		}
	}
}

// A reload that leaves a pool's balancer settings alone keeps its policy,
// and with it the learned sessions. One that changes the table's bounds
// makes a new policy, which takes the sessions over: all of them for a new
// ttl, the most recently used for a smaller max_entries.
func TestLearnTableSurvivesReload(t *testing.T) {
	apps := startSessionApps(t, "app-1", "app-2", "app-3")
	pool := func(backends []config.Backend, maxEntries int, ttl time.Duration) *config.Config {
		o := learnOptions()
		o.Learn.MaxEntries, o.Learn.TTL = maxEntries, ttl
		return catchAll(&config.Pool{Name: "app", Balancer: config.Balancer{Type: "learn", Options: o}, Backends: backends})
	}
	s, u := startProxy(t, pool(apps[:2], 1000, 30*time.Minute), nil)
	c := testutil.Client(t)
	var order []string          // sessions, least recently used first
	home := map[string]string{} // session → backend
	for range 21 {
		b, sid := sessionGet(t, c, u.String()+"/", "")
		home[sid] = b
		order = append(order, sid)
	}
	table := func() balancer.StickTable { return s.state.Load().pools[0].policy.(balancer.StickTable) }
	routed := func(when string, sids []string) {
		t.Helper()
		for _, sid := range sids {
			if got, renewed := sessionGet(t, c, u.String()+"/", sid); got != home[sid] || renewed != "" {
				t.Errorf("%s, session %s went to %s (new session %q), want %s", when, sid, got, renewed, home[sid])
			}
		}
	}
	before := s.state.Load().pools[0].policy

	// A backend joins; the balancer settings stay.
	reload(t, s, pool(apps, 1000, 30*time.Minute))
	if got := s.state.Load().pools[0].policy; got != before {
		t.Fatal("a reload with the same balancer settings replaced the policy")
	}
	routed("after a backend joined", order)

	reload(t, s, pool(apps, 1000, 20*time.Minute))
	if s.state.Load().pools[0].policy == before {
		t.Fatal("a reload with another ttl kept the policy")
	}
	if n := table().Len(); n != 21 {
		t.Errorf("after ttl 30m → 20m the table holds %d sessions, want 21", n)
	}
	routed("after ttl 30m → 20m", order)

	reload(t, s, pool(apps, 10, 20*time.Minute))
	if n := table().Len(); n != 10 {
		t.Errorf("after max_entries 1000 → 10 the table holds %d sessions, want 10", n)
	}
	routed("after max_entries 1000 → 10", order[len(order)-10:])
}

// A reload that changes the learn options keeps the proxy listening to
// the other replicas that share its Redis: a session another replica
// moves after the reload is followed at once, though the proxy finds the
// session in its memory table and would not ask Redis about it.
func TestLearnReloadFollowsReplicas(t *testing.T) {
	rds := testutil.StartRedis(t)
	apps := startSharedSessionApps(t, "app-1", "app-2", "app-3")
	opts := func(ttl time.Duration) balancer.Options {
		o := learnOptions()
		o.Learn.TTL, o.Learn.Store = ttl, balancer.LearnStoreRedis
		o.Learn.Redis = balancer.RedisOptions{Addrs: []string{rds.Addr}, Timeout: time.Second}
		return o
	}
	pool := func(ttl time.Duration) *config.Config {
		return catchAll(&config.Pool{Name: "app", Balancer: config.Balancer{Type: "learn", Options: opts(ttl)}, Backends: apps})
	}
	s, u := startProxy(t, pool(time.Hour), nil)
	c := testutil.Client(t)
	home, sid := sessionGet(t, c, u.String()+"/", "")
	reload(t, s, pool(2*time.Hour))

	// Another replica, for which home is down, moves the session once
	// it finds it in Redis.
	other, err := balancer.New("learn", opts(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = other.(io.Closer).Close() })
	var all, up []*balancer.Backend
	for _, a := range apps {
		b := balancer.NewBackend(a.Name, a.URL, 1, nil)
		if all = append(all, b); a.Name != home {
			up = append(up, b)
		}
	}
	pk := other.Build(balancer.Set{All: all, Available: up})
	var moved balancer.Pick
	testutil.Eventually(t, waitFor, "the other replica moves the session", func() bool {
		moved, err = pk.Pick(withSession(sessionCookie, sid))
		return err == nil && moved.Sticky == balancer.StickyRepinned
	})
	testutil.Eventually(t, waitFor, "the move followed through the reloaded proxy", func() bool {
		got, _ := sessionGet(t, c, u.String()+"/", sid)
		return got == moved.Backend.ID
	})
}

// While the shared Redis does not answer, the learn pool's writes are held
// and shown in /metrics, the outage is logged with the pool's name, and the
// writes reach Redis once it is back.
func TestLearnRedisOutage(t *testing.T) {
	rds := testutil.StartRedis(t)
	o := learnOptions()
	o.Learn.Store = balancer.LearnStoreRedis
	o.Learn.Redis = balancer.RedisOptions{Addrs: []string{rds.Addr}, Timeout: 200 * time.Millisecond}
	pc := &config.Pool{Name: "app", Balancer: config.Balancer{Type: "learn", Options: o},
		Backends: startSessionApps(t, "app-1", "app-2")}
	log, logs := observed()
	_, u, admin := startWithAdmin(t, catchAll(pc), log)
	c := testutil.Client(t)
	rds.Stop()
	_, sid := sessionGet(t, c, u.String()+"/", "")
	metric := func(name string) float64 {
		v, ok := metricValue(scrape(t, c, admin), name, "pool=app")
		if !ok {
			t.Fatalf("no %s for pool app", name)
		}
		return v
	}
	testutil.Eventually(t, waitFor, "the write held", func() bool { return metric("affinity_learn_store_held") == 1 })
	down := logs.FilterMessage("learn: Redis unavailable; lookups fall back to the rotation, writes are held").All()
	if len(down) != 1 || down[0].ContextMap()["pool"] != "app" {
		t.Errorf("logged %v, want the outage once, with the pool", down)
	}
	rds.Start()
	rc := redis.NewClient(&redis.Options{Addr: rds.Addr, Protocol: 2, DisableIdentity: true})
	t.Cleanup(func() { _ = rc.Close() })
	testutil.Eventually(t, waitFor, "the held write sent", func() bool {
		return rc.Exists(context.Background(), balancer.RedisKeyPrefix+sessionCookie+":"+sid).Val() == 1
	})
	if held, lost := metric("affinity_learn_store_held"), metric("affinity_learn_store_lost_total"); held != 0 || lost != 0 {
		t.Errorf("held %v, lost %v after Redis returned; want 0, 0", held, lost)
	}
}

// The learn table's size shows in /metrics.
func TestLearnMetrics(t *testing.T) {
	pc := &config.Pool{Name: "app", Balancer: config.Balancer{Type: "learn", Options: learnOptions()},
		Backends: startSessionApps(t, "app-1", "app-2")}
	_, u, admin := startWithAdmin(t, catchAll(pc), nil)
	c := testutil.Client(t)
	for range 3 {
		sessionGet(t, c, u.String()+"/", "")
	}
	fams := scrape(t, c, admin)
	if v, ok := metricValue(fams, "affinity_learn_entries", "pool=app"); !ok || v != 3 {
		t.Errorf("affinity_learn_entries = %v (%v), want 3", v, ok)
	}
	if v, ok := metricValue(fams, "affinity_learn_evictions_total", "pool=app"); !ok || v != 0 {
		t.Errorf("affinity_learn_evictions_total = %v (%v), want 0", v, ok)
	}
}

// A logout that expires the session cookie with an empty value, as the
// demo app's does, makes the proxy forget the session the client carried.
func TestLearnForgetsLoggedOutSession(t *testing.T) {
	var bs []config.Backend
	for _, name := range []string{"web-1", "web-2"} {
		bs = append(bs, config.Backend{URL: testutil.StartServer(t, demoapp.New(name)), Name: name, Weight: 1})
	}
	o := learnOptions()
	o.Learn.Cookie = demoapp.CookieName
	s, u := startProxy(t, catchAll(&config.Pool{Name: "app", Balancer: config.Balancer{Type: "learn", Options: o}, Backends: bs}), nil)
	p := s.state.Load().pools[0]
	table := p.policy.(balancer.StickTable)
	c := testutil.Client(t)
	withSession := func(sid string) func(*http.Request) {
		return func(r *http.Request) { r.AddCookie(&http.Cookie{Name: demoapp.CookieName, Value: sid}) }
	}
	first := get(t, c, u.String()+"/", nil)
	var sid string
	for _, line := range first.header["Set-Cookie"] {
		if ck, err := http.ParseSetCookie(line); err == nil && ck.Name == demoapp.CookieName {
			sid = ck.Value
		}
	}
	if sid == "" || table.Len() != 1 {
		t.Fatalf("first visit: session %q, table of %d; want one learned", sid, table.Len())
	}
	req, err := http.NewRequest(http.MethodPost, u.String()+"/logout", nil)
	if err != nil {
		t.Fatal(err)
	}
	withSession(sid)(req)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent || resp.Header.Get(demoapp.HeaderBackend) != first.header.Get(demoapp.HeaderBackend) {
		t.Fatalf("logout: %d from %q, want 204 from the session's backend", resp.StatusCode, resp.Header.Get(demoapp.HeaderBackend))
	}
	if n := table.Len(); n != 0 {
		t.Errorf("the table holds %d sessions after the logout, want 0", n)
	}
	if pk := pickSession(t, p, demoapp.CookieName, sid); pk.Sticky != balancer.StickyNew {
		t.Errorf("the logged-out session picks %+v; want a new client", pk)
	}
}

// sharedSessionApp stands for an application whose sessions live in a
// shared store: it sets its session cookie on a client's first request
// only, and serves any session it is sent, under its name.
type sharedSessionApp struct {
	name   string
	issued atomic.Int64
}

func (a *sharedSessionApp) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if _, err := r.Cookie(sessionCookie); err != nil {
		sid := fmt.Sprintf("%s-%d", a.name, a.issued.Add(1))
		http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: sid, Path: "/"})
	}
	_, _ = io.WriteString(w, a.name)
}

// startSharedSessionApps starts a sharedSessionApp per name and returns
// them as a pool's backends.
func startSharedSessionApps(t *testing.T, names ...string) []config.Backend {
	t.Helper()
	bs := make([]config.Backend, len(names))
	for i, n := range names {
		bs[i] = config.Backend{URL: testutil.StartServer(t, &sharedSessionApp{name: n}), Name: n, Weight: 1}
	}
	return bs
}

// The sessions of a backend that a reload removes are moved once, each to
// one backend, and remembered there, though the application never sets
// their cookie again: as those of a backend that is down.
func TestLearnRemovedBackendMovedOnce(t *testing.T) {
	apps := startSharedSessionApps(t, "app-1", "app-2", "app-3")
	pool := func(backends []config.Backend) *config.Config {
		return catchAll(&config.Pool{Name: "app", Balancer: config.Balancer{Type: "learn", Options: learnOptions()}, Backends: backends})
	}
	s, u := startProxy(t, pool(apps), nil)
	c := testutil.Client(t)
	home := map[string]string{}
	for range 12 {
		b, sid := sessionGet(t, c, u.String()+"/", "")
		home[sid] = b
	}
	reload(t, s, pool(apps[:2]))
	moved := map[string]string{}
	for range 4 {
		for sid, was := range home {
			got, renewed := sessionGet(t, c, u.String()+"/", sid)
			switch {
			case renewed != "":
				t.Fatalf("session %s renewed as %s", sid, renewed)
			case was != "app-3" && got != was:
				t.Errorf("session %s of %s moved to %s", sid, was, got)
			case was == "app-3" && moved[sid] == "":
				moved[sid] = got
			case was == "app-3" && got != moved[sid]:
				t.Errorf("session %s of the removed app-3 went to %s, then %s", sid, moved[sid], got)
			}
		}
	}
	if len(moved) == 0 {
		t.Fatal("no session was on app-3: the test proves nothing")
	}
	if n := s.state.Load().pools[0].repins.Load(); n != uint64(len(moved)) {
		t.Errorf("%d repins counted, want %d: one per session moved", n, len(moved))
	}
}

// Two proxy processes sharing Redis, with health checks, in front of an
// application that keeps a session wherever it is served (a shared session
// store): when a session's backend dies, every request of the session,
// through either replica, reaches one backend, and stays there when the
// dead one is back. A session moved through one replica only is followed
// by the other when the client comes back to it.
func TestLearnReplicasMoveSessionsAlike(t *testing.T) {
	bin := buildAffinity(t)
	rds := testutil.StartRedis(t)
	bs := startCtls(t, "app-1", "app-2", "app-3", "app-4")
	for _, b := range bs {
		b.sessions.Store(true)
	}
	pools := ctlPoolYAML(fmt.Sprintf(`{type: learn, learn: {cookie: %s, store: redis, redis: {addrs: ["%s"], timeout: 200ms}}}
    health_check: {path: %s, interval: 500ms, timeout: 400ms, rise: 1, fall: 2}`, sessionCookie, rds.Addr, healthPath), bs...)
	replicas := []*replica{startReplica(t, bin, pools), startReplica(t, bin, pools)}
	c := testutil.Client(t)

	// Sessions of app-2, each learned through one replica and found
	// through the other.
	home := map[string]string{}
	for len(home) < 6 {
		got, sid := sessionGet(t, c, replicas[len(home)%2].url+"/", "")
		if sid == "" {
			t.Fatalf("%s set no session", got)
		}
		if got != "app-2" {
			continue
		}
		testutil.Eventually(t, waitFor, "session "+sid+" shared", func() bool {
			got, _ := sessionGet(t, c, replicas[1-len(home)%2].url+"/", sid)
			return got == "app-2"
		})
		home[sid] = got
	}
	sids := slices.Sorted(maps.Keys(home))
	// The last session is seen only through replica 0 while app-2 is down.
	alternating, oneSided := sids[:len(sids)-1], sids[len(sids)-1]

	bs[1].kill()
	moved := map[string]string{}
	visit := func(sid string, r *replica) string {
		got, renewed := sessionGet(t, c, r.url+"/", sid)
		if renewed != "" {
			t.Fatalf("session %s renewed as %s: the application lost it", sid, renewed)
		}
		return got
	}
	for i := range 10 {
		for _, sid := range alternating {
			got := visit(sid, replicas[i%2])
			switch {
			case got == "app-2":
				t.Fatalf("session %s still served by the dead app-2", sid)
			case moved[sid] == "":
				moved[sid] = got
			case got != moved[sid]:
				t.Errorf("session %s served by %s, then %s through replica %d", sid, moved[sid], got, i%2)
			}
		}
		moved[oneSided] = visit(oneSided, replicas[0])
	}

	bs[1].revive()
	for _, r := range replicas {
		testutil.Eventually(t, waitFor, "app-2 back on "+r.url, func() bool {
			got, _ := sessionGet(t, c, r.url+"/", "")
			return got == "app-2"
		})
	}
	for i := range 6 {
		for _, sid := range sids {
			if got := visit(sid, replicas[i%2]); got != moved[sid] {
				t.Errorf("after app-2 returned, session %s went to %s through replica %d, want %s where it moved", sid, got, i%2, moved[sid])
			}
		}
	}
}

// With max_entries 3, a new session evicts the least recently used one,
// not a session used a moment ago: what the issue saw evicted was a session
// used a second before, while one idle since its creation stayed.
func TestLearnEvictsLeastRecentlyUsed(t *testing.T) {
	o := learnOptions()
	o.Learn.MaxEntries = 3
	pc := &config.Pool{Name: "app", Balancer: config.Balancer{Type: "learn", Options: o},
		Backends: startSessionApps(t, "app-1", "app-2", "app-3")}
	s, u := startProxy(t, catchAll(pc), nil)
	c := testutil.Client(t)
	home := map[string]string{}
	var sids []string
	for range 3 {
		b, sid := sessionGet(t, c, u.String()+"/", "")
		home[sid] = b
		sids = append(sids, sid)
	}
	// The first session, the oldest, is used again; the second is now the
	// least recently used.
	if got, _ := sessionGet(t, c, u.String()+"/", sids[0]); got != home[sids[0]] {
		t.Fatalf("session %s went to %s, want %s", sids[0], got, home[sids[0]])
	}
	_, fourth := sessionGet(t, c, u.String()+"/", "")
	p := s.state.Load().pools[0]
	if n, e := p.policy.(balancer.StickTable).Len(), p.policy.(balancer.StickTable).Evictions(); n != 3 || e != 1 {
		t.Fatalf("table of %d sessions, %d evictions; want 3 and 1", n, e)
	}
	for _, sid := range []string{sids[0], sids[2], fourth} {
		if pk := pickSession(t, p, sessionCookie, sid); pk.Sticky != balancer.StickyKept {
			t.Errorf("session %s picks %+v; want kept", sid, pk)
		}
	}
	if pk := pickSession(t, p, sessionCookie, sids[1]); pk.Sticky != balancer.StickyNew {
		t.Errorf("the least recently used session %s picks %+v; want forgotten", sids[1], pk)
	}
}

// withSession is a request carrying session sid in the cookie called name.
func withSession(name, sid string) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	r.AddCookie(&http.Cookie{Name: name, Value: sid})
	return r
}

// pickSession asks p where a request carrying session sid in the cookie
// called name goes, without sending it: no backend answers it, so the
// table learns nothing from it.
func pickSession(t *testing.T, p *pool, name, sid string) balancer.Pick {
	t.Helper()
	pk, err := p.pick(withSession(name, sid))
	if err != nil {
		t.Fatalf("pick of session %s: %v", sid, err)
	}
	return pk
}
