package demoapp

import (
	"io"
	"net/http"
	"regexp"
	"runtime"
	"strings"
	"testing"

	"github.com/affinityproxy/affinity/internal/testutil"
)

func TestMetricsAfterKnownSequence(t *testing.T) {
	tests := []struct {
		kind                 string
		sessions, ops, loads float64
		hits                 float64
	}{
		{kind: "memory", sessions: 1},
		// login 1, add 2, add 2, cart 1, stale cart 1, checkout 3 (the
		// order placed in Redis too); the request without a cookie never
		// reaches the store.
		{kind: "redis", ops: 10, loads: 5},
		{kind: "cached-redis", sessions: 1, ops: 10, hits: 5},
		{kind: "token"},
	}
	for _, tc := range tests {
		t.Run(tc.kind, func(t *testing.T) {
			b := newFixture(t, tc.kind).start(t, "web-1")
			s := newShopper(t, "alice")
			s.login(b.url).want(t, "login", http.StatusOK, "")
			s.add(b.url, 0, "x").want(t, "add", http.StatusOK, "1")
			s.add(b.url, 1, "y").want(t, "add", http.StatusOK, "2")
			s.cart(b.url, 2).want(t, "cart", http.StatusOK, "")
			s.cart(b.url, 5).wantError(t, "cart", http.StatusConflict, CodeSessionStale)
			newShopper(t, "bob").cart(b.url, 0).wantError(t, "cart", http.StatusConflict, CodeSessionLost)
			s.checkout(b.url, 2, "").want(t, "checkout", http.StatusOK, "2")
			// Neither health checks nor the counter are shop requests.
			testutil.WaitHTTP(t, b.url+"/healthz", answerBound)
			testutil.WaitHTTP(t, b.url+"/page", answerBound)

			wantMetrics(t, b.url, map[string]float64{
				"demoapp_sessions":                           tc.sessions,
				"demoapp_requests_total":                     7,
				"demoapp_store_ops_total":                    tc.ops,
				"demoapp_store_loads_total":                  tc.loads,
				"demoapp_cache_hits_total":                   tc.hits,
				"demoapp_cache_misses_total":                 0,
				"demoapp_orders_total":                       1,
				"demoapp_duplicate_orders_total":             0,
				`demoapp_session_errors_total{kind="lost"}`:  1,
				`demoapp_session_errors_total{kind="stale"}`: 1,
				`demoapp_session_errors_total{kind="store"}`: 0,
			})
			rss := scrape(t, b.url)["process_resident_memory_bytes"]
			if (runtime.GOOS == "linux") != (rss > 0) {
				t.Errorf("process_resident_memory_bytes = %v on %s", rss, runtime.GOOS)
			}
		})
	}
}

// Every sample is announced by HELP and TYPE lines, as Prometheus's text
// format wants.
func TestMetricsFormat(t *testing.T) {
	b := startApp(t, "web-1", Options{})
	resp, err := testutil.Client(t).Get(b.url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	sample := regexp.MustCompile(`^([a-z_]+)(\{kind="[a-z]+"\})? [0-9]+$`)
	typed := map[string]bool{}
	for line := range strings.Lines(string(body)) {
		line = strings.TrimSuffix(line, "\n")
		if rest, ok := strings.CutPrefix(line, "# TYPE "); ok {
			name, typ, _ := strings.Cut(rest, " ")
			if typ != "gauge" && typ != "counter" {
				t.Errorf("%q: unknown type", line)
			}
			if strings.HasSuffix(name, "_total") != (typ == "counter") {
				t.Errorf("%q: counters, and only they, end in _total", line)
			}
			typed[name] = true
			continue
		}
		if strings.HasPrefix(line, "# HELP ") {
			continue
		}
		m := sample.FindStringSubmatch(line)
		if m == nil {
			t.Errorf("%q: not a sample", line)
			continue
		}
		if !typed[m[1]] {
			t.Errorf("%q: no TYPE line before it", line)
		}
	}
	if len(typed) != 10 {
		t.Errorf("%d metrics, want 10:\n%s", len(typed), body)
	}
}
