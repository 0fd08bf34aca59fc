package balancer

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"
)

const testSessionCookie = "JSESSIONID"

func learnOpts(maxEntries int, ttl time.Duration) Options {
	return Options{Learn: LearnOptions{
		Cookie: testSessionCookie, MaxEntries: maxEntries, TTL: ttl, Store: LearnStoreMemory,
	}}
}

// fakeClock is a learn table's clock that only the test moves.
type fakeClock struct{ ns atomic.Int64 }

func (c *fakeClock) now() int64              { return c.ns.Load() }
func (c *fakeClock) advance(d time.Duration) { c.ns.Add(int64(d)) }

// newLearn makes a learn policy whose table runs on the returned clock.
func newLearn(t testing.TB, o Options) (*learnPolicy, *fakeClock) {
	t.Helper()
	p, ok := mustPolicy(t, "learn", o).(*learnPolicy)
	if !ok {
		t.Fatalf("learn policy is %T", p)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	c := new(fakeClock)
	p.tab().clock = c.now
	return p, c
}

// sessionRequest carries the session cookie among others, as browsers send it.
func sessionRequest(sid string) *http.Request {
	return cookieRequest("_ga=GA1.2.3; " + testSessionCookie + "=" + sid + "; lang=en")
}

// setCookies is a response header with the given Set-Cookie lines.
func setCookies(lines ...string) http.Header {
	return http.Header{"Set-Cookie": lines}
}

// learn feeds picker pk a response of b, with the given Set-Cookie lines,
// to a request that carried no session.
func learn(t testing.TB, pk Picker, b *Backend, lines ...string) {
	t.Helper()
	answer(t, pk, cookieRequest(), b, lines...)
}

// answer feeds picker pk a response of b to r, with the given Set-Cookie
// lines.
func answer(t testing.TB, pk Picker, r *http.Request, b *Backend, lines ...string) {
	t.Helper()
	l, ok := pk.(Learner)
	if !ok {
		t.Fatalf("%T is not a Learner", pk)
	}
	l.Learn(r, b, setCookies(lines...))
}

// expectPick picks for r and checks the backend (nil: any) and the sticky
// outcome.
func expectPick(t testing.TB, pk Picker, r *http.Request, want *Backend, sticky Sticky) Pick {
	t.Helper()
	got := mustPick(t, pk, r)
	if (want != nil && got.Backend != want) || got.Sticky != sticky || got.SetCookie != "" {
		wantID := "any"
		if want != nil {
			wantID = want.ID
		}
		t.Fatalf("pick = %s %v %q, want %s %v without Set-Cookie", got.Backend.ID, got.Sticky, got.SetCookie, wantID, sticky)
	}
	return got
}

func TestLearnSticks(t *testing.T) {
	bs := testBackends(nil, 1, 1, 1)
	p, _ := newLearn(t, learnOpts(100, time.Hour))
	pk := p.Build(allAvailable(bs))
	for i, b := range bs {
		learn(t, pk, b, fmt.Sprintf("%s=s%d; Path=/; HttpOnly", testSessionCookie, i))
	}
	// A rebuild, as on any health change, keeps what was learned.
	pk = p.Build(allAvailable(bs))
	for range 20 {
		for i, b := range bs {
			expectPick(t, pk, sessionRequest(fmt.Sprintf("s%d", i)), b, StickyKept)
		}
	}
	// Clients without a known session are spread by the rotation.
	seen := map[*Backend]bool{}
	for range len(bs) {
		seen[expectPick(t, pk, cookieRequest("lang=en"), nil, StickyNone).Backend] = true
		seen[expectPick(t, pk, sessionRequest("unknown"), nil, StickyNew).Backend] = true
	}
	if len(seen) != len(bs) {
		t.Errorf("new clients reached %d of %d backends", len(seen), len(bs))
	}
	expectPick(t, pk, sessionRequest(""), nil, StickyNone)
	expectPick(t, pk, sessionRequest(strings.Repeat("x", maxSessionID+1)), nil, StickyNew)
	if n := p.Len(); n != len(bs) {
		t.Errorf("Len = %d, want %d", n, len(bs))
	}
}

// TestLearnSetCookie feeds one Set-Cookie line from b1, answering a
// request that carried the session in carried (none if empty), after b0
// set sessions abc and other, and checks where abc goes next. An expiring
// line forgets the session the request carried, whatever its value.
func TestLearnSetCookie(t *testing.T) {
	const (
		moved   = "moved to b1"
		deleted = "deleted"
		ignored = "ignored"
	)
	tests := []struct {
		name, line, carried, want string
	}{
		{"plain", "JSESSIONID=abc", "", moved},
		{"attributes", "JSESSIONID=abc; Path=/app; Domain=example.com; HttpOnly; Secure; SameSite=Lax", "", moved},
		{"spaces and quotes", `  JSESSIONID = "abc" ;Path=/`, "", moved},
		{"max-age positive", "JSESSIONID=abc; Max-Age=1800", "", moved},
		{"max-age zero", "JSESSIONID=abc; Max-Age=0", "", deleted},
		{"max-age zeros, any case", "JSESSIONID=abc; max-AGE=000", "", deleted},
		{"max-age negative", "JSESSIONID=abc; Max-Age=-1", "", deleted},
		{"max-age beyond int64", "JSESSIONID=abc; Max-Age=-99999999999999999999999", "", deleted},
		{"max-age invalid is ignored", "JSESSIONID=abc; Max-Age=soon", "", moved},
		{"max-age empty is ignored", "JSESSIONID=abc; Max-Age=", "", moved},
		{"expires past", "JSESSIONID=abc; Expires=Thu, 01 Jan 1970 00:00:00 GMT", "", deleted},
		{"expires past, servlet format", "JSESSIONID=abc; Expires=Thu, 01-Jan-1970 00:00:10 GMT", "", deleted},
		{"expires future", "JSESSIONID=abc; Expires=Fri, 01 Jan 2100 00:00:00 GMT", "", moved},
		{"expires past, two-digit year", "JSESSIONID=abc; Expires=Thursday, 01-Jan-70 00:00:00 GMT", "", deleted},
		{"expires past, asctime", "JSESSIONID=abc; Expires=Thu Jan  1 00:00:00 1970", "", deleted},
		{"expires past, one-digit day, no weekday", "JSESSIONID=abc; expires=1 Jan 1970 00:00:00 GMT", "", deleted},
		{"expires past, lower case, another zone", "JSESSIONID=abc; Expires=thu, 01 jan 1970 00:00:00 utc", "", deleted},
		{"expires past, as JavaScript writes it", "JSESSIONID=abc; Expires=Thu Jan 01 1970 00:00:00 GMT+0000 (Coordinated Universal Time)", "", deleted},
		{"expires future, two-digit year", "JSESSIONID=abc; Expires=Friday, 01-Jan-49 00:00:00 GMT", "", moved},
		{"expires future, two-digit year 69", "JSESSIONID=abc; Expires=Sunday, 06-Nov-69 08:49:37 GMT", "", moved},
		{"expires invalid is ignored", "JSESSIONID=abc; Expires=yesterday", "", moved},
		{"expires before 1601 is ignored", "JSESSIONID=abc; Expires=Mon, 01 Jan 1600 00:00:00 GMT", "", moved},
		{"expires on no such day is ignored", "JSESSIONID=abc; Expires=Mon, 30 Feb 1970 00:00:00 GMT", "", moved},
		{"max-age wins over expires", "JSESSIONID=abc; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=60", "", moved},
		{"max-age zero wins over expires", "JSESSIONID=abc; Max-Age=0; Expires=Fri, 01 Jan 2100 00:00:00 GMT", "", deleted},
		{"other cookie", "OTHER=abc", "", ignored},
		{"name is case-sensitive", "jsessionid=abc", "", ignored},
		{"longer name", "JSESSIONIDX=abc", "", ignored},
		{"name in an attribute", "X=1; JSESSIONID=abc", "", ignored},
		{"empty value", "JSESSIONID=", "", ignored},
		{"empty value expiring, no session carried", "JSESSIONID=; Max-Age=0", "", ignored},
		{"empty quoted value", `JSESSIONID=""`, "", ignored},
		{"no value", "JSESSIONID", "", ignored},
		{"empty line", "", "", ignored},
		{"logout, empty value", "JSESSIONID=; Max-Age=0", "abc", deleted},
		{"logout, max-age -1", "JSESSIONID=; Max-Age=-1; Path=/", "abc", deleted},
		{"logout, placeholder value", "JSESSIONID=deleted; Expires=Thu, 01 Jan 1970 00:00:00 GMT", "abc", deleted},
		{"logout, empty quoted value", `JSESSIONID=""; Max-Age=0`, "abc", deleted},
		{"logout of another session", "JSESSIONID=other; Max-Age=0", "abc", deleted},
		{"empty value, not expiring", "JSESSIONID=; Max-Age=60", "abc", ignored},
		{"new session", "JSESSIONID=next", "abc", ignored},
		{"other cookie expiring", "OTHER=; Max-Age=0", "abc", ignored},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bs := testBackends(nil, 1, 1)
			p, _ := newLearn(t, learnOpts(100, time.Hour))
			pk := p.Build(allAvailable(bs))
			learn(t, pk, bs[0], "JSESSIONID=abc", "JSESSIONID=other")
			r := cookieRequest()
			if tt.carried != "" {
				r = sessionRequest(tt.carried)
			}
			answer(t, pk, r, bs[1], tt.line)
			switch tt.want {
			case moved:
				expectPick(t, pk, sessionRequest("abc"), bs[1], StickyKept)
			case deleted:
				expectPick(t, pk, sessionRequest("abc"), nil, StickyNew)
			case ignored:
				expectPick(t, pk, sessionRequest("abc"), bs[0], StickyKept)
			}
			// Another client's session is not touched unless named.
			if !strings.HasPrefix(tt.line, "JSESSIONID=other") {
				expectPick(t, pk, sessionRequest("other"), bs[0], StickyKept)
			}
		})
	}
}

