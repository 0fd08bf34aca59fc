package balancer

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

func init() {
	Register("learn", newLearnPolicy)
}

// Where a learn policy keeps its table; see LearnOptions.Store.
const (
	LearnStoreMemory = "memory"
	LearnStoreRedis  = "redis"
)

// MaxLearnEntries is the largest LearnOptions.MaxEntries: about a gigabyte
// of table (BenchmarkLearnMemory measures the bytes per entry).
const MaxLearnEntries = 10_000_000

// RedisKeyPrefix starts the Redis key of every learned session, followed by
// the cookie name, a colon, and the session ID. Pools that share a Redis and
// a cookie name share their sessions: what one learns, the others follow,
// for backends they have under the same ID.
const RedisKeyPrefix = "affinity:learn:"

// maxSessionID is the longest session cookie value learned or looked up.
// Browsers keep no cookie longer than 4096 bytes, name included, so a
// longer value comes from no browser, and is not worth a Redis round trip.
const maxSessionID = 4096

// ErrInvalidLearn is wrapped by the learn policy's Factory when its options
// are unusable.
var ErrInvalidLearn = errors.New("invalid learn options")

// learnPolicy sticks on a cookie the application sets, as HAProxy's stick
// tables do: it learns session → backend from the Set-Cookie headers of
// backends' responses, and sends a request carrying a known session to the
// backend that issued it. It learns only from backends, never from clients,
// so a client cannot fill the table with sessions of its own invention.
//
// The table lives in the Policy, not the Picker, so that rebuilds on health
// changes keep what was learned. Pickers share it; so do, through Redis,
// the replicas of the proxy when the store is LearnStoreRedis.
type learnPolicy struct {
	cookie string
	table  *learnTable
	store  *redisStore // nil with the memory store
	next   atomic.Uint64

	// buildMu guards Build's own state: every backend ID
	// seen, numbered in order of appearance, and the numbers in the last
	// Set.All. Entries store the number, not the ID, and a number is never
	// reused, so an entry of a removed backend can never name another.
	buildMu sync.Mutex
	ids     map[string]uint32
	members map[uint32]bool
}

func newLearnPolicy(o Options) (Policy, error) {
	l := o.Learn
	if !isToken(l.Cookie) {
		return nil, fmt.Errorf("%w: %q is not a valid cookie name", ErrInvalidLearn, l.Cookie)
	}
	if l.MaxEntries < 1 || l.MaxEntries > MaxLearnEntries {
		return nil, fmt.Errorf("%w: max_entries %d must be between 1 and %d", ErrInvalidLearn, l.MaxEntries, MaxLearnEntries)
	}
	if l.TTL <= 0 {
		return nil, fmt.Errorf("%w: ttl %v must be positive", ErrInvalidLearn, l.TTL)
	}
	p := &learnPolicy{
		cookie: l.Cookie,
		table:  newLearnTable(l.MaxEntries, l.TTL),
		ids:    map[string]uint32{},
	}
	switch l.Store {
	case LearnStoreMemory:
	case LearnStoreRedis:
		if err := checkRedis(l.Redis); err != nil {
			return nil, fmt.Errorf("%w: redis: %w", ErrInvalidLearn, err)
		}
		// The store reads the table's clock, which tests replace.
		clock := func() int64 { return p.table.clock() }
		p.store = newRedisStore(l.Redis, RedisKeyPrefix+l.Cookie+":", p.table.keep(), clock)
	default:
		return nil, fmt.Errorf("%w: store %q must be %s or %s", ErrInvalidLearn, l.Store, LearnStoreMemory, LearnStoreRedis)
	}
	return p, nil
}

// checkRedis accepts what newRedisStore can dial: host:port addresses with
// a host, and a positive timeout.
func checkRedis(r RedisOptions) error {
	if len(r.Addrs) == 0 {
		return errors.New("no addresses")
	}
	for _, a := range r.Addrs {
		host, port, err := net.SplitHostPort(a)
		if err != nil || host == "" {
			return fmt.Errorf("address %q is not host:port", a)
		}
		if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
			return fmt.Errorf("address %q: port must be from 1 to 65535", a)
		}
	}
	if r.Timeout <= 0 {
		return fmt.Errorf("timeout %v must be positive", r.Timeout)
	}
	return nil
}

// Build numbers the backends of s.All, marks those that take their sessions, and drops
// the entries of backends that left s.All since the last Build.
func (p *learnPolicy) Build(s Set) Picker {
	p.buildMu.Lock()
	defer p.buildMu.Unlock()
	lp := &learnPicker{
		policy: p,
		byID:   make(map[string]uint32, len(s.All)),
		w:      newWRR(s.Available, &p.next),
	}
	members := make(map[uint32]bool, len(s.All))
	for _, b := range s.All {
		n, ok := p.ids[b.ID]
		if !ok {
			n = uint32(len(p.ids))
			p.ids[b.ID] = n
		}
		lp.byID[b.ID] = n
		members[n] = true
	}
	lp.slots = make([]learnSlot, len(p.ids))
	for _, b := range s.All {
		lp.slots[lp.byID[b.ID]].backend = b
	}
	for _, bs := range [][]*Backend{s.Available, s.Draining} {
		for _, b := range bs {
			if n, ok := lp.byID[b.ID]; ok {
				lp.slots[n].serves = true
			}
		}
	}
	gone := false
	for n := range p.members {
		if !members[n] {
			gone = true
			break
		}
	}
	if gone {
		// A backend left the pool: a walk of the whole table, but only on
		// a change of membership, never on a change of health.
		p.table.dropIf(func(n uint32) bool { return !members[n] })
	}
	p.members = members
	return lp
}

