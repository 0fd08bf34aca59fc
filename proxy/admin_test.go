package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.uber.org/zap"

	"github.com/affinityproxy/affinity/balancer"
	"github.com/affinityproxy/affinity/config"
	"github.com/affinityproxy/affinity/internal/testutil"
)

// codeBackend answers with the status its "code" query parameter names
// (200 without one), naming itself in testutil.IDHeader; its /healthz
// answers health.
func codeBackend(t *testing.T, id string, health int) *url.URL {
	t.Helper()
	return testutil.StartServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			w.WriteHeader(health)
			return
		}
		code := http.StatusOK
		if c, err := strconv.Atoi(r.URL.Query().Get("code")); err == nil {
			code = c
		}
		w.Header().Set(testutil.IDHeader, id)
		w.WriteHeader(code)
	}))
}

// poolAt is a pool of the given kind over backends named by the keys of
// urls, in the order of ids.
func poolAt(name, kind string, urls map[string]*url.URL, ids ...string) *config.Pool {
	p := &config.Pool{Name: name, Balancer: config.Balancer{Type: kind, Options: cookieOptions()},
		Retries: config.DefaultRetries()}
	for _, id := range ids {
		p.Backends = append(p.Backends, config.Backend{URL: urls[id], Name: id, Weight: 1})
	}
	return p
}

// startWithAdmin builds a Server for cfg and serves the proxy and the admin
// endpoints on loopback ports until the test ends. It returns the server,
// the proxy's base URL and the admin's.
func startWithAdmin(t *testing.T, cfg *config.Config, log *zap.Logger) (*Server, *url.URL, string) {
	t.Helper()
	s, err := NewServer(cfg, log)
	if err != nil {
		t.Fatalf("NewServer: %v", err)
	}
	ln := testutil.Listen(t)
	served := make(chan error, 1)
	go func() { served <- s.ServeAdmin(ln) }()
	// Registered before testutil.Serve's, so run after it: Shutdown ends
	// ServeAdmin first.
	t.Cleanup(func() {
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("ServeAdmin = %v, want %v", err, http.ErrServerClosed)
		}
	})
	return s, testutil.Serve(t, s), "http://" + ln.Addr().String()
}

// scrape returns the metric families /metrics exposes at admin.
func scrape(t *testing.T, c *http.Client, admin string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := c.Get(admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return fams
}

// metricValue returns the value of the sample of name whose labels are
// exactly labels ("k=v,k=v"; "" for none): a counter's or gauge's value, a
// histogram's count. It reports false when there is no such sample.
func metricValue(fams map[string]*dto.MetricFamily, name, labels string) (float64, bool) {
	want := map[string]string{}
	for kv := range strings.SplitSeq(labels, ",") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			want[k] = v
		}
	}
	f := fams[name]
	if f == nil {
		return 0, false
	}
	for _, m := range f.GetMetric() {
		got := map[string]string{}
		for _, l := range m.GetLabel() {
			got[l.GetName()] = l.GetValue()
		}
		if len(got) != len(want) {
			continue
		}
		match := true
		for k, v := range want {
			match = match && got[k] == v
		}
		if !match {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.GetCounter().GetValue(), true
		case m.Gauge != nil:
			return m.GetGauge().GetValue(), true
		case m.Histogram != nil:
			return float64(m.GetHistogram().GetSampleCount()), true
		}
	}
	return 0, false
}

// fetch sends a GET for u through c and returns the status and body.
func fetch(t *testing.T, c *http.Client, u string) (int, string) {
	t.Helper()
	r := get(t, c, u, nil)
	return r.status, r.body
}

