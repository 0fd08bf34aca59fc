// Package balancer chooses the backend that serves a request.
//
// The split follows grpc-go: a Policy reacts to membership and health changes
// by building an immutable Picker, and the request path only calls
// Picker.Pick. Nothing on the request path mutates shared state except atomic
// counters, so picks take no lock.
//
// Each algorithm lives in its own file and registers itself by name from
// init(); adding one touches no other file.
package balancer

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Backend is one upstream server of a pool. ID, URL and Weight are fixed when
// the backend is created; the counters are updated by the proxy around every
// request it forwards.
type Backend struct {
	// ID is stable across restarts, replicas and reordering of the config:
	// the configured name, or one derived from the URL. Sticky cookies and
	// hash rings are built from it, never from the address or the position.
	ID     string
	URL    *url.URL
	Weight int // 1..1000
	// Stats is the creator's own per-backend data: the proxy keeps its
	// request counters there, so that it reaches them from a Pick without
	// looking the backend up in a map on every request. Policies ignore
	// it. It is set before the backend is handed to a Policy and not
	// changed after.
	Stats any

	group *Group
	// shared, when not nil, are the counts of the Backend this one was
	// made from by Reweighted, which b counts in instead of own: both
	// stand for one server.
	shared *counts
	own    counts
}

// counts are what the proxy records about a backend around its requests.
type counts struct {
	inflight atomic.Int64
	// fails counts consecutive failed exchanges, for passive health. It
	// lives here so that the proxy records an outcome without looking the
	// backend up anywhere.
	fails atomic.Int32
}

// counts returns the counts b records in.
func (b *Backend) counts() *counts {
	if b.shared != nil {
		return b.shared
	}
	return &b.own
}

// Group counts the requests in flight over all backends of a pool, so that a
// bounded-load policy reads the pool's average in O(1) instead of summing.
type Group struct {
	inflight atomic.Int64
}

// InFlight reports the requests in flight over the whole group.
func (g *Group) InFlight() int64 { return g.inflight.Load() }

// NewBackend returns a backend with no requests in flight. g, when not nil,
// is the pool's Group, counted along with the backend's own counter.
func NewBackend(id string, u *url.URL, weight int, g *Group) *Backend {
	if weight < 1 {
		weight = 1
	}
	return &Backend{ID: id, URL: u, Weight: weight, group: g}
}

// Reweighted returns a Backend for the same server as b with weight w, for
// a pool rebuilt with a new weight: a Backend's weight never changes, as
// policies read it when they build. The two share their Group, their Stats,
// and their counts of requests in flight and of failures, so that the
// requests begun on b count as the new Backend's until they end, and a
// failure on either counts towards the server's run.
func (b *Backend) Reweighted(w int) *Backend {
	nb := NewBackend(b.ID, b.URL, w, b.group)
	nb.Stats = b.Stats
	nb.shared = b.counts()
	return nb
}

// Begin records a request forwarded to b; every Begin is paired with a Done.
func (b *Backend) Begin() {
	b.counts().inflight.Add(1)
	if b.group != nil {
		b.group.inflight.Add(1)
	}
}

// TryBegin is Begin when fewer than limit requests are in flight to b, and
// reports whether it began one: a backend's max_conns is honoured exactly
// however many requests race for its last place.
func (b *Backend) TryBegin(limit int64) bool {
	c := b.counts()
	for {
		n := c.inflight.Load()
		if n >= limit {
			return false
		}
		if c.inflight.CompareAndSwap(n, n+1) {
			break
		}
	}
	if b.group != nil {
		b.group.inflight.Add(1)
	}
	return true
}

// Done records the end of a request started with Begin, and returns the
// requests still in flight to b.
func (b *Backend) Done() int64 {
	if b.group != nil {
		b.group.inflight.Add(-1)
	}
	return b.counts().inflight.Add(-1)
}

// InFlight reports the requests currently forwarded to b.
func (b *Backend) InFlight() int64 { return b.counts().inflight.Load() }

// maxFails is where the failure count stops growing, so that a backend that
// keeps failing for days cannot wrap it around to "no failures".
const maxFails = 1 << 30

// Fail records a failed exchange with b (the proxy decides what counts) and
// returns the consecutive failures counted so far.
func (b *Backend) Fail() int32 {
	c := b.counts()
	if n := c.fails.Load(); n >= maxFails {
		return n
	}
	return c.fails.Add(1)
}

