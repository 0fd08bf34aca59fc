package balancer

import (
	"errors"
	"strings"
	"testing"
)

const (
	testSecret  = "0123456789abcdef-replica-secret"
	otherSecret = "fedcba9876543210-rotated-secret"
)

func signedOpts(secret string) Options {
	o := cookieOpts()
	o.Cookie.Secret = secret
	return o
}

// signedTokenOf returns the cookie value a policy signed with secret gives
// a client placed on the backend id.
func signedTokenOf(t testing.TB, secret string, all []*Backend, id string) string {
	t.Helper()
	for i, b := range all {
		if b.ID == id {
			p := mustPolicy(t, "cookie", signedOpts(secret)).Build(Set{All: all, Available: all[i : i+1]})
			return tokenPart(parseSetCookie(t, mustPick(t, p, cookieRequest()).SetCookie).Value)
		}
	}
	t.Fatalf("no backend %q", id)
	return ""
}

func TestSignedCookie(t *testing.T) {
	bs := testBackends(nil, 1, 1, 1)
	valid := signedTokenOf(t, testSecret, bs, "b1")
	flipped := []byte(valid)
	flipped[len(flipped)-1] ^= 1 // still a hex digit: '0'↔'1', 'a'↔'`'…
	tests := []struct {
		name   string
		value  string
		sticky Sticky // StickyKept means b1, StickyNew a fresh pick
	}{
		{"signed token", valid, StickyKept},
		// Anyone can compute the unsigned token from the backend's name:
		// it must not steer a signed pool.
		{"unsigned token of the backend", hashToken("b1"), StickyNew},
		{"last digit altered", string(flipped), StickyNew},
		{"truncated", valid[:len(valid)-1], StickyNew},
		{"extended", valid + "0", StickyNew},
		{"signed with another secret", signedTokenOf(t, otherSecret, bs, "b1"), StickyNew},
		{"the backend ID", "b1", StickyNew},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := mustPolicy(t, "cookie", signedOpts(testSecret)).Build(allAvailable(bs))
			pk := mustPick(t, p, cookieRequest("aff="+tt.value))
			if pk.Sticky != tt.sticky {
				t.Fatalf("Sticky = %v, want %v", pk.Sticky, tt.sticky)
			}
			if tt.sticky == StickyKept {
				if pk.Backend.ID != "b1" || pk.SetCookie != "" {
					t.Errorf("pick %s with Set-Cookie %q, want b1 without", pk.Backend.ID, pk.SetCookie)
				}
				return
			}
			// A forged value is no cookie: the client is placed anew and
			// given a genuine one.
			if got, want := tokenPart(parseSetCookie(t, pk.SetCookie).Value), signedTokenOf(t, testSecret, bs, pk.Backend.ID); got != want {
				t.Errorf("new pick %s got cookie %q, want its signed token %q", pk.Backend.ID, got, want)
			}
		})
	}
}

// Replicas sharing the secret agree on every token, whatever the order of
// their backends; tokens are opaque and distinct per backend.
func TestSignedCookieTokens(t *testing.T) {
	bs := testBackends(nil, 1, 2, 3)
	shuffled := []*Backend{bs[2], bs[0], bs[1]}
	seen := map[string]string{}
	for _, b := range bs {
		tok := signedTokenOf(t, testSecret, bs, b.ID)
		if len(tok) != 2*signedTokenBytes || strings.Trim(tok, "0123456789abcdef") != "" {
			t.Errorf("%s: token %q, want %d hex digits", b.ID, tok, 2*signedTokenBytes)
		}
		if tok == hashToken(b.ID) || strings.Contains(tok, hashToken(b.ID)) {
			t.Errorf("%s: signed token %q contains the unsigned one", b.ID, tok)
		}
		if other, dup := seen[tok]; dup {
			t.Errorf("%s and %s share token %q", b.ID, other, tok)
		}
		seen[tok] = b.ID
		if again := signedTokenOf(t, testSecret, shuffled, b.ID); again != tok {
			t.Errorf("%s: token %q from a replica with reordered backends, want %q", b.ID, again, tok)
		}
		if rotated := signedTokenOf(t, otherSecret, bs, b.ID); rotated == tok {
			t.Errorf("%s: token %q unchanged by a new secret", b.ID, tok)
		}
	}
}

// A signed cookie naming a backend that is down moves the client, as an
// unsigned one does.
func TestSignedCookieRepins(t *testing.T) {
	bs := testBackends(nil, 1, 1, 1)
	down := signedTokenOf(t, testSecret, bs, "b1")
	p := mustPolicy(t, "cookie", signedOpts(testSecret)).Build(Set{All: bs, Available: []*Backend{bs[0], bs[2]}})
	pk := mustPick(t, p, cookieRequest("aff="+down))
	if pk.Sticky != StickyRepinned || pk.Backend.ID == "b1" {
		t.Fatalf("pick %+v, want repinned off b1", pk)
	}
	if got, want := tokenPart(parseSetCookie(t, pk.SetCookie).Value), signedTokenOf(t, testSecret, bs, pk.Backend.ID); got != want {
		t.Errorf("repinned with cookie %q, want %q", got, want)
	}
}

func TestSignedCookieSecretLength(t *testing.T) {
	tests := []struct {
		secret string
		ok     bool
	}{
		{"", true}, // unsigned
		{"x", false},
		{strings.Repeat("x", MinCookieSecret-1), false},
		{strings.Repeat("x", MinCookieSecret), true},
	}
	for _, tt := range tests {
		_, err := New("cookie", signedOpts(tt.secret))
		if tt.ok != (err == nil) {
			t.Errorf("secret of %d bytes: err = %v, want ok=%v", len(tt.secret), err, tt.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalidCookie) {
			t.Errorf("secret of %d bytes: error %v is not ErrInvalidCookie", len(tt.secret), err)
		}
	}
}

func TestSignedCookiePickDoesNotAllocate(t *testing.T) {
	s := benchPool(100)
	p := mustPolicy(t, "cookie", signedOpts(testSecret)).Build(s)
	tok := signedTokenOf(t, testSecret, s.All, s.Available[7].ID)
	tests := []struct {
		name   string
		cookie string
	}{
		{"kept", "a=1; aff=" + tok},
		{"forged", "aff=" + hashToken(s.Available[7].ID)},
	}
	for _, tt := range tests {
		r := cookieRequest(tt.cookie)
		if n := testing.AllocsPerRun(100, func() { _, _ = p.Pick(r) }); n != 0 {
			t.Errorf("%s: %.1f allocations per pick, want 0", tt.name, n)
		}
	}
}
