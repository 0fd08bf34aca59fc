package demoapp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// TokenStore keeps no session state at all: the whole session travels in
// the SHOP_TOKEN cookie as a JWT signed with HMAC-SHA256, and every backend
// given the same secret can serve it. Loading is only verifying and decoding
// the token, so it never pays Options.Work; the cost is instead in the bytes
// of every request, which grow with the cart, and in a token that stays
// valid until it expires, whatever happens on the server.
type TokenStore struct {
	secret []byte
	parser *jwt.Parser
	now    func() time.Time // the clock that stamps expiries; time.Now but in tests
}

// tokenClaims is the payload of a shop token.
type tokenClaims struct {
	User      string   `json:"user"`
	Items     []string `json:"items"`
	Version   int64    `json:"version"`
	LastOrder *Order   `json:"last_order,omitempty"`
	jwt.RegisteredClaims
}

// NewTokenStore returns a store that signs and verifies tokens with secret.
// An empty secret is refused: anyone could forge tokens.
func NewTokenStore(secret []byte) (*TokenStore, error) {
	if len(secret) == 0 {
		return nil, errors.New("token store: empty secret")
	}
	return &TokenStore{
		secret: bytes.Clone(secret),
		// Only HS256: a token naming another algorithm, "none" above all,
		// is not ours. A token without an expiry would be valid forever.
		parser: jwt.NewParser(jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}), jwt.WithExpirationRequired()),
		now:    time.Now,
	}, nil
}

// Cookie returns TokenCookie.
func (*TokenStore) Cookie() string { return TokenCookie }

// New returns a token holding an empty session of user.
func (t *TokenStore) New(_ context.Context, user string) (string, error) {
	return t.sign(Session{User: user, Version: 1})
}

// Load verifies token's signature, algorithm and expiry and returns the
// session it holds. A token that fails any check is no session.
func (t *TokenStore) Load(_ context.Context, token string) (Session, error) {
	var c tokenClaims
	_, err := t.parser.ParseWithClaims(token, &c, func(*jwt.Token) (any, error) { return t.secret, nil })
	if err != nil {
		return Session{}, fmt.Errorf("token store: %w: %w", ErrNoSession, err)
	}
	if c.User == "" {
		return Session{}, fmt.Errorf("token store: token names no user: %w", ErrNoSession)
	}
	return Session{User: c.User, Items: c.Items, Version: c.Version, LastOrder: c.LastOrder}, nil
}

// Save returns a new token holding s with the next version and a fresh
// expiry; the old token stays valid until its own expiry.
func (t *TokenStore) Save(_ context.Context, _ string, s Session) (string, error) {
	s.Version++
	return t.sign(s)
}

func (t *TokenStore) sign(s Session) (string, error) {
	c := tokenClaims{
		User:             s.User,
		Items:            s.Items,
		Version:          s.Version,
		LastOrder:        s.LastOrder,
		RegisteredClaims: jwt.RegisteredClaims{ExpiresAt: jwt.NewNumericDate(t.now().Add(SessionTTL))},
	}
	token, err := jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString(t.secret)
	if err != nil {
		return "", fmt.Errorf("token store: sign: %w", err)
	}
	return token, nil
}

// Held reports 0: sessions live in the clients.
func (*TokenStore) Held() int { return 0 }

// Close does nothing: the store holds no connections.
func (*TokenStore) Close() error { return nil }