// A login that renews the session deletes the old one and sets the new one
// in the same response; other cookies are skipped.
func TestLearnSeveralLines(t *testing.T) {
	bs := testBackends(nil, 1, 1)
	p, _ := newLearn(t, learnOpts(100, time.Hour))
	pk := p.Build(allAvailable(bs))
	learn(t, pk, bs[0], "JSESSIONID=old")
	learn(t, pk, bs[1], "theme=dark", "JSESSIONID=old; Max-Age=0", "csrf=x; Path=/", "JSESSIONID=new; HttpOnly")
	expectPick(t, pk, sessionRequest("old"), nil, StickyNew)
	expectPick(t, pk, sessionRequest("new"), bs[1], StickyKept)
	if n := p.Len(); n != 1 {
		t.Errorf("Len = %d, want 1", n)
	}
	// A response without Set-Cookie, and one from a backend the Set does
	// not have, teach nothing.
	pk.(Learner).Learn(sessionRequest("new"), bs[0], http.Header{"Content-Type": {"text/plain"}})
	learn(t, pk, NewBackend("elsewhere", nil, 1, nil), "JSESSIONID=foreign")
	if n := p.Len(); n != 1 {
		t.Errorf("Len = %d after responses with nothing to learn, want 1", n)
	}
}

// An entry is kept ttl after the session's last use, however the uses
// fell: a use a moment after the last counts as fully as one long after.
func TestLearnTTL(t *testing.T) {
	const ttl = 64 * time.Second
	const slack = ttl / 16
	tests := []struct {
		name string
		uses []time.Duration // picks after learning, each after the previous
		idle time.Duration   // then no use for this long
		kept bool
	}{
		{"unused, just under ttl", nil, ttl - 1, true},
		{"unused, ttl", nil, ttl, true},
		{"unused, past ttl", nil, ttl + 1, false},
		{"used, ttl after the last use", []time.Duration{ttl / 2, ttl / 2, ttl / 2, ttl / 2}, ttl, true},
		{"used, past ttl after the last use", []time.Duration{ttl / 2, ttl / 2}, ttl + 1, false},
		{"used, long after the last use", []time.Duration{ttl / 2, ttl / 2}, 2 * ttl, false},
		// Uses within one period of renewal, in which a shared store
		// is not written again, count all the same.
		{"used within a period, ttl", []time.Duration{slack / 4, slack / 4}, ttl, true},
		{"used within a period, past ttl", []time.Duration{slack / 4, slack / 4}, ttl + 1, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bs := testBackends(nil, 1, 1)
			p, clock := newLearn(t, learnOpts(100, ttl))
			pk := p.Build(allAvailable(bs))
			learn(t, pk, bs[1], "JSESSIONID=abc")
			for _, d := range tt.uses {
				clock.advance(d)
				expectPick(t, pk, sessionRequest("abc"), bs[1], StickyKept)
			}
			clock.advance(tt.idle)
			if tt.kept {
				expectPick(t, pk, sessionRequest("abc"), bs[1], StickyKept)
				return
			}
			expectPick(t, pk, sessionRequest("abc"), nil, StickyNew)
			if n := p.Len(); n != 0 {
				t.Errorf("Len = %d after expiry, want 0", n)
			}
		})
	}
}

