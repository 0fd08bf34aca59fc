package proxy

import (
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/affinityproxy/affinity/balancer"
	"github.com/affinityproxy/affinity/config"
	"github.com/affinityproxy/affinity/internal/testutil"
)

// stickyClient is a browser-like client that remembers every sticky cookie
// it was given.
type stickyClient struct {
	c       *http.Client
	home    string   // the backend that answered last
	cookies []string // values of the sticky cookies set, in order
}

// visit sends a GET, failing the test on anything but a 200, and records
// who answered and any sticky cookie set.
func (sc *stickyClient) visit(t *testing.T, u string) {
	t.Helper()
	r := get(t, sc.c, u, nil)
	if r.status != http.StatusOK {
		t.Fatalf("client of %s: %d %q, want 200", sc.home, r.status, r.body)
	}
	var sticky []string
	for _, line := range r.header["Set-Cookie"] {
		if v, ok := strings.CutPrefix(line, "aff="); ok {
			v, _, _ = strings.Cut(v, ";")
			sticky = append(sticky, backendToken(v))
		}
	}
	if len(sticky) > 1 {
		t.Fatalf("a response sets %d sticky cookies: %q", len(sticky), r.header["Set-Cookie"])
	}
	sc.cookies = append(sc.cookies, sticky...)
	sc.home = r.body
}

// token is the part of a sticky cookie value naming backend id.
func token(t *testing.T, id string) string {
	t.Helper()
	p, err := balancer.New("cookie", cookieOptions())
	if err != nil {
		t.Fatal(err)
	}
	b := balancer.NewBackend(id, nil, 1, nil)
	pk, err := p.Build(balancer.Set{All: []*balancer.Backend{b}, Available: []*balancer.Backend{b}}).Pick(httptest.NewRequest("GET", "/", nil))
	if err != nil {
		t.Fatal(err)
	}
	v, _, _ := strings.Cut(strings.TrimPrefix(pk.SetCookie, "aff="), ";")
	return backendToken(v)
}

// backendToken strips the variant (".x") from a sticky cookie value, leaving
// the token that names the backend.
func backendToken(v string) string {
	if n := len(v); n >= 2 && v[n-2] == '.' {
		return v[:n-2]
	}
	return v
}

// TestStickyFailover fails the backend of some sticky clients in each way,
// and brings it back. Its clients must be moved to another backend exactly
// once, with no error, and stay there after it returns; the other clients
// must not notice.
func TestStickyFailover(t *testing.T) {
	tests := []struct {
		name    string
		fail    func(b *ctlBackend)
		recover func(b *ctlBackend)
	}{
		{"killed", (*ctlBackend).kill, (*ctlBackend).revive},
		{"hung", func(b *ctlBackend) { b.hang.Store(true) }, func(b *ctlBackend) { b.hang.Store(false) }},
		{"failing its health path", func(b *ctlBackend) { b.sick.Store(true) }, func(b *ctlBackend) { b.sick.Store(false) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			bs := startCtls(t, "a", "b", "c")
			pc := configure(&config.Pool{Name: "web", Balancer: config.Balancer{Type: "cookie", Options: cookieOptions()}}, bs...)
			pc.HealthCheck = testHealth(2, 2)
			pc.Retries = config.DefaultRetries()
			cfg := catchAll(pc)
			cfg.Timeouts.ResponseHeader = 200 * time.Millisecond
			s, u := startProxy(t, cfg, nil)
			p := s.state.Load().pools[0]
			target := u.String() + "/"

			clients := make([]*stickyClient, 6)
			for i := range clients {
				clients[i] = &stickyClient{c: jarClient(t)}
				clients[i].visit(t, target)
			}
			visitAll := func() {
				for _, sc := range clients {
					sc.visit(t, target)
				}
			}
			homes := func() []string {
				var hs []string
				for _, sc := range clients {
					hs = append(hs, sc.home)
				}
				return hs
			}
			before := homes()
			if got := slices.Sorted(slices.Values(before)); !slices.Equal(got, []string{"a", "a", "b", "b", "c", "c"}) {
				t.Fatalf("clients placed on %v, want two per backend", got)
			}

			// Clients keep visiting while the checks notice.
			tt.fail(bs[1])
			deadline := time.Now().Add(detectWithin(pc.HealthCheck, 2))
			for !slices.Equal(available(p), []string{"a", "c"}) {
				if time.Now().After(deadline) {
					t.Fatalf("b still available %v after %v", available(p), detectWithin(pc.HealthCheck, 2))
				}
				visitAll()
			}
			visitAll()
			moved := homes()

			tt.recover(bs[1])
			testutil.Eventually(t, detectWithin(pc.HealthCheck, 2), "b back", func() bool {
				return len(available(p)) == 3
			})
			visitAll()
			visitAll()

			for i, sc := range clients {
				switch {
				case before[i] != "b":
					if sc.home != before[i] || len(sc.cookies) != 1 {
						t.Errorf("client %d of %s: now on %s with cookies %q, want it untouched", i, before[i], sc.home, sc.cookies)
					}
				case moved[i] == "b" || sc.home != moved[i]:
					t.Errorf("client %d of b: on %s while b was down, now %s; want moved once and kept", i, moved[i], sc.home)
				case len(sc.cookies) != 2 || sc.cookies[1] != token(t, sc.home) || slices.Contains(sc.cookies[1:], token(t, "b")):
					t.Errorf("client %d of b: cookies %q, want one new cookie naming %s", i, sc.cookies, sc.home)
				}
			}
		})
	}
}

