// Package demoapp is the small web application behind `affinity backend`: a
// stand-in for a stateful service, so that what sticky routing keeps or loses
// can be seen from a browser or curl.
//
// Every response names the backend that served it and carries a per-client
// counter kept in this process's memory behind its own session cookie. When a
// client reaches a backend that does not hold its session (it was moved, or
// the backend restarted), it gets a new session id and the count starts again
// at 1: a lost session is visible in the body and headers.
package demoapp

import (
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync/atomic"

	lru "github.com/hashicorp/golang-lru/v2"
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
	// MaxSessions bounds the sessions held in memory; when full, the least
	// recently used session is forgotten. 0 means DefaultMaxSessions.
	MaxSessions int
}

// app serves one named backend.
type app struct {
	name string
	mux  *http.ServeMux
	// sessions maps a session id to its request counter.
	sessions *lru.Cache[string, *atomic.Int64]
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
	a := &app{name: name, mux: http.NewServeMux(), sessions: sessions}
	a.mux.HandleFunc("/healthz", a.health)
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
// create sessions nor keep them from being evicted.
func (a *app) health(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = io.WriteString(w, "ok\n")
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
