package balancer

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
)

func init() {
	Register("consistent-hash", newHashPolicy)
}

// ErrInvalidHash is wrapped by the consistent-hash Factory when its options
// are unusable.
var ErrInvalidHash = errors.New("invalid consistent-hash options")

// maxRingPoints caps the ring so that a build stays in the tens of
// milliseconds and a few MiB whatever the weights; see pointCounts.
const maxRingPoints = 1 << 18

// hashPolicy maps a request key to a backend on a ring of virtual nodes, so
// that a change of membership moves only the keys of the backends that came
// or went. With a load factor it bounds each backend's in-flight requests as
// in "Consistent Hashing with Bounded Loads" (Mirrokni, Thorup, Zadimoghaddam).
type hashPolicy struct {
	key        func(r *http.Request) string // request → key; "" when absent
	vnodes     int
	loadFactor float64
	next       atomic.Uint64 // rotation for requests without a key
}

func newHashPolicy(o Options) (Policy, error) {
	h := o.Hash
	key, err := parseKey(h.Key)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidHash, err)
	}
	if h.VirtualNodes < 1 || h.VirtualNodes > maxRingPoints {
		return nil, fmt.Errorf("%w: virtual_nodes %d must be between 1 and %d", ErrInvalidHash, h.VirtualNodes, maxRingPoints)
	}
	if math.IsNaN(h.LoadFactor) || math.IsInf(h.LoadFactor, 0) || h.LoadFactor < 0 ||
		(h.LoadFactor > 0 && h.LoadFactor <= 1) {
		return nil, fmt.Errorf("%w: load_factor %v must be 0 (unbounded) or above 1", ErrInvalidHash, h.LoadFactor)
	}
	return &hashPolicy{key: key, vnodes: h.VirtualNodes, loadFactor: h.LoadFactor}, nil
}

// Build places VirtualNodes×Weight/g points per backend of Set.All on the
// ring, where g is the gcd of their weights, so that every backend's points
// stay where they are whatever its health or state: a key belongs to the
// backend of the first point clockwise from it, and when that backend is
// not available, to the first available one after it. A draining backend
// keeps the keys of its own points, and takes no other.
func (p *hashPolicy) Build(s Set) Picker {
	hp := &hashPicker{
		key:      p.key,
		ring:     s.All,
		role:     make([]ringRole, len(s.All)),
		fallback: newWRR(s.Available, s.Warming, &p.next),
	}
	roles := make(map[*Backend]ringRole, len(s.Available)+len(s.Draining))
	for _, b := range s.Available {
		roles[b] = ringAvailable
	}
	for _, b := range s.Draining {
		roles[b] = ringDraining
		hp.draining = true
	}
	total := 0
	for i, b := range s.All {
		if hp.role[i] = roles[b]; hp.role[i] != ringOut {
			total += weightOf(b)
		}
	}
	if p.loadFactor > 0 && s.Group != nil && total > 0 {
		hp.group = s.Group
		hp.share = make([]float64, len(s.All))
		for i, b := range s.All {
			if hp.role[i] != ringOut {
				hp.share[i] = p.loadFactor * float64(weightOf(b)) / float64(total)
			}
		}
	}
	counts := pointCounts(s.All, p.vnodes)
	type point struct {
		hash  uint64
		owner uint32
	}
	var pts []point
	for i, b := range s.All {
		h := hashString(b.ID)
		for j := range counts[b.ID] {
			pts = append(pts, point{hash: mix64(h ^ (uint64(j)+1)*0x9e3779b97f4a7c15), owner: uint32(i)})
		}
	}
	// Ties are broken by ID, not position, so that a reordered config builds
	// the same ring.
	slices.SortFunc(pts, func(a, b point) int {
		if c := cmp.Compare(a.hash, b.hash); c != 0 {
			return c
		}
		return cmp.Compare(s.All[a.owner].ID, s.All[b.owner].ID)
	})
	hp.points = make([]uint64, len(pts))
	hp.owners = make([]uint32, len(pts))
	for i, pt := range pts {
		hp.points[i], hp.owners[i] = pt.hash, pt.owner
	}
	hp.buildPrefix()
	return hp
}

// ringRole is what a backend of the ring does with keys.
type ringRole uint8

const (
	ringOut       ringRole = iota // unavailable: its keys go on clockwise
	ringAvailable                 // takes its keys, and those passed on to it
	ringDraining                  // takes the keys of its own points only
)

