package balancer

import (
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"slices"
	"testing"
)

// testBackends returns backends b0, b1, … with the given weights, counted in
// g when it is not nil.
func testBackends(g *Group, weights ...int) []*Backend {
	bs := make([]*Backend, len(weights))
	for i, w := range weights {
		u := &url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", 9000+i)}
		bs[i] = NewBackend(fmt.Sprintf("b%d", i), u, w, g)
	}
	return bs
}

// allAvailable is a Set where every backend is available.
func allAvailable(bs []*Backend) Set {
	return Set{All: bs, Available: bs}
}

// mustPolicy makes a registered policy or fails the test.
func mustPolicy(t testing.TB, name string, o Options) Policy {
	t.Helper()
	p, err := New(name, o)
	if err != nil {
		t.Fatalf("New(%q): %v", name, err)
	}
	return p
}

// mustPick picks or fails the test.
func mustPick(t testing.TB, p Picker, r *http.Request) Pick {
	t.Helper()
	pk, err := p.Pick(r)
	if err != nil {
		t.Fatalf("Pick: %v", err)
	}
	if pk.Backend == nil {
		t.Fatal("Pick returned no backend and no error")
	}
	return pk
}

func cookieOpts() Options {
	return Options{Cookie: CookieOptions{Name: "aff", Path: "/", HTTPOnly: true, SameSite: http.SameSiteLaxMode}}
}

func hashOpts(key string) Options {
	return Options{Hash: HashOptions{Key: key, VirtualNodes: 100}}
}

func TestRegistry(t *testing.T) {
	for _, name := range []string{"round-robin", "cookie", "consistent-hash"} {
		if !Known(name) || !slices.Contains(Names(), name) {
			t.Errorf("%q not registered; have %v", name, Names())
		}
	}
	if !slices.IsSorted(Names()) {
		t.Errorf("Names() not sorted: %v", Names())
	}
	if _, err := New("least-magic", Options{}); !errors.Is(err, ErrUnknownPolicy) {
		t.Errorf("New(unknown) = %v, want ErrUnknownPolicy", err)
	}
	if Known("least-magic") {
		t.Error("Known(unregistered) = true")
	}
	defer func() {
		if recover() == nil {
			t.Error("registering round-robin twice did not panic")
		}
	}()
	Register("round-robin", func(Options) (Policy, error) { return nil, nil })
}

func TestFactoryOptions(t *testing.T) {
	cookie := func(f func(*CookieOptions)) Options {
		o := cookieOpts()
		f(&o.Cookie)
		return o
	}
	hash := func(f func(*HashOptions)) Options {
		o := hashOpts("ip")
		f(&o.Hash)
		return o
	}
	tests := []struct {
		name    string
		policy  string
		opts    Options
		wantErr error
	}{
		{"round-robin ignores options", "round-robin", Options{}, nil},
		{"cookie valid", "cookie", cookieOpts(), nil},
		{"cookie with domain and max age", "cookie", cookie(func(c *CookieOptions) { c.Domain = "example.com"; c.MaxAge = 3600 }), nil},
		{"cookie none secure", "cookie", cookie(func(c *CookieOptions) { c.SameSite = http.SameSiteNoneMode; c.Secure = true }), nil},
		{"cookie empty name", "cookie", cookie(func(c *CookieOptions) { c.Name = "" }), ErrInvalidCookie},
		{"cookie name with space", "cookie", cookie(func(c *CookieOptions) { c.Name = "a b" }), ErrInvalidCookie},
		{"cookie name with semicolon", "cookie", cookie(func(c *CookieOptions) { c.Name = "a;b" }), ErrInvalidCookie},
		{"cookie negative max age", "cookie", cookie(func(c *CookieOptions) { c.MaxAge = -1 }), ErrInvalidCookie},
		{"cookie bad path", "cookie", cookie(func(c *CookieOptions) { c.Path = "/a;b" }), ErrInvalidCookie},
		{"cookie bad domain", "cookie", cookie(func(c *CookieOptions) { c.Domain = "exa mple.com" }), ErrInvalidCookie},
		{"cookie none without secure", "cookie", cookie(func(c *CookieOptions) { c.SameSite = http.SameSiteNoneMode }), ErrInvalidCookie},
		{"hash ip", "consistent-hash", hashOpts("ip"), nil},
		{"hash path", "consistent-hash", hashOpts("path"), nil},
		{"hash header", "consistent-hash", hashOpts("header:X-User"), nil},
		{"hash cookie", "consistent-hash", hashOpts("cookie:session"), nil},
		{"hash query", "consistent-hash", hashOpts("query:user id"), nil},
		{"hash bounded", "consistent-hash", hash(func(h *HashOptions) { h.LoadFactor = 1.25 }), nil},
		{"hash empty key", "consistent-hash", hashOpts(""), ErrInvalidHash},
		{"hash unknown key", "consistent-hash", hashOpts("body"), ErrInvalidHash},
		{"hash unknown kind", "consistent-hash", hashOpts("form:x"), ErrInvalidHash},
		{"hash header without name", "consistent-hash", hashOpts("header:"), ErrInvalidHash},
		{"hash bad header name", "consistent-hash", hashOpts("header:X User"), ErrInvalidHash},
		{"hash bad cookie name", "consistent-hash", hashOpts("cookie:a=b"), ErrInvalidHash},
		{"hash query without name", "consistent-hash", hashOpts("query:"), ErrInvalidHash},
		{"hash zero virtual nodes", "consistent-hash", hash(func(h *HashOptions) { h.VirtualNodes = 0 }), ErrInvalidHash},
		{"hash huge virtual nodes", "consistent-hash", hash(func(h *HashOptions) { h.VirtualNodes = 1 << 40 }), ErrInvalidHash},
		{"hash load factor one", "consistent-hash", hash(func(h *HashOptions) { h.LoadFactor = 1 }), ErrInvalidHash},
		{"hash load factor below one", "consistent-hash", hash(func(h *HashOptions) { h.LoadFactor = 0.5 }), ErrInvalidHash},
		{"hash negative load factor", "consistent-hash", hash(func(h *HashOptions) { h.LoadFactor = -2 }), ErrInvalidHash},
		{"hash NaN load factor", "consistent-hash", hash(func(h *HashOptions) { h.LoadFactor = math.NaN() }), ErrInvalidHash},
		{"hash infinite load factor", "consistent-hash", hash(func(h *HashOptions) { h.LoadFactor = math.Inf(1) }), ErrInvalidHash},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := New(tt.policy, tt.opts)
			if tt.wantErr == nil {
				if err != nil || p == nil {
					t.Fatalf("New = %v, %v; want a policy", p, err)
				}
				return
			}
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("New = %v, want %v", err, tt.wantErr)
			}
			if p != nil {
				t.Errorf("New returned a policy along with error %v", err)
			}
		})
	}
}