// TestMetricsAfterRequests sends a known sequence of requests and checks
// every counter it should move, as /metrics exposes them.
func TestMetricsAfterRequests(t *testing.T) {
	urls := map[string]*url.URL{
		"web-1":    codeBackend(t, "web-1", http.StatusOK),
		"api-dead": testutil.ClosedURL(t),
		"api-2":    codeBackend(t, "api-2", http.StatusOK),
		"shop-1":   codeBackend(t, "shop-1", http.StatusOK),
		"shop-2":   codeBackend(t, "shop-2", http.StatusOK),
	}
	cfg := &config.Config{
		Listen:   "127.0.0.1:0",
		Hash:     "c0ffee",
		Timeouts: testTimeouts,
		Routes: []config.Route{
			{Match: config.Match{Path: "/web/"}, Pool: "web"},
			{Match: config.Match{Path: "/api/"}, Pool: "api"},
			{Match: config.Match{Path: "/shop/"}, Pool: "shop"},
		},
		Pools: []*config.Pool{
			poolAt("web", "round-robin", urls, "web-1"),
			poolAt("api", "round-robin", urls, "api-dead", "api-2"),
			poolAt("shop", "cookie", urls, "shop-1", "shop-2"),
		},
	}
	s, proxyURL, admin := startWithAdmin(t, cfg, nil)
	base := proxyURL.String()
	c := testutil.Client(t)

	for _, code := range []int{200, 200, 200, 404, 503} {
		if got, _ := fetch(t, c, fmt.Sprintf("%s/web/?code=%d", base, code)); got != code {
			t.Fatalf("web: status %d, want %d", got, code)
		}
	}
	// Round-robin picks each api backend once; the dead one's request
	// is retried on the other.
	for range 2 {
		if got, _ := fetch(t, c, base+"/api/"); got != http.StatusOK {
			t.Fatalf("api: status %d, want 200", got)
		}
	}
	if got, _ := fetch(t, c, base+"/elsewhere"); got != http.StatusNotFound {
		t.Fatalf("unrouted: status %d, want 404", got)
	}
	// A request for a tunnel is rejected before routing: no pool or
	// backend counts it.
	if rs := rawExchange(t, proxyURL.Host, "CONNECT /web/ HTTP/1.1\r\nHost: x\r\n\r\n"); len(rs) != 1 || rs[0].StatusCode != http.StatusNotImplemented {
		t.Fatalf("CONNECT: %d responses, want one 501", len(rs))
	}
	// A sticky client whose backend goes down is re-pinned; with both
	// down, the pool refuses.
	shop := s.state.Load().pools[2]
	jar := jarClient(t)
	first := get(t, jar, base+"/shop/", nil).header.Get(testutil.IDHeader)
	other := map[string]string{"shop-1": "shop-2", "shop-2": "shop-1"}[first]
	if other == "" {
		t.Fatalf("shop answered from %q", first)
	}
	if err := shop.setHealthy(first, false); err != nil {
		t.Fatal(err)
	}
	if got := get(t, jar, base+"/shop/", nil).header.Get(testutil.IDHeader); got != other {
		t.Fatalf("after %s went down, answered by %q, want %q", first, got, other)
	}
	if err := shop.setHealthy(other, false); err != nil {
		t.Fatal(err)
	}
	if got, _ := fetch(t, jar, base+"/shop/"); got != http.StatusServiceUnavailable {
		t.Fatalf("shop with no backend: status %d, want 503", got)
	}

	fams := scrape(t, c, admin)
	tests := []struct {
		name, labels string
		want         float64
	}{
		{"affinity_requests_total", "pool=web,backend=web-1,class=2xx", 3},
		{"affinity_requests_total", "pool=web,backend=web-1,class=4xx", 1},
		{"affinity_requests_total", "pool=web,backend=web-1,class=5xx", 1},
		{"affinity_requests_total", "pool=web,backend=web-1,class=1xx", 0},
		{"affinity_client_aborts_total", "pool=web,backend=web-1", 0},
		{"affinity_backend_unsolicited_total", "pool=web,backend=web-1", 0},
		{"affinity_upstream_latency_seconds", "pool=web,backend=web-1", 5},
		{"affinity_backend_in_flight", "pool=web,backend=web-1", 0},
		{"affinity_backend_up", "pool=web,backend=web-1", 1},
		{"affinity_requests_total", "pool=api,backend=api-2,class=2xx", 2},
		{"affinity_requests_total", "pool=api,backend=api-dead,class=2xx", 0},
		{"affinity_upstream_latency_seconds", "pool=api,backend=api-dead", 0},
		{"affinity_retries_total", "pool=api", 1},
		{"affinity_retries_total", "pool=web", 0},
		{"affinity_requests_unrouted_total", "", 1},
		{"affinity_requests_rejected_total", "", 1},
		{"affinity_sticky_repins_total", "pool=shop", 1},
		{"affinity_requests_refused_total", "pool=shop", 1},
		{"affinity_requests_refused_total", "pool=web", 0},
		{"affinity_health_transitions_total", "pool=shop,backend=" + first + ",to=down", 1},
		{"affinity_health_transitions_total", "pool=shop,backend=" + first + ",to=up", 0},
		{"affinity_backend_up", "pool=shop,backend=" + first, 0},
		{"affinity_backend_healthy", "pool=shop,backend=" + first, 0},
		{"affinity_backend_ejected", "pool=shop,backend=" + first, 0},
		{"affinity_passive_ejections_total", "pool=shop,backend=" + first, 0},
		{"affinity_config_info", "hash=c0ffee", 1},
		{"affinity_config_reloads_total", "result=ok", 0},
		{"affinity_config_reloads_total", "result=failed", 0},
	}
	for _, tt := range tests {
		got, ok := metricValue(fams, tt.name, tt.labels)
		if !ok || got != tt.want {
			t.Errorf("%s{%s} = %v (found %v), want %v", tt.name, tt.labels, got, ok, tt.want)
		}
	}
	if _, ok := fams["go_goroutines"]; !ok {
		t.Error("no Go runtime metrics")
	}
}

