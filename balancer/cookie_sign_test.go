package balancer

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"slices"
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

// signedValues returns the cookie values a policy signed with secret
// gives clients placed on the backend id, by variant.
func signedValues(t testing.TB, secret, id string) [cookieVariants]string {
	t.Helper()
	p := mustPolicy(t, "cookie", signedOpts(secret)).(*cookiePolicy)
	var vals [cookieVariants]string
	for v := range vals {
		vals[v] = p.value(id, v)
	}
	return vals
}

// signedTokenOf returns a cookie value a policy signed with secret gives a
// client placed on the backend id.
func signedTokenOf(t testing.TB, secret string, all []*Backend, id string) string {
	t.Helper()
	for i, b := range all {
		if b.ID == id {
			p := mustPolicy(t, "cookie", signedOpts(secret)).Build(Set{All: all, Available: all[i : i+1]})
			return parseSetCookie(t, mustPick(t, p, cookieRequest()).SetCookie).Value
		}
	}
	t.Fatalf("no backend %q", id)
	return ""
}

// oldSigned is the value signed cookies had when the MAC covered the
// backend but not the variant after it: such cookies now count as none.
func oldSigned(secret, id string, variant int) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(id))
	return hex.EncodeToString(m.Sum(nil)[:signedTokenBytes]) + "." + hexDigits[variant:variant+1]
}

// The whole value is signed, the variant with the backend: a client can
// change neither. Whatever it alters, the cookie counts as none.
func TestSignedCookie(t *testing.T) {
	bs := testBackends(nil, 1, 1, 1)
	valid := signedValues(t, testSecret, "b1")[5]
	flipped := []byte(valid)
	flipped[len(flipped)-1] ^= 1 // still a hex digit: '0'↔'1', 'a'↔'`'…
	tests := []struct {
		name   string
		value  string
		sticky Sticky // StickyKept means b1, StickyNew a fresh pick
	}{
		{"signed value", valid, StickyKept},
		// Anyone can compute the unsigned value from the backend's name:
		// it must not steer a signed pool.
		{"unsigned value of the backend", hashValue("b1", 5), StickyNew},
		{"unsigned token of the backend", hashToken("b1"), StickyNew},
		{"last digit altered", string(flipped), StickyNew},
		{"truncated", valid[:len(valid)-1], StickyNew},
		{"extended", valid + "0", StickyNew},
		{"upper case", strings.ToUpper(valid), StickyNew},
		{"variant added", valid + ".f", StickyNew},
		{"signed with another secret", signedValues(t, otherSecret, "b1")[5], StickyNew},
		{"the backend ID", "b1", StickyNew},
		{"old form", oldSigned(testSecret, "b1", 5), StickyNew},
		{"old form, variant changed", oldSigned(testSecret, "b1", 0xf), StickyNew},
		{"old form, variant removed", oldSigned(testSecret, "b1", 5)[:2*signedTokenBytes], StickyNew},
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
			got := parseSetCookie(t, pk.SetCookie).Value
			if vals := signedValues(t, testSecret, pk.Backend.ID); !slices.Contains(vals[:], got) {
				t.Errorf("new pick %s got cookie %q, not one of its signed values", pk.Backend.ID, got)
			}
		})
	}
}

