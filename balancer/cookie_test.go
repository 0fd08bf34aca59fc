package balancer

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
)

// cookieRequest returns a request carrying the given Cookie header lines.
func cookieRequest(lines ...string) *http.Request {
	r := httptest.NewRequest("GET", "/", nil)
	for _, l := range lines {
		r.Header.Add("Cookie", l)
	}
	return r
}

// parseSetCookie parses a Pick's Set-Cookie header or fails the test.
func parseSetCookie(t testing.TB, v string) *http.Cookie {
	t.Helper()
	c, err := http.ParseSetCookie(v)
	if err != nil {
		t.Fatalf("ParseSetCookie(%q): %v", v, err)
	}
	return c
}

func buildCookie(t testing.TB, s Set) Picker {
	t.Helper()
	return mustPolicy(t, "cookie", cookieOpts()).Build(s)
}

// tokenPart strips the variant from a cookie value, leaving the token that
// names the backend.
func tokenPart(v string) string {
	if n := len(v); n >= 2 && v[n-2] == '.' {
		return v[:n-2]
	}
	return v
}

// tokenOf returns the token that names the backend id; as a cookie value
// alone it counts as variant 0.
func tokenOf(t testing.TB, all []*Backend, id string) string {
	t.Helper()
	i := slices.IndexFunc(all, func(b *Backend) bool { return b.ID == id })
	if i < 0 {
		t.Fatalf("no backend %q", id)
	}
	pk := mustPick(t, buildCookie(t, Set{All: all, Available: all[i : i+1]}), cookieRequest())
	return tokenPart(parseSetCookie(t, pk.SetCookie).Value)
}

func TestCookieSticky(t *testing.T) {
	bs := testBackends(nil, 1, 1, 1)
	p := buildCookie(t, allAvailable(bs))
	for client := range 6 {
		first := mustPick(t, p, cookieRequest())
		if first.Sticky != StickyNew || first.SetCookie == "" {
			t.Fatalf("client %d first pick %+v: want a new cookie", client, first)
		}
		c := parseSetCookie(t, first.SetCookie)
		for range 50 {
			pk := mustPick(t, p, cookieRequest("other=1; "+c.Name+"="+c.Value))
			if pk.Backend != first.Backend || pk.Sticky != StickyKept || pk.SetCookie != "" {
				t.Fatalf("client %d with cookie: %+v, want kept on %s without Set-Cookie", client, pk, first.Backend.ID)
			}
		}
	}
}

// Tokens derive from IDs only: reordering the config, or a second replica
// building its own picker, keeps every client where it was.
func TestCookieTokenStable(t *testing.T) {
	bs := testBackends(nil, 1, 2, 3, 1)
	shuffled := []*Backend{bs[2], bs[0], bs[3], bs[1]}
	a := buildCookie(t, allAvailable(bs))
	b := buildCookie(t, allAvailable(shuffled))
	for range 20 {
		pk := mustPick(t, a, cookieRequest())
		other := mustPick(t, b, cookieRequest("aff="+parseSetCookie(t, pk.SetCookie).Value))
		if other.Backend.ID != pk.Backend.ID || other.Sticky != StickyKept {
			t.Fatalf("cookie from replica A for %s sent to %s (%v) by replica B", pk.Backend.ID, other.Backend.ID, other.Sticky)
		}
	}
}

func TestCookieTokenHidesAddress(t *testing.T) {
	bs := testBackends(nil, 1, 1, 1)
	seen := map[string]bool{}
	for _, b := range bs {
		tok := tokenOf(t, bs, b.ID)
		if len(tok) != 16 || strings.Trim(tok, "0123456789abcdef") != "" {
			t.Errorf("%s: token %q, want 16 hex digits", b.ID, tok)
		}
		for _, leak := range []string{b.URL.Host, b.URL.Port(), b.URL.String(), b.ID} {
			if strings.Contains(tok, leak) {
				t.Errorf("%s: token %q contains %q", b.ID, tok, leak)
			}
		}
		if seen[tok] {
			t.Errorf("%s: token %q shared with another backend", b.ID, tok)
		}
		seen[tok] = true
	}
}

