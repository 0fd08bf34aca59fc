package proxy

import (
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/affinityproxy/affinity/balancer"
	"github.com/affinityproxy/affinity/config"
	"github.com/affinityproxy/affinity/internal/testutil"
)

// ctlPoolYAML is the pools section of a replica's config: one pool, web,
// of the given balancer (a YAML flow mapping) over bs.
func ctlPoolYAML(balancerYAML string, bs ...*ctlBackend) string {
	var b strings.Builder
	fmt.Fprintf(&b, "pools:\n  web:\n    balancer: %s\n    backends:\n", balancerYAML)
	for _, c := range bs {
		fmt.Fprintf(&b, "      - {url: %q, name: %s}\n", c.URL.String(), c.ID)
	}
	return b.String()
}

// userGet sends a GET with X-User-ID: user and returns who answered; any
// status but 200 fails the test.
func userGet(t *testing.T, c *http.Client, base, user string) string {
	t.Helper()
	r := get(t, c, base+"/", func(r *http.Request) { r.Header.Set("X-User-ID", user) })
	if r.status != http.StatusOK {
		t.Fatalf("%s via %s: %d %q", user, base, r.status, r.body)
	}
	return r.body
}

// A consistent-hash key whose backend died, with no health checks to
// notice, is served by one successor on the ring: the same for every
// request, concurrent ones included, through either of two replicas; and it
// returns to its backend when that comes back.
func TestHashSuccessorAcrossReplicas(t *testing.T) {
	bin := buildAffinity(t)
	bs := startCtls(t, "w1", "w2", "w3", "w4")
	pools := ctlPoolYAML(`{type: consistent-hash, hash: {key: "header:X-User-ID"}}`, bs...)
	replicas := []*replica{startReplica(t, bin, pools), startReplica(t, bin, pools)}
	c := testutil.Client(t)
	const users = 40
	home := map[string]string{}
	for k := range users {
		user := "user-" + strconv.Itoa(k)
		home[user] = userGet(t, c, replicas[0].url, user)
		if got := userGet(t, c, replicas[1].url, user); got != home[user] {
			t.Fatalf("%s: replicas disagree, %s and %s", user, home[user], got)
		}
	}

	bs[1].kill()
	successors := map[string]bool{}
	for user, was := range home {
		if was != "w2" {
			if got := userGet(t, c, replicas[k(user)%2].url, user); got != was {
				t.Errorf("%s moved from %s to %s though its backend is up", user, was, got)
			}
			continue
		}
		first := userGet(t, c, replicas[0].url, user)
		successors[first] = true
		var wg sync.WaitGroup
		got := make([]string, 8)
		for i := range got {
			wg.Go(func() {
				r := get(t, c, replicas[i%2].url+"/", func(r *http.Request) { r.Header.Set("X-User-ID", user) })
				got[i] = strconv.Itoa(r.status) + " " + r.body
			})
		}
		wg.Wait()
		for i, g := range got {
			if g != "200 "+first {
				t.Errorf("%s, request %d via replica %d: %q, want 200 %s like its first after w2 died", user, i, i%2, g, first)
			}
		}
	}
	if len(successors) < 2 {
		t.Errorf("the keys of w2 all went to %v; the ring spreads them", successors)
	}

	bs[1].revive()
	for user, was := range home {
		for _, r := range replicas {
			if got := userGet(t, c, r.url, user); got != was {
				t.Errorf("%s via %s on %s after w2 returned, want %s", user, r.url, got, was)
			}
		}
	}
}

// k is the number in a "user-N" key.
func k(user string) int {
	n, _ := strconv.Atoi(strings.TrimPrefix(user, "user-"))
	return n
}

