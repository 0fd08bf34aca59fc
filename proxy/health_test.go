package proxy

import (
	"context"
	"errors"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/affinityproxy/affinity/config"
	"github.com/affinityproxy/affinity/internal/testutil"
)

// testHealth is a quick health check: every 50 ms, 40 ms to answer.
func testHealth(rise, fall int) *config.HealthCheck {
	return &config.HealthCheck{
		Path: healthPath, Interval: 50 * time.Millisecond, Timeout: 40 * time.Millisecond,
		Rise: rise, Fall: fall, StatusMin: 200, StatusMax: 399,
	}
}

// detectWithin bounds how long checks take to notice a change needing n
// results in a row: the first check's random offset, n intervals (with
// their jitter) and a timeout, plus slack for a loaded machine.
func detectWithin(hc *config.HealthCheck, n int) time.Duration {
	return hc.Interval + time.Duration(n)*(hc.Interval+hc.Interval/10) + hc.Timeout + 2*time.Second
}

func TestHealthState(t *testing.T) {
	tests := []struct {
		name       string
		rise, fall int
		results    string // o: check passed, x: failed
		want       string // state after each result: U up, D down
		changes    []int  // streak reported at each change
	}{
		{"starts up and stays up", 2, 3, "ooo", "UUU", nil},
		{"falls after fall failures", 2, 3, "xxx", "UUD", []int{3}},
		{"a pass restarts the failure count", 2, 3, "xxoxxx", "UUUUUD", []int{3}},
		{"rises after rise passes", 2, 3, "xxxoo", "UUDDU", []int{3, 2}},
		{"a failure restarts the pass count", 2, 3, "xxxoxoo", "UUDDDDU", []int{3, 2}},
		{"fall 1 rise 1 follows every result", 1, 1, "xoxxo", "DUDDU", []int{1, 1, 1, 1}},
		{"down stays down on failures", 3, 1, "xxxxoooo", "DDDDDDUU", []int{1, 3}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := healthState{rise: tt.rise, fall: tt.fall, up: true}
			var got strings.Builder
			var changes []int
			for _, r := range tt.results {
				if n, changed := h.observe(r == 'o'); changed {
					changes = append(changes, n)
				}
				got.WriteByte(map[bool]byte{true: 'U', false: 'D'}[h.up])
			}
			if got.String() != tt.want || !slices.Equal(changes, tt.changes) {
				t.Errorf("results %s: states %s, changes %v; want %s, %v", tt.results, got.String(), changes, tt.want, tt.changes)
			}
		})
	}
}

func TestJitter(t *testing.T) {
	d := 100 * time.Millisecond
	lo, hi := d, d
	for range 1000 {
		j := jitter(d)
		lo, hi = min(lo, j), max(hi, j)
	}
	if lo < 90*time.Millisecond || hi >= 110*time.Millisecond || hi-lo < 10*time.Millisecond {
		t.Errorf("jitter(%v) ranged over [%v, %v], want spread within ±10%%", d, lo, hi)
	}
	for _, tiny := range []time.Duration{1, 4} {
		if j := jitter(tiny); j != tiny {
			t.Errorf("jitter(%v) = %v, want it unchanged", tiny, j)
		}
	}
}

// TestActiveHealthChecks takes a backend out by each kind of failure and
// brings it back, checking who answers meanwhile and what is logged.
func TestActiveHealthChecks(t *testing.T) {
	tests := []struct {
		name    string
		fail    func(b *ctlBackend)
		recover func(b *ctlBackend)
		reason  string
	}{
		{"killed", (*ctlBackend).kill, (*ctlBackend).revive, "connection refused"},
		{"hung", func(b *ctlBackend) { b.hang.Store(true) }, func(b *ctlBackend) { b.hang.Store(false) }, "timeout"},
		{"failing its health path", func(b *ctlBackend) { b.sick.Store(true) }, func(b *ctlBackend) { b.sick.Store(false) }, "status 503"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			bs := startCtls(t, "a", "b")
			pc := configure(&config.Pool{Name: "web", Balancer: config.Balancer{Type: "round-robin"}}, bs...)
			pc.HealthCheck = testHealth(2, 3)
			log, logs := observed()
			s, u := startProxy(t, catchAll(pc), log)
			p := s.state.Load().pools[0]
			c := testutil.Client(t)

			tt.fail(bs[1])
			// The pool publishes its new state before it logs the change.
			testutil.Eventually(t, detectWithin(pc.HealthCheck, 3), "b taken out", func() bool {
				return slices.Equal(available(p), []string{"a"}) && len(entries(logs, "backend down")) > 0
			})
			down := entries(logs, "backend down")
			if len(down) != 1 {
				t.Fatalf("%d down lines, want 1", len(down))
			}
			m := down[0].ContextMap()
			if m["pool"] != "web" || m["backend"] != "b" || m["reason"] != tt.reason || m["checks"] != int64(3) || m["available"] != int64(1) {
				t.Errorf("down line %v, want pool web, backend b, reason %q, 3 checks, 1 available", m, tt.reason)
			}
			for range 4 {
				if r := get(t, c, u.String()+"/", nil); r.status != http.StatusOK || r.body != "a" {
					t.Fatalf("with b down: %d %q, want 200 from a", r.status, r.body)
				}
			}

			tt.recover(bs[1])
			testutil.Eventually(t, detectWithin(pc.HealthCheck, 2), "b back", func() bool {
				return len(available(p)) == 2 && len(entries(logs, "backend up")) > 0
			})
			up := entries(logs, "backend up")
			if len(up) != 1 || up[0].ContextMap()["checks"] != int64(2) || up[0].ContextMap()["backend"] != "b" {
				t.Errorf("up lines %v, want one for b after 2 checks", up)
			}
			seen := map[string]int{}
			for range 4 {
				seen[get(t, c, u.String()+"/", nil).body]++
			}
			if seen["a"] != 2 || seen["b"] != 2 {
				t.Errorf("after b came back, answers %v, want 2 each", seen)
			}
			if n := len(entries(logs, "backend down")); n != 1 {
				t.Errorf("%d down lines in all, want 1: each transition is logged once", n)
			}
		})
	}
}