func TestCookieMalformed(t *testing.T) {
	bs := testBackends(nil, 1, 1, 1)
	valid := tokenOf(t, bs, "b1")
	many := strings.Repeat("x=1; ", 1000)
	tests := []struct {
		name   string
		lines  []string
		sticky Sticky // StickyKept means b1, StickyNew a fresh pick
	}{
		{"no cookie", nil, StickyNew},
		{"other cookies only", []string{"a=1; b=2"}, StickyNew},
		{"empty value", []string{"aff="}, StickyNew},
		{"name only", []string{"aff"}, StickyNew},
		{"empty header", []string{""}, StickyNew},
		{"garbage bytes", []string{"aff=\x00\xff\x01;;;==\"\\"}, StickyNew},
		{"very long", []string{"aff=" + strings.Repeat("a", 1<<20)}, StickyNew},
		{"unknown token", []string{"aff=0123456789abcdef"}, StickyNew},
		{"token upper case", []string{"aff=" + strings.ToUpper(valid)}, StickyNew},
		{"token prefix", []string{"aff=" + valid[:15]}, StickyNew},
		{"token with suffix", []string{"aff=" + valid + "0"}, StickyNew},
		{"token with a variant not a hex digit", []string{"aff=" + valid + ".g"}, StickyNew},
		{"token with a variant", []string{"aff=" + valid + ".7"}, StickyKept},
		{"unbalanced quote", []string{`aff="` + valid}, StickyNew},
		{"lone quote", []string{`aff="`}, StickyNew},
		{"name case differs", []string{"AFF=" + valid}, StickyNew},
		{"name as suffix", []string{"xaff=" + valid}, StickyNew},
		{"valid", []string{"aff=" + valid}, StickyKept},
		{"quoted valid", []string{`aff="` + valid + `"`}, StickyKept},
		{"spaces around", []string{"  aff = " + valid + " ;"}, StickyKept},
		{"among many", []string{many + "aff=" + valid + "; " + many}, StickyKept},
		{"second header line", []string{"a=1", "aff=" + valid}, StickyKept},
		{"duplicate, first valid", []string{"aff=" + valid + "; aff=junk"}, StickyKept},
		{"duplicate, first junk", []string{"aff=junk; aff=" + valid}, StickyNew},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := buildCookie(t, allAvailable(bs))
			pk := mustPick(t, p, cookieRequest(tt.lines...))
			if pk.Sticky != tt.sticky {
				t.Fatalf("Sticky = %v, want %v", pk.Sticky, tt.sticky)
			}
			switch tt.sticky {
			case StickyKept:
				if pk.Backend.ID != "b1" || pk.SetCookie != "" {
					t.Errorf("pick %s with Set-Cookie %q, want b1 without", pk.Backend.ID, pk.SetCookie)
				}
			default:
				if got := tokenPart(parseSetCookie(t, pk.SetCookie).Value); got != tokenOf(t, bs, pk.Backend.ID) {
					t.Errorf("new pick %s got cookie %q, not its token", pk.Backend.ID, got)
				}
			}
		})
	}
}

func TestCookieRepinsUnavailable(t *testing.T) {
	bs := testBackends(nil, 1, 1, 1)
	down := tokenOf(t, bs, "b1")
	p := buildCookie(t, Set{All: bs, Available: []*Backend{bs[0], bs[2]}})
	got := map[string]int{}
	for v := range cookieVariants {
		cookie := "aff=" + down + "." + hexDigits[v:v+1]
		pk := mustPick(t, p, cookieRequest(cookie))
		if pk.Sticky != StickyRepinned || pk.Backend.ID == "b1" {
			t.Fatalf("cookie for a down backend: %+v, want repinned elsewhere", pk)
		}
		if c := parseSetCookie(t, pk.SetCookie).Value; c != tokenOf(t, bs, pk.Backend.ID)+"."+hexDigits[v:v+1] {
			t.Fatalf("repinned to %s with cookie %q, not its token with variant %d", pk.Backend.ID, c, v)
		}
		// The same client is moved to the same place every time, so
		// concurrent requests of one client agree.
		if again := mustPick(t, p, cookieRequest(cookie)); again.Backend != pk.Backend {
			t.Fatalf("variant %d repinned to %s, then to %s", v, pk.Backend.ID, again.Backend.ID)
		}
		got[pk.Backend.ID]++
	}
	if got["b0"] < 4 || got["b2"] < 4 {
		t.Errorf("repinned variants %v, want both available backends to take a fair part", got)
	}
	// Once repinned, the client stays on its new backend even after the
	// old one returns: moving it back would lose its session a second time.
	newVal := parseSetCookie(t, mustPick(t, p, cookieRequest("aff="+down)).SetCookie).Value
	back := mustPick(t, buildCookie(t, allAvailable(bs)), cookieRequest("aff="+newVal))
	if back.Sticky != StickyKept || back.Backend.ID == "b1" {
		t.Errorf("after b1 returns, repinned client went to %s (%v)", back.Backend.ID, back.Sticky)
	}
}