func TestBackendFailureCount(t *testing.T) {
	b := testBackends(nil, 1)[0]
	if n := b.Succeed(); n != 0 {
		t.Errorf("Succeed with no failures = %d, want 0", n)
	}
	for want := int32(1); want <= 3; want++ {
		if n := b.Fail(); n != want {
			t.Errorf("Fail #%d = %d", want, n)
		}
	}
	if n := b.Succeed(); n != 3 {
		t.Errorf("Succeed after 3 failures = %d, want 3", n)
	}
	if n := b.Fail(); n != 1 {
		t.Errorf("Fail after a success = %d, want a new run of 1", n)
	}

	// The count saturates rather than wrapping around to "no failures".
	b.own.fails.Store(maxFails)
	if n := b.Fail(); n != maxFails {
		t.Errorf("Fail at the cap = %d, want %d", n, maxFails)
	}
}

func TestBackendSetFailures(t *testing.T) {
	b := testBackends(nil, 1)[0]
	for _, tt := range []struct{ set, want int32 }{{3, 3}, {0, 0}, {-5, 0}, {math.MaxInt32, maxFails}} {
		b.SetFailures(tt.set)
		if n := b.Succeed(); n != tt.want {
			t.Errorf("SetFailures(%d): Succeed = %d, want %d", tt.set, n, tt.want)
		}
	}
	b.SetFailures(2)
	if n := b.Fail(); n != 3 {
		t.Errorf("Fail after SetFailures(2) = %d, want 3", n)
	}
}

// TestReweighted: a reweighted Backend counts the requests in flight and the
// failures of the one it replaces, whichever of the two a request holds.
func TestReweighted(t *testing.T) {
	var g Group
	b := testBackends(&g, 1)[0]
	b.Stats = "stats"
	b.Begin()
	b.Fail()
	nb := b.Reweighted(3)
	if nb == b || nb.Weight != 3 || nb.ID != b.ID || nb.URL != b.URL || nb.Stats != b.Stats {
		t.Fatalf("Reweighted(3) = %+v, want another Backend of weight 3 with b's ID, URL and Stats", nb)
	}
	if nb.InFlight() != 1 || g.InFlight() != 1 {
		t.Errorf("reweighted: %d in flight (group %d), want the request begun on b", nb.InFlight(), g.InFlight())
	}
	nb.Begin()
	if n := b.Done(); n != 1 || nb.InFlight() != 1 || b.InFlight() != 1 {
		t.Errorf("after b's request ended: Done = %d, in flight %d and %d; want 1 left on both", n, nb.InFlight(), b.InFlight())
	}
	if n := nb.Done(); n != 0 || g.InFlight() != 0 {
		t.Errorf("after the last request: Done = %d, group %d; want 0", n, g.InFlight())
	}
	if n := nb.Fail(); n != 2 {
		t.Errorf("a failure on the reweighted Backend = run of %d, want 2: b's counts", n)
	}
	if again := nb.Reweighted(5); again.InFlight() != 0 || again.Succeed() != 2 || b.Fail() != 1 {
		t.Error("a Backend reweighted twice does not count with the first")
	}
}