// Replicas sharing the secret agree on every value, whatever the order of
// their backends; values are opaque and distinct per backend and variant.
func TestSignedCookieValues(t *testing.T) {
	bs := testBackends(nil, 1, 2, 3)
	shuffled := []*Backend{bs[2], bs[0], bs[1]}
	seen := map[string]string{}
	for _, b := range bs {
		for v, val := range signedValues(t, testSecret, b.ID) {
			if len(val) != 2*signedTokenBytes || strings.Trim(val, "0123456789abcdef") != "" {
				t.Errorf("%s: value %q, want %d hex digits", b.ID, val, 2*signedTokenBytes)
			}
			if strings.Contains(val, hashToken(b.ID)) {
				t.Errorf("%s: signed value %q contains the unsigned token", b.ID, val)
			}
			if other, dup := seen[val]; dup {
				t.Errorf("%s variant %d and %s share value %q", b.ID, v, other, val)
			}
			seen[val] = b.ID
			if rotated := signedValues(t, otherSecret, b.ID)[v]; rotated == val {
				t.Errorf("%s: value %q unchanged by a new secret", b.ID, val)
			}
		}
		// A replica built from the config in another order places a
		// client on b with a value the first one resolves to b.
		val := signedTokenOf(t, testSecret, shuffled, b.ID)
		pk := mustPick(t, mustPolicy(t, "cookie", signedOpts(testSecret)).Build(allAvailable(bs)), cookieRequest("aff="+val))
		if pk.Backend != b || pk.Sticky != StickyKept {
			t.Errorf("%s: a replica's value %q sent to %s (%v)", b.ID, val, pk.Backend.ID, pk.Sticky)
		}
	}
}

// A signed cookie naming a backend that is down moves the client, as an
// unsigned one does, to the successor its variant chooses, and the new
// cookie keeps the variant.
func TestSignedCookieRepins(t *testing.T) {
	bs := testBackends(nil, 1, 1, 1)
	down := signedValues(t, testSecret, "b1")
	p := mustPolicy(t, "cookie", signedOpts(testSecret)).Build(Set{All: bs, Available: []*Backend{bs[0], bs[2]}})
	got := map[string]int{}
	for v, val := range down {
		pk := mustPick(t, p, cookieRequest("aff="+val))
		if pk.Sticky != StickyRepinned || pk.Backend.ID == "b1" {
			t.Fatalf("variant %d: pick %+v, want repinned off b1", v, pk)
		}
		if c, want := parseSetCookie(t, pk.SetCookie).Value, signedValues(t, testSecret, pk.Backend.ID)[v]; c != want {
			t.Errorf("variant %d: repinned to %s with cookie %q, want %q", v, pk.Backend.ID, c, want)
		}
		got[pk.Backend.ID]++
	}
	if got["b0"] < 4 || got["b2"] < 4 {
		t.Errorf("repinned variants %v, want both available backends to take a fair part", got)
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

// A rebuild reuses what the policy rendered for the backends it keeps,
// computes the new ones', and forgets the removed ones'; picks are the same
// as from a policy that renders everything afresh.
func TestCookieRenderedFollowsBackends(t *testing.T) {
	bs := testBackends(nil, 1, 1, 1, 1)
	p := mustPolicy(t, "cookie", signedOpts(testSecret)).(*cookiePolicy)
	p.Build(Set{All: bs[:3], Available: bs[:3]})
	kept := p.rendered["b1"]
	p.Build(Set{All: bs[1:], Available: bs[1:2]})
	var ids []string
	for id := range p.rendered {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	if !slices.Equal(ids, []string{"b1", "b2", "b3"}) {
		t.Errorf("rendered for %v, want the backends of the latest set", ids)
	}
	if p.rendered["b1"] != kept {
		t.Error("b1 rendered again, not reused")
	}
	rebuilt := p.Build(Set{All: bs[1:], Available: bs[1:]})
	fresh := mustPolicy(t, "cookie", signedOpts(testSecret)).Build(Set{All: bs[1:], Available: bs[1:]})
	for _, b := range bs[1:] {
		for v, val := range signedValues(t, testSecret, b.ID) {
			r := cookieRequest("aff=" + val)
			got, want := mustPick(t, rebuilt, r), mustPick(t, fresh, r)
			if got.Backend != b || want.Backend != b || got.Sticky != StickyKept {
				t.Errorf("%s variant %d: rebuilt picker %s (%v), fresh one %s", b.ID, v, got.Backend.ID, got.Sticky, want.Backend.ID)
			}
		}
	}
}
