package proxy

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/affinityproxy/affinity/balancer"
	"github.com/affinityproxy/affinity/config"
	"github.com/affinityproxy/affinity/internal/testutil"
)

// eventsBackend is streamBackend with a health check: /healthz answers
// 200, every other path an event stream held open until the client goes.
func eventsBackend(t *testing.T, id string) config.Backend {
	t.Helper()
	u := testutil.StartServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == healthPath {
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set(testutil.IDHeader, id)
		_, _ = io.WriteString(w, "data: hello\n\n")
		_ = http.NewResponseController(w).Flush()
		<-r.Context().Done()
	}))
	return config.Backend{URL: u, Name: id, Weight: 1}
}

// TestReloadKeepsWhatIsInFlight: whatever a reload changes about a backend
// it keeps (its weight, or its pool's settings), the requests in flight to
// it, begun before, stay counted as the backend's (in_flight, streams, not
// idle), and they are drained with it: drain_timeout closes them once it
// drains, and counts and logs them as the backend's.
func TestReloadKeepsWhatIsInFlight(t *testing.T) {
	sse, other := eventsBackend(t, "sse"), eventsBackend(t, "other")
	// Checks that a busy machine does not fail: the backends stay up.
	checks := func(interval time.Duration) *config.HealthCheck {
		hc := testHealth(1, 5)
		hc.Interval, hc.Timeout = interval, waitFor
		return hc
	}
	base := func() *config.Pool {
		return &config.Pool{Name: "events", Balancer: config.Balancer{Type: "round-robin"},
			Backends: []config.Backend{sse, other}, HealthCheck: checks(100 * time.Millisecond),
			Passive: &config.Passive{Failures: 3, Eject: time.Minute, MaxEject: time.Minute}}
	}
	tests := []struct {
		name   string
		change func(p *config.Pool)
	}{
		{"its weight", func(p *config.Pool) { p.Backends[0].Weight = 3 }},
		{"its weight twice", func(p *config.Pool) { p.Backends[0].Weight = 2 }}, // reloaded twice below
		{"its weight and the balancer", func(p *config.Pool) {
			p.Backends[0].Weight = 2
			p.Balancer = config.Balancer{Type: "cookie", Options: cookieOptions()}
		}},
		{"the balancer", func(p *config.Pool) {
			p.Balancer = config.Balancer{Type: "consistent-hash", Options: balancer.Options{Hash: balancer.HashOptions{Key: "ip", VirtualNodes: 16}}}
		}},
		{"the health checks, off", func(p *config.Pool) { p.HealthCheck = nil }},
		{"the health checks, other", func(p *config.Pool) { p.HealthCheck = checks(150 * time.Millisecond) }},
		{"passive health, off", func(p *config.Pool) { p.Passive = nil }},
		{"retries", func(p *config.Pool) { p.Retries = config.Retries{Count: 2, MaxBody: 1024} }},
		{"the other backend's weight", func(p *config.Pool) { p.Backends[1].Weight = 5 }},
		{"the order of the backends", func(p *config.Pool) { p.Backends[0], p.Backends[1] = p.Backends[1], p.Backends[0] }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfgOf := func(p *config.Pool) *config.Config {
				cfg := catchAll(p)
				cfg.DrainTimeout = 300 * time.Millisecond
				return cfg
			}
			log, logs := observed()
			s, proxyURL, admin := startWithAdmin(t, cfgOf(base()), log)
			// Only sse is ready while the stream opens, so that it lands there.
			mustSetState(t, admin, "events", "other", config.StateMaint)
			stream, _ := openStream(t, proxyURL.String()+"/")
			inFlight := func(when string) {
				t.Helper()
				bs, ok := backendOf(t, admin, "events", "sse")
				if !ok || bs.InFlight != 1 || bs.Streams != 1 || bs.IdleSeconds == nil || *bs.IdleSeconds != 0 {
					t.Fatalf("%s: sse %+v, want 1 in flight, 1 stream, idle 0", when, bs)
				}
				fams := scrape(t, testutil.Client(t), admin)
				if v, _ := metricValue(fams, "affinity_backend_in_flight", "pool=events,backend=sse"); v != 1 {
					t.Fatalf("%s: affinity_backend_in_flight{sse} = %v, want 1", when, v)
				}
			}
			inFlight("before the reload")

			next := base()
			tt.change(next)
			reload(t, s, cfgOf(next))
			if tt.name == "its weight twice" {
				next.Backends[0].Weight = 7
				reload(t, s, cfgOf(next))
			}
			inFlight("after the reload")

			mustSetState(t, admin, "events", "sse", config.StateDrain)
			done := make(chan error, 1)
			go func() {
				_, err := io.Copy(io.Discard, stream)
				done <- err
			}()
			select {
			case err := <-done:
				if err == nil {
					t.Error("the stream ended as if complete, want it cut off")
				}
			case <-time.After(waitFor):
				t.Fatalf("the stream of the draining sse still open %v after its drain began (drain_timeout 300ms)", waitFor)
			}
			var last backendStatus
			// The drainer logs what it closed once its walk is done, after
			// the close and its count.
			testutil.Eventually(t, waitFor, fmt.Sprintf("sse drained and the close logged; last seen %+v", &last), func() bool {
				last, _ = backendOf(t, admin, "events", "sse")
				return last.InFlight == 0 && last.Streams == 0 && last.DrainClosed == 1 &&
					last.IdleSeconds != nil && *last.IdleSeconds > 0 &&
					len(entries(logs, "closed connections that outlived drain_timeout")) > 0
			})
			lines := entries(logs, "closed connections that outlived drain_timeout")
			if len(lines) != 1 {
				t.Fatalf("logged %d drain_timeout closes, want 1", len(lines))
			}
			if f := lines[0].ContextMap(); f["backend"] != "sse" || f["closed"] != int64(1) || f["streams"] != int64(1) ||
				f["upgraded"] != int64(0) {
				t.Errorf("logged %v, want sse's one stream closed", f)
			}
		})
	}
}

