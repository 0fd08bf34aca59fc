package proxy

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	"github.com/affinityproxy/affinity/balancer"
	"github.com/affinityproxy/affinity/config"
	"github.com/affinityproxy/affinity/internal/testutil"
)

func prefixes(cidrs ...string) trustedProxies {
	var t trustedProxies
	for _, c := range cidrs {
		t = append(t, netip.MustParsePrefix(c))
	}
	return t
}

func TestTrustedProxiesClient(t *testing.T) {
	trusted := prefixes("10.0.0.0/8", "2001:db8::/32")
	const peer = "10.0.0.1:5000"
	tests := []struct {
		name  string
		lines []string // X-Forwarded-For header lines
		want  string
	}{
		{"no header", nil, peer},
		{"one client", []string{"203.0.113.9"}, "203.0.113.9"},
		{"forged hops left of the client", []string{"6.6.6.6, 7.7.7.7, 203.0.113.9"}, "203.0.113.9"},
		{"trusted hop right of the client", []string{"203.0.113.9, 10.0.0.2"}, "203.0.113.9"},
		{"several lines", []string{"6.6.6.6", "203.0.113.9, 10.0.0.2"}, "203.0.113.9"},
		{"client on the earlier line", []string{"203.0.113.9", "10.0.0.2"}, "203.0.113.9"},
		{"every hop trusted", []string{"10.0.0.3, 10.0.0.2"}, "10.0.0.3"},
		{"garbage nearest", []string{"203.0.113.9, garbage"}, peer},
		{"garbage behind a trusted hop", []string{"garbage, 10.0.0.2"}, "10.0.0.2"},
		{"unknown", []string{"unknown"}, peer},
		{"empty elements and spaces", []string{" 203.0.113.9 ,, 10.0.0.2 , "}, "203.0.113.9"},
		{"blank", []string{"  "}, peer},
		{"with a port", []string{"203.0.113.9:4711"}, "203.0.113.9:4711"},
		{"IPv6 behind a trusted IPv6 hop", []string{"2001:db9::7, 2001:db8::5"}, "2001:db9::7"},
		{"bracketed IPv6 with a port", []string{"[2001:db9::7]:80"}, "[2001:db9::7]:80"},
		{"IPv4-mapped trusted hop", []string{"203.0.113.9, ::ffff:10.0.0.2"}, "203.0.113.9"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := http.Header{"X-Forwarded-For": tt.lines}
			if got := trusted.client(h, peer); got != tt.want {
				t.Errorf("client = %q, want %q", got, tt.want)
			}
			if n := testing.AllocsPerRun(50, func() { trusted.client(h, peer) }); n != 0 {
				t.Errorf("%.0f allocations, want 0", n)
			}
		})
	}
}

func TestTrustedProxiesTrusts(t *testing.T) {
	trusted := prefixes("10.0.0.0/8", "2001:db8::/32")
	tests := []struct {
		remote string
		want   bool
	}{
		{"10.1.2.3:5000", true},
		{"11.0.0.1:5000", false},
		{"[::ffff:10.0.0.1]:5000", true},
		{"[2001:db8::1]:443", true},
		{"[fe80::1%eth0]:443", false},
		{"10.0.0.1", true}, // no port, as some servers report it
		{"garbage", false},
		{"", false},
	}
	for _, tt := range tests {
		if got := trusted.trusts(tt.remote); got != tt.want {
			t.Errorf("trusts(%q) = %v, want %v", tt.remote, got, tt.want)
		}
	}
	if trustedProxies(nil).trusts("10.0.0.1:5000") {
		t.Error("an empty list trusts a peer")
	}
	if n := testing.AllocsPerRun(50, func() { trusted.trusts("10.1.2.3:5000") }); n != 0 {
		t.Errorf("trusts: %.0f allocations, want 0", n)
	}
}

