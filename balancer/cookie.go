package balancer

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
)

func init() {
	Register("cookie", newCookiePolicy)
}

// ErrInvalidCookie is wrapped by the cookie policy's Factory when the cookie
// options could not produce a Set-Cookie header a browser accepts.
var ErrInvalidCookie = errors.New("invalid sticky cookie")

// cookiePolicy pins each client to a backend with a cookie the proxy sets on
// the client's first response. The cookie names the backend and a variant
// (see cookieVariants) by a value derived from Backend.ID only, so replicas
// of the proxy and restarts with a reordered config agree on it, and it
// never reveals an address.
type cookiePolicy struct {
	opts CookieOptions
	// value encodes a backend ID and a variant as a cookie value. Build
	// computes every value once and Pick matches cookies against them
	// exactly, so any deterministic encoding (an HMAC with a secret, say)
	// can replace the hash without touching Pick.
	value func(id string, variant int) string
	// bare, for unsigned cookies, also accepts a value without its
	// variant, as variant 0.
	bare bool
	next atomic.Uint64 // rotation for new clients; survives rebuilds
	// variant hands out the variants of clients without a cookie whose
	// first backend failed before they got one (see Repin); it lives
	// here for the same reason as next.
	variant atomic.Uint64

	// mu guards rendered: Build runs on every change of health, and two
	// pools may share the policy across a reload.
	mu sync.Mutex
	// rendered holds what Build derived from the IDs of its latest Set:
	// a rebuild renders only the backends it has not seen, not sixteen
	// HMACs and Set-Cookie headers per backend each time.
	rendered map[string]*renderedCookie
}