// SetFailures sets the count of consecutive failures, as if b had just
// failed n times in a row. Passive health uses it to put a backend back from
// an ejection on probation, whatever requests finished meanwhile: its next
// failure ejects it again, and its next success is reported by Succeed.
func (b *Backend) SetFailures(n int32) { b.counts().fails.Store(min(max(n, 0), maxFails)) }

// Succeed records a successful exchange with b, ending any run of failures,
// and returns the length of the run it ended: 0 on the common path, which
// then only reads the counter, so that backends answering well do not make
// every request write a shared cache line.
func (b *Backend) Succeed() int32 {
	c := b.counts()
	if c.fails.Load() == 0 {
		return 0
	}
	return c.fails.Swap(0)
}

// Set is the membership a Policy builds a Picker from. It is immutable once
// handed to Build: a change of health, of a backend's state or of the
// config builds a new Set.
type Set struct {
	// All holds every configured backend of the pool, in config order.
	All []*Backend
	// Available holds the backends that may receive new requests now, in
	// config order: a subset of All.
	Available []*Backend
	// Draining holds the healthy backends an operator is draining, in
	// config order: a subset of All, disjoint from Available. A draining
	// backend takes the requests of the clients pinned to it (by a
	// cookie, a learned session, or a hash key whose owner it is) and
	// no new client: a policy never places a client there, nor moves one
	// there from a backend that failed. A policy that pins no client
	// ignores it, as round-robin does.
	Draining []*Backend
	// Group counts in-flight requests over the pool's backends; it may be
	// nil when nothing counts them (a policy must then not bound loads).
	Group *Group
	// Warming holds, for available backends in slow start, the fraction
	// of their weight, in (0, 1), by which they take new clients now: the
	// weighted rotation that places new clients (and round-robin's
	// requests) counts them so. nil: every backend at its full weight. A
	// consistent-hash ring ignores it: a key goes to its owner at once.
	Warming map[*Backend]float64
}

// Sticky tells what a pick did to the client's affinity, for logs and metrics.
type Sticky uint8

const (
	// StickyNone: the policy keeps no affinity (round-robin) or the request
	// carried no key to be sticky on.
	StickyNone Sticky = iota
	// StickyKept: the request went where its key or cookie pointed.
	StickyKept
	// StickyNew: the client had no valid affinity and was given one.
	StickyNew
	// StickyRepinned: the client's affinity named a backend that is no
	// longer available, and it was moved to another.
	StickyRepinned
)

// String returns the word used in logs and metric labels.
func (s Sticky) String() string {
	switch s {
	case StickyKept:
		return "kept"
	case StickyNew:
		return "new"
	case StickyRepinned:
		return "repinned"
	}
	return "none"
}

// Pick is a Picker's answer: the backend, and what the proxy must do besides
// forwarding the request to it.
type Pick struct {
	Backend *Backend
	// SetCookie, when not empty, is a complete Set-Cookie header value the
	// proxy adds to the response (precomputed per backend at Build time, so
	// a pick does not allocate).
	SetCookie string
	Sticky    Sticky
}

// Picker chooses a backend for a request. It is immutable and safe for
// concurrent use; it is rebuilt whenever membership or health changes.
type Picker interface {
	Pick(r *http.Request) (Pick, error)
}

// rendezvous ranks backends by a hash of seed and each one's hashString(ID)
// in ids (rendezvous hashing), and returns the index of the first not in
// skip, or -1 when none is left. Removing any other candidate does not
// change the winner, so a retry (which skips the failed backend) and a
// later pick (where it is down) agree. It scans the pool, which is fine for
// the failure paths it serves.
func rendezvous(seed uint64, backends []*Backend, ids []uint64, skip []*Backend) int {
	best, top := -1, uint64(0)
	for i, b := range backends {
		if slices.Contains(skip, b) {
			continue
		}
		if score := mix64(seed ^ ids[i]); best < 0 || score > top {
			best, top = i, score
		}
	}
	return best
}

