package proxy

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/affinityproxy/affinity/balancer"
	"github.com/affinityproxy/affinity/config"
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
		req, err := http.NewRequest(http.MethodGet, u.String()+"/", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.AddCookie(&http.Cookie{Name: sessionCookie, Value: sid})
		pk, err := p.pick(req)
		if err != nil || pk.Backend.ID != "live" || pk.Sticky != balancer.StickyKept {
			t.Fatalf("client %d: next pick %v %v, want kept on live", client, pk, err)
		}
	}
}

// Two proxy processes share their learned sessions through a real Redis: a
// session learned through one replica is routed to the same backend through
// the other, which never saw the client before.
func TestLearnReplicasShareSessions(t *testing.T) {
	bin := buildAffinity(t)
	rds := testutil.StartRedis(t)
	apps := startSessionApps(t, "app-1", "app-2", "app-3")
	var pool strings.Builder
	fmt.Fprintf(&pool, `pools:
  app:
    balancer:
      type: learn
      learn: {cookie: %s, store: redis, redis: {addrs: ["%s"], timeout: 200ms}}
    backends:
`, sessionCookie, rds.Addr)
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
// and with it the learned sessions; one that changes them starts afresh.
func TestLearnTableSurvivesReload(t *testing.T) {
	apps := startSessionApps(t, "app-1", "app-2", "app-3")
	pool := func(backends []config.Backend, maxEntries int) *config.Config {
		o := learnOptions()
		o.Learn.MaxEntries = maxEntries
		return catchAll(&config.Pool{Name: "app", Balancer: config.Balancer{Type: "learn", Options: o}, Backends: backends})
	}
	s, u := startProxy(t, pool(apps[:2], 1000), nil)
	c := testutil.Client(t)
	home := map[string]string{} // session → backend
	for range 4 {
		b, sid := sessionGet(t, c, u.String()+"/", "")
		home[sid] = b
	}
	before := s.state.Load().pools[0].policy

	// A backend joins; the balancer settings stay.
	reload(t, s, pool(apps, 1000))
	if got := s.state.Load().pools[0].policy; got != before {
		t.Fatal("a reload with the same balancer settings replaced the policy")
	}
	for sid, want := range home {
		if got, renewed := sessionGet(t, c, u.String()+"/", sid); got != want || renewed != "" {
			t.Errorf("after reload, session %s went to %s (new session %q), want %s", sid, got, renewed, want)
		}
	}

	// Other settings: a new policy, an empty table.
	reload(t, s, pool(apps, 500))
	after, ok := s.state.Load().pools[0].policy.(balancer.StickTable)
	if !ok || s.state.Load().pools[0].policy == before {
		t.Fatal("a reload with other balancer settings kept the policy")
	}
	if n := after.Len(); n != 0 {
		t.Errorf("the new table holds %d sessions, want 0", n)
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