// TestDrainTimeoutOverRemoval: a backend that was draining when a reload
// removed it is closed drain_timeout after its drain began, not after the
// removal; one removed while ready, drain_timeout after the removal.
func TestDrainTimeoutOverRemoval(t *testing.T) {
	bs := startBackends(t, "b0", "b1", "b2")
	log, logs := observed()
	s, err := NewServer(catchAll(poolOf("web", "round-robin", balancer.Options{}, bs...)), log)
	if err != nil {
		t.Fatal(err)
	}
	p := s.state.Load().pools[0]
	closed := map[string]bool{}
	for i, name := range []string{"b1", "b2"} {
		c := new(client)
		c.cancel = func() {
			closed[name] = true
			c.end()
		}
		s.detached.add(c)
		p.backends[i+1].Begin()
		c.begin(p.backends[i+1])
	}
	if _, err := p.setState("b1", config.StateDrain, "test"); err != nil {
		t.Fatal(err)
	}
	const timeout = time.Minute
	began := time.Now().Add(-timeout)
	p.mu.Lock()
	p.members[1].since = began // b1 has drained for a minute
	p.mu.Unlock()
	reload(t, s, catchAll(poolOf("web", "round-robin", balancer.Options{}, bs[0])))

	d := &drainer{s: s, seen: map[*client]sighting{}}
	d.tick(began.Add(timeout), timeout)
	if !closed["b1"] || closed["b2"] {
		t.Fatalf("a minute after b1's drain began, closed %v; want b1's request only", closed)
	}
	d.tick(time.Now().Add(timeout), timeout)
	if !closed["b2"] {
		t.Errorf("drain_timeout after the removal, closed %v; want b2's request too", closed)
	}
	if n := len(entries(logs, "closed connections that outlived drain_timeout")); n != 2 {
		t.Errorf("%d closes logged, want 2", n)
	}
	if err := s.Shutdown(t.Context()); err != nil {
		t.Error(err)
	}
}