func TestCookieNewClientsSpread(t *testing.T) {
	bs := testBackends(nil, 1, 2, 1, 1)
	p := buildCookie(t, allAvailable(bs))
	got := map[string]int{}
	for range 500 {
		got[mustPick(t, p, cookieRequest()).Backend.ID]++
	}
	want := map[string]int{"b0": 100, "b1": 200, "b2": 100, "b3": 100}
	for id, n := range want {
		if got[id] != n {
			t.Errorf("new clients per backend %v, want %v", got, want)
			break
		}
	}
}

// The clients of a backend that becomes unavailable are spread over the
// others by their cookies' variants, whatever the size and weights of the
// pool: a backend's new clients get all sixteen variants in turn, so they
// move to as many successors as its variants have; and every replica
// moves each of them to the same one.
func TestCookieRepinsSpread(t *testing.T) {
	tests := []struct {
		name    string
		weights []int
	}{
		{"2 backends", []int{1, 1}},
		{"4 backends", []int{1, 1, 1, 1}},
		{"8 backends", []int{1, 1, 1, 1, 1, 1, 1, 1}},
		{"16 backends", []int{1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1}},
		{"weighted", []int{4, 2, 1, 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bs := testBackends(nil, tt.weights...)
			p := buildCookie(t, allAvailable(bs))
			// Enough new clients for b0 to get each variant 3 times.
			total := 0
			for _, w := range tt.weights {
				total += w
			}
			var cookies []string // of b0's clients
			variants := map[string]int{}
			for range 3 * cookieVariants * total / tt.weights[0] {
				pk := mustPick(t, p, cookieRequest())
				if pk.Backend == bs[0] {
					c := parseSetCookie(t, pk.SetCookie).Value
					cookies = append(cookies, c)
					variants[c[len(c)-1:]]++
				}
			}
			for v := range cookieVariants {
				if n := variants[hexDigits[v:v+1]]; n != 3 {
					t.Fatalf("b0's new clients got variants %v, want each of the %d three times", variants, cookieVariants)
				}
			}
			if len(bs) == 2 {
				return // one successor, whatever the variants
			}
			rest := Set{All: bs, Available: bs[1:]}
			down, replica := buildCookie(t, rest), buildCookie(t, rest)
			moved, successors := map[string]int{}, map[string]bool{}
			for _, c := range cookies {
				pk := expectRepin(t, down, c)
				if again := expectRepin(t, replica, c); again.Backend.ID != pk.Backend.ID || again.SetCookie != pk.SetCookie {
					t.Errorf("cookie %s: moved to %s by one replica, %s by another", c, pk.Backend.ID, again.Backend.ID)
				}
				moved[pk.Backend.ID]++
				successors[pk.Backend.ID] = true
			}
			// Each variant's successor, as the rendezvous ranks them.
			want := map[string]bool{}
			for v := range cookieVariants {
				pk := expectRepin(t, down, tokenOf(t, bs, "b0")+"."+hexDigits[v:v+1])
				want[pk.Backend.ID] = true
			}
			if len(want) < 2 {
				t.Fatalf("the %d variants of b0 all have the successor %v: the test proves nothing", cookieVariants, want)
			}
			if len(successors) != len(want) {
				t.Errorf("b0's clients moved to %v, want them over %d backends, as its variants go", moved, len(want))
			}
		})
	}
}

// expectRepin picks for a request carrying the cookie value c, which must
// be moved to another backend.
func expectRepin(t *testing.T, p Picker, c string) Pick {
	t.Helper()
	pk := mustPick(t, p, cookieRequest("aff="+c))
	if pk.Sticky != StickyRepinned {
		t.Fatalf("cookie %s: %+v, want repinned", c, pk)
	}
	return pk
}

// New clients whose first backend fails before they hold a cookie are
// spread over the others too, each given a variant of its own.
func TestCookieRepinsSpreadNewClients(t *testing.T) {
	bs := testBackends(nil, 1, 1, 1, 1, 1)
	pn := buildCookie(t, allAvailable(bs)).(Pinner)
	moved := map[string]int{}
	for range 4 * cookieVariants {
		b, setCookie, ok := pn.Repin(cookieRequest(), []*Backend{bs[0]})
		if !ok || b == bs[0] {
			t.Fatalf("Repin off b0 = %v, %v", b, ok)
		}
		if c := parseSetCookie(t, setCookie).Value; !strings.HasPrefix(c, tokenOf(t, bs, b.ID)+".") {
			t.Fatalf("moved to %s with cookie %q", b.ID, c)
		}
		moved[b.ID]++
	}
	if len(moved) < 3 {
		t.Errorf("new clients of the failed b0 moved to %v, want them spread over most of the 4 others", moved)
	}
}

