package demoapp

import (
	"context"
	"crypto/rand"
	"errors"
	"slices"
	"time"
)

// Cookies that carry a shop session's handle: an opaque id for the stores
// that keep sessions on the server, the whole signed session for the token
// store.
const (
	SessionCookie = "SHOP_SESSION"
	TokenCookie   = "SHOP_TOKEN"
)

// SessionTTL is how long a session lives after its last change, in Redis and
// in a token's expiry alike, so that no store outlives another.
const SessionTTL = 30 * time.Minute

// ErrNoSession is returned by Store.Load when the handle names no session:
// it was never issued, has expired or been evicted, or does not verify. The
// shop reports it as session_lost; any other Load error is the store's fault.
var ErrNoSession = errors.New("no such session")

// Session is one user's shop state.
type Session struct {
	User  string   `json:"user"`
	Items []string `json:"items"`
	// Cart names the cart being filled, from its first item to its
	// checkout, so that Orders can tell two orders of one cart.
	Cart string `json:"cart,omitempty"`
	// Version counts the saves of the session; a store sets it. Redis keeps it
	// beside the JSON rather than in it, hence the tag.
	Version int64 `json:"-"`
	// LastOrder is the last checkout made with an idempotency key, so that a
	// retry of that checkout, on any backend that can load the session, gets
	// the same order instead of a second one.
	LastOrder *Order `json:"last_order,omitempty"`
}

// Order is the outcome of a checkout.
type Order struct {
	ID    string `json:"id"`
	Key   string `json:"key,omitempty"` // the Idempotency-Key it was made with
	Items int    `json:"items"`
	Cart  string `json:"cart,omitempty"` // the Session.Cart it was made of
}

// clone returns a copy of s that shares no memory with it, so that a store
// never hands out, or keeps, a value its caller may change.
func (s Session) clone() Session {
	s.Items = slices.Clone(s.Items)
	if s.LastOrder != nil {
		o := *s.LastOrder
		s.LastOrder = &o
	}
	return s
}

// Store keeps shop sessions. The four implementations are what the
// experiments compare: MemoryStore, RedisStore, CachedRedisStore and
// TokenStore. A handle is what the client holds, in the cookie Cookie names.
type Store interface {
	// Cookie names the cookie that carries a handle.
	Cookie() string
	// New stores a fresh, empty session of user and returns its handle.
	New(ctx context.Context, user string) (handle string, err error)
	// Load returns the session handle names, or an error wrapping
	// ErrNoSession if there is none.
	Load(ctx context.Context, handle string) (Session, error)
	// Save stores s as the session handle names, bumping its version, and
	// returns the handle the client must hold from now on: the same one
	// unless the handle is the session itself. A store may refuse, with
	// ErrNoSession, to save a session that vanished since it was loaded.
	Save(ctx context.Context, handle string, s Session) (string, error)
	// Revoke ends the session handle names, at logout: from then on the
	// handle is no session. A store that keeps nothing on the server (a
	// token without a denylist) cannot, and does nothing: its handle stays
	// valid until it expires. A handle that names no session is not an
	// error.
	Revoke(ctx context.Context, handle string) error
	// Held reports how many sessions this process holds in its own memory.
	Held() int
	// Close releases the store's connections, if it has any.
	Close() error
}

// newSessionID returns a fresh random session id: 26 base32 characters, 130
// bits from crypto/rand, so ids are never guessed nor reused.
func newSessionID() string { return rand.Text() }

// validSessionID reports whether id could have come from newSessionID. A
// handle that could not is unknown without asking the store, which keeps
// made-up cookies from costing round trips or odd Redis keys.
func validSessionID(id string) bool {
	if len(id) != 26 {
		return false
	}
	for _, c := range []byte(id) {
		if (c < 'A' || c > 'Z') && (c < '2' || c > '7') {
			return false
		}
	}
	return true
}

// usage is what serving one request cost its store. Stores add to it
// through the request's context; the shop reports it in the response headers
// and the metrics. One request is served by one goroutine, so no lock.
type usage struct {
	ops   int    // round trips to the store
	loads int    // loads of a user's data from the store, each paying Options.Work
	cache string // "hit" or "miss" when a near-cache was consulted
}

type usageKey struct{}

// withUsage returns a context in which stores record their costs into the
// returned usage.
func withUsage(ctx context.Context) (context.Context, *usage) {
	u := new(usage)
	return context.WithValue(ctx, usageKey{}, u), u
}

// usageOf returns the usage recorded in ctx; nil, whose methods do nothing,
// outside a shop request (a startup ping, a test calling a store directly).
func usageOf(ctx context.Context) *usage {
	u, _ := ctx.Value(usageKey{}).(*usage)
	return u
}

func (u *usage) addOp() {
	if u != nil {
		u.ops++
	}
}

func (u *usage) addLoad() {
	if u != nil {
		u.loads++
	}
}

func (u *usage) setCache(hit bool) {
	if u == nil {
		return
	}
	u.cache = "miss"
	if hit {
		u.cache = "hit"
	}
}