// pointCounts gives each backend of all VirtualNodes×Weight/g points. When
// that exceeds maxRingPoints in total, every count is scaled down in
// proportion (to at least one point), trading some evenness for a bounded
// ring.
func pointCounts(all []*Backend, vnodes int) map[string]int {
	g := 0
	for _, b := range all {
		g = gcd(g, weightOf(b))
	}
	counts := make(map[string]int, len(all))
	total := 0
	for _, b := range all {
		n := vnodes * (weightOf(b) / g)
		counts[b.ID] = n
		total += n
	}
	if total > maxRingPoints {
		for id, n := range counts {
			counts[id] = max(1, int(uint64(n)*maxRingPoints/uint64(total)))
		}
	}
	return counts
}

type hashPicker struct {
	key      func(r *http.Request) string
	ring     []*Backend // Set.All
	role     []ringRole // by index in ring
	draining bool       // some backend of ring drains
	points   []uint64   // sorted ring positions
	owners   []uint32   // owners[i] indexes ring: who owns points[i]
	prefix   []uint32   // prefix[t]: first point whose top bits are ≥ t
	shift    uint       // 64 - bits of the prefix table index
	fallback wrr        // rotation over Set.Available for requests without a key

	group *Group    // nil: loads are not bounded
	share []float64 // LoadFactor × backend's weight share, by index in ring
}

// buildPrefix indexes the ring by the top bits of a hash, about one slot per
// point, so that a lookup is one table load and a binary search over the few
// points of one slot instead of the whole ring. The table is capped at 2^20
// slots (4 MiB), past which the search over a slot is still a few steps.
func (p *hashPicker) buildPrefix() {
	bits := prefixBits(len(p.points))
	p.shift = 64 - bits
	p.prefix = make([]uint32, 1<<bits+1)
	i := 0
	for t := range p.prefix {
		for i < len(p.points) && p.points[i]>>p.shift < uint64(t) {
			i++
		}
		p.prefix[t] = uint32(i)
	}
}

// prefixBits is the number of bits of the prefix table's index for a ring
// of n points.
func prefixBits(n int) uint {
	bits := uint(1)
	for 1<<bits < n && bits < 20 {
		bits++
	}
	return bits
}

// Pick routes a request with a key to the key's backend on the ring, or the
// next one clockwise under the load bound; a request without a key goes to
// the weighted rotation.
func (p *hashPicker) Pick(r *http.Request) (Pick, error) {
	k := p.key(r)
	if k == "" {
		i, ok := p.fallback.pick()
		if !ok {
			return Pick{}, ErrNoBackend
		}
		return Pick{Backend: p.fallback.backends[i], Sticky: StickyNone}, nil
	}
	i := p.owner(hashString(k), nil)
	if i < 0 {
		return Pick{}, ErrNoBackend
	}
	return Pick{Backend: p.ring[i], Sticky: StickyKept}, nil
}

// Repin chooses where a request goes when the backend it was sent to
// failed. A request with a key goes to the first backend clockwise from the
// key on the ring that is not in tried: the one Pick gives the key once the
// failed backend is marked down and leaves the ring, since every backend's
// points stay where they are. So a retry, the key's later requests, and
// every replica of the proxy agree on one successor, and the key returns
// when its backend does. A request without a key goes to the next backend
// of the rotation not in tried. The key is not a cookie of the proxy's:
// setCookie is empty.
func (p *hashPicker) Repin(r *http.Request, tried []*Backend) (*Backend, string, bool) {
	var i int
	if k := p.key(r); k != "" {
		i = p.owner(hashString(k), tried)
	} else if j, ok := p.fallback.pickExcept(tried); ok {
		i = slices.Index(p.ring, p.fallback.backends[j])
	} else {
		i = -1
	}
	if i < 0 {
		return nil, "", false
	}
	return p.ring[i], "", true
}