func TestForwardedFor(t *testing.T) {
	tests := map[string]string{
		"10.0.0.1:5":          "for=10.0.0.1",
		"[::ffff:10.0.0.1]:5": "for=10.0.0.1",
		"[2001:db8::1]:5":     `for="[2001:db8::1]"`,
		"garbage":             "for=unknown",
	}
	for remote, want := range tests {
		if got := forwardedFor(remote); got != want {
			t.Errorf("forwardedFor(%q) = %q, want %q", remote, got, want)
		}
	}
}

// Forwarding headers from an untrusted client are replaced; a trusted
// proxy's are kept and extended with the proxy's own address.
func TestForwardingHeaders(t *testing.T) {
	forged := map[string]string{
		"X-Forwarded-For":   "6.6.6.6",
		"X-Forwarded-Proto": "https",
		"X-Forwarded-Host":  "evil.test",
		"Forwarded":         "for=6.6.6.6;proto=https",
	}
	tests := []struct {
		name    string
		trusted []string
		send    map[string]string
		want    map[string]string
	}{
		{"no trusted proxies", nil, forged, map[string]string{
			"X-Forwarded-For": "127.0.0.1", "X-Forwarded-Proto": "http", "X-Forwarded-Host": "shop.example.com", "Forwarded": "",
		}},
		{"peer not trusted", []string{"10.0.0.0/8"}, forged, map[string]string{
			"X-Forwarded-For": "127.0.0.1", "X-Forwarded-Proto": "http", "X-Forwarded-Host": "shop.example.com", "Forwarded": "",
		}},
		{"peer trusted", []string{"10.0.0.0/8", "127.0.0.0/8"}, forged, map[string]string{
			"X-Forwarded-For": "6.6.6.6, 127.0.0.1", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.test",
			"Forwarded": "for=6.6.6.6;proto=https, for=127.0.0.1",
		}},
		{"peer trusted, sending nothing", []string{"127.0.0.1/32"}, nil, map[string]string{
			"X-Forwarded-For": "127.0.0.1", "X-Forwarded-Proto": "http", "X-Forwarded-Host": "shop.example.com", "Forwarded": "",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := testutil.StartBackend(t, "a")
			cfg := catchAll(poolOf("web", "round-robin", balancer.Options{}, b))
			cfg.TrustedProxies = prefixes(tt.trusted...)
			_, u := startProxy(t, cfg, nil)
			r := get(t, testutil.Client(t), u.String(), func(req *http.Request) {
				req.Host = "shop.example.com"
				for k, v := range tt.send {
					req.Header.Set(k, v)
				}
			})
			if r.status != http.StatusOK {
				t.Fatalf("status %d", r.status)
			}
			got, _ := b.Last()
			for k, want := range tt.want {
				if have := strings.Join(got.Header[k], ", "); have != want {
					t.Errorf("backend saw %s %q, want %q", k, have, want)
				}
			}
		})
	}
}

// With consistent hashing on "ip", a client cannot choose its backend by
// forging X-Forwarded-For; behind a trusted proxy the real client is hashed.
func TestHashIPUsesRealClient(t *testing.T) {
	bs := startBackends(t, "a", "b", "c", "d")
	opts := balancer.Options{Hash: balancer.HashOptions{Key: "ip", VirtualNodes: 100}}
	backendFor := func(t *testing.T, c *http.Client, u, xff string) string {
		t.Helper()
		return get(t, c, u, func(req *http.Request) {
			if xff != "" {
				req.Header.Set("X-Forwarded-For", xff)
			}
		}).body
	}

	t.Run("untrusted peer", func(t *testing.T) {
		cfg := catchAll(poolOf("web", "consistent-hash", opts, bs...))
		cfg.TrustedProxies = prefixes("10.0.0.0/8")
		_, u := startProxy(t, cfg, nil)
		c := testutil.Client(t)
		own := backendFor(t, c, u.String(), "")
		for i := range 30 {
			if got := backendFor(t, c, u.String(), fmt.Sprintf("198.51.100.%d", i)); got != own {
				t.Fatalf("forged X-Forwarded-For moved the client from %s to %s", own, got)
			}
		}
	})

	t.Run("trusted peer", func(t *testing.T) {
		cfg := catchAll(poolOf("web", "consistent-hash", opts, bs...))
		cfg.TrustedProxies = prefixes("127.0.0.0/8")
		s, u := startProxy(t, cfg, nil)
		p := s.state.Load().pools[0]
		c := testutil.Client(t)
		seen := map[string]bool{}
		for i := range 30 {
			client := fmt.Sprintf("198.51.100.%d", i)
			// What the ring gives the client's own address.
			pk, err := p.pick(&http.Request{RemoteAddr: client + ":1234"})
			if err != nil {
				t.Fatal(err)
			}
			want := pk.Backend.ID
			for _, xff := range []string{client, "6.6.6.6, " + client, client + ", 127.0.0.9"} {
				if got := backendFor(t, c, u.String(), xff); got != want {
					t.Errorf("X-Forwarded-For %q: served by %s, want %s (the hash of %s)", xff, got, want, client)
				}
			}
			seen[want] = true
		}
		if len(seen) < 2 {
			t.Errorf("30 clients all hashed to %v: the client address is not what is hashed", seen)
		}
	})
}