// statusOf fetches and decodes /status.
func statusOf(t *testing.T, c *http.Client, admin string) statusDoc {
	t.Helper()
	code, body := fetch(t, c, admin+"/status")
	if code != http.StatusOK {
		t.Fatalf("GET /status: %d %s", code, body)
	}
	var doc statusDoc
	if err := json.Unmarshal([]byte(body), &doc); err != nil {
		t.Fatalf("decode /status: %v\n%s", err, body)
	}
	return doc
}

// TestStatus checks what /status tells of backends in each state: one up
// taking every request, one ejected, one that its checks took down.
func TestStatus(t *testing.T) {
	urls := map[string]*url.URL{
		"w1": codeBackend(t, "w1", http.StatusOK),
		"w2": codeBackend(t, "w2", http.StatusOK),
		"w3": codeBackend(t, "w3", http.StatusServiceUnavailable),
	}
	pc := poolAt("web", "round-robin", urls, "w1", "w2", "w3")
	pc.Backends[0].Weight = 3
	// A timeout long enough that w1 and w2, which answer at once, never
	// fail a check on a busy machine: with fall 1 a single timeout would
	// take one down.
	pc.HealthCheck = &config.HealthCheck{Path: "/healthz", Interval: time.Second,
		Timeout: 800 * time.Millisecond, Rise: 1, Fall: 1, StatusMin: 200, StatusMax: 399}
	passive := config.DefaultPassive()
	pc.Passive = &passive
	s, proxyURL, admin := startWithAdmin(t, catchAll(pc), nil)
	p := s.state.Load().pools[0]
	c := testutil.Client(t)

	testutil.Eventually(t, waitFor, "w3 to fail its checks and w1 and w2 to pass theirs", func() bool {
		v := p.view()
		return v[2].health() == "down" && v[0].stats.check.Load() != nil && v[1].stats.check.Load() != nil
	})
	p.eject(p.backends[1], 3)
	s.admin.sampler.sample(s.state.Load()) // the baseline
	for range 6 {
		if got, _ := fetch(t, c, proxyURL.String()+"/"); got != http.StatusOK {
			t.Fatalf("status %d, want 200", got)
		}
	}
	s.admin.sampler.sample(s.state.Load())

	doc := statusOf(t, c, admin)
	if !doc.Ready || len(doc.Pools) != 1 {
		t.Fatalf("ready %v with %d pools, want ready with 1", doc.Ready, len(doc.Pools))
	}
	ps := doc.Pools[0]
	if ps.Name != "web" || ps.Balancer != "round-robin" || ps.Available != 1 || ps.Minute != 6 {
		t.Errorf("pool %q %q: %d available, %d last minute; want web round-robin, 1, 6",
			ps.Name, ps.Balancer, ps.Available, ps.Minute)
	}
	tests := []struct {
		name      string
		health    string
		available bool
		weight    int
		requests  uint64
		share     float64
		checkOK   bool
		check     string
		ejections uint64
	}{
		{"w1", "up", true, 3, 6, 1, true, "status 200", 0},
		{"w2", "ejected", false, 1, 0, 0, true, "status 200", 1},
		{"w3", "down", false, 1, 0, 0, false, "status 503", 0},
	}
	if len(ps.Backends) != len(tests) {
		t.Fatalf("%d backends, want %d", len(ps.Backends), len(tests))
	}
	for i, tt := range tests {
		b := ps.Backends[i]
		if b.Name != tt.name || b.Health != tt.health || b.State != "ready" || b.Available != tt.available || b.Weight != tt.weight ||
			b.Requests != tt.requests || b.Minute != tt.requests || b.Share != tt.share || b.Ejections != tt.ejections {
			t.Errorf("backend %d = %+v, want %+v", i, b, tt)
		}
		if b.URL != urls[tt.name].String() || b.InFlight != 0 || len(b.PerSecond) != spreadSeconds {
			t.Errorf("%s: url %q, in flight %d, %d samples; want %q, 0, %d",
				b.Name, b.URL, b.InFlight, len(b.PerSecond), urls[tt.name], spreadSeconds)
		}
		if (b.Rate > 0) != (tt.requests > 0) {
			t.Errorf("%s: rate %v with %d requests", b.Name, b.Rate, tt.requests)
		}
		if b.Check == nil || b.Check.OK != tt.checkOK || b.Check.Result != tt.check || b.Check.Time.IsZero() {
			t.Errorf("%s: check %+v, want ok=%v %q with a time", b.Name, b.Check, tt.checkOK, tt.check)
		}
	}
}

