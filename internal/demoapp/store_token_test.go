package demoapp

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// signed returns a token of claims signed with method and key.
func signed(t *testing.T, method jwt.SigningMethod, claims jwt.Claims, key any) string {
	t.Helper()
	s, err := jwt.NewWithClaims(method, claims).SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// A token that was not signed by the shop's secret with HS256, or that has
// expired, is no session, whatever it claims.
func TestTokenForgeries(t *testing.T) {
	b := startApp(t, "web-1", Options{Store: newFixture(t, "token").store(t)})
	owner := newShopper(t, "alice")
	owner.login(b.url).want(t, "login", http.StatusOK, "")
	owner.add(b.url, 0, "x").want(t, "add", http.StatusOK, "1")
	valid := owner.handle.Value

	// What a forger wants the shop to believe: alice's cart, of 2 items.
	want := func() tokenClaims {
		return tokenClaims{
			Session: newSessionID(), User: "alice", Items: []string{"x", "free"}, Version: 9,
			RegisteredClaims: jwt.RegisteredClaims{ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Hour))},
		}
	}
	header, payload, _ := strings.Cut(valid, ".")
	forgedPayload := strings.Split(signed(t, jwt.SigningMethodHS256, want(), []byte("other")), ".")[1]
	noExp := want()
	noExp.ExpiresAt = nil
	expired := want()
	expired.ExpiresAt = jwt.NewNumericDate(time.Now().Add(-time.Minute))
	sig := valid[strings.LastIndex(valid, ".")+1:]

	tests := []struct {
		name  string
		token string
		ok    bool
	}{
		// The control: the same claims, properly signed, are accepted, so
		// the failures below are the forgeries' and not the claims'.
		{"properly signed", signed(t, jwt.SigningMethodHS256, want(), testSecret), true},
		{"another secret", signed(t, jwt.SigningMethodHS256, want(), []byte("guess")), false},
		{"payload swapped under a valid signature", header + "." + forgedPayload + "." + sig, false},
		{"signature cut", strings.TrimSuffix(valid, sig), false},
		{"signature altered", valid[:len(valid)-2] + flip(valid[len(valid)-2:]), false},
		{"alg none", signed(t, jwt.SigningMethodNone, want(), jwt.UnsafeAllowNoneSignatureType), false},
		{"HS512 with the right secret", signed(t, jwt.SigningMethodHS512, want(), testSecret), false},
		{"no expiry", signed(t, jwt.SigningMethodHS256, noExp, testSecret), false},
		{"expired", signed(t, jwt.SigningMethodHS256, expired, testSecret), false},
		{"no user", signed(t, jwt.SigningMethodHS256, tokenClaims{Session: "S", RegisteredClaims: want().RegisteredClaims}, testSecret), false},
		{"no session", signed(t, jwt.SigningMethodHS256, func() tokenClaims { c := want(); c.Session = ""; return c }(), testSecret), false},
		{"not a token", "garbage", false},
		{"payload only", payload, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newShopper(t, "alice")
			s.handle = &http.Cookie{Name: TokenCookie, Value: tc.token}
			r := s.cart(b.url, 2)
			if tc.ok {
				r.want(t, "cart", http.StatusOK, `["x","free"]`)
				return
			}
			r.wantError(t, "cart", http.StatusConflict, CodeSessionLost)
		})
	}
	// The owner's own token still works.
	owner.cart(b.url, 1).want(t, "owner's cart", http.StatusOK, `["x"]`)
}

// flip changes every character of s, staying in the base64url alphabet.
func flip(s string) string {
	return strings.Map(func(r rune) rune {
		if r == 'A' {
			return 'B'
		}
		return 'A'
	}, s)
}

func TestTokenStoreExpiry(t *testing.T) {
	ts, err := NewTokenStore(testSecret)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	ts.now = func() time.Time { return time.Now().Add(-SessionTTL - time.Minute) }
	old, err := ts.New(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ts.Load(ctx, old); !errors.Is(err, ErrNoSession) || !errors.Is(err, jwt.ErrTokenExpired) {
		t.Errorf("Load of a token issued %v ago: %v, want %v wrapping %v", SessionTTL+time.Minute, err, ErrNoSession, jwt.ErrTokenExpired)
	}
	if _, err := ts.Save(ctx, old, Session{User: "alice"}); !errors.Is(err, ErrNoSession) {
		t.Errorf("Save over an expired token: %v, want %v", err, ErrNoSession)
	}
	// Every save renews the expiry: a token a minute from expiring, saved
	// now, holds for SessionTTL again.
	ts.now = func() time.Time { return time.Now().Add(-SessionTTL + time.Minute) }
	young, err := ts.New(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	ts.now = time.Now
	renewed, err := ts.Save(ctx, young, Session{User: "alice", Items: []string{"x"}, Version: 4})
	if err != nil {
		t.Fatal(err)
	}
	s, err := ts.Load(ctx, renewed)
	if err != nil || s.User != "alice" || len(s.Items) != 1 || s.Version != 5 {
		t.Errorf("Load of a saved token: %+v, %v; want alice, 1 item, version 5", s, err)
	}
	a, _ := ts.verify(young)
	b, _ := ts.verify(renewed)
	if a == nil || b == nil || !b.ExpiresAt.After(a.ExpiresAt.Add(time.Minute)) || a.Session != b.Session {
		t.Errorf("saved token %+v of %+v: want a later expiry, the same session", b, a)
	}
}

func TestTokenStoreRefusesEmptySecret(t *testing.T) {
	if _, err := NewTokenStore(nil); err == nil {
		t.Error("NewTokenStore(nil) succeeded, want an error")
	}
}
