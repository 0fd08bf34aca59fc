package proxy

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest/observer"

	"github.com/affinityproxy/affinity/balancer"
	"github.com/affinityproxy/affinity/config"
	"github.com/affinityproxy/affinity/internal/testutil"
)

func TestForwardedHeadersAndHost(t *testing.T) {
	b := testutil.StartBackend(t, "a")
	prefixed := *b.URL
	prefixed.Path = "/base"
	tests := []struct {
		name     string
		backend  *url.URL
		wantPath string
	}{
		{"root backend", b.URL, "/a/b"},
		{"backend with path prefix", &prefixed, "/base/a/b"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := catchAll(&config.Pool{Name: "web", Balancer: config.Balancer{Type: "round-robin"},
				Backends: []config.Backend{{URL: tt.backend, Name: "a"}}})
			_, u := startProxy(t, cfg, nil)
			r := get(t, testutil.Client(t), u.String()+"/a/b?q=1", func(req *http.Request) {
				req.Host = "shop.example.com"
				req.Header.Set("X-Forwarded-For", "6.6.6.6") // spoofed by the client
				req.Header.Set("X-Forwarded-Host", "evil.test")
				req.Header.Set("Forwarded", "for=6.6.6.6")
			})
			if r.status != http.StatusOK {
				t.Fatalf("status %d", r.status)
			}
			got, _ := b.Last()
			want := map[string]string{
				"Host":              "shop.example.com",
				"Path":              tt.wantPath,
				"Query":             "q=1",
				"X-Forwarded-For":   "127.0.0.1",
				"X-Forwarded-Host":  "shop.example.com",
				"X-Forwarded-Proto": "http",
				"Forwarded":         "",
			}
			have := map[string]string{
				"Host":              got.Host,
				"Path":              got.Path,
				"Query":             got.RawQuery,
				"X-Forwarded-For":   strings.Join(got.Header["X-Forwarded-For"], ","),
				"X-Forwarded-Host":  strings.Join(got.Header["X-Forwarded-Host"], ","),
				"X-Forwarded-Proto": got.Header.Get("X-Forwarded-Proto"),
				"Forwarded":         got.Header.Get("Forwarded"),
			}
			for k, w := range want {
				if have[k] != w {
					t.Errorf("backend saw %s %q, want %q", k, have[k], w)
				}
			}
		})
	}
}

func TestBadGateway(t *testing.T) {
	dead := testutil.ClosedURL(t)
	for _, kind := range []string{"round-robin", "cookie"} {
		t.Run(kind, func(t *testing.T) {
			cfg := catchAll(&config.Pool{Name: "web", Balancer: config.Balancer{Type: kind, Options: cookieOptions()},
				Backends: []config.Backend{{URL: dead, Name: "gone"}}})
			log, logs := observed()
			_, u := startProxy(t, cfg, log)
			r := get(t, testutil.Client(t), u.String()+"/", nil)
			if r.status != http.StatusBadGateway || r.body != "502 Bad Gateway\n" {
				t.Errorf("got %d %q, want 502 with a short body", r.status, r.body)
			}
			if sc := r.header["Set-Cookie"]; len(sc) != 0 {
				t.Errorf("502 pins the client to the failed backend: %q", sc)
			}
			fails := entries(logs, "backend request failed")
			if len(fails) != 1 {
				t.Fatalf("%d failure lines, want 1", len(fails))
			}
			m := fails[0].ContextMap()
			if fails[0].Level.String() != "warn" || m["pool"] != "web" || m["backend"] != "gone" ||
				!strings.Contains(m["error"].(string), dead.Host) {
				t.Errorf("failure line = %s %v, want warn naming pool, backend and the error", fails[0].Level, m)
			}
		})
	}
}