// TestIdleSinceConfigured: a backend that has had no request is idle since
// it was configured, at the start or by the reload that added it, never
// longer; a request ends that.
func TestIdleSinceConfigured(t *testing.T) {
	bs := startBackends(t, "b0", "b1")
	start := time.Now()
	s, proxyURL, admin := startWithAdmin(t, catchAll(poolOf("web", "round-robin", balancer.Options{}, bs[0])), nil)
	idle := func(id string) (float64, bool) {
		t.Helper()
		b, ok := backendOf(t, admin, "web", id)
		if !ok || b.IdleSeconds == nil {
			t.Fatalf("%s: %+v, want an idle time", id, b)
		}
		return *b.IdleSeconds, b.Unused
	}
	testutil.Eventually(t, waitFor, "b0 idle for 200ms since start", func() bool {
		d, unused := idle("b0")
		if !unused || d > time.Since(start).Seconds() {
			t.Fatalf("b0 idle %vs (unused %v) %v after the start, want unused and no longer", d, unused, time.Since(start))
		}
		return d >= 0.2
	})
	added := time.Now()
	reload(t, s, catchAll(poolOf("web", "round-robin", balancer.Options{}, bs...)))
	if d, unused := idle("b1"); !unused || d > time.Since(added).Seconds() {
		t.Errorf("b1 idle %vs (unused %v) %v after the reload that added it, want unused and no longer", d, unused, time.Since(added))
	}
	if d, unused := idle("b0"); !unused || d < 0.2 {
		t.Errorf("b0 idle %vs (unused %v) after a reload that kept it, want unused since the start", d, unused)
	}
	c := testutil.Client(t)
	requested := time.Now()
	for range 2 {
		if r := get(t, c, proxyURL.String()+"/", nil); r.status != http.StatusOK {
			t.Fatal(r.status)
		}
	}
	for _, id := range []string{"b0", "b1"} {
		if d, unused := idle(id); unused || d > time.Since(requested).Seconds() {
			t.Errorf("%s idle %vs (unused %v) after a request, want idle since it", id, d, unused)
		}
	}
}

// TestStateOverURLChange: a reload that gives a backend another URL makes
// it a new backend, in its configured state; the state set at run time for
// the old one is dropped, and that is logged.
func TestStateOverURLChange(t *testing.T) {
	bs := startBackends(t, "b0", "b1", "b2")
	log, logs := observed()
	s, _, admin := startWithAdmin(t, catchAll(poolOf("web", "cookie", cookieOptions(), bs[0], bs[1])), log)
	mustSetState(t, admin, "web", "b1", config.StateMaint)
	moved := poolOf("web", "cookie", cookieOptions(), bs[0], bs[1])
	moved.Backends[1].URL = bs[2].URL
	reload(t, s, catchAll(moved))
	if v := s.state.Load().pools[0].view()[1]; v.state != config.StateReady || v.source() != "config" {
		t.Errorf("b1 at its new URL is %s from %s, want ready from the config", v.state, v.source())
	}
	lines := entries(logs, "backend state set at run time dropped: the backend's URL changed")
	if len(lines) != 1 {
		t.Fatalf("%d lines logged the dropped state, want 1", len(lines))
	}
	if f := lines[0].ContextMap(); f["backend"] != "b1" || f["state"] != "ready" || f["dropped"] != "maint" ||
		f["url"] != bs[2].URL.String() || f["was_url"] != bs[1].URL.String() {
		t.Errorf("logged %v", f)
	}
	// Another reload of the same URL drops nothing more.
	moved.Retries = config.Retries{Count: 2}
	reload(t, s, catchAll(moved))
	if n := len(entries(logs, "backend state set at run time dropped: the backend's URL changed")); n != 1 {
		t.Errorf("%d lines logged a dropped state, want still 1", n)
	}
}

// TestRemovedPoolBackends: a pool a reload removed, shown for a request
// still in flight on it, lists its backends as an empty array, not null.
func TestRemovedPoolBackends(t *testing.T) {
	sse := eventsBackend(t, "sse")
	s, proxyURL, admin := startWithAdmin(t, catchAll(&config.Pool{Name: "events",
		Balancer: config.Balancer{Type: "round-robin"}, Backends: []config.Backend{sse}}), nil)
	openStream(t, proxyURL.String()+"/")
	reload(t, s, catchAll(poolOf("web", "round-robin", balancer.Options{}, startBackends(t, "b0")...)))
	for _, path := range []string{"/api/v1/pools", "/status"} {
		code, body := fetch(t, testutil.Client(t), admin+path)
		var doc struct {
			Pools []struct {
				Name     string
				Backends *[]json.RawMessage
				Removed  []json.RawMessage
			}
		}
		if err := json.Unmarshal([]byte(body), &doc); code != http.StatusOK || err != nil {
			t.Fatalf("GET %s: %d %v", path, code, err)
		}
		found := false
		for _, p := range doc.Pools {
			if p.Name != "events" {
				continue
			}
			found = true
			if p.Backends == nil || len(*p.Backends) != 0 || len(p.Removed) != 1 {
				t.Errorf("GET %s: pool events has backends %v and %d removed, want [] and 1", path, p.Backends, len(p.Removed))
			}
		}
		if !found {
			t.Errorf("GET %s: no pool events while its stream lasts", path)
		}
	}
}