// Expired entries are swept by later traffic, and make room without
// counting as evictions.
func TestLearnSweepsExpired(t *testing.T) {
	const ttl = time.Minute
	bs := testBackends(nil, 1)
	p, clock := newLearn(t, learnOpts(2, ttl))
	pk := p.Build(allAvailable(bs))
	learn(t, pk, bs[0], "JSESSIONID=a")
	learn(t, pk, bs[0], "JSESSIONID=b")
	clock.advance(2 * ttl)
	learn(t, pk, bs[0], "JSESSIONID=c")
	if n := p.Len(); n != 1 {
		t.Errorf("Len = %d after a write past expiry, want 1", n)
	}
	learn(t, pk, bs[0], "JSESSIONID=d")
	if n, e := p.Len(), p.Evictions(); n != 2 || e != 0 {
		t.Errorf("Len, Evictions = %d, %d; want 2, 0", n, e)
	}
}

func TestLearnEvictsLeastRecentlyUsed(t *testing.T) {
	bs := testBackends(nil, 1, 1, 1)
	p, clock := newLearn(t, learnOpts(3, time.Hour))
	pk := p.Build(allAvailable(bs))
	for i := range 3 {
		learn(t, pk, bs[i], fmt.Sprintf("JSESSIONID=s%d", i))
	}
	// A use a moment after the learning counts: s1 is now the least
	// recently used.
	clock.advance(time.Second)
	expectPick(t, pk, sessionRequest("s0"), bs[0], StickyKept)
	learn(t, pk, bs[0], "JSESSIONID=s3")
	if n, e := p.Len(), p.Evictions(); n != 3 || e != 1 {
		t.Errorf("Len, Evictions = %d, %d; want 3, 1", n, e)
	}
	expectPick(t, pk, sessionRequest("s1"), nil, StickyNew)
	expectPick(t, pk, sessionRequest("s0"), bs[0], StickyKept)
	expectPick(t, pk, sessionRequest("s2"), bs[2], StickyKept)
	expectPick(t, pk, sessionRequest("s3"), bs[0], StickyKept)
}