func TestGatewayTimeout(t *testing.T) {
	bu, _, _ := blockingBackend(t)
	cfg := catchAll(&config.Pool{Name: "web", Balancer: config.Balancer{Type: "round-robin"},
		Backends: []config.Backend{{URL: bu, Name: "slow"}}})
	cfg.Timeouts.ResponseHeader = 20 * time.Millisecond
	_, u := startProxy(t, cfg, nil)
	r := get(t, testutil.Client(t), u.String()+"/", nil)
	if r.status != http.StatusGatewayTimeout || r.body != "504 Gateway Timeout\n" {
		t.Errorf("got %d %q, want 504 with a short body", r.status, r.body)
	}
}

func TestServiceUnavailableWhenAllDown(t *testing.T) {
	bs := startBackends(t, "a", "b")
	log, logs := observed()
	s, u := startProxy(t, catchAll(poolOf("web", "round-robin", balancer.Options{}, bs...)), log)
	p := s.state.Load().pools[0]
	for _, b := range bs {
		if err := p.setHealthy(b.ID, false); err != nil {
			t.Fatal(err)
		}
	}
	c := testutil.Client(t)
	for range 3 {
		r := get(t, c, u.String()+"/", nil)
		if r.status != http.StatusServiceUnavailable || r.body != "503 Service Unavailable\n" ||
			r.header.Get("Retry-After") != "1" {
			t.Fatalf("got %d %q Retry-After %q, want 503, short body, Retry-After 1",
				r.status, r.body, r.header.Get("Retry-After"))
		}
	}
	refused := entries(logs, "no backend available, answering 503")
	if len(refused) != 1 || refused[0].ContextMap()["pool"] != "web" {
		t.Errorf("refusal lines = %v, want one naming pool web", refused)
	}
	if err := p.setHealthy("b", true); err != nil {
		t.Fatal(err)
	}
	if r := get(t, c, u.String()+"/", nil); r.status != http.StatusOK || r.body != "b" {
		t.Errorf("after b came back: %d %q", r.status, r.body)
	}
	if n := len(entries(logs, "backend available again")); n != 1 {
		t.Errorf("%d recovery lines, want 1", n)
	}
}

func TestStreamingIsNotBuffered(t *testing.T) {
	tests := []struct {
		name        string
		contentType string
		access      bool
	}{
		{"chunked", "text/plain", false},
		{"event stream", "text/event-stream", false},
		{"chunked with access log", "text/plain", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			next := make(chan struct{})
			bu := testutil.StartServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", tt.contentType)
				_, _ = io.WriteString(w, "first\n")
				_ = http.NewResponseController(w).Flush()
				select {
				case <-next:
				case <-r.Context().Done():
					return
				}
				_, _ = io.WriteString(w, "last\n")
			}))
			cfg := catchAll(&config.Pool{Name: "web", Balancer: config.Balancer{Type: "round-robin"},
				Backends: []config.Backend{{URL: bu, Name: "stream"}}})
			cfg.Log.Access = tt.access
			_, u := startProxy(t, cfg, nil)

			ctx, cancel := context.WithTimeout(context.Background(), waitFor)
			defer cancel()
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String()+"/", nil)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := testutil.Client(t).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			br := bufio.NewReader(resp.Body)
			// The backend writes "last" only after this line arrived, so
			// a proxy that buffered would time out here.
			if line, err := br.ReadString('\n'); err != nil || line != "first\n" {
				t.Fatalf("first chunk = %q, %v", line, err)
			}
			close(next)
			if rest, err := io.ReadAll(br); err != nil || string(rest) != "last\n" {
				t.Fatalf("rest = %q, %v", rest, err)
			}
		})
	}
}