// Trusting proxies costs the untrusted path nothing, and a trusted peer's
// request to a pool that does not hash "ip" is not copied.
func TestTrustedProxiesAddNoAllocations(t *testing.T) {
	allocs := func(t *testing.T, kind string, trusted trustedProxies, remote string) float64 {
		t.Helper()
		o := cookieOptions()
		o.Hash = balancer.HashOptions{Key: "ip", VirtualNodes: 10}
		p := &config.Pool{Name: "web", Balancer: config.Balancer{Type: kind, Options: o}}
		for i := range 2 {
			p.Backends = append(p.Backends, config.Backend{URL: testutil.ClosedURL(t), Name: fmt.Sprint(i), Weight: 1})
		}
		cfg := catchAll(p)
		cfg.TrustedProxies = trusted
		s, err := NewServer(cfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		s.retry.next = newCannedTransport()
		req := httptest.NewRequest(http.MethodGet, "/", nil).WithContext(connContext(t.Context(), nil))
		req.RemoteAddr = remote
		req.Header.Set("X-Forwarded-For", "203.0.113.9")
		w := newNullWriter()
		return testing.AllocsPerRun(100, func() {
			clear(w.h)
			s.ServeHTTP(w, req)
		})
	}
	const untrusted, trusted = "192.0.2.1:1234", "10.0.0.1:1234"
	list := prefixes("10.0.0.0/8")
	for _, kind := range []string{"round-robin", "consistent-hash"} {
		base := allocs(t, kind, nil, untrusted)
		if got := allocs(t, kind, list, untrusted); got != base {
			t.Errorf("%s: untrusted peer with trusted_proxies set: %.0f allocations, want %.0f as without", kind, got, base)
		}
	}
	if base, got := allocs(t, "round-robin", nil, trusted), allocs(t, "round-robin", list, trusted); got > base+2 {
		// The forwarding chain itself is built: X-Forwarded-For joined,
		// -Host and -Proto kept.
		t.Errorf("round-robin, trusted peer: %.0f allocations, want at most %.0f", got, base+2)
	}
}

// BenchmarkHandlerForwarding is BenchmarkHandler's round-robin and
// consistent-hash on "ip" with trusted_proxies set: the untrusted peer is
// the default path and must cost what it does without the list; a trusted
// peer pays for the forwarding chain, and, hashing "ip", for the request
// copy that carries the client's address to the picker.
func BenchmarkHandlerForwarding(b *testing.B) {
	tests := []struct {
		name, kind, remote string
	}{
		{"round-robin/untrusted", "round-robin", "192.0.2.1:1234"},
		{"round-robin/trusted", "round-robin", "10.0.0.1:1234"},
		{"hash-ip/untrusted", "consistent-hash", "192.0.2.1:1234"},
		{"hash-ip/trusted", "consistent-hash", "10.0.0.1:1234"},
	}
	for _, tt := range tests {
		b.Run(tt.name, func(b *testing.B) {
			cfg := benchConfig(b, tt.kind, false, "http://127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:3")
			cfg.Pools[0].Balancer.Options.Hash = balancer.HashOptions{Key: "ip", VirtualNodes: 160}
			cfg.TrustedProxies = prefixes("10.0.0.0/8")
			s, err := NewServer(cfg, discardLogger())
			if err != nil {
				b.Fatal(err)
			}
			s.retry.next = newCannedTransport()
			req := httptest.NewRequest(http.MethodGet, "/", nil).WithContext(connContext(b.Context(), nil))
			req.RemoteAddr = tt.remote
			req.Header.Set("X-Forwarded-For", "203.0.113.9, 10.0.0.7")
			serveLoop(b, s, req)
		})
	}
}

// A backend that reads header names as CGI does (WSGI, Rack, PHP: "_" and
// "-" alike, upper case) takes X_Forwarded_For for X-Forwarded-For, and the
// client's value, sorted after the proxy's, for the nearest hop. Every such
// spelling of the headers the proxy sets is dropped, over HTTP/1 and
// HTTP/2, whether the peer is trusted or not.
func TestForwardingHeaderSpellingsDropped(t *testing.T) {
	spellings := []field{
		{"x_forwarded_for", "6.6.6.6"}, {"x-forwarded_for", "7.7.7.7"}, {"x_forwarded-for", "8.8.8.8"},
		{"x_forwarded_host", "evil.example"}, {"x_forwarded_proto", "http"}, {"X_FORWARDED_PROTO", "gopher"},
	}
	// Names that only look alike pass.
	kept := []field{{"x_forwarded_fors", "kept"}, {"x_forwarded", "kept"}, {"forwarded_for", "kept"}}
	wantForwarded := func(t *testing.T, b *testutil.Backend, proto string) {
		t.Helper()
		got, ok := b.Last()
		if !ok {
			t.Fatal("the backend saw no request")
		}
		for name, v := range got.Header {
			canon := strings.ReplaceAll(strings.ToLower(name), "_", "-")
			if strings.HasPrefix(canon, "x-forwarded-") && strings.Contains(name, "_") && v[0] != "kept" {
				t.Errorf("backend saw %s: %q", name, v)
			}
		}
		for _, f := range kept {
			if v := got.Header.Get(f.name); v != "kept" {
				t.Errorf("backend saw %s %q, want it kept", f.name, v)
			}
		}
		want := map[string]string{"X-Forwarded-For": "127.0.0.1", "X-Forwarded-Host": "app.example", "X-Forwarded-Proto": proto}
		for k, w := range want {
			if have := strings.Join(got.Header[k], ", "); have != w {
				t.Errorf("backend saw %s %q, want %q", k, have, w)
			}
		}
	}
	for _, trusted := range []bool{false, true} {
		t.Run(fmt.Sprintf("trusted=%v", trusted), func(t *testing.T) {
			b := testutil.StartBackend(t, "a")
			cfg := catchAll(poolOf("web", "round-robin", balancer.Options{}, b))
			if trusted {
				cfg.TrustedProxies = prefixes("127.0.0.0/8")
			}
			t.Run("HTTP/1", func(t *testing.T) {
				_, u := startProxy(t, cfg, nil)
				raw := "GET / HTTP/1.1\r\nHost: app.example\r\n"
				for _, f := range append(spellings, kept...) {
					raw += f.name + ": " + f.value + "\r\n"
				}
				if rs := rawExchange(t, u.Host, raw+"Connection: close\r\n\r\n"); len(rs) != 1 || rs[0].StatusCode != http.StatusOK {
					t.Fatalf("responses %v, want one 200", rs)
				}
				wantForwarded(t, b, "http")
			})
			t.Run("HTTP/2", func(t *testing.T) {
				_, addr, cert := startH2Proxy(t, cfg)
				var fs []field
				for _, f := range append(spellings, kept...) {
					// HTTP/2 field names are lower case.
					fs = append(fs, field{strings.ToLower(f.name), f.value})
				}
				r := dialH2(t, addr, cert).request(h2Fields(nil, fs...), "")
				if r.status != http.StatusOK {
					t.Fatalf("answer %+v, want 200", r)
				}
				wantForwarded(t, b, "https")
			})
		})
	}
}