// TestHealthCheckRequest checks what a check sends and how it judges the
// answer.
func TestHealthCheckRequest(t *testing.T) {
	tests := []struct {
		name     string
		edit     func(*config.HealthCheck)
		handler  http.HandlerFunc
		wantUp   bool
		reason   string // of the down transition
		notFetch string // a path the check must not follow to
	}{
		{"status and body as expected", func(h *config.HealthCheck) { h.Body = "ready" },
			func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "all ready here") }, true, "", ""},
		{"body without the expected text", func(h *config.HealthCheck) { h.Body = "ready" },
			func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "starting") }, false, "body mismatch", ""},
		{"a redirect is an answer, not followed", nil,
			func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/elsewhere", http.StatusFound) }, true, "", "/elsewhere"},
		{"status outside expect_status", func(h *config.HealthCheck) { h.StatusMin, h.StatusMax = 200, 200 },
			func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/elsewhere", http.StatusFound) }, false, "status 302", "/elsewhere"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			type seen struct {
				host, agent, path string
				close             bool
				remote            string
			}
			var mu sync.Mutex
			var checks []seen
			bu := testutil.StartServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				checks = append(checks, seen{r.Host, r.UserAgent(), r.URL.Path, r.Close, r.RemoteAddr})
				mu.Unlock()
				if r.URL.Path == healthPath {
					tt.handler(w, r)
				}
			}))
			pc := &config.Pool{Name: "web", Balancer: config.Balancer{Type: "round-robin"},
				Backends: []config.Backend{{URL: bu, Name: "app"}}}
			pc.HealthCheck = testHealth(1, 1)
			pc.HealthCheck.Host = "health.internal"
			if tt.edit != nil {
				tt.edit(pc.HealthCheck)
			}
			log, logs := observed()
			startProxy(t, catchAll(pc), log)
			testutil.Eventually(t, waitFor, "three checks", func() bool {
				mu.Lock()
				defer mu.Unlock()
				return len(checks) >= 3
			})
			mu.Lock()
			got := slices.Clone(checks)
			mu.Unlock()
			remotes := map[string]bool{}
			for _, c := range got {
				if c.path == tt.notFetch {
					t.Errorf("the check followed a redirect to %s", c.path)
				}
				if c.host != "health.internal" || c.agent != checkUserAgent || c.path != healthPath || !c.close {
					t.Errorf("check %+v, want Host health.internal, User-Agent %s, path %s, Connection: close",
						c, checkUserAgent, healthPath)
				}
				remotes[c.remote] = true
			}
			if len(remotes) != len(got) {
				t.Errorf("%d checks came over %d connections, want a new one each", len(got), len(remotes))
			}
			down := entries(logs, "backend down")
			if tt.wantUp {
				if len(down) != 0 {
					t.Errorf("backend taken down: %v", down[0].ContextMap())
				}
				return
			}
			if len(down) != 1 || down[0].ContextMap()["reason"] != tt.reason {
				t.Errorf("down lines %v, want one with reason %q", down, tt.reason)
			}
		})
	}
}

// TestCheckersLifecycle: checks run between Serve and Shutdown only, and a
// stopped set of checkers cannot be started again. goleak (TestMain) proves
// the goroutines end.
func TestCheckersLifecycle(t *testing.T) {
	b := startCtl(t, "a")
	pc := configure(&config.Pool{Name: "web", Balancer: config.Balancer{Type: "round-robin"}}, b)
	pc.HealthCheck = testHealth(1, 1)
	b.sick.Store(true)

	// Never served: no checks, so the sick backend stays in.
	s, err := NewServer(catchAll(pc), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := s.Serve(testutil.Listen(t)); !errors.Is(err, http.ErrServerClosed) {
		t.Fatalf("Serve after Shutdown = %v", err)
	}
	st := s.state.Load()
	st.checks.mu.Lock()
	started := st.checks.cancel != nil
	st.checks.mu.Unlock()
	if started {
		t.Error("Serve after Shutdown started the checks")
	}

	// Served: the checks take it out.
	s2, _ := startProxy(t, catchAll(pc), nil)
	testutil.Eventually(t, waitFor, "sick backend taken out", func() bool {
		return len(available(s2.state.Load().pools[0])) == 0
	})
}

func TestCheckHealthPath(t *testing.T) {
	for path, ok := range map[string]bool{
		"/healthz": true, "/status?full=1": true, "/": true,
		"": false, "healthz": false, "*": false, "http://other/healthz": false,
	} {
		if err := checkHealthPath(path); (err == nil) != ok {
			t.Errorf("checkHealthPath(%q) = %v, want ok %v", path, err, ok)
		}
	}
}