func TestAccessLog(t *testing.T) {
	bs := startBackends(t, "a")
	for _, on := range []bool{false, true} {
		t.Run(strconv.FormatBool(on), func(t *testing.T) {
			cfg := catchAll(poolOf("web", "cookie", cookieOptions(), bs...))
			cfg.Routes[0].Match.Path = "/app"
			cfg.Log.Access = on
			log, logs := observed()
			_, u := startProxy(t, cfg, log)
			c := jarClient(t)
			get(t, c, u.String()+"/app/x", nil)
			get(t, c, u.String()+"/app/y", nil)
			get(t, c, u.String()+"/missing", func(r *http.Request) { r.Host = "shop.test" })
			lines := entries(logs, "request")
			if !on {
				if len(lines) != 0 {
					t.Errorf("access logging off, yet %d lines", len(lines))
				}
				return
			}
			if len(lines) != 3 {
				t.Fatalf("%d access lines, want 3", len(lines))
			}
			want := []map[string]any{
				{"method": "GET", "host": u.Host, "path": "/app/x", "status": int64(200), "bytes": int64(1),
					"pool": "web", "backend": "a", "attempts": int64(1), "sticky": "new"},
				{"method": "GET", "host": u.Host, "path": "/app/y", "status": int64(200), "bytes": int64(1),
					"pool": "web", "backend": "a", "attempts": int64(1), "sticky": "kept"},
				{"method": "GET", "host": "shop.test", "path": "/missing", "status": int64(404), "bytes": int64(len("404 Not Found\n")),
					"pool": "", "backend": "", "attempts": int64(0), "sticky": "none"},
			}
			for i, e := range lines {
				m := e.ContextMap()
				for k, v := range want[i] {
					if m[k] != v {
						t.Errorf("line %d: %s = %v, want %v", i, k, m[k], v)
					}
				}
				if _, ok := m["duration"]; !ok || e.LoggerName != "access" {
					t.Errorf("line %d: logger %q, fields %v; want logger access with a duration", i, e.LoggerName, m)
				}
				if client, _ := m["client"].(string); !strings.HasPrefix(client, "127.0.0.1:") {
					t.Errorf("line %d: client = %q, want the peer's 127.0.0.1:port", i, client)
				}
			}
		})
	}
}

// TestAccessLogClientAndAttempts: behind a trusted proxy the client is the
// address it reports, from anyone else the peer, whatever it claims; a
// retried request counts both backends it was sent to.
func TestAccessLogClientAndAttempts(t *testing.T) {
	bs := startBackends(t, "a")
	pc := poolOf("web", "round-robin", balancer.Options{}, bs...)
	pc.Backends = append([]config.Backend{{URL: testutil.ClosedURL(t), Name: "dead", Weight: 1}}, pc.Backends...)
	pc.Retries = config.DefaultRetries()
	forged := func(r *http.Request) { r.Header.Set("X-Forwarded-For", "203.0.113.7") }
	for _, tt := range []struct {
		name    string
		trusted string
		client  string // "": the peer
	}{
		{"untrusted peer", "192.0.2.0/24", ""},
		{"trusted peer", "127.0.0.0/8", "203.0.113.7"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := catchAll(pc)
			cfg.Log.Access = true
			cfg.TrustedProxies = []netip.Prefix{netip.MustParsePrefix(tt.trusted)}
			log, logs := observed()
			_, u := startProxy(t, cfg, log)
			c := testutil.Client(t)
			// Round-robin sends one of two requests to the dead backend
			// first.
			for range 2 {
				if r := get(t, c, u.String()+"/", forged); r.status != http.StatusOK {
					t.Fatalf("status %d, want 200", r.status)
				}
			}
			lines := entries(logs, "request")
			if len(lines) != 2 {
				t.Fatalf("%d access lines, want 2", len(lines))
			}
			var attempts []int64
			for _, e := range lines {
				m := e.ContextMap()
				attempts = append(attempts, m["attempts"].(int64))
				client := m["client"].(string)
				if tt.client == "" && !strings.HasPrefix(client, "127.0.0.1:") || tt.client != "" && client != tt.client {
					t.Errorf("client = %q, want %q (\"\": the peer)", client, tt.client)
				}
				if m["backend"] != "a" {
					t.Errorf("backend = %v, want a", m["backend"])
				}
			}
			slices.Sort(attempts)
			if !slices.Equal(attempts, []int64{1, 2}) {
				t.Errorf("attempts = %v, want 1 and 2", attempts)
			}
		})
	}
}