// A request that a retry moves off its failed backend moves its client
// too, and is logged and counted as a repin, whatever the pinning policy:
// a cookie, a learned session, or a hash key.
func TestRetryRepinIsCounted(t *testing.T) {
	tests := []struct {
		name     string
		balancer config.Balancer
		// pin makes a request pinned to a, given a's ID.
		pin func(t *testing.T, c *http.Client, base string) func(*http.Request)
	}{
		{"cookie", config.Balancer{Type: "cookie", Options: cookieOptions()}, func(t *testing.T, c *http.Client, base string) func(*http.Request) {
			r := get(t, c, base+"/", nil)
			line := r.header.Get("Set-Cookie")
			if r.body != "a" || line == "" {
				t.Fatalf("first client: %s, Set-Cookie %q; want a with a cookie", r.body, line)
			}
			v, _, _ := strings.Cut(line, ";")
			return func(req *http.Request) { req.Header.Set("Cookie", v) }
		}},
		{"learn", config.Balancer{Type: "learn", Options: learnOptions()}, func(t *testing.T, c *http.Client, base string) func(*http.Request) {
			got, sid := sessionGet(t, c, base+"/", "")
			if got != "a" || sid == "" {
				t.Fatalf("first client: %s, session %q; want a setting one", got, sid)
			}
			return func(req *http.Request) { req.AddCookie(&http.Cookie{Name: sessionCookie, Value: sid}) }
		}},
		{"consistent-hash", config.Balancer{Type: "consistent-hash",
			Options: balancer.Options{Hash: balancer.HashOptions{Key: "header:X-User-ID", VirtualNodes: 100}}},
			func(t *testing.T, c *http.Client, base string) func(*http.Request) {
				for i := range 100 {
					user := "user-" + strconv.Itoa(i)
					if userGet(t, c, base, user) == "a" {
						return func(req *http.Request) { req.Header.Set("X-User-ID", user) }
					}
				}
				t.Fatal("no key on a")
				return nil
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bs := startCtls(t, "a", "b")
			for _, b := range bs {
				b.sessions.Store(tt.balancer.Type == "learn")
			}
			pc := configure(&config.Pool{Name: "web", Balancer: tt.balancer}, bs...)
			pc.Retries = config.DefaultRetries()
			cfg := catchAll(pc)
			cfg.Log.Access = true
			log, logs := observed()
			s, u := startProxy(t, cfg, log)
			c := testutil.Client(t)
			pin := tt.pin(t, c, u.String())

			bs[0].kill()
			if r := get(t, c, u.String()+"/", pin); r.status != http.StatusOK || r.body != "b" {
				t.Fatalf("after a died: %d %q, want 200 from b", r.status, r.body)
			}
			lines := entries(logs, "request")
			m := lines[len(lines)-1].ContextMap()
			if m["backend"] != "b" || m["sticky"] != "repinned" || m["attempts"] != int64(2) {
				t.Errorf("access line %v, want backend b, sticky repinned, attempts 2", m)
			}
			if n := s.state.Load().pools[0].repins.Load(); n != 1 {
				t.Errorf("%d repins counted, want 1", n)
			}
		})
	}
}