// owner returns the index in ring of the backend that serves hash h,
// leaving out the backends in skip: the backend of the first point
// clockwise from h if it is available or draining, else the first
// available backend after it; under a load bound, the first of those whose
// requests in flight are below its bound. -1 when no backend is left.
func (p *hashPicker) owner(h uint64, skip []*Backend) int {
	if len(p.points) == 0 {
		return -1
	}
	t := h >> p.shift
	lo, hi := p.prefix[t], p.prefix[t+1]
	for lo < hi {
		m := lo + (hi-lo)/2
		if p.points[m] < h {
			lo = m + 1
		} else {
			hi = m
		}
	}
	start := int(lo)
	if start == len(p.points) {
		start = 0
	}
	own := p.owners[start]
	if p.group == nil && len(skip) == 0 && p.role[own] != ringOut {
		return int(own)
	}
	if !slices.ContainsFunc(p.fallback.backends, func(b *Backend) bool { return !slices.Contains(skip, b) }) {
		// No available backend is left to walk to: only the key's own,
		// draining, may serve it.
		if p.role[own] == ringDraining && !slices.Contains(skip, p.ring[own]) {
			return int(own)
		}
		return -1
	}
	// A backend takes a request while its in-flight count is below
	// ceil(share × (pool in-flight + 1)); the shares sum to LoadFactor > 1,
	// so one backend is always under its bound and the walk ends. The
	// counters move under us, so the walk is capped at one turn and then
	// keeps the first backend not skipped: the key's own, unless it failed.
	var limit float64
	if p.group != nil {
		limit = float64(p.group.InFlight() + 1)
	}
	first := -1
	i := start
	for n := range len(p.points) {
		o := p.owners[i]
		role := p.role[o]
		if b := p.ring[o]; (role == ringAvailable || role == ringDraining && n == 0) && !slices.Contains(skip, b) {
			if p.group == nil || float64(b.InFlight()) < p.share[o]*limit {
				return int(o)
			}
			if first < 0 {
				first = int(o)
			}
		}
		if i++; i == len(p.points) {
			i = 0
		}
	}
	return first
}

// parseKey turns a key spec into the function that reads the key from a
// request, resolving names once here so that a pick does not allocate. An
// empty value counts as no key: hashing every such request to one backend
// would make it a hotspot.
func parseKey(spec string) (func(*http.Request) string, error) {
	switch spec {
	case "ip":
		return clientIP, nil
	case "path":
		return func(r *http.Request) string {
			if r.URL == nil {
				return ""
			}
			return r.URL.Path
		}, nil
	}
	kind, name, ok := strings.Cut(spec, ":")
	if !ok || name == "" {
		return nil, fmt.Errorf("key %q: want ip, path, header:NAME, cookie:NAME or query:NAME", spec)
	}
	switch kind {
	case "header":
		if !isToken(name) {
			return nil, fmt.Errorf("key %q: %q is not a valid header name", spec, name)
		}
		canon := http.CanonicalHeaderKey(name)
		if canon == "Host" {
			// net/http moves Host out of the header map.
			return func(r *http.Request) string { return r.Host }, nil
		}
		return func(r *http.Request) string {
			if v := r.Header[canon]; len(v) > 0 {
				return v[0]
			}
			return ""
		}, nil
	case "cookie":
		if !isToken(name) {
			return nil, fmt.Errorf("key %q: %q is not a valid cookie name", spec, name)
		}
		return func(r *http.Request) string {
			v, _ := cookieValue(r.Header, name)
			return v
		}, nil
	case "query":
		return func(r *http.Request) string {
			if r.URL == nil {
				return ""
			}
			return queryValue(r.URL.RawQuery, name)
		}, nil
	}
	return nil, fmt.Errorf("key %q: unknown kind %q, want header, cookie or query", spec, kind)
}

// clientIP returns the host part of RemoteAddr ("1.2.3.4:5" → "1.2.3.4",
// "[::1]:5" → "::1"), or all of it when it carries no port.
func clientIP(r *http.Request) string {
	a := r.RemoteAddr
	if len(a) > 0 && a[0] == '[' {
		if end := strings.IndexByte(a, ']'); end > 0 {
			return a[1:end]
		}
		return ""
	}
	if i := strings.LastIndexByte(a, ':'); i >= 0 && strings.IndexByte(a, ':') == i {
		return a[:i]
	}
	return a
}

// queryValue returns the first value of name in a raw query, as
// url.Values.Get would, but allocates only when the value is escaped. Pairs
// that do not unescape are skipped, as url.ParseQuery skips them.
func queryValue(raw, name string) string {
	for len(raw) > 0 {
		var pair string
		pair, raw, _ = strings.Cut(raw, "&")
		k, v, _ := strings.Cut(pair, "=")
		if k != name {
			if !strings.ContainsAny(k, "%+") {
				continue
			}
			if u, err := url.QueryUnescape(k); err != nil || u != name {
				continue
			}
		}
		if !strings.ContainsAny(v, "%+") {
			return v
		}
		if u, err := url.QueryUnescape(v); err == nil {
			return u
		}
	}
	return ""
}

// isToken reports whether s is an RFC 9110 token, the syntax of header and
// cookie names.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	return true
}

// hashString is FNV-1a 64 finished by mix64. Both are fixed functions with no
// per-process seed, so every replica and restart maps a key to the same
// backend.
func hashString(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return mix64(h)
}

// mix64 is MurmurHash3's 64-bit finaliser: FNV alone leaves the high bits,
// which choose the ring slot, poorly mixed for short keys.
func mix64(h uint64) uint64 {
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9a62f2d4e53
	h ^= h >> 33
	return h
}