// TestAccessLogSample: a sample keeps about its share of the requests
// that succeeded and every one that failed.
func TestAccessLogSample(t *testing.T) {
	backend := testutil.StartServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/fail" {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	for _, tt := range []struct {
		sample float64
		lo, hi int // accepted count of the ok lines among okCount
	}{
		// Binomial(400, 0.5) is outside 140..260 with a probability
		// below 1e-9; 400 draws of 1e-9 all miss with 1 - 4e-7.
		{1, 400, 400},
		{0.5, 140, 260},
		{1e-9, 0, 0},
	} {
		t.Run(strconv.FormatFloat(tt.sample, 'g', -1, 64), func(t *testing.T) {
			const okCount, failCount = 400, 20
			cfg := catchAll(&config.Pool{Name: "web", Balancer: config.Balancer{Type: "round-robin"},
				Backends: []config.Backend{{URL: backend, Name: "b", Weight: 1}}})
			cfg.Log.Access, cfg.Log.AccessSample = true, tt.sample
			log, logs := observed()
			_, u := startProxy(t, cfg, log)
			c := testutil.Client(t)
			for i := range okCount + failCount {
				path := "/ok"
				if i%((okCount+failCount)/failCount) == 0 {
					path = "/fail"
				}
				get(t, c, u.String()+path, nil)
			}
			var ok, failed int
			for _, e := range entries(logs, "request") {
				if e.ContextMap()["status"] == int64(http.StatusServiceUnavailable) {
					failed++
				} else {
					ok++
				}
			}
			if failed != failCount || ok < tt.lo || ok > tt.hi {
				t.Errorf("logged %d failed (want all %d) and %d ok (want %d..%d)", failed, failCount, ok, tt.lo, tt.hi)
			}
		})
	}
}

// slowLoggedProxy is a proxy with the access log on, sampling so thinly
// that only the failures it always keeps are logged, to a backend that
// answers no request, signalling each on started.
func slowLoggedProxy(t *testing.T) (*Server, *url.URL, <-chan struct{}, *observer.ObservedLogs) {
	t.Helper()
	bu, started, _ := blockingBackend(t)
	cfg := catchAll(&config.Pool{Name: "web", Balancer: config.Balancer{Type: "round-robin"},
		Backends: []config.Backend{{URL: bu, Name: "slow"}}})
	cfg.Log.Access, cfg.Log.AccessSample = true, 1e-9
	log, logs := observed()
	s, u := startProxy(t, cfg, log)
	return s, u, started, logs
}

// TestClientCancelIsNotABackendError: a client that gives up before the
// response is logged as 499, not cut off, and kept by any sample as a
// failure; it is counted as a client abort, not as a response of the
// backend's.
func TestClientCancelIsNotABackendError(t *testing.T) {
	s, u, started, logs := slowLoggedProxy(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String()+"/", nil)
		if err == nil {
			var resp *http.Response
			if resp, err = testutil.Client(t).Do(req); err == nil {
				_ = resp.Body.Close()
			}
		}
		done <- err
	}()
	<-started
	cancel()
	if err := <-done; err == nil {
		t.Fatal("canceled request succeeded")
	}
	testutil.Eventually(t, waitFor, "access line for the canceled request", func() bool {
		return len(entries(logs, "request")) == 1
	})
	if m := entries(logs, "request")[0].ContextMap(); m["status"] != int64(statusClientClosed) || m["aborted"] != false {
		t.Errorf("access line %v, want status %d, not aborted", m, statusClientClosed)
	}
	if n := len(entries(logs, "backend request failed")); n != 0 {
		t.Errorf("client cancel logged %d backend failures", n)
	}
	st := statsOf(s.state.Load().pools[0].backends[0])
	if st.aborts.Load() != 1 || st.requests() != 0 {
		t.Errorf("%d client aborts and %d responses counted, want 1 and 0", st.aborts.Load(), st.requests())
	}
}