// A sharded table holds max_entries at most in all, and counts every live
// entry it drops.
func TestLearnShardedBound(t *testing.T) {
	const maxEntries, learned = 5000, 20000
	bs := testBackends(nil, 1)
	p, _ := newLearn(t, learnOpts(maxEntries, time.Hour))
	if n := len(p.tab().shards); n != 4 {
		t.Fatalf("%d shards, want 4", n)
	}
	pk := p.Build(allAvailable(bs))
	for i := range learned {
		learn(t, pk, bs[0], fmt.Sprintf("JSESSIONID=s%d", i))
	}
	n, e := p.Len(), p.Evictions()
	// Each shard receives about learned/4 sessions, far more than its
	// maxEntries/4, so every shard is full.
	if n != maxEntries || uint64(n)+e != learned {
		t.Errorf("Len, Evictions = %d, %d; want %d and a sum of %d", n, e, maxEntries, learned)
	}
}

func TestLearnShardCount(t *testing.T) {
	if n := unsafe.Sizeof(learnShard{}); n != 64 {
		t.Errorf("a shard is %d bytes, not a cache line", n)
	}
	tests := []struct{ maxEntries, shards int }{
		{1, 1}, {2047, 1}, {2048, 2}, {5000, 4}, {65535, 32}, {MaxLearnEntries, 32},
	}
	for _, tt := range tests {
		tb := newLearnTable(tt.maxEntries, time.Minute)
		if len(tb.shards) != tt.shards {
			t.Errorf("max_entries %d: %d shards, want %d", tt.maxEntries, len(tb.shards), tt.shards)
		}
	}
}

// A session of a backend removed from the pool is moved once, as one of a
// backend that is down is, and remembered where it went, even when the
// application never sets its cookie again; the sessions of the others stay.
func TestLearnRemovedBackend(t *testing.T) {
	bs := testBackends(nil, 1, 1, 1)
	p, _ := newLearn(t, learnOpts(100, time.Hour))
	all := p.Build(allAvailable(bs))
	learn(t, all, bs[0], "JSESSIONID=kept")
	learn(t, all, bs[2], "JSESSIONID=gone")
	without := p.Build(allAvailable(bs[:2]))
	if n := p.Len(); n != 2 {
		t.Errorf("Len = %d after removing a backend, want 2", n)
	}
	moved := expectPick(t, without, sessionRequest("gone"), nil, StickyRepinned).Backend
	for range 5 {
		expectPick(t, without, sessionRequest("gone"), moved, StickyKept)
	}
	expectPick(t, without, sessionRequest("kept"), bs[0], StickyKept)
	// A response of the removed backend that an older picker learns
	// from, as a request in flight during the change does, is moved on
	// its first lookup like the others.
	learn(t, all, bs[2], "JSESSIONID=late")
	late := expectPick(t, without, sessionRequest("late"), nil, StickyRepinned).Backend
	expectPick(t, without, sessionRequest("late"), late, StickyKept)
	// Back in the pool, the backend gets new sessions, and keeps those
	// nobody used while it was away; the moved ones stay moved.
	learn(t, all, bs[2], "JSESSIONID=idle")
	again := p.Build(allAvailable(bs))
	expectPick(t, again, sessionRequest("gone"), moved, StickyKept)
	expectPick(t, again, sessionRequest("idle"), bs[2], StickyKept)
	learn(t, again, bs[2], "JSESSIONID=new")
	expectPick(t, again, sessionRequest("new"), bs[2], StickyKept)
}

// A session whose backend is unavailable moves to the session's
// successor, the same for every replica (each with a table of its own):
// every replica that sees the client move it moves it to the same
// backend. It stays there when its old backend is back.
func TestLearnRepin(t *testing.T) {
	bs := testBackends(nil, 1, 1, 1, 1)
	replicas := make([]*learnPolicy, 2)
	for i := range replicas {
		replicas[i], _ = newLearn(t, learnOpts(100, time.Hour))
	}
	down := Set{All: bs, Available: []*Backend{bs[0], bs[2], bs[3]}}
	successors := map[*Backend]bool{}
	for i := range 40 {
		sid := fmt.Sprintf("s%d", i)
		var moved *Backend
		for _, p := range replicas {
			learn(t, p.Build(allAvailable(bs)), bs[1], "JSESSIONID="+sid)
			got := expectPick(t, p.Build(down), sessionRequest(sid), nil, StickyRepinned).Backend
			if got == bs[1] || (moved != nil && got != moved) {
				t.Fatalf("%s moved to %s and %s", sid, moved.ID, got.ID)
			}
			moved = got
		}
		successors[moved] = true
		for _, p := range replicas {
			pk := p.Build(down)
			for range 3 {
				expectPick(t, pk, sessionRequest(sid), moved, StickyKept)
			}
			expectPick(t, p.Build(allAvailable(bs)), sessionRequest(sid), moved, StickyKept)
		}
	}
	if len(successors) != 3 {
		t.Errorf("the sessions of b1 moved to %d backends, want all 3 others", len(successors))
	}
	// The new backend's own session is learned as any other.
	back := replicas[0].Build(allAvailable(bs))
	learn(t, back, bs[3], "JSESSIONID=s0; Max-Age=0", "JSESSIONID=fresh")
	expectPick(t, back, sessionRequest("fresh"), bs[3], StickyKept)
}

