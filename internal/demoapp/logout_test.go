package demoapp

import (
	"net/http"
	"strconv"
	"testing"

	"github.com/affinityproxy/affinity/internal/testutil"
)

// logout posts /logout with the shopper's handle and returns the status,
// the store ops it cost, and the cookies it expired.
func (s *shopper) logout(base string) (status, ops int, expired map[string]bool) {
	s.t.Helper()
	req, err := http.NewRequest(http.MethodPost, base+"/logout", nil)
	if err != nil {
		s.t.Fatal(err)
	}
	if s.handle != nil {
		req.AddCookie(s.handle)
	}
	resp, err := s.c.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	_ = resp.Body.Close()
	ops, _ = strconv.Atoi(resp.Header.Get(HeaderStoreOps))
	expired = map[string]bool{}
	for _, c := range resp.Cookies() {
		// The date as RFC 6265 asks servers to write it.
		if c.Value == "" && c.MaxAge < 0 && c.Path == "/" && c.RawExpires == "Thu, 01 Jan 1970 00:00:00 GMT" {
			expired[c.Name] = true
		}
	}
	return resp.StatusCode, ops, expired
}

// TestLogoutRevokesTheShopSession logs a user out of each store and replays
// the handle it held: refused where the store can revoke it, accepted from
// a token without a denylist, which stays valid until it expires.
func TestLogoutRevokesTheShopSession(t *testing.T) {
	for _, tc := range []struct {
		kind     string
		ops      int  // round trips of the logout
		replayOK bool // the old handle still works
	}{
		{"memory", 0, false},
		{"redis", 1, false},
		{"cached-redis", 1, false},
		{"token", 0, true},
		{"token-denylist", 1, false},
	} {
		t.Run(tc.kind, func(t *testing.T) {
			f := newFixture(t, tc.kind)
			b := f.start(t, "web-1")
			s := newShopper(t, "alice")
			s.login(b.url).want(t, "login", http.StatusOK, "")
			s.add(b.url, 0, "x").want(t, "add", http.StatusOK, "1")
			held := s.handle
			status, ops, expired := s.logout(b.url)
			if status != http.StatusNoContent || ops != tc.ops || !expired[held.Name] || !expired[CookieName] {
				t.Fatalf("logout: %d, %d store ops, expired %v; want 204, %d ops, %s and %s expired", status, ops, expired, tc.ops, held.Name, CookieName)
			}
			// The credential replayed, as one stolen before the logout.
			thief := newShopper(t, "alice")
			thief.handle = held
			r := thief.cart(b.url, 1)
			if tc.replayOK {
				r.want(t, "replay", http.StatusOK, `["x"]`)
				return
			}
			r.wantError(t, "replay", http.StatusConflict, CodeSessionLost)
		})
	}
}

// A token checked against a denylist costs a round trip on every request,
// and fails closed: when the denylist cannot be asked, the request fails
// rather than accept a token that may be revoked, and a logout that cannot
// list it says so.
func TestDenylistCostsARoundTripAndFailsClosed(t *testing.T) {
	f := newFixture(t, "token-denylist")
	b := f.start(t, "web-1")
	s := newShopper(t, "alice")
	s.login(b.url).want(t, "login", http.StatusOK, "")
	if r := s.cart(b.url, 0); r.status != http.StatusOK || r.ops != 1 {
		t.Errorf("cart: %d with %d store ops, want 200 with 1 (the denylist)", r.status, r.ops)
	}
	f.redis.Stop()
	s.cart(b.url, 0).wantError(t, "cart with the denylist down", http.StatusServiceUnavailable, CodeStoreUnavailable)
	if status, _, expired := s.logout(b.url); status != http.StatusServiceUnavailable || len(expired) != 0 {
		t.Errorf("logout with the denylist down: %d, expired %v; want 503 and the cookies kept", status, expired)
	}
}

func TestLogoutOfNoSessionAndOtherMethods(t *testing.T) {
	b := newFixture(t, "memory").start(t, "web-1")
	if status, ops, _ := newShopper(t, "nobody").logout(b.url); status != http.StatusNoContent || ops != 0 {
		t.Errorf("logout without cookies: %d, %d ops; want 204, 0", status, ops)
	}
	resp, err := testutil.Client(t).Get(b.url + "/logout")
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != http.MethodPost {
		t.Errorf("GET /logout: %d, Allow %q; want 405, POST", resp.StatusCode, resp.Header.Get("Allow"))
	}
}