// A request that drain_timeout cuts before its backend answered is logged
// 499 like a client's abort, but counted as what it is: closed by the
// drain (affinity_drain_closed_total), not a client abort.
func TestDrainCutIsNoClientAbort(t *testing.T) {
	bu, started, _ := blockingBackend(t)
	cfg := catchAll(&config.Pool{Name: "web", Balancer: config.Balancer{Type: "round-robin"},
		Backends: []config.Backend{{URL: bu, Name: "slow"}}})
	cfg.DrainTimeout = 100 * time.Millisecond
	cfg.Log.Access = true
	log, logs := observed()
	s, u, admin := startWithAdmin(t, cfg, log)
	done := make(chan error, 1)
	go func() {
		resp, err := testutil.Client(t).Get(u.String() + "/")
		if err == nil {
			_ = resp.Body.Close()
		}
		done <- err
	}()
	<-started
	mustSetState(t, admin, "web", "slow", config.StateDrain)
	if err := <-done; err == nil {
		t.Fatal("the request to the draining backend was answered, want it cut")
	}
	testutil.Eventually(t, waitFor, "access line for the cut request", func() bool {
		return len(accessLines(logs)) == 1
	})
	if m := accessLines(logs)[0].ContextMap(); m["status"] != int64(statusClientClosed) {
		t.Errorf("access line %v, want status %d", m, statusClientClosed)
	}
	st := statsOf(s.state.Load().pools[0].backends[0])
	if st.aborts.Load() != 0 || st.cut.Load() != 1 {
		t.Errorf("%d client aborts and %d drain cuts counted, want 0 and 1", st.aborts.Load(), st.cut.Load())
	}
}

// 499 is what the access log records for a request whose client's side
// ended before the answer (nginx's code), never a status written to the
// client: a client that half-closes after a whole request is taken as gone,
// as Go's server (which cancels the request then), nginx and Envoy take
// it, and its connection closed without an answer; before, it read
// "HTTP/1.1 499 status code 499". Over HTTP/1, with a GET and a POST.
func TestHalfCloseAnsweredNothing(t *testing.T) {
	s, u, started, logs := slowLoggedProxy(t)
	for i, req := range []string{
		"GET /x HTTP/1.1\r\nHost: app.example\r\n\r\n",
		"POST /x HTTP/1.1\r\nHost: app.example\r\nContent-Length: 5\r\n\r\nhello",
	} {
		conn, err := net.Dial("tcp", u.Host)
		if err != nil {
			t.Fatal(err)
		}
		_ = conn.SetDeadline(time.Now().Add(waitFor))
		if _, err := io.WriteString(conn, req); err != nil {
			t.Fatal(err)
		}
		<-started
		if err := conn.(*net.TCPConn).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(conn)
		_ = conn.Close()
		if err != nil || len(got) != 0 {
			t.Fatalf("%q then half-close: read %q, %v; want the connection closed without an answer", req, got, err)
		}
		testutil.Eventually(t, waitFor, "access line", func() bool { return len(entries(logs, "request")) == i+1 })
		line := entries(logs, "request")[i].ContextMap()
		if line["status"] != int64(statusClientClosed) || line["aborted"] != false {
			t.Errorf("access line %v, want status %d, not aborted (no status line was sent)", line, statusClientClosed)
		}
	}
	if n := statsOf(s.state.Load().pools[0].backends[0]).aborts.Load(); n != 2 {
		t.Errorf("%d client aborts counted, want 2", n)
	}
	if n := len(entries(logs, "backend request failed")); n != 0 {
		t.Errorf("%d backend failures logged, want none", n)
	}
}