// Pinner is an optional interface of a Picker that pins clients to a
// backend, as a sticky cookie does. When a request's backend fails and the
// proxy retries it elsewhere, it asks Repin where to, so that the retry goes
// where the client's next requests will go once the failed backend is marked
// down, and the client moves once rather than twice. The proxy checks for it
// once per Build, not per request; a Picker without it pins nothing.
type Pinner interface {
	// Repin returns an available backend not in tried (tried[0] is the
	// request's first pick) and the complete Set-Cookie header value that
	// pins the client there; false when every available backend was tried.
	Repin(r *http.Request, tried []*Backend) (b *Backend, setCookie string, ok bool)
}

// Learner is an optional interface of a Picker that learns affinity from
// what backends answer, as the learn policy learns application session
// cookies. The proxy calls Learn with the header of every response a
// backend returns, before the response goes on to the client; like Pinner,
// it checks for the interface once per Build, not per request.
type Learner interface {
	// Learn records what the response header h of backend b, answering
	// the request r, says about the clients it serves. It is called on
	// the request path, so it must be cheap when h holds nothing to
	// learn, and it must modify neither r nor h.
	Learn(r *http.Request, b *Backend, h http.Header)
}

// StickTable is an optional interface of a Policy that keeps a bounded
// table of learned affinities, as the learn policy does; metrics read it.
type StickTable interface {
	// Len reports the entries held now; expired entries count until
	// they are swept, as they still take memory.
	Len() int
	// Evictions counts the live entries dropped to make room for new
	// ones. A steady rise means the table is too small for the sessions
	// active within its TTL, and clients are losing their backend.
	Evictions() uint64
	// StoreErrors counts the failed operations on a shared store
	// (Redis), 0 without one, each once: lookups that fell back to the
	// rotation, and writes that could not be sent, whether they were
	// sent later (see StoreHeld) or lost (see StoreLost).
	StoreErrors() uint64
	// StoreLost counts the writes to a shared store that were never
	// made: more than its bounds held while it did not answer, left at
	// close, or refused by it. Each is a session another replica may not
	// find, or a move or a logout it hears of late.
	StoreLost() uint64
	// StoreHeld reports the writes held now for a shared store that does
	// not answer, to be sent once it does.
	StoreHeld() int
	// Sessions counts the live entries of the table by backend ID: the
	// clients still pinned to each, which an operator draining a backend
	// waits for. It walks the table, so it is for status pages, not for
	// the request path.
	Sessions() map[string]int
}

// Logged is an optional interface of a Policy that has something to log
// off the request path, as the learn policy does when its Redis fails. Its
// owner calls SetLogger before it uses the policy; until then, the policy
// logs nothing.
type Logged interface {
	SetLogger(*zap.Logger)
}

// Policy builds Pickers for one pool. Build is called off the request path,
// on every membership or health change; it may precompute anything that makes
// Pick cheap. Build may be called concurrently: a reload hands a Policy
// whose options did not change to the pool that replaces its pool (so that
// its state, such as a learned table, survives), and the old pool may still
// rebuild for a moment. A Policy whose Build changes its own state locks.
//
// A Policy that holds resources besides memory (connections, goroutines)
// implements io.Closer. Its owner, the proxy's pool, calls Close once when
// it stops the pool; pickers built before must still answer after Close,
// without those resources.
type Policy interface {
	Build(s Set) Picker
}

// ErrNoBackend is returned by Pick when the pool has no available backend.
var ErrNoBackend = errors.New("no available backend")

// CookieOptions configures the sticky cookie the proxy sets.
type CookieOptions struct {
	Name     string
	Path     string
	Domain   string
	MaxAge   int // seconds; 0 means a session cookie
	Secure   bool
	HTTPOnly bool
	SameSite http.SameSite
	// Secret, when set, signs the cookie: its value becomes an HMAC-SHA256
	// of the backend ID under Secret, which clients can neither forge nor
	// derive from the configured names. At least MinCookieSecret bytes.
	Secret string
}

// HashOptions configures consistent hashing.
type HashOptions struct {
	// Key names the part of the request hashed: "ip", "path",
	// "header:NAME", "cookie:NAME" or "query:NAME".
	Key string
	// VirtualNodes is the number of ring points of a backend of weight 1.
	VirtualNodes int
	// LoadFactor bounds a backend's in-flight requests to LoadFactor times
	// the pool's average; 0 disables the bound.
	LoadFactor float64
}