// Len reports the sessions in the memory table.
func (p *learnPolicy) Len() int { return p.table.len() }

// Evictions counts the live sessions forgotten to make room.
func (p *learnPolicy) Evictions() uint64 { return p.table.evictions.Load() }

// Sessions counts the live sessions of the memory table by backend ID,
// for the backends of the latest Build. With the Redis store, it counts
// the sessions this replica has seen, not every replica's.
func (p *learnPolicy) Sessions() map[string]int {
	byNumber := p.table.count(p.table.clock())
	p.buildMu.Lock()
	defer p.buildMu.Unlock()
	out := make(map[string]int, len(p.members))
	for id, n := range p.ids {
		if p.members[n] {
			out[id] = byNumber[n]
		}
	}
	return out
}

// StoreErrors counts the Redis operations that failed or were dropped.
func (p *learnPolicy) StoreErrors() uint64 {
	if p.store == nil {
		return 0
	}
	return p.store.errors.Load()
}

// Close stops the Redis writer, after writing what it has queued, and
// closes the connections; it returns within about twice the Redis timeout.
// The memory table stays: pickers built before keep answering from it, and
// no longer use Redis. Close is safe to call more than once.
func (p *learnPolicy) Close() error {
	if p.store == nil {
		return nil
	}
	return p.store.close()
}

// learnSlot is what a backend number resolves to in one Picker.
type learnSlot struct {
	backend *Backend // nil: not in the Set's All
	// serves is set when the backend takes the sessions it holds: it is
	// available, or draining.
	serves bool
}

type learnPicker struct {
	policy *learnPolicy
	slots  []learnSlot       // by backend number
	byID   map[string]uint32 // Set.All: backend ID → number
	w      wrr               // over Set.Available
}

// Pick sends a request whose session cookie is known to the backend that
// issued it, while that backend is available or draining. A known session
// whose backend is unavailable is moved to
// another, and remembered there: an application that shares its sessions
// keeps the client where it now is, and one that does not issues a new
// session, learned from the response. Any other request goes to the
// weighted rotation, and learns its backend when the backend sets the
// cookie.
//
// With the Redis store, a session missing from the memory table is looked
// up in Redis: the pick then waits for Redis, RedisOptions.Timeout at most,
// and none at all for a while after a failure (see redisStore.get).
func (lp *learnPicker) Pick(r *http.Request) (Pick, error) {
	p := lp.policy
	sid, ok := cookieValue(r.Header, p.cookie)
	if !ok || sid == "" {
		return lp.rotate(StickyNone)
	}
	if len(sid) > maxSessionID {
		return lp.rotate(StickyNew)
	}
	t := p.table
	key := t.key(sid)
	now := t.clock()
	n, found, stale := t.get(key, now)
	if !found {
		if n, found = lp.fetch(r, sid, key, now); !found {
			return lp.rotate(StickyNew)
		}
	}
	if int(n) >= len(lp.slots) {
		// Numbered by a Build after this picker's, whose Set this one
		// cannot tell about; the next snapshot can.
		return lp.rotate(StickyNew)
	}
	switch s := lp.slots[n]; {
	case s.serves:
		if stale && p.store != nil {
			// Still in use: keep Redis from expiring it for the other
			// replicas, which may not see this client for a while.
			p.store.set(sid, s.backend.ID)
		}
		return Pick{Backend: s.backend, Sticky: StickyKept}, nil
	case s.backend != nil:
		pk, err := lp.rotate(StickyRepinned)
		if err != nil {
			return pk, err
		}
		if m, ok := lp.byID[pk.Backend.ID]; ok {
			t.put(key, m, now)
			if p.store != nil {
				p.store.set(sid, pk.Backend.ID)
			}
		}
		return pk, nil
	default:
		// The backend left the pool; Build drops such entries, this one
		// raced it. Redis keeps it: another replica may still have the
		// backend, and it expires there by itself.
		t.remove(key)
		return lp.rotate(StickyNew)
	}
}

// rotate places a request on the weighted rotation.
func (lp *learnPicker) rotate(sticky Sticky) (Pick, error) {
	i, ok := lp.w.pick()
	if !ok {
		return Pick{}, ErrNoBackend
	}
	return Pick{Backend: lp.w.backends[i], Sticky: sticky}, nil
}

