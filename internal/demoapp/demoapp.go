package demoapp

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"go.uber.org/zap"
)

const (
	// CookieName is the name of the demo app's own session cookie, distinct
	// from any cookie the proxy sets so the two can be told apart.
	CookieName = "DEMO_SESSION"

	// DefaultMaxSessions bounds the sessions held when Options.MaxSessions
	// is 0: enough for any demo or experiment, small enough (a few MiB) that
	// a flood of cookie-less requests cannot exhaust memory.
	DefaultMaxSessions = 100_000
)

// Response headers that tell a client which backend served it and how many
// requests its session has seen, without parsing the body.
const (
	HeaderBackend      = "X-Backend"
	HeaderSessionCount = "X-Session-Count"
)

// Options tunes a demo app; the zero value is ready to use.
type Options struct {
	// MaxSessions bounds the sessions held in memory, by the counter and by
	// the default shop store each; when full, the least recently used
	// session is forgotten. 0 means DefaultMaxSessions.
	MaxSessions int

	// Store keeps the shop's sessions: set it to compare where state lives.
	// nil means a MemoryStore of MaxSessions. The app does not close it.
	Store Store

	// Work is the simulated cost of loading a user's data from the store:
	// each load the store reports (every request for a RedisStore, a
	// near-cache miss for a CachedRedisStore, never for the memory and
	// token stores) waits this long, as if it read a profile from a
	// database. 0 makes loads free.
	Work time.Duration

	// CheckoutWork is the time a checkout takes between reading the cart
	// and placing the order (prices, stock, payment), during which the
	// same checkout, repeated elsewhere, can run too. A checkout that has
	// begun this work runs to its end even if its client left, as one
	// whose payment went out must. 0 places orders at once.
	CheckoutWork time.Duration

	// Orders records the first order of each cart, to count the orders
	// placed twice for one cart and to answer a retried checkout with its
	// order. nil means a MemoryOrders of this process. The app does not
	// close it.
	Orders Orders

	// Log gets a line each time the store starts failing and each time it
	// works again. nil logs nothing.
	Log *zap.Logger
}

// app serves one named backend.
type app struct {
	name string
	mux  *http.ServeMux
	// sessions maps a session id to its request counter.
	sessions *lru.Cache[string, *atomic.Int64]

	store        Store
	orders       Orders
	work         time.Duration
	checkoutWork time.Duration
	pause        func(context.Context, time.Duration) // waits out Work and CheckoutWork; sleep but in tests
	metrics      metrics
	down         atomic.Bool // set by /_down: /healthz fails until /_up

	log          *zap.Logger
	storeFailing atomic.Bool // the store failed, and has not worked since
}

// New returns the demo app of the backend called name, with default options.
func New(name string) http.Handler {
	return NewWithOptions(name, Options{})
}

// NewWithOptions returns the demo app of the backend called name.
func NewWithOptions(name string, o Options) http.Handler {
	if o.MaxSessions <= 0 {
		o.MaxSessions = DefaultMaxSessions
	}
	// lru.New fails only for a size below 1, which the default rules out.
	sessions, _ := lru.New[string, *atomic.Int64](o.MaxSessions)
	if o.Store == nil {
		o.Store = NewMemoryStore(o.MaxSessions)
	}
	if o.Orders == nil {
		o.Orders = NewMemoryOrders()
	}
	a := &app{
		name:         name,
		mux:          http.NewServeMux(),
		sessions:     sessions,
		store:        o.Store,
		orders:       o.Orders,
		work:         o.Work,
		checkoutWork: o.CheckoutWork,
		pause:        sleep,
		log:          o.Log,
	}
	if a.log == nil {
		a.log = zap.NewNop()
	}
	a.mux.HandleFunc("/healthz", a.health)
	a.mux.HandleFunc("/_down", a.setDown(true))
	a.mux.HandleFunc("/_up", a.setDown(false))
	a.mux.HandleFunc("/metrics", func(w http.ResponseWriter, _ *http.Request) {
		a.metrics.serveMetrics(w, a.store.Held())
	})
	a.routeShop()
	a.mux.HandleFunc("POST /logout", a.logout)
	a.mux.HandleFunc("/logout", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Allow", http.MethodPost)
		w.WriteHeader(http.StatusMethodNotAllowed)
	})
	// Browsers fetch a favicon with every page load; counting it would make
	// the counter jump by two per reload and hide what a reload did.
	a.mux.HandleFunc("/favicon.ico", func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	})
	a.mux.HandleFunc("/", a.count)
	return a
}