func TestCookieNoBackend(t *testing.T) {
	bs := testBackends(nil, 1, 1)
	tok := tokenOf(t, bs, "b0")
	p := buildCookie(t, Set{All: bs})
	for _, r := range []*http.Request{cookieRequest(), cookieRequest("aff=" + tok)} {
		if _, err := p.Pick(r); !errors.Is(err, ErrNoBackend) {
			t.Errorf("Pick with nothing available: %v, want ErrNoBackend", err)
		}
	}
}

func TestCookieAttributes(t *testing.T) {
	tests := []struct {
		name string
		opts CookieOptions
	}{
		{"session", CookieOptions{Name: "s"}},
		{"all set", CookieOptions{Name: "route", Path: "/app", Domain: "example.com", MaxAge: 3600,
			Secure: true, HTTPOnly: true, SameSite: http.SameSiteStrictMode}},
		{"lax", CookieOptions{Name: "r", Path: "/", SameSite: http.SameSiteLaxMode, HTTPOnly: true}},
		{"none", CookieOptions{Name: "r", SameSite: http.SameSiteNoneMode, Secure: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := mustPolicy(t, "cookie", Options{Cookie: tt.opts}).Build(allAvailable(testBackends(nil, 1)))
			c := parseSetCookie(t, mustPick(t, p, cookieRequest()).SetCookie)
			o := tt.opts
			if c.Name != o.Name || c.Path != o.Path || c.Domain != o.Domain || c.MaxAge != o.MaxAge ||
				c.Secure != o.Secure || c.HttpOnly != o.HTTPOnly || c.SameSite != o.SameSite {
				t.Errorf("Set-Cookie parsed as %+v, want options %+v", c, o)
			}
		})
	}
}

func FuzzCookiePick(f *testing.F) {
	bs := testBackends(nil, 1, 2, 1, 3)
	avail := []*Backend{bs[0], bs[1], bs[3]}
	p := buildCookie(f, Set{All: bs, Available: avail})
	tokens := map[*Backend]string{}
	for _, b := range bs {
		tokens[b] = tokenOf(f, bs, b.ID)
		f.Add("aff=" + tokens[b])
	}
	for _, s := range []string{"", "aff=", `aff="`, `aff=""`, "aff=x; aff=y", ";;;", "=aff", "aff==", "\x00aff=\xff"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, header string) {
		pk, err := p.Pick(cookieRequest(header))
		if err != nil || !slices.Contains(avail, pk.Backend) {
			t.Fatalf("Pick(%q) = %+v, %v: want an available backend", header, pk, err)
		}
		if (pk.Sticky == StickyKept) != (pk.SetCookie == "") {
			t.Fatalf("Pick(%q) = %+v: Set-Cookie must be set unless kept", header, pk)
		}
		if pk.Sticky == StickyKept && !strings.Contains(header, tokens[pk.Backend]) {
			t.Fatalf("Pick(%q) kept on %s without its token", header, pk.Backend.ID)
		}
	})
}

// A retry that moves a request off its failed backend (Repin, with that
// backend still available) lands where the client's next request goes once
// the backend is marked down (Pick), and carries the same cookie: the client
// moves once, whichever request of it comes first.
func TestCookieRepinAgreesWithPick(t *testing.T) {
	bs := testBackends(nil, 1, 1, 1, 1, 1)
	up := buildCookie(t, allAvailable(bs))
	pn, ok := up.(Pinner)
	if !ok {
		t.Fatal("the cookie picker does not implement Pinner")
	}
	for _, failed := range bs {
		var rest []*Backend
		for _, b := range bs {
			if b != failed {
				rest = append(rest, b)
			}
		}
		down := buildCookie(t, Set{All: bs, Available: rest})
		for v := range cookieVariants {
			r := cookieRequest("aff=" + tokenOf(t, bs, failed.ID) + "." + hexDigits[v:v+1])
			b, setCookie, ok := pn.Repin(r, []*Backend{failed})
			if !ok || b == failed {
				t.Fatalf("Repin off %s = %v, %v", failed.ID, b, ok)
			}
			pk := mustPick(t, down, r)
			if pk.Backend != b || pk.SetCookie != setCookie {
				t.Errorf("%s variant %d: retry went to %s, next pick to %s", failed.ID, v, b.ID, pk.Backend.ID)
			}
			// A second retry skips both tried backends.
			b2, _, ok := pn.Repin(r, []*Backend{failed, b})
			if !ok || b2 == failed || b2 == b {
				t.Errorf("second Repin off %s and %s = %v, %v", failed.ID, b.ID, b2, ok)
			}
		}
	}
	if _, _, ok := pn.Repin(cookieRequest(), bs); ok {
		t.Error("Repin found a backend with every backend tried")
	}
	if _, ok := mustPolicy(t, "round-robin", Options{}).Build(allAvailable(bs)).(Pinner); ok {
		t.Error("round-robin pins clients")
	}
}