// A retry moves a known session to its successor among the backends not
// tried, where the next picks find it, and where a pick moves it once the
// failed backend is marked down: retries and picks agree.
func TestLearnRepinOnRetry(t *testing.T) {
	bs := testBackends(nil, 1, 1, 1)
	p, _ := newLearn(t, learnOpts(100, time.Hour))
	pk := p.Build(allAvailable(bs))
	pn, ok := pk.(Pinner)
	if !ok {
		t.Fatalf("%T is not a Pinner", pk)
	}
	for i := range 20 {
		sid := fmt.Sprintf("s%d", i)
		learn(t, pk, bs[1], "JSESSIONID="+sid)
		b, setCookie, ok := pn.Repin(sessionRequest(sid), bs[1:2])
		if !ok || b == bs[1] || setCookie != "" {
			t.Fatalf("Repin(%s) = %v, %q, %v; want an untried backend and no cookie", sid, b, setCookie, ok)
		}
		expectPick(t, pk, sessionRequest(sid), b, StickyKept)
		// The same session, failed over by a pick on another replica.
		other, _ := newLearn(t, learnOpts(100, time.Hour))
		learn(t, other.Build(allAvailable(bs)), bs[1], "JSESSIONID="+sid)
		expectPick(t, other.Build(Set{All: bs, Available: []*Backend{bs[0], bs[2]}}), sessionRequest(sid), b, StickyRepinned)
		// A second failure in the same request leaves one backend.
		if c, _, ok := pn.Repin(sessionRequest(sid), []*Backend{bs[1], b}); !ok || c == b || c == bs[1] {
			t.Fatalf("second Repin(%s) = %v, %v", sid, c, ok)
		}
	}
	for _, r := range []*http.Request{sessionRequest("unknown"), cookieRequest("lang=en")} {
		for range 2 * len(bs) {
			b, _, ok := pn.Repin(r, bs[:1])
			if !ok || b == bs[0] {
				t.Fatalf("Repin = %v, %v; want an untried backend", b, ok)
			}
		}
	}
	if n := p.Len(); n != 20 {
		t.Errorf("Len = %d: a retry taught the table a session", n)
	}
	if b, _, ok := pn.Repin(sessionRequest("s1"), bs); ok || b != nil {
		t.Errorf("Repin with every backend tried = %v, %v; want none", b, ok)
	}
}

func TestLearnNoBackend(t *testing.T) {
	bs := testBackends(nil, 1)
	p, _ := newLearn(t, learnOpts(100, time.Hour))
	learn(t, p.Build(allAvailable(bs)), bs[0], "JSESSIONID=abc")
	none := p.Build(Set{All: bs})
	for _, r := range []*http.Request{sessionRequest("abc"), sessionRequest("other"), cookieRequest()} {
		if _, err := none.Pick(r); !errors.Is(err, ErrNoBackend) {
			t.Errorf("Pick with no available backend: %v, want ErrNoBackend", err)
		}
	}
	if b, _, ok := none.(Pinner).Repin(sessionRequest("abc"), bs); ok || b != nil {
		t.Errorf("Repin with no available backend = %v, %v; want none", b, ok)
	}
}

