package demoapp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/redis/go-redis/v9"
)

// TokenStore keeps no session state at all: the whole session travels in
// the SHOP_TOKEN cookie as a JWT signed with HMAC-SHA256, and every backend
// given the same secret can serve it. Loading is only verifying and decoding
// the token, so it never pays Options.Work; the cost is instead in the bytes
// of every request, which grow with the cart, and in a token that stays
// valid until it expires, whatever happens on the server: logging out
// cannot revoke it.
//
// With a denylist (NewDenylistTokenStore), a logout lists the token's
// session in Redis until its tokens expire, and every load asks Redis
// whether the session is listed: revocation, for one round trip per
// request, and the server-side state the token was meant to avoid.
type TokenStore struct {
	secret []byte
	parser *jwt.Parser
	now    func() time.Time // the clock that stamps expiries; time.Now but in tests
	deny   *redis.Client    // the denylist; nil without one
}

// denyKeyPrefix prefixes the denylist's keys, one per revoked session.
const denyKeyPrefix = "shop:deny:"

// tokenClaims is the payload of a shop token.
type tokenClaims struct {
	// Session names the session across the tokens its saves issue, so that
	// a denylist revokes them all at once.
	Session   string   `json:"sid"`
	User      string   `json:"user"`
	Items     []string `json:"items"`
	Cart      string   `json:"cart,omitempty"`
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

// NewDenylistTokenStore returns a token store with a denylist of revoked
// sessions in the Redis server at addr (host:port). It connects lazily: a
// Redis that is down fails requests, not the start; a load that cannot ask
// the denylist fails rather than accept a token that may be revoked.
func NewDenylistTokenStore(secret []byte, addr string) (*TokenStore, error) {
	t, err := NewTokenStore(secret)
	if err != nil {
		return nil, err
	}
	t.deny = newRedisSessions(addr).client
	return t, nil
}

// Cookie returns TokenCookie.
func (*TokenStore) Cookie() string { return TokenCookie }

// New returns a token holding an empty session of user.
func (t *TokenStore) New(_ context.Context, user string) (string, error) {
	return t.sign(newSessionID(), Session{User: user, Version: 1})
}

// Load verifies token's signature, algorithm and expiry and returns the
// session it holds. A token that fails any check is no session; with a
// denylist, neither is one whose session is listed (one round trip).
func (t *TokenStore) Load(ctx context.Context, token string) (Session, error) {
	c, err := t.verify(token)
	if err != nil {
		return Session{}, err
	}
	if t.deny != nil {
		usageOf(ctx).addOp()
		n, err := t.deny.Exists(ctx, denyKeyPrefix+c.Session).Result()
		if err != nil {
			return Session{}, fmt.Errorf("token store: denylist: %w", err)
		}
		if n > 0 {
			return Session{}, fmt.Errorf("token store: session revoked: %w", ErrNoSession)
		}
	}
	return Session{User: c.User, Items: c.Items, Cart: c.Cart, Version: c.Version, LastOrder: c.LastOrder}, nil
}

// verify checks token's signature, algorithm and expiry and returns its
// claims.
func (t *TokenStore) verify(token string) (*tokenClaims, error) {
	var c tokenClaims
	_, err := t.parser.ParseWithClaims(token, &c, func(*jwt.Token) (any, error) { return t.secret, nil })
	if err != nil {
		return nil, fmt.Errorf("token store: %w: %w", ErrNoSession, err)
	}
	if c.User == "" || c.Session == "" {
		return nil, fmt.Errorf("token store: token names no user or session: %w", ErrNoSession)
	}
	return &c, nil
}

// Save returns a new token holding s with the next version and a fresh
// expiry, of the same session as token; the old token stays valid until
// its own expiry.
func (t *TokenStore) Save(_ context.Context, token string, s Session) (string, error) {
	c, err := t.verify(token)
	if err != nil {
		return "", err
	}
	s.Version++
	return t.sign(c.Session, s)
}

// Revoke lists token's session in the denylist until every token of it has
// expired (one round trip); without a denylist it does nothing, and token
// stays valid until it expires. A token that does not verify names no
// session to revoke.
func (t *TokenStore) Revoke(ctx context.Context, token string) error {
	if t.deny == nil {
		return nil
	}
	c, err := t.verify(token)
	if err != nil {
		return nil
	}
	usageOf(ctx).addOp()
	// A token expires SessionTTL after the save that issued it, at the
	// latest now: listed that long, the session outlives all its tokens.
	if err := t.deny.Set(ctx, denyKeyPrefix+c.Session, 1, SessionTTL).Err(); err != nil {
		return fmt.Errorf("token store: denylist: %w", err)
	}
	return nil
}

func (t *TokenStore) sign(session string, s Session) (string, error) {
	c := tokenClaims{
		Session:          session,
		User:             s.User,
		Items:            s.Items,
		Cart:             s.Cart,
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

// Close closes the denylist's connections, if it has any.
func (t *TokenStore) Close() error {
	if t.deny == nil {
		return nil
	}
	if err := t.deny.Close(); err != nil {
		return fmt.Errorf("token store: denylist: close: %w", err)
	}
	return nil
}

// Ping checks that the denylist's Redis answers, for a startup report.
func (t *TokenStore) Ping(ctx context.Context) error {
	if t.deny == nil {
		return nil
	}
	if err := t.deny.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("token store: denylist: ping %s: %w", t.deny.Options().Addr, err)
	}
	return nil
}
