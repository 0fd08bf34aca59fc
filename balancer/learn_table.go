package balancer

import (
	"cmp"
	"hash/maphash"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// Sharding of the table: a table of at least 2×minShard entries is split
// into up to maxShards shards, each a least-recently-used list under its own
// lock, so that concurrent picks seldom wait for each other.
const (
	maxShards = 32
	minShard  = 1024
)

// learnTable maps sessions to backend numbers, bounded in entries and in
// idle time. Sessions are keyed by a 64-bit hash, which keeps an entry small
// and of fixed size whatever the length of the cookie. The hash is seeded
// per process: a client cannot aim for a collision, and a chance one (odds
// of about 3 in 10^8 over a million sessions) sends one session to
// another's backend, where its application treats it as unknown.
//
// It is golang-lru's simplelru under locks of its own rather than its
// expirable.LRU, which starts a goroutine per cache that nothing can stop,
// and which would keep the table of every policy replaced by a reload alive
// with it; it also counts an entry's age from its last write, where a
// session should be kept while it is used.
type learnTable struct {
	seed   maphash.Seed
	ttl    int64 // nanoseconds an entry is kept after its last use
	slack  int64 // ttl/16: how long a shared store's copy goes without renewal
	shards []learnShard
	mask   uint64 // len(shards)-1, a power of two minus one
	// clock returns monotonic nanoseconds; tests replace it.
	clock     func() int64
	evictions atomic.Uint64
}

// learnShard is one part of the table. Its list is ordered by use: every
// lookup that finds an entry moves it to the front and records the time,
// so the least recently used entry is the one evicted, and the expired
// entries are at the back.
type learnShard struct {
	mu   sync.Mutex
	lru  *simplelru.LRU[uint64, learned]
	size int // the most entries lru holds
	// Each shard fills a cache line of its own, so that locking one does
	// not slow down the cores that use its neighbours.
	_ [40]byte
}

// learned is an entry: the backend's number, the time the session was last
// used, and the period of slack (see learnTable.period) in which it was
// last written to a shared store, or renewed there. It takes 16 bytes, as
// the backend and the time alone would with padding.
type learned struct {
	backend uint32
	renewed uint32
	seen    int64
}

// newLearnTable makes a table of maxEntries (at least 1) in all, whose
// entries expire ttl (positive) after their last use.
func newLearnTable(maxEntries int, ttl time.Duration) *learnTable {
	n := 1
	for n < maxShards && maxEntries/(2*n) >= minShard {
		n *= 2
	}
	epoch := time.Now()
	t := &learnTable{
		seed:   maphash.MakeSeed(),
		ttl:    int64(ttl),
		slack:  max(int64(ttl)/16, 1),
		shards: make([]learnShard, n),
		mask:   uint64(n - 1),
		clock:  func() int64 { return int64(time.Since(epoch)) },
	}
	for i := range t.shards {
		// The shards' sizes add up to maxEntries exactly.
		size := maxEntries / n
		if i < maxEntries%n {
			size++
		}
		// NewLRU fails only on a size below 1, which cannot happen here.
		t.shards[i].lru, _ = simplelru.NewLRU[uint64, learned](size, nil)
		t.shards[i].size = size
	}
	return t
}

// keep is how long Redis keeps an entry after its last write: the longest
// the memory table may keep it.
func (t *learnTable) keep() time.Duration { return time.Duration(t.ttl + t.slack) }

// key hashes a session ID; it does not allocate.
func (t *learnTable) key(sid string) uint64 { return maphash.String(t.seed, sid) }

func (t *learnTable) shard(key uint64) *learnShard { return &t.shards[key&t.mask] }

// expired reports whether an entry last used at seen is gone at now: ttl
// after its last use.
func (t *learnTable) expired(seen, now int64) bool { return now-seen > t.ttl }

// period numbers the stretch of slack that time now falls in. A session
// in use is renewed in a shared store when its period changes, so at most
// once per slack, and its copy there, kept ttl+slack after the last
// renewal, outlives the entry. It wraps after 2^32 periods, which costs at
// worst one renewal too many or too few.
func (t *learnTable) period(now int64) uint32 { return uint32(now / t.slack) }

// get returns the backend number of the session key at time now, records
// the use and makes it the shard's most recently used entry. stale reports
// that the session was not renewed in this period yet, so that a shared
// store renews its copy: at most once per slack per session.
func (t *learnTable) get(key uint64, now int64) (backend uint32, found, stale bool) {
	s := t.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.lru.Peek(key)
	switch {
	case !ok:
		return 0, false, false
	case t.expired(e.seen, now):
		s.lru.Remove(key)
		t.sweep(s, now)
		return 0, false, false
	}
	e.seen = now
	if p := t.period(now); e.renewed != p {
		e.renewed, stale = p, true
		// Once per period, as the writes do: what stays cheap on
		// every lookup is a lookup.
		t.sweep(s, now)
	}
	s.lru.Add(key, e)
	return e.backend, true, stale
}

// put records that the session key is on backend number n, as of now.
func (t *learnTable) put(key uint64, n uint32, now int64) {
	s := t.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	// Expired entries go first, so that an eviction counts only the
	// loss of a live one.
	t.sweep(s, now)
	if s.lru.Add(key, t.entry(n, now)) {
		t.evictions.Add(1)
	}
}

// entry is a new entry of backend number n, used and written at now.
func (t *learnTable) entry(n uint32, now int64) learned {
	return learned{backend: n, renewed: t.period(now), seen: now}
}

// What learn did, and what a shared store must hear of.
const (
	learnedSame  = iota // known, on the same backend, written in this period: nothing
	learnedNew          // new, or renewed: write it
	learnedMoved        // it was on another backend: write it, and tell the other replicas
)

// learn records that the session key is on backend number n, as of now, as
// put does, and reports what changed.
func (t *learnTable) learn(key uint64, n uint32, now int64) int {
	s := t.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	t.sweep(s, now)
	e, ok := s.lru.Peek(key)
	if ok && e.backend == n && e.renewed == t.period(now) {
		e.seen = now
		s.lru.Add(key, e)
		return learnedSame
	}
	if s.lru.Add(key, t.entry(n, now)) {
		t.evictions.Add(1)
	}
	if ok && e.backend != n && !t.expired(e.seen, now) {
		return learnedMoved
	}
	return learnedNew
}

// move records that the session key is now on backend number n, if the
// table holds it, and reports whether it did; an unknown session stays
// unknown, as only backends may teach the table new ones.
func (t *learnTable) move(key uint64, n uint32, now int64) bool {
	s := t.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.lru.Peek(key)
	if !ok || t.expired(e.seen, now) {
		return false
	}
	s.lru.Add(key, t.entry(n, now))
	return true
}

// remove forgets the session key.
func (t *learnTable) remove(key uint64) {
	s := t.shard(key)
	s.mu.Lock()
	s.lru.Remove(key)
	s.mu.Unlock()
}

// sweepMax bounds the expired entries a lookup or a write removes, so that
// neither waits long; their steady sum drains an idle table as fast as
// traffic could fill it.
const sweepMax = 2

// sweep removes expired entries from the back of s, whose write lock the
// caller holds.
func (t *learnTable) sweep(s *learnShard, now int64) {
	for range sweepMax {
		_, e, ok := s.lru.GetOldest()
		if !ok || !t.expired(e.seen, now) {
			return
		}
		s.lru.RemoveOldest()
	}
}

// copyTo adds the live entries of t to dst, a table of the same seed
// (other bounds) that may already be in use. In each shard of dst, the
// entries already there stay its most recent ones, and the most recent of
// t's fill what room is left, each last used when it was: those past dst's
// expiry are left out. Recency across t's shards is told by the entries'
// times. Each is due for renewal in a shared store at its next use, which
// then expires it by dst's bounds (and writes it to a Redis the reload
// changed to, if that lacks it). An entry removed from dst while the copy
// runs may come back from t, as a removal a moment earlier would not: it
// then only expires.
func (t *learnTable) copyTo(dst *learnTable) {
	type item struct {
		key uint64
		e   learned
	}
	now, dnow := t.clock(), dst.clock()
	due := dst.period(dnow) - 1
	parts := make([][]item, len(dst.shards))
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		for _, k := range s.lru.Keys() { // least recently used first
			e, _ := s.lru.Peek(k)
			if age := now - e.seen; !dst.expired(dnow-age, dnow) {
				j := k & dst.mask
				parts[j] = append(parts[j], item{k, learned{backend: e.backend, renewed: due, seen: dnow - age}})
			}
		}
		s.mu.Unlock()
	}
	for j, items := range parts {
		slices.SortStableFunc(items, func(a, b item) int { return cmp.Compare(a.e.seen, b.e.seen) })
		s := &dst.shards[j]
		s.mu.Lock()
		present := s.lru.Keys()
		items = slices.DeleteFunc(items, func(it item) bool { return s.lru.Contains(it.key) })
		for _, it := range items[max(0, len(items)-(s.size-len(present))):] {
			s.lru.Add(it.key, it.e)
		}
		for _, k := range present {
			s.lru.Get(k) // back to the front, in their order
		}
		s.mu.Unlock()
	}
}

// len counts the entries, expired ones not yet swept included.
func (t *learnTable) len() int {
	n := 0
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		n += s.lru.Len()
		s.mu.Unlock()
	}
	return n
}

// count counts the entries live at now by backend number, one shard at a
// time under its lock.
func (t *learnTable) count(now int64) map[uint32]int {
	out := map[uint32]int{}
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		for _, e := range s.lru.Values() {
			if !t.expired(e.seen, now) {
				out[e.backend]++
			}
		}
		s.mu.Unlock()
	}
	return out
}