func TestNewLearnPolicyErrors(t *testing.T) {
	valid := learnOpts(100, time.Minute).Learn
	redisOK := valid
	redisOK.Store, redisOK.Redis = LearnStoreRedis, RedisOptions{Addrs: []string{"127.0.0.1:6379", "redis.internal:7000"}, Timeout: 50 * time.Millisecond}
	tests := []struct {
		name string
		edit func(*LearnOptions)
		ok   bool
	}{
		{"valid", func(*LearnOptions) {}, true},
		{"valid redis", func(o *LearnOptions) { *o = redisOK }, true},
		{"no cookie", func(o *LearnOptions) { o.Cookie = "" }, false},
		{"cookie not a token", func(o *LearnOptions) { o.Cookie = "J SESSION" }, false},
		{"no entries", func(o *LearnOptions) { o.MaxEntries = 0 }, false},
		{"too many entries", func(o *LearnOptions) { o.MaxEntries = MaxLearnEntries + 1 }, false},
		{"zero ttl", func(o *LearnOptions) { o.TTL = 0 }, false},
		{"negative ttl", func(o *LearnOptions) { o.TTL = -time.Second }, false},
		{"no store", func(o *LearnOptions) { o.Store = "" }, false},
		{"unknown store", func(o *LearnOptions) { o.Store = "memcached" }, false},
		{"redis without addresses", func(o *LearnOptions) { *o = redisOK; o.Redis.Addrs = nil }, false},
		{"redis address without port", func(o *LearnOptions) { *o = redisOK; o.Redis.Addrs = []string{"redis"} }, false},
		{"redis address without host", func(o *LearnOptions) { *o = redisOK; o.Redis.Addrs = []string{":6379"} }, false},
		{"redis port 0", func(o *LearnOptions) { *o = redisOK; o.Redis.Addrs = []string{"redis:0"} }, false},
		{"redis port not a number", func(o *LearnOptions) { *o = redisOK; o.Redis.Addrs = []string{"redis:http"} }, false},
		{"redis without timeout", func(o *LearnOptions) { *o = redisOK; o.Redis.Timeout = 0 }, false},
		{"redis auth and database", func(o *LearnOptions) {
			*o = redisOK
			o.Redis.Addrs, o.Redis.Username, o.Redis.Password, o.Redis.DB = o.Redis.Addrs[:1], "app", "pw", 5
		}, true},
		{"redis username without password", func(o *LearnOptions) { *o = redisOK; o.Redis.Username = "app" }, false},
		{"redis negative database", func(o *LearnOptions) { *o = redisOK; o.Redis.Addrs = o.Redis.Addrs[:1]; o.Redis.DB = -1 }, false},
		{"redis cluster database", func(o *LearnOptions) { *o = redisOK; o.Redis.DB = 1 }, false},
		{"redis tls", func(o *LearnOptions) { *o = redisOK; o.Redis.TLS = &RedisTLS{ServerName: "redis.internal"} }, true},
		{"redis tls, not a CA", func(o *LearnOptions) { *o = redisOK; o.Redis.TLS = &RedisTLS{CA: []byte("CA")} }, false},
		{"redis tls, cert without key", func(o *LearnOptions) { *o = redisOK; o.Redis.TLS = &RedisTLS{Cert: []byte("cert")} }, false},
		{"sentinel", func(o *LearnOptions) {
			*o = redisOK
			o.Redis.Addrs, o.Redis.DB = nil, 2
			o.Redis.Sentinel = &RedisSentinel{Master: "m", Addrs: []string{"127.0.0.1:26379", "127.0.0.2:26379"}, Username: "w", Password: "pw"}
		}, true},
		{"sentinel and addresses", func(o *LearnOptions) {
			*o = redisOK
			o.Redis.Sentinel = &RedisSentinel{Master: "m", Addrs: []string{"127.0.0.1:26379"}}
		}, false},
		{"sentinel without master", func(o *LearnOptions) {
			*o = redisOK
			o.Redis.Addrs, o.Redis.Sentinel = nil, &RedisSentinel{Addrs: []string{"127.0.0.1:26379"}}
		}, false},
		{"sentinel without addresses", func(o *LearnOptions) {
			*o = redisOK
			o.Redis.Addrs, o.Redis.Sentinel = nil, &RedisSentinel{Master: "m"}
		}, false},
		{"sentinel address without port", func(o *LearnOptions) {
			*o = redisOK
			o.Redis.Addrs, o.Redis.Sentinel = nil, &RedisSentinel{Master: "m", Addrs: []string{"sentinel"}}
		}, false},
		{"sentinel username without password", func(o *LearnOptions) {
			*o = redisOK
			o.Redis.Addrs, o.Redis.Sentinel = nil, &RedisSentinel{Master: "m", Addrs: []string{"127.0.0.1:26379"}, Username: "w"}
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := valid
			tt.edit(&o)
			p, err := New("learn", Options{Learn: o})
			if tt.ok {
				if err != nil {
					t.Fatalf("New: %v", err)
				}
				if err := p.(*learnPolicy).Close(); err != nil {
					t.Errorf("Close: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrInvalidLearn) {
				t.Fatalf("New = %v, want ErrInvalidLearn", err)
			}
		})
	}
}

func TestLearnStats(t *testing.T) {
	p, _ := newLearn(t, learnOpts(1, time.Hour))
	var st StickTable = p
	bs := testBackends(nil, 1)
	pk := p.Build(allAvailable(bs))
	learn(t, pk, bs[0], "JSESSIONID=a", "JSESSIONID=b", "JSESSIONID=c")
	if st.Len() != 1 || st.Evictions() != 2 || st.StoreErrors() != 0 {
		t.Errorf("Len, Evictions, StoreErrors = %d, %d, %d; want 1, 2, 0", st.Len(), st.Evictions(), st.StoreErrors())
	}
}

func TestLearnPickDoesNotAllocate(t *testing.T) {
	s := benchPool(100)
	p, clock := newLearn(t, learnOpts(1000, time.Hour))
	pk := p.Build(s)
	learn(t, pk, s.Available[7], "JSESSIONID=abc")
	tests := []struct {
		name string
		r    *http.Request
	}{
		{"kept", sessionRequest("abc")},
		{"unknown session", sessionRequest("xyz")},
		{"no session", cookieRequest("lang=en")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if n := testing.AllocsPerRun(100, func() {
				// Every lookup renews the entry's time.
				clock.advance(time.Hour / 8)
				_, _ = pk.Pick(tt.r)
			}); n != 0 {
				t.Errorf("%.1f allocations per pick, want 0", n)
			}
		})
	}
	h := setCookies("JSESSIONID=abc; Path=/; HttpOnly")
	r := sessionRequest("abc")
	if n := testing.AllocsPerRun(100, func() { pk.(Learner).Learn(r, s.Available[7], h) }); n != 0 {
		t.Errorf("%.1f allocations per Learn of a known session, want 0", n)
	}
}

// Picks, learning and rebuilds run at once, as they do in the proxy; the
// race detector checks the rest.
func TestLearnConcurrent(t *testing.T) {
	bs := testBackends(nil, 1, 2, 3)
	p, _ := newLearn(t, learnOpts(64, time.Hour))
	var cur atomic.Pointer[Picker]
	build := func(s Set) { pk := p.Build(s); cur.Store(&pk) }
	build(allAvailable(bs))
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 500 {
				pk := *cur.Load()
				sid := fmt.Sprintf("s%d", (g*500+i)%100)
				got, err := pk.Pick(sessionRequest(sid))
				if err != nil {
					t.Error(err)
					return
				}
				r := sessionRequest(sid)
				pk.(Learner).Learn(r, got.Backend, setCookies("JSESSIONID="+sid))
			}
		})
	}
	wg.Go(func() {
		for i := range 50 {
			if i%2 == 0 {
				build(Set{All: bs, Available: bs[:2]})
			} else {
				build(allAvailable(bs))
			}
		}
	})
	wg.Wait()
	if n := p.Len(); n > 64 {
		t.Errorf("Len = %d over max_entries 64", n)
	}
}