// Repin chooses where a request goes when its backend failed: the next
// backend of the rotation not in tried. A session the table knows is moved
// there (and in Redis), so that the client's next requests follow it to the
// backend that served it rather than back to the one that failed. The
// policy pins by its table, never by a cookie of its own: setCookie is
// empty.
func (lp *learnPicker) Repin(r *http.Request, tried []*Backend) (*Backend, string, bool) {
	i, ok := lp.w.pick()
	if !ok {
		return nil, "", false
	}
	n := len(lp.w.backends)
	for k := range n {
		b := lp.w.backends[(i+k)%n]
		if slices.Contains(tried, b) {
			continue
		}
		lp.move(r, b)
		return b, "", true
	}
	return nil, "", false
}

// move moves the session r carries, if the table knows it, to b.
func (lp *learnPicker) move(r *http.Request, b *Backend) {
	p := lp.policy
	sid, ok := cookieValue(r.Header, p.cookie)
	if !ok || sid == "" || len(sid) > maxSessionID {
		return
	}
	m, ok := lp.byID[b.ID]
	if !ok {
		return
	}
	if p.table.move(p.table.key(sid), m, p.table.clock()) && p.store != nil {
		p.store.set(sid, b.ID)
	}
}

// fetch looks a session up in Redis, and keeps what it finds in the memory
// table, so that the client's next requests do not ask again.
func (lp *learnPicker) fetch(r *http.Request, sid string, key uint64, now int64) (uint32, bool) {
	st := lp.policy.store
	if st == nil {
		return 0, false
	}
	id, ok := st.get(r.Context(), sid)
	if !ok {
		return 0, false
	}
	n, ok := lp.byID[id]
	if !ok {
		// A backend this replica's config does not have.
		return 0, false
	}
	lp.policy.table.put(key, n, now)
	return n, true
}

// Learn records the sessions that the response header h of backend b sets,
// and forgets those it deletes. Only the Set-Cookie lines of the policy's
// cookie are parsed, and a response without Set-Cookie costs one map
// lookup.
func (lp *learnPicker) Learn(b *Backend, h http.Header) {
	lines := h["Set-Cookie"]
	if len(lines) == 0 {
		return
	}
	p := lp.policy
	for _, line := range lines {
		sid, del, ok := sessionCookie(line, p.cookie)
		if !ok {
			continue
		}
		key := p.table.key(sid)
		if del {
			p.table.remove(key)
			if p.store != nil {
				p.store.del(sid)
			}
			continue
		}
		n, ok := lp.byID[b.ID]
		if !ok {
			continue
		}
		// An application that sends its cookie again with every
		// response does not cost a Redis write each time.
		if p.table.learn(key, n, p.table.clock()) && p.store != nil {
			p.store.set(sid, b.ID)
		}
	}
}

// sessionCookie reads a Set-Cookie header line, as RFC 6265 section 5.2
// does, for the cookie called name. It returns the value set and ok, or,
// with del, a value whose cookie the line deletes: Max-Age zero or below,
// or else Expires in the past (Max-Age wins when both are there, as in
// browsers). A line for another cookie, or with an empty or overlong value,
// is not ok. Nothing is allocated unless the line has an Expires attribute.
func sessionCookie(line, name string) (sid string, del, ok bool) {
	pair, attrs, _ := strings.Cut(line, ";")
	k, v, found := strings.Cut(pair, "=")
	if !found || trimSpace(k) != name {
		return "", false, false
	}
	v = trimSpace(v)
	if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
		v = v[1 : len(v)-1]
	}
	if v == "" || len(v) > maxSessionID {
		return "", false, false
	}
	maxAge, expires := 0, 0 // 0: absent; 1: keeps; -1: deletes
	for attrs != "" {
		var a string
		a, attrs, _ = strings.Cut(attrs, ";")
		ak, av, _ := strings.Cut(a, "=")
		switch ak = trimSpace(ak); {
		case strings.EqualFold(ak, "Max-Age"):
			if gone, valid := parseMaxAge(trimSpace(av)); valid {
				maxAge = verdict(gone)
			}
		case strings.EqualFold(ak, "Expires"):
			if t, valid := parseCookieTime(trimSpace(av)); valid {
				expires = verdict(!t.After(time.Now()))
			}
		}
	}
	if maxAge != 0 {
		return v, maxAge < 0, true
	}
	return v, expires < 0, true
}

func verdict(deletes bool) int {
	if deletes {
		return -1
	}
	return 1
}

// parseMaxAge reads a Max-Age value: an optional '-' and digits, of any
// length (a long run of digits is still a valid attribute). gone is set for
// zero or a negative number, which expire the cookie at once.
func parseMaxAge(s string) (gone, valid bool) {
	digits, neg := strings.CutPrefix(s, "-")
	if digits == "" {
		return false, false
	}
	zero := true
	for _, c := range []byte(digits) {
		if c < '0' || c > '9' {
			return false, false
		}
		zero = zero && c == '0'
	}
	return neg || zero, true
}

// parseCookieTime reads an Expires date in the formats servers write: those
// of HTTP dates, and the Netscape form with dashes and a four-digit year
// that Java servlet containers use.
func parseCookieTime(s string) (time.Time, bool) {
	if t, err := http.ParseTime(s); err == nil {
		return t, true
	}
	if t, err := time.Parse("Mon, 02-Jan-2006 15:04:05 MST", s); err == nil {
		return t, true
	}
	return time.Time{}, false
}