// TestStickyRetryRepins: a backend that died before any check noticed fails
// the request of its client, which a retry serves elsewhere; the response
// pins the client to the backend that served it, and not to the dead one.
func TestStickyRetryRepins(t *testing.T) {
	bs := startCtls(t, "a", "b")
	pc := configure(&config.Pool{Name: "web", Balancer: config.Balancer{Type: "cookie", Options: cookieOptions()}}, bs...)
	pc.Retries = config.DefaultRetries()
	cfg := catchAll(pc)
	cfg.Log.Access = true
	log, logs := observed()
	_, u := startProxy(t, cfg, log)
	sc := &stickyClient{c: jarClient(t)}
	sc.visit(t, u.String()+"/")
	if sc.home != "a" {
		t.Fatalf("first client placed on %s, want a", sc.home)
	}

	bs[0].kill()
	sc.visit(t, u.String()+"/")
	if sc.home != "b" || !slices.Equal(sc.cookies, []string{token(t, "a"), token(t, "b")}) {
		t.Fatalf("after a died: on %s with cookies %q, want moved to b and pinned there", sc.home, sc.cookies)
	}
	lines := entries(logs, "request")
	if m := lines[len(lines)-1].ContextMap(); m["backend"] != "b" || m["sticky"] != "repinned" {
		t.Errorf("access line %v, want backend b, sticky repinned", m)
	}

	bs[0].revive()
	for range 3 {
		sc.visit(t, u.String()+"/")
	}
	if sc.home != "b" || len(sc.cookies) != 2 {
		t.Errorf("after a returned: on %s with cookies %q, want kept on b", sc.home, sc.cookies)
	}
}

// TestConsistentHashFailover: keys of a backend that goes down move, the
// others stay, and all return when it comes back.
func TestConsistentHashFailover(t *testing.T) {
	bs := startCtls(t, "a", "b", "c")
	o := balancer.Options{Hash: balancer.HashOptions{Key: "header:X-User", VirtualNodes: 100}}
	pc := configure(&config.Pool{Name: "web", Balancer: config.Balancer{Type: "consistent-hash", Options: o}}, bs...)
	pc.HealthCheck = testHealth(1, 1)
	s, u := startProxy(t, catchAll(pc), nil)
	p := s.state.Load().pools[0]
	c := testutil.Client(t)
	owners := func() map[string]string {
		m := map[string]string{}
		for k := range 60 {
			user := "user-" + strconv.Itoa(k)
			r := get(t, c, u.String()+"/", func(r *http.Request) { r.Header.Set("X-User", user) })
			if r.status != http.StatusOK {
				t.Fatalf("%s: %d", user, r.status)
			}
			m[user] = r.body
		}
		return m
	}
	before := owners()

	bs[1].sick.Store(true)
	testutil.Eventually(t, detectWithin(pc.HealthCheck, 1), "b down", func() bool {
		return slices.Equal(available(p), []string{"a", "c"})
	})
	during := owners()
	movedKeys := 0
	for user, was := range before {
		switch {
		case was == "b" && during[user] == "b":
			t.Errorf("%s still on b while it is down", user)
		case was == "b":
			movedKeys++
		case during[user] != was:
			t.Errorf("%s moved from %s to %s though its backend is up", user, was, during[user])
		}
	}
	if movedKeys == 0 {
		t.Fatal("no key was on b: the test proves nothing")
	}

	bs[1].sick.Store(false)
	testutil.Eventually(t, detectWithin(pc.HealthCheck, 1), "b up", func() bool {
		return len(available(p)) == 3
	})
	for user, owner := range owners() {
		if owner != before[user] {
			t.Errorf("%s on %s after b returned, want %s", user, owner, before[user])
		}
	}
}

// TestStopStateDrains: stopping a state, as a reload will stop the one it
// replaces, leaves its requests in flight to finish.
func TestStopStateDrains(t *testing.T) {
	started, release := make(chan struct{}, 1), make(chan struct{})
	bu := testutil.StartServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == healthPath {
			return
		}
		started <- struct{}{}
		select {
		case <-release:
			_, _ = io.WriteString(w, "finished")
		case <-r.Context().Done():
		}
	}))
	pc := &config.Pool{Name: "web", Balancer: config.Balancer{Type: "round-robin"},
		Backends:    []config.Backend{{URL: bu, Name: "slow"}},
		HealthCheck: testHealth(1, 1),
		Passive:     &config.Passive{Failures: 1, Eject: time.Minute, MaxEject: time.Minute},
		Retries:     config.DefaultRetries()}
	log, logs := observed()
	s, u := startProxy(t, catchAll(pc), log)
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
	s.state.Load().stop()
	close(release)
	if r := <-done; r.status != http.StatusOK || r.body != "finished" {
		t.Errorf("in-flight request got %d %q after its state stopped, want 200 finished", r.status, r.body)
	}
	if n := len(entries(logs, "backend down")); n != 0 {
		t.Errorf("stopping the checks took the backend down (%d lines)", n)
	}
}