// A body that outlasts server.read_timeout is answered 408 Request
// Timeout, the connection closed, over HTTP/1 and HTTP/2: the client is
// there to read it, too slow, not gone (it was answered 499, and over
// HTTP/1 later 400). No backend is blamed.
func TestReadTimeoutMidBody(t *testing.T) {
	b := testutil.StartBackend(t, "a")
	pc := poolOf("web", "round-robin", balancer.Options{}, b)
	passive := config.DefaultPassive()
	passive.Failures = 1
	pc.Passive = &passive
	cfg := catchAll(pc)
	cfg.Server.ReadTimeout = 200 * time.Millisecond
	log, logs := observed()
	t.Run("HTTP/1", func(t *testing.T) {
		_, u := startProxy(t, cfg, log)
		// The rest of the body never comes: rawExchange reads until the
		// proxy closes the connection.
		rs := rawExchange(t, u.Host, "POST /upload HTTP/1.1\r\nHost: app.example\r\nContent-Length: 10\r\n\r\nabcde")
		if len(rs) != 1 || rs[0].StatusCode != http.StatusRequestTimeout {
			var statuses []int
			for _, r := range rs {
				statuses = append(statuses, r.StatusCode)
			}
			t.Fatalf("statuses %v, want one 408", statuses)
		}
	})
	t.Run("HTTP/2", func(t *testing.T) {
		_, addr, cert := startH2Proxy(t, cfg)
		r := dialH2(t, addr, cert).stream(h2Fields(map[string]string{":method": "POST"}, field{"content-length", "10"}), "abcde", false)
		if r.status != http.StatusRequestTimeout {
			t.Fatalf("answer %+v, want 408", r)
		}
	})
	if n := len(entries(logs, "backend request failed")) + len(entries(logs, "backend ejected")); n != 0 {
		t.Errorf("%d backend failures and ejections logged, want none", n)
	}
}

// TestServeHTTPUnderAnotherServer covers requests that do not come through
// Serve, whose connections carry no exchange.
func TestServeHTTPUnderAnotherServer(t *testing.T) {
	bs := startBackends(t, "a", "b")
	cfg := catchAll(poolOf("web", "round-robin", balancer.Options{}, bs...))
	cfg.Pools[0].Backends = append(cfg.Pools[0].Backends, config.Backend{URL: testutil.ClosedURL(t), Name: "gone"})
	log, logs := observed()
	s, err := NewServer(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	front := httptest.NewServer(s)
	defer front.Close()
	c := testutil.Client(t)
	var got []string
	for range 3 {
		got = append(got, get(t, c, front.URL, nil).body)
	}
	if want := []string{"a", "b", "502 Bad Gateway\n"}; !slices.Equal(got, want) {
		t.Errorf("answers %q, want %q", got, want)
	}
	fails := entries(logs, "backend request failed")
	if len(fails) != 1 || fails[0].ContextMap()["backend"] != "gone" {
		t.Errorf("failure lines = %v, want one naming backend gone", fails)
	}

	// Straight through ServeHTTP too, as a unit test would.
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
	if rec.Code != http.StatusOK || rec.Body.String() != "a" {
		t.Errorf("ServeHTTP = %d %q, want 200 a", rec.Code, rec.Body.String())
	}
	if err := s.Shutdown(context.Background()); err != nil {
		t.Error(err)
	}
}

func TestBackendCountersBalanced(t *testing.T) {
	bu, started, release := blockingBackend(t)
	cfg := catchAll(&config.Pool{Name: "web", Balancer: config.Balancer{Type: "round-robin"},
		Backends: []config.Backend{{URL: bu, Name: "slow"}}})
	s, u := startProxy(t, cfg, nil)
	p := s.state.Load().pools[0]
	b := p.backends[0]
	done := make(chan struct{})
	go func() {
		defer close(done)
		resp, err := testutil.Client(t).Get(u.String())
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
		}
	}()
	<-started
	if b.InFlight() != 1 || p.group.InFlight() != 1 {
		t.Errorf("during the request: backend %d, pool %d in flight; want 1, 1", b.InFlight(), p.group.InFlight())
	}
	release()
	<-done
	testutil.Eventually(t, waitFor, "in-flight counters back to 0", func() bool {
		return b.InFlight() == 0 && p.group.InFlight() == 0
	})
}