// FuzzLearn feeds any Set-Cookie line and any Cookie header: nothing panics,
// the table stays bounded, and a session learned from a line is found by a
// request carrying the cookie as a browser sends it back.
func FuzzLearn(f *testing.F) {
	for _, s := range []struct{ setCookie, cookie string }{
		{"JSESSIONID=abc; Path=/", "JSESSIONID=abc"},
		{`JSESSIONID="q"; Max-Age=0`, `a=1; JSESSIONID="q"`},
		{"JSESSIONID=x; Expires=Thu, 01-Jan-1970 00:00:10 GMT", "JSESSIONID"},
		{"JSESSIONID=; max-age=-", ";;=;JSESSIONID=="},
		{"\x00=\xff; ; =", "\t JSESSIONID \t= \" \""},
	} {
		f.Add(s.setCookie, s.cookie)
	}
	bs := testBackends(nil, 1, 1, 1)
	f.Fuzz(func(t *testing.T, setCookie, cookie string) {
		p, err := New("learn", learnOpts(4, time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		pk := p.Build(Set{All: bs, Available: bs[1:]})
		r := cookieRequest(cookie)
		if _, err := pk.Pick(r); err != nil {
			t.Fatalf("Pick(%q): %v", cookie, err)
		}
		pk.(Learner).Learn(r, bs[2], setCookies(setCookie))
		if n := p.(*learnPolicy).Len(); n > 1 {
			t.Fatalf("Len = %d after one line", n)
		}
		if _, del, ok := sessionCookie(setCookie, testSessionCookie); ok && !del {
			pair, _, _ := strings.Cut(setCookie, ";")
			got := mustPick(t, pk, cookieRequest(pair))
			if got.Backend != bs[2] || got.Sticky != StickyKept {
				t.Fatalf("after learning %q, Cookie %q went to %s (%v), want kept on %s", setCookie, pair, got.Backend.ID, got.Sticky, bs[2].ID)
			}
		}
		if _, err := pk.Pick(cookieRequest(cookie)); err != nil {
			t.Fatalf("Pick(%q): %v", cookie, err)
		}
	})
}

// A policy made for other options takes over its predecessor's sessions:
// the most recently used first, up to its max_entries, each as old as it
// was and dropped when that is past the new ttl. The old pickers, serving
// requests in flight, learn into the new table from then on.
func TestLearnHandOver(t *testing.T) {
	const sessions = 12
	tests := []struct {
		name       string
		maxEntries int
		ttl        time.Duration
		kept       int // how many of s0, s1, ... (most recent first) stay
	}{
		{"same bounds", 1000, time.Hour, sessions},
		{"larger", 5000, 2 * time.Hour, sessions},
		// fresh and a, learned by the new policy, and b, the old
		// policy's most recent, leave room for two.
		{"fewer entries", 5, time.Hour, 2},
		{"fewer entries, sharded", 4096, time.Hour, sessions},
		// s0 to s11 are 0 to 44 minutes old; 20m and its slack of
		// 1m15s keep those up to 20 minutes old.
		{"shorter ttl", 1000, 20 * time.Minute, 6},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bs := testBackends(nil, 1, 1, 1)
			old, clock := newLearn(t, learnOpts(1000, time.Hour))
			oldPk := old.Build(allAvailable(bs))
			for i := range sessions {
				learn(t, oldPk, bs[i%3], fmt.Sprintf("JSESSIONID=s%d", i))
			}
			// s11 is used first and s0 last, 4 minutes apart (more than
			// the old table's slack, so that each use renews the
			// entry's time): the order of use is the reverse of the
			// order of learning.
			for i := sessions - 1; i >= 0; i-- {
				clock.advance(4 * time.Minute)
				expectPick(t, oldPk, sessionRequest(fmt.Sprintf("s%d", i)), bs[i%3], StickyKept)
			}
			learn(t, oldPk, bs[0], "JSESSIONID=a", "JSESSIONID=b")

			p, err := NewFrom(old, "learn", learnOpts(tt.maxEntries, tt.ttl))
			if err != nil {
				t.Fatal(err)
			}
			next := p.(*learnPolicy)
			t.Cleanup(func() { _ = next.Close() })
			nextClock := new(fakeClock)
			nextClock.advance(42 * time.Hour)
			next.tab().clock = nextClock.now
			pk := next.Build(allAvailable(bs))
			// Sessions learned by the new policy before the hand-over
			// stay the most recent, and win over the old policy's.
			learn(t, pk, bs[1], "JSESSIONID=fresh", "JSESSIONID=a")
			old.tab().evictions.Add(7)
			HandOver(old, next)
			if n := next.Evictions(); n != 7 {
				t.Errorf("evictions %d, want the old policy's 7 carried", n)
			}

			expectPick(t, pk, sessionRequest("fresh"), bs[1], StickyKept)
			expectPick(t, pk, sessionRequest("a"), bs[1], StickyKept)
			expectPick(t, pk, sessionRequest("b"), bs[0], StickyKept)
			for i := range sessions {
				sid := fmt.Sprintf("s%d", i)
				if i < tt.kept {
					expectPick(t, pk, sessionRequest(sid), bs[i%3], StickyKept)
				} else {
					expectPick(t, pk, sessionRequest(sid), nil, StickyNew)
				}
			}
			// The old pickers write where the new ones read.
			learn(t, oldPk, bs[2], "JSESSIONID=late")
			expectPick(t, pk, sessionRequest("late"), bs[2], StickyKept)

		})
	}
}

