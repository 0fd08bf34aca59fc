package balancer

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
)

func init() {
	Register("cookie", newCookiePolicy)
}

// ErrInvalidCookie is wrapped by the cookie policy's Factory when the cookie
// options could not produce a Set-Cookie header a browser accepts.
var ErrInvalidCookie = errors.New("invalid sticky cookie")

// cookiePolicy pins each client to a backend with a cookie the proxy sets on
// the client's first response. The cookie names the backend by a token
// derived from Backend.ID only, so replicas of the proxy and restarts with a
// reordered config agree on it, and it never reveals an address.
type cookiePolicy struct {
	opts CookieOptions
	// token encodes a backend ID as a cookie value. Build computes every
	// backend's token once and Pick matches cookies against them exactly, so
	// any deterministic encoding (an HMAC with a secret, say) can replace
	// the hash without touching Pick.
	token func(id string) string
	next  atomic.Uint64 // rotation for new clients; survives rebuilds
}

func newCookiePolicy(o Options) (Policy, error) {
	c := o.Cookie
	if c.Name == "" {
		return nil, fmt.Errorf("%w: cookie name is empty", ErrInvalidCookie)
	}
	if !isToken(c.Name) {
		return nil, fmt.Errorf("%w: %q is not a valid cookie name", ErrInvalidCookie, c.Name)
	}
	if c.MaxAge < 0 {
		return nil, fmt.Errorf("%w: max_age %d is negative (0 means a session cookie)", ErrInvalidCookie, c.MaxAge)
	}
	if c.SameSite == http.SameSiteNoneMode && !c.Secure {
		return nil, fmt.Errorf("%w: same_site none requires secure, or browsers drop the cookie", ErrInvalidCookie)
	}
	p := &cookiePolicy{opts: c, token: hashToken}
	if err := p.cookie("0").Valid(); err != nil {
		return nil, fmt.Errorf("%w: path %q, domain %q: %w", ErrInvalidCookie, c.Path, c.Domain, err)
	}
	return p, nil
}

// hashToken returns the first 16 hex digits of SHA-256 of the ID: short,
// opaque, and stable for as long as the ID is.
func hashToken(id string) string {
	sum := sha256.Sum256([]byte(id))
	return hex.EncodeToString(sum[:8])
}

func (p *cookiePolicy) cookie(value string) *http.Cookie {
	o := p.opts
	return &http.Cookie{
		Name:     o.Name,
		Value:    value,
		Path:     o.Path,
		Domain:   o.Domain,
		MaxAge:   o.MaxAge,
		Secure:   o.Secure,
		HttpOnly: o.HTTPOnly,
		SameSite: o.SameSite,
	}
}

// cookieEntry is what a token resolves to.
type cookieEntry struct {
	backend   *Backend
	available bool
}

// Build resolves every backend of s.All by its token, so that a cookie naming
// a backend that is down is told apart from garbage, and renders the
// Set-Cookie header of every available backend once.
func (p *cookiePolicy) Build(s Set) Picker {
	cp := &cookiePicker{
		name:      p.opts.Name,
		byToken:   make(map[string]cookieEntry, len(s.All)),
		setCookie: make([]string, len(s.Available)),
		w:         newWRR(s.Available, &p.next),
	}
	for _, b := range s.All {
		cp.byToken[p.token(b.ID)] = cookieEntry{backend: b}
	}
	for i, b := range s.Available {
		t := p.token(b.ID)
		cp.byToken[t] = cookieEntry{backend: b, available: true}
		cp.setCookie[i] = p.cookie(t).String()
	}
	return cp
}

type cookiePicker struct {
	name      string
	byToken   map[string]cookieEntry // every backend of Set.All
	setCookie []string               // parallel to w.backends (Set.Available)
	w         wrr
}

// Pick sends a client with a valid cookie to its backend and places any other
// client on the weighted rotation, returning the cookie that pins it there.
func (p *cookiePicker) Pick(r *http.Request) (Pick, error) {
	sticky := StickyNew
	if v, ok := cookieValue(r.Header, p.name); ok {
		if e, ok := p.byToken[v]; ok {
			if e.available {
				return Pick{Backend: e.backend, Sticky: StickyKept}, nil
			}
			sticky = StickyRepinned
		}
	}
	i, ok := p.w.pick()
	if !ok {
		return Pick{}, ErrNoBackend
	}
	return Pick{Backend: p.w.backends[i], SetCookie: p.setCookie[i], Sticky: sticky}, nil
}

// Pin returns the Set-Cookie header that pins a client to b. It is called
// only when a request moves off its pick, so a scan of the few available
// backends is cheaper than keeping a map for it.
func (p *cookiePicker) Pin(b *Backend) (string, bool) {
	for i, x := range p.w.backends {
		if x == b {
			return p.setCookie[i], true
		}
	}
	return "", false
}

// cookieValue returns the value of the first cookie called name in the
// request's Cookie headers, as Request.Cookie would, without parsing or
// allocating the others: it runs on every request. Surrounding double quotes
// are removed as RFC 6265 allows; the value is otherwise returned unchecked,
// so callers must treat it as untrusted (an exact map lookup is fine).
func cookieValue(h http.Header, name string) (string, bool) {
	for _, line := range h["Cookie"] {
		for len(line) > 0 {
			var part string
			part, line, _ = strings.Cut(line, ";")
			k, v, ok := strings.Cut(part, "=")
			if !ok || trimSpace(k) != name {
				continue
			}
			v = trimSpace(v)
			if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
				v = v[1 : len(v)-1]
			}
			return v, true
		}
	}
	return "", false
}

// trimSpace removes the spaces and tabs HTTP allows around cookie pairs.
func trimSpace(s string) string {
	for len(s) > 0 && (s[0] == ' ' || s[0] == '\t') {
		s = s[1:]
	}
	for len(s) > 0 && (s[len(s)-1] == ' ' || s[len(s)-1] == '\t') {
		s = s[:len(s)-1]
	}
	return s
}