// TestReadyz checks that /readyz answers 503, naming the pool, while a pool
// has no available backend, and 200 otherwise; /healthz answers 200 all
// along.
func TestReadyz(t *testing.T) {
	urls := map[string]*url.URL{
		"a": codeBackend(t, "a", http.StatusOK),
		"b": codeBackend(t, "b", http.StatusOK),
		"c": codeBackend(t, "c", http.StatusOK),
	}
	cfg := &config.Config{
		Listen: "127.0.0.1:0", Timeouts: testTimeouts,
		Routes: []config.Route{{Match: config.Match{Path: "/api/"}, Pool: "api"}, {Pool: "web"}},
		Pools:  []*config.Pool{poolAt("web", "round-robin", urls, "a", "b"), poolAt("api", "round-robin", urls, "c")},
	}
	s, _, admin := startWithAdmin(t, cfg, nil)
	web := s.state.Load().pools[0]
	c := testutil.Client(t)
	steps := []struct {
		name   string
		down   []string // web backends marked down
		status int
		body   string
	}{
		{"all up", nil, http.StatusOK, "ready\n"},
		{"one of two down", []string{"a"}, http.StatusOK, "ready\n"},
		{"both down", []string{"a", "b"}, http.StatusServiceUnavailable, "not ready: pool \"web\" has no available backend\n"},
		{"one back", []string{"b"}, http.StatusOK, "ready\n"},
	}
	for _, st := range steps {
		for _, id := range []string{"a", "b"} {
			if err := web.setHealthy(id, !slices.Contains(st.down, id)); err != nil {
				t.Fatal(err)
			}
		}
		if code, body := fetch(t, c, admin+"/readyz"); code != st.status || body != st.body {
			t.Errorf("%s: /readyz = %d %q, want %d %q", st.name, code, body, st.status, st.body)
		}
		if code, body := fetch(t, c, admin+"/healthz"); code != http.StatusOK || body != "ok\n" {
			t.Errorf("%s: /healthz = %d %q, want 200", st.name, code, body)
		}
	}
}

func TestPprof(t *testing.T) {
	tests := []struct {
		name   string
		pprof  bool
		status int
	}{
		{"off by default", false, http.StatusNotFound},
		{"on when configured", true, http.StatusOK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := catchAll(poolOf("web", "round-robin", balancer.Options{}, testutil.StartBackend(t, "a")))
			cfg.Admin.Pprof = tt.pprof
			_, _, admin := startWithAdmin(t, cfg, nil)
			c := testutil.Client(t)
			for _, path := range []string{"/debug/pprof/", "/debug/pprof/cmdline", "/debug/pprof/goroutine?debug=1"} {
				if code, _ := fetch(t, c, admin+path); code != tt.status {
					t.Errorf("GET %s = %d, want %d", path, code, tt.status)
				}
			}
		})
	}
}