// renderedCookie is what a backend's cookie values are, by variant, and the
// Set-Cookie headers that carry them.
type renderedCookie struct {
	values    [cookieVariants]string
	setCookie [cookieVariants]string
	bare      string // for unsigned cookies, the token alone; "" for signed
	// next hands the backend's new clients their variants in turn. It is
	// the backend's own, not the pool's: with one counter for the pool,
	// which moves in step with the rotation, a backend would get the
	// same few variants (all its clients the same one, with 16
	// backends), and its clients would all move to the same successor.
	// It lives as long as the backend stays in the pool, across rebuilds.
	next atomic.Uint32
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
	p := &cookiePolicy{opts: c, value: hashValue, bare: true}
	if c.Secret != "" {
		v, err := signedValue(c.Secret)
		if err != nil {
			return nil, err
		}
		p.value, p.bare = v, false
	}
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

// hashValue is an unsigned cookie's value: the ID's token, a dot and the
// variant as a hex digit. Anyone can compute it (see signedValue).
func hashValue(id string, variant int) string {
	return hashToken(id) + "." + hexDigits[variant:variant+1]
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

// cookieVariants is how many cookie values each backend has. A backend's
// new clients get them in turn; the variant says nothing about the backend,
// only where the client goes if its backend fails: clients of a failed
// backend are spread over the others by (backend, variant), the same in
// every replica, and every request of one client, first tries and retries
// alike, agrees on where that is. Sixteen buckets spread a failed backend's
// clients evenly enough over the rest; the Set-Cookie headers are
// precomputed, so more would only cost memory.
const cookieVariants = 16

// hexDigits spell a variant as the last character of a cookie value.
const hexDigits = "0123456789abcdef"

// cookieEntry is what a cookie value resolves to.
type cookieEntry struct {
	backend *Backend
	// serves is set when the backend takes the clients pinned to it: it
	// is available, or draining.
	serves  bool
	variant uint8
	id      uint64 // hashString(backend.ID), the seed of its successors
}

// Build resolves every value of every backend of s.All, so that a cookie
// naming a backend that is down is told apart from garbage, and renders the
// Set-Cookie headers of every available backend once. A draining backend
// keeps its clients, so its values resolve to it as serving, but it has
// no Set-Cookie headers: nobody new is pinned there.
func (p *cookiePolicy) Build(s Set) Picker {
	n := cookieVariants
	if p.bare {
		n++
	}
	cp := &cookiePicker{
		name:     p.opts.Name,
		byValue:  make(map[string]cookieEntry, n*len(s.All)),
		rendered: make([]*renderedCookie, len(s.Available)),
		ids:      make([]uint64, len(s.Available)),
		w:        newWRR(s.Available, s.Warming, &p.next),
		variant:  &p.variant,
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	prev := p.rendered
	p.rendered = make(map[string]*renderedCookie, len(s.All))
	avail := make(map[*Backend]bool, len(s.Available))
	for i, b := range s.Available {
		avail[b] = true
		cp.ids[i] = hashString(b.ID)
		rc := p.render(b.ID, prev)
		cp.rendered[i] = rc
		cp.resolve(rc, cookieEntry{backend: b, serves: true, id: cp.ids[i]})
	}
	for _, b := range s.All {
		if !avail[b] {
			e := cookieEntry{backend: b, serves: slices.Contains(s.Draining, b), id: hashString(b.ID)}
			cp.resolve(p.render(b.ID, prev), e)
		}
	}
	return cp
}

// render returns the cookie of the backend id, from prev (the previous
// Build's) when it is there; p.mu must be held.
func (p *cookiePolicy) render(id string, prev map[string]*renderedCookie) *renderedCookie {
	rc, ok := p.rendered[id]
	if !ok {
		if rc, ok = prev[id]; !ok {
			rc = new(renderedCookie)
			for v := range cookieVariants {
				rc.values[v] = p.value(id, v)
				rc.setCookie[v] = p.cookie(rc.values[v]).String()
			}
			if p.bare {
				rc.bare = hashToken(id)
			}
		}
		p.rendered[id] = rc
	}
	return rc
}

// resolve maps every value of rc to e, with its variant, and an unsigned
// token alone to variant 0.
func (cp *cookiePicker) resolve(rc *renderedCookie, e cookieEntry) {
	for v, val := range rc.values {
		e.variant = uint8(v)
		cp.byValue[val] = e
	}
	if rc.bare != "" {
		e.variant = 0
		cp.byValue[rc.bare] = e
	}
}

type cookiePicker struct {
	name     string
	byValue  map[string]cookieEntry // every value of every backend of Set.All
	rendered []*renderedCookie      // parallel to w.backends (Set.Available)
	ids      []uint64               // parallel to w.backends: hashString(ID)
	w        wrr                    // places new clients
	variant  *atomic.Uint64         // see cookiePolicy.variant
}

// Pick sends a client with a valid cookie to its backend while that one is
// available or draining, moves a client whose backend is unavailable to
// that backend's successor for the client's variant, and places any other
// client on the weighted rotation, returning the cookie that pins it there.
func (p *cookiePicker) Pick(r *http.Request) (Pick, error) {
	e, ok := p.entry(r)
	if ok && e.serves {
		return Pick{Backend: e.backend, Sticky: StickyKept}, nil
	}
	if len(p.w.backends) == 0 {
		return Pick{}, ErrNoBackend
	}
	if ok {
		i := p.successor(e.id, e.variant, nil)
		return Pick{Backend: p.w.backends[i], SetCookie: p.rendered[i].setCookie[e.variant], Sticky: StickyRepinned}, nil
	}
	i, _ := p.w.pick()
	rc := p.rendered[i]
	v := rc.next.Add(1) % cookieVariants
	return Pick{Backend: p.w.backends[i], SetCookie: rc.setCookie[v], Sticky: StickyNew}, nil
}

// Repin chooses where a request goes when the backend it was sent to failed:
// the successor, among the available backends not in tried, that Pick gives
// the same client once the failed backend is marked down, so that a retry
// and the client's next requests agree and the client moves only once.
func (p *cookiePicker) Repin(r *http.Request, tried []*Backend) (*Backend, string, bool) {
	if len(tried) == 0 {
		return nil, "", false
	}
	// The successors of the backend that first failed: the cookie's, or,
	// for a client that had none (or garbage), the one it was placed on,
	// for a variant of its own: clients placed on a backend that fails
	// spread as its cookies' clients do, rather than all going to one
	// successor.
	var id uint64
	var v uint8
	if e, ok := p.entry(r); ok {
		id, v = e.id, e.variant
	} else {
		id, v = hashString(tried[0].ID), uint8(p.variant.Add(1)%cookieVariants)
	}
	i := p.successor(id, v, tried)
	if i < 0 {
		return nil, "", false
	}
	return p.w.backends[i], p.rendered[i].setCookie[v], true
}

// successor ranks the available backends not in skip by a hash of the
// failed backend, the variant and each candidate (rendezvous hashing) and
// returns the index of the first, or -1 when none is left. Removing any
// other candidate does not change the winner, so the choice of a retry
// (which skips the failed backend) and of a later pick (where it is down)
// is the same. It scans the pool, which is fine for the failure path it
// serves.
func (p *cookiePicker) successor(failed uint64, v uint8, skip []*Backend) int {
	return rendezvous(failed^(uint64(v)+1)*0x9e3779b97f4a7c15, p.w.backends, p.ids, skip)
}

// entry returns what the request's sticky cookie resolves to; false when
// it has none, or one that names no backend of the pool.
func (p *cookiePicker) entry(r *http.Request) (cookieEntry, bool) {
	val, ok := cookieValue(r.Header, p.name)
	if !ok {
		return cookieEntry{}, false
	}
	e, ok := p.byValue[val]
	return e, ok
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