// Two cookie pools behind one host, with the default cookie names: a
// browser sends both pools both cookies, and each keeps its clients, as
// with one pool. One name for both would have each pool take the other's
// cookie for garbage, place the client anew and overwrite it, on every
// switch between the pools.
func TestCookiePoolsShareAHost(t *testing.T) {
	var b strings.Builder
	b.WriteString("listen: 127.0.0.1:0\nroutes: [{match: {path: /api/}, pool: api}, {pool: web}]\npools:\n")
	for _, pool := range []string{"api", "web"} {
		fmt.Fprintf(&b, "  %s:\n    balancer: {type: cookie}\n    backends:\n", pool)
		for i := range 3 {
			be := testutil.StartBackend(t, fmt.Sprintf("%s-%d", pool, i))
			fmt.Fprintf(&b, "      - {url: %q, name: %s}\n", be.URL.String(), be.ID)
		}
	}
	cfg, err := config.Parse("pools.yaml", []byte(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Warnings) != 0 {
		t.Errorf("warnings %v", cfg.Warnings)
	}
	_, u := startProxy(t, cfg, nil)
	c := jarClient(t)
	home := map[string]string{}
	for i := range 10 {
		for _, path := range []string{"/api/cart", "/"} {
			r := get(t, c, u.String()+path, nil)
			if r.status != http.StatusOK {
				t.Fatalf("GET %s: %d", path, r.status)
			}
			if was, ok := home[path]; !ok {
				home[path] = r.body
			} else if r.body != was || len(r.header["Set-Cookie"]) != 0 {
				t.Fatalf("round %d: GET %s served by %s (Set-Cookie %q), want %s keeping its cookie", i, path, r.body, r.header["Set-Cookie"], was)
			}
		}
	}
	for _, ck := range c.Jar.Cookies(u) {
		if ck.Name != "AFFINITY_api" && ck.Name != "AFFINITY_web" {
			t.Errorf("cookie %s, want AFFINITY_api and AFFINITY_web", ck.Name)
		}
	}
}

// The access log's sticky field says, for each balancer, what
// docs/operations.md says it does.
func TestAccessLogSticky(t *testing.T) {
	type step struct {
		name string
		down bool   // mark the backend that served the first request down before
		edit string // the request's Cookie or X-User-ID: $ for the first response's value
		want string
	}
	hashOpts := balancer.Options{Hash: balancer.HashOptions{Key: "header:X-User-ID", VirtualNodes: 100}}
	tests := []struct {
		name     string
		balancer config.Balancer
		apps     bool // backends that set a session cookie, for learn
		steps    []step
	}{
		{"round-robin", config.Balancer{Type: "round-robin"}, false, []step{{"any request", false, "", "none"}}},
		{"cookie", config.Balancer{Type: "cookie", Options: cookieOptions()}, false, []step{
			{"no cookie", false, "", "new"},
			{"its cookie", false, "aff=$", "kept"},
			{"garbage", false, "aff=0123456789abcdef.0", "new"},
			{"its backend down", true, "aff=$", "repinned"},
		}},
		{"learn", config.Balancer{Type: "learn", Options: learnOptions()}, true, []step{
			{"no session", false, "", "none"},
			{"empty session", false, sessionCookie + "=", "none"},
			{"its session", false, sessionCookie + "=$", "kept"},
			{"unknown session", false, sessionCookie + "=nobody", "new"},
			{"overlong session", false, sessionCookie + "=" + strings.Repeat("x", 4097), "new"},
			{"its backend down", true, sessionCookie + "=$", "repinned"},
		}},
		{"consistent-hash", config.Balancer{Type: "consistent-hash", Options: hashOpts}, false, []step{
			{"the key", false, "user-1", "kept"},
			{"no key", false, "", "none"},
			{"its backend down", true, "user-1", "kept"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pc := poolOf("web", tt.balancer.Type, tt.balancer.Options, startBackends(t, "a", "b")...)
			if tt.apps {
				pc.Backends = startSessionApps(t, "a", "b")
			}
			cfg := catchAll(pc)
			cfg.Log.Access = true
			log, logs := observed()
			s, u := startProxy(t, cfg, log)
			c := testutil.Client(t)
			var home, value string
			for i, st := range tt.steps {
				if st.down {
					if err := s.state.Load().pools[0].setHealthy(home, false); err != nil {
						t.Fatal(err)
					}
				}
				r := get(t, c, u.String()+"/", func(r *http.Request) {
					switch e := strings.ReplaceAll(st.edit, "$", value); {
					case tt.balancer.Type == "consistent-hash" && e != "":
						r.Header.Set("X-User-ID", e)
					case e != "":
						r.Header.Set("Cookie", e)
					}
				})
				lines := entries(logs, "request")
				m := lines[len(lines)-1].ContextMap()
				if r.status != http.StatusOK || m["sticky"] != st.want {
					t.Errorf("%s: %d from %s, logged sticky %v; want 200, %s", st.name, r.status, r.body, m["sticky"], st.want)
				}
				if st.down && r.body == home {
					t.Errorf("%s: served by %s, which is down", st.name, home)
				}
				if i == 0 {
					home = r.body
					for _, line := range r.header["Set-Cookie"] {
						if ck, err := http.ParseSetCookie(line); err == nil {
							value = ck.Value
						}
					}
					if tt.balancer.Type == "consistent-hash" {
						value = st.edit
					}
				}
			}
		})
	}
}

// Every value of the access log's sticky field has its row in the table of
// docs/operations.md, and every row of it names a value.
func TestStickyValuesDocumented(t *testing.T) {
	data, err := os.ReadFile("../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	_, table, ok := strings.Cut(string(data), "| `sticky` | meaning |\n|---|---|\n")
	if !ok {
		t.Fatal("docs/operations.md has no table of sticky values")
	}
	documented := map[string]bool{}
	for _, line := range strings.Split(table, "\n") {
		v, ok := strings.CutPrefix(line, "| `")
		if !ok {
			break // the table's end
		}
		v, _, _ = strings.Cut(v, "`")
		documented[v] = true
	}
	values := map[string]bool{}
	for s := range 256 {
		values[balancer.Sticky(s).String()] = true
	}
	for v := range values {
		if !documented[v] {
			t.Errorf("sticky value %q is not in docs/operations.md's table", v)
		}
	}
	for v := range documented {
		if !values[v] {
			t.Errorf("docs/operations.md documents sticky value %q, which the log never writes", v)
		}
	}
}