// ServeHTTP names the backend on every response, whatever the path.
func (a *app) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set(HeaderBackend, a.name)
	a.mux.ServeHTTP(w, r)
}

// health answers health checks without touching sessions, so checks neither
// create sessions nor keep them from being evicted. It fails while the app
// is marked down, for experiments on health checking.
func (a *app) health(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if a.down.Load() {
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = io.WriteString(w, "down\n")
		return
	}
	_, _ = io.WriteString(w, "ok\n")
}

// setDown returns the handler of /_down (down) or /_up, which mark the app
// down or up for /healthz only: the rest keeps serving, as a backend whose
// health check fails often does.
func (a *app) setDown(down bool) http.HandlerFunc {
	state := "up\n"
	if down {
		state = "down\n"
	}
	return func(w http.ResponseWriter, _ *http.Request) {
		a.down.Store(down)
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		_, _ = io.WriteString(w, state)
	}
}

// count counts the request in the client's session and reports it.
func (a *app) count(w http.ResponseWriter, r *http.Request) {
	id, n := a.visit(w, r)
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	// The body changes with every request; a cached copy would hide a move.
	h.Set("Cache-Control", "no-store")
	h.Set(HeaderSessionCount, strconv.FormatInt(n, 10))
	_, _ = fmt.Fprintf(w, "name=%s session=%s count=%d\n", a.name, id, n)
}

// visit counts a request in the session named by the client's cookie, or
// starts a new session when this backend does not hold that one. A session
// id the client made up is never stored: ids are always ours and random.
func (a *app) visit(w http.ResponseWriter, r *http.Request) (id string, count int64) {
	if c, err := r.Cookie(CookieName); err == nil {
		if n, ok := a.sessions.Get(c.Value); ok {
			return c.Value, n.Add(1)
		}
	}
	id = rand.Text()
	n := new(atomic.Int64)
	n.Store(1)
	a.sessions.Add(id, n)
	http.SetCookie(w, &http.Cookie{
		Name:     CookieName,
		Value:    id,
		Path:     "/",
		HttpOnly: true,
		SameSite: http.SameSiteLaxMode,
	})
	return id, 1
}

// logout forgets the client's counter session, revokes its shop session in
// the store (as far as the store can: a token without a denylist stays
// valid until it expires), and expires the app's cookies, the counter's and
// the shop's, as applications end a session: with an empty value,
// Max-Age=0 and an Expires in the past (for clients older than Max-Age),
// not the session's ID. A store that fails to revoke is
// answered 503 store_unavailable, the cookies kept: the client is not told
// it logged out when its session lives on.
func (a *app) logout(w http.ResponseWriter, r *http.Request) {
	if c, err := r.Cookie(CookieName); err == nil {
		a.sessions.Remove(c.Value)
	}
	ctx, u := withUsage(r.Context())
	var fail *shopError
	if c, err := r.Cookie(a.store.Cookie()); err == nil {
		if err := a.store.Revoke(ctx, c.Value); err != nil {
			fail = storeFailure(err)
		}
	}
	code := ""
	if fail != nil {
		code = fail.code
	}
	a.metrics.record(u, code)
	a.noteStore(u, fail)
	w.Header().Set(HeaderStoreOps, strconv.Itoa(u.ops))
	if fail != nil {
		writeJSON(w, fail.status, errorReply{Error: fail.code})
		return
	}
	for _, name := range []string{CookieName, a.store.Cookie()} {
		http.SetCookie(w, &http.Cookie{Name: name, Path: "/", MaxAge: -1, Expires: time.Unix(0, 0),
			HttpOnly: true, SameSite: http.SameSiteLaxMode})
	}
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusNoContent)
}