// The hand-over knows when each session was last used, to the moment: a
// use shortly after the previous one counts for its recency and its age
// as much as any.
func TestLearnHandOverLastUse(t *testing.T) {
	useC := []string{"learn c", "use c", "use c", "use c", "use c", "use c", "use c", "use c"}
	tests := []struct {
		name       string
		oldTTL     time.Duration
		events     []string // "learn s" or "use s", a minute apart
		idle       time.Duration
		maxEntries int
		ttl        time.Duration
		kept, gone []string
	}{
		// b, learned first, was used last: it is the most recent.
		{"recency", time.Hour, []string{"learn b", "learn a", "use b"}, 0, 1, time.Hour, []string{"b"}, []string{"a"}},
		// c was last used 50 minutes before the hand-over, 57 minutes
		// after it was learned.
		{"age", 2 * time.Hour, useC, 50 * time.Minute, 10, 51 * time.Minute, []string{"c"}, nil},
		{"age past the new ttl", 2 * time.Hour, useC, 50 * time.Minute, 10, 49 * time.Minute, nil, []string{"c"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bs := testBackends(nil, 1, 1)
			old, clock := newLearn(t, learnOpts(100, tt.oldTTL))
			oldPk := old.Build(allAvailable(bs))
			for _, ev := range tt.events {
				clock.advance(time.Minute)
				switch what, sid, _ := strings.Cut(ev, " "); what {
				case "learn":
					learn(t, oldPk, bs[1], "JSESSIONID="+sid)
				case "use":
					expectPick(t, oldPk, sessionRequest(sid), bs[1], StickyKept)
				}
			}
			clock.advance(tt.idle)
			p, err := NewFrom(old, "learn", learnOpts(tt.maxEntries, tt.ttl))
			if err != nil {
				t.Fatal(err)
			}
			next := p.(*learnPolicy)
			HandOver(old, next)
			pk := next.Build(allAvailable(bs))
			for _, sid := range tt.kept {
				expectPick(t, pk, sessionRequest(sid), bs[1], StickyKept)
			}
			for _, sid := range tt.gone {
				expectPick(t, pk, sessionRequest(sid), nil, StickyNew)
			}
		})
	}
}

// Only a learn policy of the same cookie takes over a table.
func TestLearnHandOverOtherPolicies(t *testing.T) {
	bs := testBackends(nil, 1, 1)
	old, _ := newLearn(t, learnOpts(100, time.Hour))
	learn(t, old.Build(allAvailable(bs)), bs[1], "JSESSIONID=abc")
	other := learnOpts(100, time.Hour)
	other.Learn.Cookie = "PHPSESSID"
	for _, tt := range []struct {
		name string
		kind string
		o    Options
	}{
		{"other cookie", "learn", other},
		{"cookie balancer", "cookie", cookieOpts()},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p, err := NewFrom(old, tt.kind, tt.o)
			if err != nil {
				t.Fatal(err)
			}
			HandOver(old, p)
			if lp, ok := p.(*learnPolicy); ok && lp.Len() != 0 {
				t.Errorf("a policy of cookie %s took %d sessions of JSESSIONID", lp.cookie, lp.Len())
			}
			if old.Len() != 1 {
				t.Errorf("the old policy holds %d sessions, want its own 1", old.Len())
			}
		})
	}
	if _, err := NewFrom(old, "learn", learnOpts(0, time.Hour)); !errors.Is(err, ErrInvalidLearn) {
		t.Errorf("NewFrom with bad options: %v, want ErrInvalidLearn", err)
	}
}