func TestExchangeFor(t *testing.T) {
	connCtx := connContext(context.Background(), nil)
	conn := exchangeOf(connCtx)
	if conn == nil {
		t.Fatal("connContext carries no exchange")
	}
	b := testutil.StartBackend(t, "a")
	s, err := NewServer(catchAll(poolOf("web", "round-robin", balancer.Options{}, b)), nil)
	if err != nil {
		t.Fatal(err)
	}
	http1 := httptest.NewRequest(http.MethodGet, "/", nil).WithContext(connCtx)
	if ex, r, done := s.exchangeFor(http1); ex != conn || r != http1 || done != nil || ex.client == nil {
		t.Error("an HTTP/1 request does not reuse its connection's exchange and client")
	}
	http2 := http1.Clone(connCtx)
	http2.ProtoMajor = 2
	foreign := httptest.NewRequest(http.MethodGet, "/", nil)
	for _, r := range []*http.Request{http2, foreign} {
		ex, out, done := s.exchangeFor(r)
		if ex == conn || ex == nil || exchangeOf(out.Context()) != ex || ex.client == nil || ex.client == conn.client {
			t.Fatalf("HTTP/%d request: no exchange and client of its own", r.ProtoMajor)
		}
		if !detached(s, ex.client) {
			t.Error("a request's own client is not where the drainer looks")
		}
		done()
		if detached(s, ex.client) || out.Context().Err() == nil {
			t.Error("done left the request's client registered, or its context running")
		}
	}

	// Serve wires connContext, and a request leaves the exchange clear for
	// the next one on its connection, but for its client.
	served := exchangeOf(s.http.ConnContext(context.Background(), nil))
	if served == nil {
		t.Fatal("the server's connections carry no exchange")
	}
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil).WithContext(connCtx))
	if rec.Code != http.StatusOK || rec.Body.String() != "a" {
		t.Errorf("ServeHTTP = %d %q", rec.Code, rec.Body.String())
	}
	if *conn != (exchange{client: conn.client}) || conn.client.backend.Load() != nil {
		t.Errorf("exchange after the request = %+v, want it clear", *conn)
	}
	if err := s.Shutdown(context.Background()); err != nil {
		t.Error(err)
	}

	// With the access log, which borrows the exchange's writer wrapper.
	cfg := catchAll(poolOf("web", "round-robin", balancer.Options{}, b))
	cfg.Log.Access = true
	log, logs := observed()
	logged, err := NewServer(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	rec = httptest.NewRecorder()
	logged.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil).WithContext(connCtx))
	if rec.Code != http.StatusOK || logs.FilterMessage("request").Len() != 1 {
		t.Errorf("logged ServeHTTP = %d with %d access lines", rec.Code, logs.FilterMessage("request").Len())
	}
	if *conn != (exchange{client: conn.client}) {
		t.Errorf("exchange after a logged request = %+v, want it clear", *conn)
	}
	if err := logged.Shutdown(context.Background()); err != nil {
		t.Error(err)
	}
}

// detached reports whether c is in s's set of requests with a client of
// their own.
func detached(s *Server, c *client) bool {
	found := false
	s.detached.each(func(d *client) { found = found || d == c })
	return found
}

func TestAccessLogRecordsCutOffResponse(t *testing.T) {
	bu := testutil.StartServer(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Length", "100")
		_, _ = io.WriteString(w, "0123456789")
		_ = http.NewResponseController(w).Flush()
		panic(http.ErrAbortHandler) // the backend dies mid-body
	}))
	cfg := catchAll(&config.Pool{Name: "web", Balancer: config.Balancer{Type: "round-robin"},
		Backends: []config.Backend{{URL: bu, Name: "flaky"}}})
	cfg.Log.Access = true
	log, logs := observed()
	_, u := startProxy(t, cfg, log)
	// The proxy drops the connection, before or after its header left
	// depending on buffering; either way the client must see a failure.
	resp, err := testutil.Client(t).Get(u.String())
	if err == nil {
		_, err = io.ReadAll(resp.Body)
		_ = resp.Body.Close()
	}
	if err == nil {
		t.Error("client read a cut-off response without error")
	}
	testutil.Eventually(t, waitFor, "access line for the cut-off response", func() bool {
		return len(entries(logs, "request")) == 1
	})
	m := entries(logs, "request")[0].ContextMap()
	if m["aborted"] != true || m["status"] != int64(200) || m["bytes"] != int64(10) || m["backend"] != "flaky" {
		t.Errorf("access line = %v, want aborted 200 after 10 bytes from flaky", m)
	}
}