// LearnOptions configures the learn policy, which keeps each client on the
// backend that issued its application session cookie.
type LearnOptions struct {
	// Cookie names the application's session cookie (JSESSIONID,
	// PHPSESSID, ...). Its values are learned from the Set-Cookie headers
	// of backends' responses, and a request carrying one goes to the
	// backend that set it.
	Cookie string
	// MaxEntries bounds the sessions remembered, 1 to MaxLearnEntries;
	// the least recently used is forgotten to make room for a new one.
	MaxEntries int
	// TTL is how long a session is remembered after its last request. Set
	// it to at least the application's own session timeout.
	TTL time.Duration
	// Store is where the table lives: LearnStoreMemory, in this process
	// only, or LearnStoreRedis, shared through Redis by every replica of
	// the proxy, with the memory table as its near-cache.
	Store string
	// Redis locates the shared table when Store is LearnStoreRedis.
	Redis RedisOptions
}

// RedisOptions locates a Redis server, a Redis Cluster, or the master that
// Redis Sentinel names, and says how to connect to it.
type RedisOptions struct {
	// Addrs holds host:port of a single server, or two or more seed
	// addresses of a Redis Cluster; none with Sentinel.
	Addrs []string
	// Sentinel, when not nil, asks Redis Sentinel for the master's
	// address, and follows it when the sentinels fail it over.
	Sentinel *RedisSentinel
	// Timeout bounds each Redis command. A pick whose session is not in
	// the memory table waits this long at most for Redis before it falls
	// back to the rotation.
	Timeout time.Duration
	// Username and Password authenticate every connection (AUTH): an
	// ACL user's, or, without Username, the default user's (requirepass).
	// No Password: no AUTH.
	Username, Password string
	// DB selects a database of a single server or of Sentinel's master;
	// a Redis Cluster has database 0 only.
	DB int
	// TLS, when not nil, encrypts the connections, to the sentinels too.
	TLS *RedisTLS
}

// RedisSentinel names the master that the sentinels at Addrs watch.
type RedisSentinel struct {
	Master string
	Addrs  []string // host:port of the sentinels
	// Username and Password authenticate with the sentinels, when they
	// require it (their own requirepass); the master's are RedisOptions'.
	Username, Password string
}

// RedisTLS configures TLS to Redis. The certificates are PEM bytes, read by
// whoever made the options (config reads them from files).
type RedisTLS struct {
	// CA holds the certificates that sign the servers'; empty: the
	// system's roots.
	CA []byte
	// ServerName is the name the servers' certificates must hold; empty:
	// the host of the address dialled.
	ServerName string
	// Cert and Key are a client certificate and its key, for a server
	// that asks for one (Redis's tls-auth-clients); both or neither.
	Cert, Key []byte
}

// Options is everything a Factory may read. Each policy reads only its part;
// config applies defaults and validates ranges before a Factory sees them.
type Options struct {
	Cookie CookieOptions
	Hash   HashOptions
	Learn  LearnOptions
}

// Factory makes a Policy from its options; an error explains which option is
// wrong and why, in words a config author understands.
type Factory func(Options) (Policy, error)

var (
	registryMu sync.RWMutex
	registry   = map[string]Factory{}
)

// Register makes a policy available under name. It is meant to be called from
// init() in the policy's file and panics on a duplicate name, a programming
// error that must not ship.
func Register(name string, f Factory) {
	registryMu.Lock()
	defer registryMu.Unlock()
	if _, dup := registry[name]; dup {
		panic("balancer: Register called twice for " + name)
	}
	registry[name] = f
}

// Names returns the registered policy names, sorted.
func Names() []string {
	registryMu.RLock()
	defer registryMu.RUnlock()
	names := make([]string, 0, len(registry))
	for n := range registry {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// ErrUnknownPolicy is wrapped by New for a name nothing registered.
var ErrUnknownPolicy = errors.New("unknown balancer")

// New makes the policy registered under name.
func New(name string, o Options) (Policy, error) {
	registryMu.RLock()
	f, ok := registry[name]
	registryMu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("%w %q (known: %v)", ErrUnknownPolicy, name, Names())
	}
	return f(o)
}

// Known reports whether name is a registered policy.
func Known(name string) bool {
	return slices.Contains(Names(), name)
}