// addrListener is a loopback listener that reports another address, to see
// what ServeAdmin makes of addresses a test must not bind.
type addrListener struct {
	net.Listener
	addr net.Addr
}

func (l addrListener) Addr() net.Addr { return l.addr }

func TestAdminWarnsBeyondLoopback(t *testing.T) {
	tests := []struct {
		ip   string
		warn bool
	}{
		{"127.0.0.1", false},
		{"::1", false},
		{"0.0.0.0", true},
		{"::", true},
		{"192.0.2.10", true},
	}
	for _, tt := range tests {
		t.Run(tt.ip, func(t *testing.T) {
			log, logs := observed()
			s, err := NewServer(catchAll(poolOf("web", "round-robin", balancer.Options{}, testutil.StartBackend(t, "a"))), log)
			if err != nil {
				t.Fatal(err)
			}
			addr := &net.TCPAddr{IP: net.ParseIP(tt.ip), Port: 9090}
			served := make(chan error, 1)
			go func() { served <- s.ServeAdmin(addrListener{testutil.Listen(t), addr}) }()
			testutil.Eventually(t, waitFor, "ServeAdmin to log its address", func() bool {
				return len(entries(logs, "admin listening")) == 1
			})
			if err := s.Shutdown(context.Background()); err != nil {
				t.Fatal(err)
			}
			if err := <-served; !errors.Is(err, http.ErrServerClosed) {
				t.Errorf("ServeAdmin = %v", err)
			}
			warned := entries(logs, "admin listener is reachable from other hosts; it shows backend addresses and traffic to anyone who connects")
			want := 0
			if tt.warn {
				want = 1
			}
			if len(warned) != want {
				t.Fatalf("%d warnings, want %d", len(warned), want)
			}
			for _, w := range warned {
				if w.ContextMap()["addr"] != addr.String() || w.Level != zap.WarnLevel {
					t.Errorf("warning %v at %v, want at warn level naming %s", w.ContextMap(), w.Level, addr)
				}
			}
		})
	}
}

// TestListenAndServeAdmin checks that ListenAndServe serves the configured
// admin address with the proxy, that /readyz turns 503 as soon as Shutdown
// starts draining, and that both stop with it.
func TestListenAndServeAdmin(t *testing.T) {
	bu, started, release := blockingBackend(t)
	cfg := catchAll(&config.Pool{Name: "web", Balancer: config.Balancer{Type: "round-robin"},
		Backends: []config.Backend{{URL: bu, Name: "slow"}}})
	cfg.Listen = testutil.FreeAddr(t)
	cfg.Admin.Listen = testutil.FreeAddr(t)
	s, err := NewServer(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.ListenAndServe() }()
	admin := "http://" + cfg.Admin.Listen
	testutil.WaitHTTP(t, admin+"/healthz", waitFor)
	c := testutil.Client(t)
	if code, _ := fetch(t, c, admin+"/readyz"); code != http.StatusOK {
		t.Fatalf("/readyz = %d before shutdown, want 200", code)
	}

	// A request in flight holds Shutdown, meanwhile /readyz says so.
	answered := make(chan int, 1)
	client := testutil.Client(t)
	go func() {
		resp, err := client.Get("http://" + cfg.Listen + "/")
		if err != nil {
			answered <- 0
			return
		}
		resp.Body.Close()
		answered <- resp.StatusCode
	}()
	<-started
	stopped := make(chan error, 1)
	go func() { stopped <- s.Shutdown(context.Background()) }()
	testutil.Eventually(t, waitFor, "/readyz to answer 503 while draining", func() bool {
		code, body := fetch(t, c, admin+"/readyz")
		return code == http.StatusServiceUnavailable && body == "not ready: shutting down\n"
	})
	release()
	if code := <-answered; code != http.StatusOK {
		t.Errorf("request in flight at shutdown: %d, want 200", code)
	}
	if err := <-stopped; err != nil {
		t.Errorf("Shutdown = %v", err)
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		t.Errorf("ListenAndServe = %v, want ErrServerClosed", err)
	}
	if _, err := c.Get(admin + "/healthz"); err == nil {
		t.Error("admin listener still answers after Shutdown")
	}
}

