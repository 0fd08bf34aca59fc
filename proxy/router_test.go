package proxy

import (
	"net/http"
	"net/url"
	"slices"
	"testing"

	"github.com/affinityproxy/affinity/balancer"
	"github.com/affinityproxy/affinity/config"
	"github.com/affinityproxy/affinity/internal/testutil"
)

func TestHostOnly(t *testing.T) {
	tests := []struct{ in, want string }{
		{"example.com", "example.com"},
		{"example.com:8080", "example.com"},
		{"example.com.", "example.com"},
		{"example.com.:80", "example.com"},
		{"[::1]:8080", "::1"},
		{"[::1]", "::1"},
		{"::1", "::1"},
		{"[broken", "[broken"},
		{"", ""},
	}
	for _, tt := range tests {
		if got := hostOnly(tt.in); got != tt.want {
			t.Errorf("hostOnly(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestRouterMatch(t *testing.T) {
	pools := map[string]*pool{}
	for _, n := range []string{"exact", "wild", "api", "admin", "any"} {
		pools[n] = &pool{name: n}
	}
	rt, err := newRouter([]config.Route{
		{Match: config.Match{Host: "App.Example.com:443"}, Pool: "exact"},
		{Match: config.Match{Host: "*.example.com", Path: "/admin"}, Pool: "admin"},
		{Match: config.Match{Host: "*.Example.com"}, Pool: "wild"},
		{Match: config.Match{Path: "/api/"}, Pool: "api"},
		{Pool: "any"},
	}, pools)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct{ host, path, want string }{
		{"app.example.com", "/", "exact"},
		{"APP.EXAMPLE.COM:8080", "/admin", "exact"}, // first match wins
		{"app.example.com.", "/", "exact"},
		{"shop.example.com", "/admin/users", "admin"},
		{"shop.example.com", "/", "wild"},
		{"a.b.example.com", "/", "wild"},
		{"example.com", "/", "any"}, // "*.example.com" needs a label before the suffix
		{"badexample.com", "/", "any"},
		{"example.com", "/api/v1", "api"},
		{"example.com", "/api", "any"},
		{"", "/", "any"},
	}
	for _, tt := range tests {
		got := rt.match(tt.host, tt.path)
		if got == nil || got.name != tt.want {
			t.Errorf("match(%q, %q) = %v, want %s", tt.host, tt.path, got, tt.want)
		}
	}

	strict, err := newRouter([]config.Route{{Match: config.Match{Host: "a.test"}, Pool: "exact"}}, pools)
	if err != nil {
		t.Fatal(err)
	}
	if p := strict.match("b.test", "/"); p != nil {
		t.Errorf("no route matches, yet match = %s", p.name)
	}
}

func TestRouterMatchDoesNotAllocate(t *testing.T) {
	rt, err := newRouter([]config.Route{
		{Match: config.Match{Host: "a.example.com"}, Pool: "p"},
		{Match: config.Match{Host: "*.example.com"}, Pool: "p"},
		{Match: config.Match{Path: "/api/"}, Pool: "p"},
	}, map[string]*pool{"p": {name: "p"}})
	if err != nil {
		t.Fatal(err)
	}
	allocs := testing.AllocsPerRun(100, func() {
		_ = rt.match("Shop.Example.COM:8080", "/x")
		_ = rt.match("other.test", "/api/v1")
	})
	if allocs != 0 {
		t.Errorf("match allocates %v times per call", allocs)
	}
}

func TestRouting(t *testing.T) {
	bs := startBackends(t, "exact", "wild", "api", "any")
	pool := func(b *testutil.Backend) *config.Pool {
		return poolOf(b.ID, "round-robin", balancer.Options{}, b)
	}
	routes := []config.Route{
		{Match: config.Match{Host: "app.example.com"}, Pool: "exact"},
		{Match: config.Match{Host: "*.example.com"}, Pool: "wild"},
		{Match: config.Match{Path: "/api/"}, Pool: "api"},
	}
	cfg := &config.Config{Timeouts: testTimeouts, Routes: routes,
		Pools: []*config.Pool{pool(bs[0]), pool(bs[1]), pool(bs[2]), pool(bs[3])}}
	withCatchAll := *cfg
	withCatchAll.Routes = append(slices.Clone(routes), config.Route{Pool: "any"})
	_, strict := startProxy(t, cfg, nil)
	_, loose := startProxy(t, &withCatchAll, nil)

	c := testutil.Client(t)
	tests := []struct {
		host, path string
		strict     string // body through the proxy without catch-all; "" = 404
		loose      string // with catch-all
	}{
		{"app.example.com", "/", "exact", "exact"},
		{"APP.Example.COM:8080", "/x", "exact", "exact"},
		{"shop.example.com", "/api/v1", "wild", "wild"},
		{"a.b.example.com", "/", "wild", "wild"},
		{"example.com", "/api/v1", "api", "api"},
		{"badexample.com", "/", "", "any"},
		{"other.test", "/api", "", "any"},
		{"other.test", "/", "", "any"},
	}
	for _, tt := range tests {
		for _, p := range []struct {
			base *url.URL
			want string
		}{{strict, tt.strict}, {loose, tt.loose}} {
			r := get(t, c, p.base.String()+tt.path, func(req *http.Request) { req.Host = tt.host })
			switch {
			case p.want == "" && (r.status != http.StatusNotFound || r.body != "404 Not Found\n"):
				t.Errorf("%s%s: %d %q, want 404 with a short body", tt.host, tt.path, r.status, r.body)
			case p.want != "" && r.body != p.want:
				t.Errorf("%s%s: %d %q, want %s", tt.host, tt.path, r.status, r.body, p.want)
			}
		}
	}
}
