package balancer

import (
	"errors"
	"fmt"
	"maps"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
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
// the replicas of the proxy when the store is LearnStoreRedis. A policy
// that replaces this one on a reload takes it over (HandOver).
type learnPolicy struct {
	cookie string
	// table is read by every pick; HandOver points it at the table of
	// the policy that replaces this one.
	table atomic.Pointer[learnTable]
	// store is the Redis store the pickers use, nil with the memory
	// store: own, until HandOver points it at the store of the policy
	// that replaces this one, so that the requests still in flight on
	// this one's pickers write where the new pickers read.
	store atomic.Pointer[redisStore]
	own   *redisStore // this policy's store, which Close closes; nil with the memory store
	next  atomic.Uint64

	// buildMu guards Build's own state: every backend ID seen, numbered
	// in order of appearance. Entries store the number, not the ID, and a
	// number is never reused, so an entry of a removed backend can never
	// name another.
	buildMu sync.Mutex
	ids     map[string]uint32
	members map[uint32]bool // the numbers of the latest Set.All, for Sessions

	// countMu guards the latest count of Sessions, when it was made and
	// how long it took, by the table's clock.
	countMu              sync.Mutex
	counted              map[string]int
	countedAt, countTook int64
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
	p := &learnPolicy{cookie: l.Cookie, ids: map[string]uint32{}}
	p.table.Store(newLearnTable(l.MaxEntries, l.TTL))
	switch l.Store {
	case LearnStoreMemory:
	case LearnStoreRedis:
		opts, err := redisOptions(l.Redis)
		if err != nil {
			return nil, fmt.Errorf("%w: redis: %w", ErrInvalidLearn, err)
		}
		// The store reads the table's clock, which tests replace.
		clock := func() int64 { return p.tab().clock() }
		p.own = newRedisStore(opts, RedisKeyPrefix+l.Cookie, p.tab().keep(), clock, p.adopt)
		p.store.Store(p.own)
	default:
		return nil, fmt.Errorf("%w: store %q must be %s or %s", ErrInvalidLearn, l.Store, LearnStoreMemory, LearnStoreRedis)
	}
	return p, nil
}

// Build numbers the backends of s.All and marks those that take their
// sessions: the available and the draining ones. The entries of a backend
// that left s.All stay: like those of a backend that is down, each is moved
// to the session's successor on its next request, and remembered there.
func (p *learnPolicy) Build(s Set) Picker {
	p.buildMu.Lock()
	defer p.buildMu.Unlock()
	lp := &learnPicker{
		policy: p,
		byID:   make(map[string]uint32, len(s.All)),
		w:      newWRR(s.Available, s.Warming, &p.next),
		ids:    make([]uint64, len(s.Available)),
	}
	for _, b := range s.All {
		n, ok := p.ids[b.ID]
		if !ok {
			n = uint32(len(p.ids))
			p.ids[b.ID] = n
		}
		lp.byID[b.ID] = n
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
	for i, b := range s.Available {
		lp.ids[i] = hashString(b.ID)
	}
	p.members = make(map[uint32]bool, len(s.All))
	for _, n := range lp.byID {
		p.members[n] = true
	}
	return lp
}

// adopt moves the session sid, if the memory table holds it, to the
// backend with ID id, as Redis or another replica says it now is, or
// forgets it when id is empty: another replica saw it logged out. A
// backend this policy never had leaves the entry as it is.
func (p *learnPolicy) adopt(sid, id string) {
	if len(sid) > maxSessionID {
		return
	}
	if id == "" {
		t := p.tab()
		t.remove(t.key(sid))
		return
	}
	p.buildMu.Lock()
	n, ok := p.ids[id]
	p.buildMu.Unlock()
	if ok {
		t := p.tab()
		t.move(t.key(sid), n, t.clock())
	}
}

// tab returns the memory table.
func (p *learnPolicy) tab() *learnTable { return p.table.Load() }

// NewFrom makes the policy registered under name, as New does, for a pool
// whose policy until now is prev (nil for a new pool). When both are learn
// policies of the same cookie, the new one keys and numbers its table as
// prev does, so that HandOver can move prev's sessions into it once the new
// policy is in use.
func NewFrom(prev Policy, name string, o Options) (Policy, error) {
	p, err := New(name, o)
	if err != nil {
		return nil, err
	}
	if next, old := learnPair(prev, p); next != nil {
		old.buildMu.Lock()
		next.ids = maps.Clone(old.ids)
		old.buildMu.Unlock()
		next.tab().seed = old.tab().seed
	}
	return p, nil
}

// HandOver gives next, made by NewFrom(prev, ...), what prev learned, when
// next is about to replace prev: a reload changed the learn policy's
// options (max_entries, ttl, Redis) but not its cookie. Call it before
// prev is closed. The sessions move to next's table, the most recently used
// first up to its max_entries, each as old as it was and forgotten if that
// is past next's ttl; prev's pickers, which serve the requests still in
// flight, use next's table and next's Redis store from then on.
//
// With Redis, next listens to the moves other replicas publish before
// HandOver returns (or once it has waited redis.timeout for that), when
// the table it takes over holds sessions: those are found in memory, so
// next would otherwise not use Redis, nor hear of their moves, until it
// had to write. Other pairs of policies hand nothing over.
func HandOver(prev, next Policy) {
	np, op := learnPair(prev, next)
	if np == nil {
		return
	}
	t := np.tab()
	if np.own != nil && op.tab().len() > 0 {
		np.own.listening()
	}
	old := op.table.Swap(t)
	old.copyTo(t)
	t.evictions.Add(old.evictions.Load())
	if np.own != nil && op.own != nil {
		// The counters go on from prev's, as the metrics read them.
		np.own.errors.Add(op.own.errors.Load())
		np.own.lost.Add(op.own.lost.Load())
	}
	op.store.Store(np.own)
}

// learnPair returns prev and next as learn policies of the same cookie, or
// nils.
func learnPair(prev, next Policy) (np, op *learnPolicy) {
	n, ok := next.(*learnPolicy)
	o, ok2 := prev.(*learnPolicy)
	if !ok || !ok2 || n == o || n.cookie != o.cookie {
		return nil, nil
	}
	return n, o
}

// Len reports the sessions in the memory table.
func (p *learnPolicy) Len() int { return p.tab().len() }

// Evictions counts the live sessions forgotten to make room.
func (p *learnPolicy) Evictions() uint64 { return p.tab().evictions.Load() }

// Sessions counts the live sessions of the memory table by backend ID,
// for the backends of the latest Build. With the Redis store, it counts
// the sessions this replica has seen, not every replica's.
//
// A count walks the table, and status pages, scrapes and operators
// waiting for a drain all ask: a count is reused for a second, or for ten
// times what it took, so that a huge table costs a tenth of a core at most.
func (p *learnPolicy) Sessions() map[string]int {
	p.countMu.Lock()
	defer p.countMu.Unlock()
	t := p.tab()
	now := t.clock()
	if p.counted != nil && now-p.countedAt < max(int64(time.Second), 10*p.countTook) {
		return maps.Clone(p.counted)
	}
	byNumber := t.count(now)
	p.buildMu.Lock()
	out := make(map[string]int, len(p.members))
	for id, n := range p.ids {
		if p.members[n] {
			out[id] = byNumber[n]
		}
	}
	p.buildMu.Unlock()
	p.counted, p.countedAt, p.countTook = out, now, t.clock()-now
	return maps.Clone(out)
}

// StoreErrors counts the Redis operations that failed.
func (p *learnPolicy) StoreErrors() uint64 {
	if p.own == nil {
		return 0
	}
	return p.own.errors.Load()
}

// StoreLost counts the Redis writes never made.
func (p *learnPolicy) StoreLost() uint64 {
	if p.own == nil {
		return 0
	}
	return p.own.lost.Load()
}

// StoreHeld reports the Redis writes held until Redis answers.
func (p *learnPolicy) StoreHeld() int {
	if p.own == nil {
		return 0
	}
	return int(p.own.heldN.Load())
}

// SetLogger makes the Redis store log to l: when Redis fails and returns,
// and the writes it loses.
func (p *learnPolicy) SetLogger(l *zap.Logger) {
	if p.own != nil {
		p.own.log.Store(l)
	}
}

// Close stops the Redis writer, after writing what it has queued, and
// closes the connections; it returns within about twice the Redis timeout.
// The memory table stays: pickers built before keep answering from it, and
// no longer use Redis. Close is safe to call more than once.
func (p *learnPolicy) Close() error {
	if p.own == nil {
		return nil
	}
	return p.own.close()
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
	ids    []uint64          // parallel to w.backends: hashString(ID)
}

// Pick sends a request whose session cookie is known to the backend that
// issued it, while that backend is available or draining. A known session
// whose backend is unavailable, or no longer in the pool, is moved to the
// session's successor (see successor) and remembered there: an application
// that shares its sessions keeps the client where it now is, and one that
// does not issues a new session, learned from the response. Any other
// request goes to the weighted rotation, and learns its backend when the
// backend sets the cookie.
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
	t := p.tab()
	key := t.key(sid)
	now := t.clock()
	n, found, stale := t.get(key, now)
	if !found {
		id, ok := lp.fetch(r, sid)
		if !ok {
			return lp.rotate(StickyNew)
		}
		// A backend this replica's config does not have is one
		// removed from the pool: the session moves, as below.
		if n, found = lp.byID[id]; found {
			t.put(key, n, now)
		}
	}
	if found && int(n) >= len(lp.slots) {
		// Numbered by a Build after this picker's, whose Set this one
		// cannot tell about; the next snapshot can.
		return lp.rotate(StickyNew)
	}
	if found && lp.slots[n].serves {
		b := lp.slots[n].backend
		if st := p.store.Load(); stale && st != nil {
			// Still in use: keep Redis from expiring it for the other
			// replicas, which may not see this client for a while.
			st.touch(sid, b.ID)
		}
		return Pick{Backend: b, Sticky: StickyKept}, nil
	}
	i := lp.successor(sid, nil)
	if i < 0 {
		return Pick{}, ErrNoBackend
	}
	b := lp.w.backends[i]
	t.put(key, lp.byID[b.ID], now)
	if st := p.store.Load(); st != nil {
		st.move(sid, b.ID)
	}
	return Pick{Backend: b, Sticky: StickyRepinned}, nil
}

// successor returns the index in w.backends of the backend that takes the
// session sid when its own cannot, leaving out those in skip; -1 when none
// is left. It ranks the available backends by a hash of the session and
// each backend's ID (rendezvous hashing), with no per-process seed, so
// every replica of the proxy, every pick and every retry move the session
// to the same backend, whichever of them first finds its backend gone.
func (lp *learnPicker) successor(sid string, skip []*Backend) int {
	return rendezvous(hashString(sid), lp.w.backends, lp.ids, skip)
}

// rotate places a request on the weighted rotation.
func (lp *learnPicker) rotate(sticky Sticky) (Pick, error) {
	i, ok := lp.w.pick()
	if !ok {
		return Pick{}, ErrNoBackend
	}
	return Pick{Backend: lp.w.backends[i], Sticky: sticky}, nil
}

// Repin chooses where a request goes when its backend failed. A request
// with a session cookie goes to the session's successor among the
// backends not in tried: the backend Pick moves the session to once the
// failed one is marked down, so that a retry, the client's next requests
// and the other replicas agree. A session the table knows is moved there
// (and in Redis). Any other request goes to the next backend of the
// rotation not in tried. The policy pins by its table, never by a cookie
// of its own: setCookie is empty.
func (lp *learnPicker) Repin(r *http.Request, tried []*Backend) (*Backend, string, bool) {
	p := lp.policy
	sid, ok := cookieValue(r.Header, p.cookie)
	if !ok || sid == "" || len(sid) > maxSessionID {
		i, ok := lp.w.pickExcept(tried)
		if !ok {
			return nil, "", false
		}
		return lp.w.backends[i], "", true
	}
	i := lp.successor(sid, tried)
	if i < 0 {
		return nil, "", false
	}
	b := lp.w.backends[i]
	if t := p.tab(); t.move(t.key(sid), lp.byID[b.ID], t.clock()) {
		if st := p.store.Load(); st != nil {
			st.move(sid, b.ID)
		}
	}
	return b, "", true
}

// fetch looks a session up in Redis and returns the ID of its backend.
func (lp *learnPicker) fetch(r *http.Request, sid string) (string, bool) {
	st := lp.policy.store.Load()
	if st == nil {
		return "", false
	}
	return st.get(r.Context(), sid)
}

// Learn records the sessions that the response header h of backend b sets,
// and forgets those it expires, along with the session the request r
// carried (the usual logout answers DEMO_SESSION=; Max-Age=0, or another
// placeholder, not the session's own ID). Only the Set-Cookie lines of the
// policy's cookie are parsed, and a response without Set-Cookie costs one
// map lookup.
func (lp *learnPicker) Learn(r *http.Request, b *Backend, h http.Header) {
	lines := h["Set-Cookie"]
	if len(lines) == 0 {
		return
	}
	p := lp.policy
	t := p.tab()
	for _, line := range lines {
		sid, del, ok := sessionCookie(line, p.cookie)
		if !ok {
			continue
		}
		if del {
			p.forget(t, sid)
			if carried, ok := cookieValue(r.Header, p.cookie); ok && carried != sid {
				p.forget(t, carried)
			}
			continue
		}
		n, ok := lp.byID[b.ID]
		if !ok {
			continue
		}
		// An application that sends its cookie again with every
		// response does not cost a Redis write each time.
		switch st := p.store.Load(); t.learn(t.key(sid), n, t.clock()) {
		case learnedNew:
			if st != nil {
				st.set(sid, b.ID)
			}
		case learnedMoved:
			if st != nil {
				st.move(sid, b.ID)
			}
		}
	}
}

// forget removes the session sid from the table t and from Redis; an
// empty or overlong ID names no session.
func (p *learnPolicy) forget(t *learnTable, sid string) {
	if sid == "" || len(sid) > maxSessionID {
		return
	}
	t.remove(t.key(sid))
	if st := p.store.Load(); st != nil {
		st.del(sid)
	}
}

// sessionCookie reads a Set-Cookie header line, as RFC 6265 section 5.2
// does, for the cookie called name. It returns the value set and ok, or,
// with del, the value of a cookie the line deletes, which may be empty:
// Max-Age zero or below, or else Expires in the past (Max-Age wins when
// both are there, as in browsers). A line for another cookie, or one that
// sets an empty or overlong value, is not ok. An Expires date is read as
// browsers read it (parseCookieDate). Nothing is allocated.
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
			if t, valid := parseCookieDate(av); valid {
				expires = verdict(!t.After(time.Now()))
			}
		}
	}
	del = maxAge < 0 || (maxAge == 0 && expires < 0)
	if !del && (v == "" || len(v) > maxSessionID) {
		return "", false, false
	}
	return v, del, true
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