// TestListenAndServeAdminTaken checks that an admin address that cannot be
// bound stops ListenAndServe before the proxy serves.
func TestListenAndServeAdminTaken(t *testing.T) {
	cfg := catchAll(poolOf("web", "round-robin", balancer.Options{}, testutil.StartBackend(t, "a")))
	cfg.Listen = testutil.FreeAddr(t)
	cfg.Admin.Listen = testutil.Listen(t).Addr().String()
	s, err := NewServer(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.ListenAndServe(); err == nil || errors.Is(err, http.ErrServerClosed) || !strings.Contains(err.Error(), "admin") {
		t.Errorf("ListenAndServe = %v, want an admin listen error", err)
	}
	// The proxy's address was not kept.
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		t.Fatalf("proxy address still bound: %v", err)
	}
	_ = ln.Close()
	if err := s.Shutdown(context.Background()); err != nil {
		t.Errorf("Shutdown = %v", err)
	}
}

func TestAdminMethods(t *testing.T) {
	_, _, admin := startWithAdmin(t, catchAll(poolOf("web", "round-robin", balancer.Options{}, testutil.StartBackend(t, "a"))), nil)
	c := testutil.Client(t)
	tests := []struct {
		method, path string
		status       int
	}{
		{http.MethodGet, "/", http.StatusOK},
		{http.MethodHead, "/status", http.StatusOK},
		{http.MethodPost, "/status", http.StatusMethodNotAllowed},
		{http.MethodGet, "/nothing", http.StatusNotFound},
	}
	for _, tt := range tests {
		req, err := http.NewRequest(tt.method, admin+tt.path, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tt.status {
			t.Errorf("%s %s = %d, want %d", tt.method, tt.path, resp.StatusCode, tt.status)
		}
		if tt.status == http.StatusOK && resp.Header.Get("Cache-Control") != "no-store" {
			t.Errorf("%s %s: Cache-Control %q, want no-store", tt.method, tt.path, resp.Header.Get("Cache-Control"))
		}
	}
}

func TestServeAdminAfterShutdown(t *testing.T) {
	log, logs := observed()
	s, err := NewServer(catchAll(poolOf("web", "round-robin", balancer.Options{}, testutil.StartBackend(t, "a"))), log)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	ln := testutil.Listen(t)
	if err := s.ServeAdmin(ln); !errors.Is(err, http.ErrServerClosed) {
		t.Errorf("ServeAdmin after Shutdown = %v, want ErrServerClosed", err)
	}
	if n := len(entries(logs, "admin listening")); n != 0 {
		t.Errorf("logged listening %d times after Shutdown", n)
	}
	if _, err := ln.Accept(); err == nil {
		t.Error("listener still open")
	}
}

// TestAdminClosesAfterDoubtfulFraming holds the admin listener to the rule
// of the proxy's (framing.go): after a request whose framing another reader
// may take otherwise, the connection closes, and the bytes after it are
// never read as a request.
func TestAdminClosesAfterDoubtfulFraming(t *testing.T) {
	urls := map[string]*url.URL{"a": codeBackend(t, "a", http.StatusOK)}
	cfg := &config.Config{
		Listen: "127.0.0.1:0", Timeouts: testTimeouts,
		Routes: []config.Route{{Pool: "web"}},
		Pools:  []*config.Pool{poolAt("web", "round-robin", urls, "a")},
	}
	_, _, admin := startWithAdmin(t, cfg, nil)
	addr := strings.TrimPrefix(admin, "http://")
	const next = "GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"
	tests := []struct {
		name  string
		first string
		want  int // responses before the connection closes
	}{
		{"plain GET keeps the connection", "GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n", 2},
		{"chunked", "POST /healthz HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 1},
		{"chunked and Content-Length", "POST /healthz HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 1},
		{"HTTP/1.0 keep-alive", "GET /healthz HTTP/1.0\r\nHost: localhost\r\nConnection: keep-alive\r\n\r\n", 1},
		{"OPTIONS * chunked", "OPTIONS * HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// The second request closes the connection itself, so that
			// the exchange ends either way.
			last := strings.Replace(next, "\r\n\r\n", "\r\nConnection: close\r\n\r\n", 1)
			got := rawExchange(t, addr, tt.first+last)
			if len(got) != tt.want {
				t.Errorf("%d responses, want %d: the bytes after the request were read as a request", len(got), tt.want)
			}
		})
	}
}
