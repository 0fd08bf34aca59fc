package balancer

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/affinityproxy/affinity/internal/testutil"
)

// waitFor bounds every wait for something that should happen at once;
// reaching it means the behaviour is broken.
const waitFor = 5 * time.Second

// redisOpts are the options of a policy sharing its table through the
// Redis at addr. The timeout leaves room for a loaded machine: tests that
// make Redis fail set a shorter one (stalled).
func redisOpts(addr string) Options {
	o := learnOpts(1000, time.Hour)
	o.Learn.Store = LearnStoreRedis
	o.Learn.Redis = RedisOptions{Addrs: []string{addr}, Timeout: time.Second}
	return o
}

// stalled are redisOpts for tests of a Redis that does not answer, where
// every command waits out the timeout.
func stalled(addr string) Options {
	o := redisOpts(addr)
	o.Learn.Redis.Timeout = 200 * time.Millisecond
	return o
}

// logged makes p log to an observer, and returns what it logged.
func logged(p *learnPolicy) *observer.ObservedLogs {
	core, logs := observer.New(zap.InfoLevel)
	p.SetLogger(zap.New(core))
	return logs
}

// expectLogged checks that logs hold n lines with the message msg.
func expectLogged(t *testing.T, logs *observer.ObservedLogs, msg string, n int) []observer.LoggedEntry {
	t.Helper()
	got := logs.FilterMessage(msg).All()
	if len(got) != n {
		t.Errorf("%d lines %q logged, want %d; all lines: %v", len(got), msg, n, logs.All())
	}
	return got
}

// Log messages of the store.
const (
	logDown     = "learn: Redis unavailable; lookups fall back to the rotation, writes are held"
	logUp       = "learn: Redis available again"
	logSent     = "learn: writes held for Redis sent"
	logDropping = "learn: too many writes held for Redis, losing the oldest"
	logClosed   = "learn: writes held for Redis lost at close"
)

// inspect returns a client to look at what the store wrote.
func inspect(t *testing.T, addr string) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr, Protocol: 2, DisableIdentity: true})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func sessionKey(sid string) string { return RedisKeyPrefix + testSessionCookie + ":" + sid }

// Two policies stand for two replicas of the proxy: what one learns, the
// other follows, with backends of its own under the same IDs.
func TestLearnRedisShared(t *testing.T) {
	r := testutil.StartRedis(t)
	rc := inspect(t, r.Addr)
	a, _ := newLearn(t, redisOpts(r.Addr))
	b, clockB := newLearn(t, redisOpts(r.Addr))
	bsA, bsB := testBackends(nil, 1, 1, 1), testBackends(nil, 1, 1, 1)
	pa, pb := a.Build(allAvailable(bsA)), b.Build(allAvailable(bsB))

	learn(t, pa, bsA[1], "JSESSIONID=s1; Path=/")
	testutil.Eventually(t, waitFor, "session written to Redis", func() bool { return rc.Exists(context.Background(), sessionKey("s1")).Val() == 1 })
	ttl := rc.PTTL(context.Background(), sessionKey("s1")).Val()
	if keep := a.tab().keep(); ttl <= 0 || ttl > keep {
		t.Errorf("Redis TTL %v, want up to %v", ttl, keep)
	}
	for range 5 {
		expectPick(t, pb, sessionRequest("s1"), bsB[1], StickyKept)
	}
	if n := b.Len(); n != 1 {
		t.Errorf("replica B holds %d sessions in memory, want the one it fetched", n)
	}

	// A session still in use on B is written again, so that Redis keeps
	// it for A (and fills a Redis that restarted empty).
	rc.Del(context.Background(), sessionKey("s1"))
	clockB.advance(b.tab().keep() / 2)
	expectPick(t, pb, sessionRequest("s1"), bsB[1], StickyKept)
	testutil.Eventually(t, waitFor, "session written again", func() bool { return rc.Get(context.Background(), sessionKey("s1")).Val() == "b1" })

	// A repin on B is shared too.
	down := b.Build(Set{All: bsB, Available: []*Backend{bsB[0], bsB[2]}})
	moved := expectPick(t, down, sessionRequest("s1"), nil, StickyRepinned).Backend
	testutil.Eventually(t, waitFor, "repin written", func() bool { return rc.Get(context.Background(), sessionKey("s1")).Val() == moved.ID })

	// Deleting the session deletes it in Redis.
	learn(t, pa, bsA[1], "JSESSIONID=s1; Max-Age=0")
	testutil.Eventually(t, waitFor, "session deleted from Redis", func() bool { return rc.Exists(context.Background(), sessionKey("s1")).Val() == 0 })
	if n := a.StoreErrors() + b.StoreErrors(); n != 0 {
		t.Errorf("%d store errors", n)
	}
}

// An application that sends its session cookie with every response costs
// one Redis write per slack of the TTL, not one per response.
func TestLearnRedisWritesOncePerSlack(t *testing.T) {
	r := testutil.StartRedis(t)
	rc := inspect(t, r.Addr)
	p, clock := newLearn(t, redisOpts(r.Addr))
	bs := testBackends(nil, 1, 1)
	pk := p.Build(allAvailable(bs))
	exists := func(sid string) bool { return rc.Exists(context.Background(), sessionKey(sid)).Val() == 1 }
	learn(t, pk, bs[0], "JSESSIONID=s")
	testutil.Eventually(t, waitFor, "session written", func() bool { return exists("s") })
	rc.Del(context.Background(), sessionKey("s"))
	learn(t, pk, bs[0], "JSESSIONID=s")
	// The writer keeps the order of the queue: once a later session is
	// in Redis, an earlier write would be too.
	learn(t, pk, bs[0], "JSESSIONID=marker")
	testutil.Eventually(t, waitFor, "marker written", func() bool { return exists("marker") })
	if exists("s") {
		t.Error("the same session from the same backend was written again at once")
	}
	clock.advance(p.tab().keep() / 8)
	learn(t, pk, bs[0], "JSESSIONID=s")
	testutil.Eventually(t, waitFor, "session written again once stale", func() bool { return exists("s") })
	// Another backend's cookie for the session is written at once.
	learn(t, pk, bs[1], "JSESSIONID=s")
	testutil.Eventually(t, waitFor, "move written", func() bool { return rc.Get(context.Background(), sessionKey("s")).Val() == "b1" })
}

// A session naming a backend this replica does not have, one removed from
// the pool, is moved to its successor, remembered, and written back.
func TestLearnRedisUnknownBackend(t *testing.T) {
	r := testutil.StartRedis(t)
	rc := inspect(t, r.Addr)
	p, _ := newLearn(t, redisOpts(r.Addr))
	pk := p.Build(allAvailable(testBackends(nil, 1, 1)))
	if err := rc.Set(context.Background(), sessionKey("s"), "elsewhere", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	moved := expectPick(t, pk, sessionRequest("s"), nil, StickyRepinned).Backend
	expectPick(t, pk, sessionRequest("s"), moved, StickyKept)
	testutil.Eventually(t, waitFor, "move written", func() bool { return rc.Get(context.Background(), sessionKey("s")).Val() == moved.ID })
}

// A Redis that is down costs a pick one failed lookup, then none until the
// backoff is over; the rotation serves meanwhile, and Redis is used again
// once it is back.
func TestLearnRedisDown(t *testing.T) {
	r := testutil.StartRedis(t)
	p, clock := newLearn(t, redisOpts(r.Addr))
	bs := testBackends(nil, 1, 1)
	pk := p.Build(allAvailable(bs))
	r.Stop()
	expectPick(t, pk, sessionRequest("s"), nil, StickyNew)
	if n := p.StoreErrors(); n != 1 {
		t.Fatalf("StoreErrors = %d after a failed lookup, want 1", n)
	}
	expectPick(t, pk, sessionRequest("s"), nil, StickyNew)
	if n := p.StoreErrors(); n != 1 {
		t.Errorf("StoreErrors = %d: looked up again within the backoff", n)
	}
	r.Start()
	rc := inspect(t, r.Addr)
	if err := rc.Set(context.Background(), sessionKey("s"), "b1", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	expectPick(t, pk, sessionRequest("s"), nil, StickyNew)
	clock.advance(redisBackoff)
	// The pool may hand out a connection broken by the restart first.
	testutil.Eventually(t, waitFor, "lookup after the backoff", func() bool {
		clock.advance(redisBackoff)
		return mustPick(t, pk, sessionRequest("s")).Sticky == StickyKept
	})
}

// Writes made while Redis is down are held, and sent once it is back:
// nothing is lost, each failed write counts once as an error, and the
// outage is logged when it starts and when it ends.
func TestLearnRedisWritesHeldWhileDown(t *testing.T) {
	r := testutil.StartRedis(t)
	p, _ := newLearn(t, stalled(r.Addr))
	logs := logged(p)
	bs := testBackends(nil, 1)
	pk := p.Build(allAvailable(bs))
	r.Stop()
	for i := range 3 {
		learn(t, pk, bs[0], fmt.Sprintf("JSESSIONID=s%d", i))
	}
	testutil.Eventually(t, waitFor, "a write failed", func() bool { return p.StoreErrors() > 0 })
	r.Start()
	rc := inspect(t, r.Addr)
	testutil.Eventually(t, waitFor, "held writes sent", func() bool {
		return rc.Exists(context.Background(), sessionKey("s0"), sessionKey("s1"), sessionKey("s2")).Val() == 3
	})
	testutil.Eventually(t, waitFor, "nothing held", func() bool { return p.StoreHeld() == 0 })
	// The first write failed; those queued behind it failed too if a
	// retry came before the restart. Each counts once.
	if e, l := p.StoreErrors(), p.StoreLost(); e < 1 || e > 3 || l != 0 {
		t.Errorf("StoreErrors, StoreLost = %d, %d; want 1 to 3 writes failed once each, none lost", e, l)
	}
	expectLogged(t, logs, logDown, 1)
	if sent := expectLogged(t, logs, logSent, 1); len(sent) == 1 {
		if f := sent[0].ContextMap(); f["sent"] != int64(3) || f["lost"] != uint64(0) {
			t.Errorf("logged %v, want 3 sent and none lost", f)
		}
	}
	expectLogged(t, logs, logUp, 1)
}

// A Redis that stalls (stopped by SIGSTOP, as a slow command, swapping or a
// frozen VM stop it) takes the writes and answers none until it resumes:
// they time out, are held, and are sent once it answers, in order, moves
// and deletes included, which the other replicas then hear of.
func TestLearnRedisStall(t *testing.T) {
	r := testutil.StartRedis(t)
	rc := inspect(t, r.Addr)
	p, _ := newLearn(t, stalled(r.Addr))
	logs := logged(p)
	other, _ := newLearn(t, redisOpts(r.Addr))
	bs, obs := testBackends(nil, 1, 1, 1), testBackends(nil, 1, 1, 1)
	pk, opk := p.Build(allAvailable(bs)), other.Build(allAvailable(obs))
	learn(t, pk, bs[1], "JSESSIONID=moved", "JSESSIONID=out")
	testutil.Eventually(t, waitFor, "sessions written", func() bool {
		return rc.Exists(context.Background(), sessionKey("moved"), sessionKey("out")).Val() == 2
	})
	// The other replica holds both in memory, and listens.
	expectPick(t, opk, sessionRequest("moved"), obs[1], StickyKept)
	expectPick(t, opk, sessionRequest("out"), obs[1], StickyKept)
	subscribed(t, rc, 2)

	r.Pause()
	for i := range 5 {
		learn(t, pk, bs[0], fmt.Sprintf("JSESSIONID=s%d", i))
	}
	learn(t, pk, bs[2], "JSESSIONID=moved")
	answer(t, pk, sessionRequest("out"), bs[1], "JSESSIONID=; Max-Age=0")
	testutil.Eventually(t, waitFor, "a write failed", func() bool { return p.StoreErrors() > 0 })
	if n := p.StoreHeld(); n == 0 || n > 7 {
		t.Errorf("StoreHeld = %d while Redis stalls, want 1 to 7", n)
	}
	r.Resume()

	testutil.Eventually(t, waitFor, "held writes sent", func() bool {
		return rc.Exists(context.Background(), sessionKey("s0"), sessionKey("s1"), sessionKey("s2"), sessionKey("s3"), sessionKey("s4")).Val() == 5
	})
	testutil.Eventually(t, waitFor, "the move and the logout followed by the other replica", func() bool {
		return mustPick(t, opk, sessionRequest("moved")).Backend == obs[2] && other.Len() == 1
	})
	if got := rc.Get(context.Background(), sessionKey("moved")).Val(); got != "b2" {
		t.Errorf("Redis holds %q for the moved session, want b2", got)
	}
	if n := rc.Exists(context.Background(), sessionKey("out")).Val(); n != 0 {
		t.Error("the logged-out session is still in Redis")
	}
	testutil.Eventually(t, waitFor, "nothing held", func() bool { return p.StoreHeld() == 0 })
	if l := p.StoreLost(); l != 0 {
		t.Errorf("StoreLost = %d, want none", l)
	}
	expectLogged(t, logs, logDown, 1)
	expectLogged(t, logs, logSent, 1)
}

// The writes held are bounded: past the bound the oldest are lost, counted
// and logged once, and the most recent are sent once Redis answers.
func TestLearnRedisHeldBound(t *testing.T) {
	r := testutil.StartRedis(t)
	rc := inspect(t, r.Addr)
	p, _ := newLearn(t, stalled(r.Addr))
	p.own.heldMax = 8
	logs := logged(p)
	bs := testBackends(nil, 1)
	pk := p.Build(allAvailable(bs))
	r.Pause()
	const n = 20
	for i := range n {
		learn(t, pk, bs[0], fmt.Sprintf("JSESSIONID=s%02d", i))
	}
	testutil.Eventually(t, waitFor, "the oldest lost", func() bool { return p.StoreLost() == n-8 && p.StoreHeld() == 8 })
	expectLogged(t, logs, logDropping, 1)
	r.Resume()
	testutil.Eventually(t, waitFor, "the most recent sent", func() bool { return p.StoreHeld() == 0 })
	for i := range n {
		// The first write was in Redis's socket when it stalled, and
		// may have been done when it resumed: it says nothing.
		sid := fmt.Sprintf("s%02d", i)
		if got := rc.Exists(context.Background(), sessionKey(sid)).Val() == 1; i > 0 && got != (i >= n-8) {
			t.Errorf("session %s in Redis: %v, want %v", sid, got, i >= n-8)
		}
	}
	// Each lost write is an error; so is each held one whose retry
	// came before Redis resumed.
	if e, l := p.StoreErrors(), p.StoreLost(); e < n-8 || e > n || l != n-8 {
		t.Errorf("StoreErrors, StoreLost = %d, %d; want %d to %d, and %d", e, l, n-8, n, n-8)
	}
	if sent := expectLogged(t, logs, logSent, 1); len(sent) == 1 {
		if f := sent[0].ContextMap(); f["sent"] != int64(8) || f["lost"] != uint64(n-8) {
			t.Errorf("logged %v, want 8 sent and %d lost", f, n-8)
		}
	}
}

// silentRedis accepts connections and never answers, as a stuck server or a
// lost network does.
func silentRedis(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
		wg    sync.WaitGroup
	)
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	})
	t.Cleanup(func() {
		_ = ln.Close()
		wg.Wait()
		for _, c := range conns {
			_ = c.Close()
		}
	})
	return ln.Addr().String()
}

// A Redis that does not answer makes a lookup fail at its timeout, and the
// writes are held: neither picks nor responses wait for it. The writes
// beyond what the queue takes while the writer waits are lost, and at
// Close, which still returns, so are the held ones: counted and logged.
func TestLearnRedisSilent(t *testing.T) {
	p, _ := newLearn(t, stalled(silentRedis(t)))
	logs := logged(p)
	bs := testBackends(nil, 1)
	pk := p.Build(allAvailable(bs))
	expectPick(t, pk, sessionRequest("s"), bs[0], StickyNew)
	if n := p.StoreErrors(); n != 1 {
		t.Errorf("StoreErrors = %d after a lookup timed out, want 1", n)
	}
	const n = redisQueue + 4*redisBatch
	for i := range n {
		learn(t, pk, bs[0], fmt.Sprintf("JSESSIONID=s%d", i))
	}
	testutil.Eventually(t, waitFor, "every write held or lost", func() bool {
		return uint64(p.StoreHeld())+p.StoreLost() == n
	})
	held := p.StoreHeld()
	if err := p.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if e, l, h := p.StoreErrors(), p.StoreLost(), p.StoreHeld(); e != n+1 || l != n || h != 0 {
		t.Errorf("StoreErrors, StoreLost, StoreHeld = %d, %d, %d after Close; want %d, %d, 0", e, l, h, n+1, n)
	}
	if lost := expectLogged(t, logs, logClosed, 1); len(lost) == 1 {
		if f := lost[0].ContextMap(); f["lost"] != int64(held) {
			t.Errorf("logged %v, want the %d held", f, held)
		}
	}
}

// After Close, pickers keep answering from memory without Redis, and a
// store never used opened nothing (goleak checks no writer is left).
func TestLearnRedisClose(t *testing.T) {
	r := testutil.StartRedis(t)
	unused, err := New("learn", redisOpts(r.Addr))
	if err != nil {
		t.Fatal(err)
	}
	if unused.(*learnPolicy).own.conn.Load() != nil {
		t.Error("a store that was never used is connected")
	}
	if err := unused.(*learnPolicy).Close(); err != nil {
		t.Errorf("Close of an unused store: %v", err)
	}

	p, _ := newLearn(t, redisOpts(r.Addr))
	bs := testBackends(nil, 1, 1)
	pk := p.Build(allAvailable(bs))
	learn(t, pk, bs[1], "JSESSIONID=s")
	for range 2 {
		if err := p.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
	}
	// Close wrote what was queued.
	if got := inspect(t, r.Addr).Get(context.Background(), sessionKey("s")).Val(); got != "b1" {
		t.Errorf("Redis holds %q for the session after Close, want b1", got)
	}
	expectPick(t, pk, sessionRequest("s"), bs[1], StickyKept)
	expectPick(t, pk, sessionRequest("other"), nil, StickyNew)
	learn(t, pk, bs[0], "JSESSIONID=after")
	expectPick(t, pk, sessionRequest("after"), bs[0], StickyKept)
	if n := p.StoreErrors(); n != 0 {
		t.Errorf("StoreErrors = %d: use after Close counted as failures", n)
	}
	if _, err := inspect(t, r.Addr).Get(context.Background(), sessionKey("after")).Result(); !errors.Is(err, redis.Nil) {
		t.Errorf("a session learned after Close reached Redis: %v", err)
	}
}

// inspectAs returns a client to look at what the store wrote, connecting
// as o says.
func inspectAs(t *testing.T, o *redis.Options) *redis.Client {
	t.Helper()
	o.Protocol, o.DisableIdentity = 2, true
	c := redis.NewClient(o)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// replicaPair is two learn policies, a and b, that stand for two replicas
// of the proxy sharing a Redis, each with backends of its own under the same
// IDs, and with session s1 learned by a on b1 and found by b.
type replicaPair struct {
	addr     string        // of the Redis
	rc       *redis.Client // looks at the Redis
	a, b     *learnPolicy
	bsA, bsB []*Backend
	pa, pb   Picker // built with every backend available
	clockB   *fakeClock
}

func sharedSession(t *testing.T) *replicaPair {
	t.Helper()
	r := testutil.StartRedis(t)
	rp := &replicaPair{addr: r.Addr, rc: inspect(t, r.Addr), bsA: testBackends(nil, 1, 1, 1, 1), bsB: testBackends(nil, 1, 1, 1, 1)}
	rp.a, _ = newLearn(t, redisOpts(r.Addr))
	rp.b, rp.clockB = newLearn(t, redisOpts(r.Addr))
	rp.pa, rp.pb = rp.a.Build(allAvailable(rp.bsA)), rp.b.Build(allAvailable(rp.bsB))
	learn(t, rp.pa, rp.bsA[1], "JSESSIONID=s1")
	testutil.Eventually(t, waitFor, "session written", func() bool { return rp.rc.Get(context.Background(), sessionKey("s1")).Val() == "b1" })
	expectPick(t, rp.pb, sessionRequest("s1"), rp.bsB[1], StickyKept)
	return rp
}

// subscribed waits until n stores listen on the channel of moves.
func subscribed(t *testing.T, rc *redis.Client, n int64) {
	t.Helper()
	channel := RedisKeyPrefix + testSessionCookie
	testutil.Eventually(t, waitFor, fmt.Sprintf("%d stores subscribed", n), func() bool {
		return rc.PubSubNumSub(context.Background(), channel).Val()[channel] == n
	})
}

// A session that one replica moves is moved by the others at once, though
// for them its backend is still up: each holds it in memory, where Redis
// would not be asked again for a long while.
func TestLearnRedisMoveReachesReplicas(t *testing.T) {
	rp := sharedSession(t)
	// Each store listens from its first use, a moment after it.
	subscribed(t, rp.rc, 2)

	down := rp.a.Build(Set{All: rp.bsA, Available: []*Backend{rp.bsA[0], rp.bsA[2], rp.bsA[3]}})
	moved := expectPick(t, down, sessionRequest("s1"), nil, StickyRepinned).Backend
	testutil.Eventually(t, waitFor, "move followed by b", func() bool {
		return mustPick(t, rp.pb, sessionRequest("s1")).Backend.ID == moved.ID
	})
	expectPick(t, rp.pb, sessionRequest("s1"), rp.bsB[slices.Index(rp.bsA, moved)], StickyKept)
	if got := rp.rc.Get(context.Background(), sessionKey("s1")).Val(); got != moved.ID {
		t.Errorf("Redis holds %q, want %s", got, moved.ID)
	}
	if n := rp.a.StoreErrors() + rp.b.StoreErrors(); n != 0 {
		t.Errorf("%d store errors", n)
	}
}

// A session one replica forgets, as a logout makes it, is forgotten by
// the others at once, though they hold it in memory: they would
// otherwise route it to its backend until it expired.
func TestLearnRedisLogoutReachesReplicas(t *testing.T) {
	rp := sharedSession(t)
	subscribed(t, rp.rc, 2)
	if n := rp.b.Len(); n != 1 {
		t.Fatalf("replica b holds %d sessions, want s1", n)
	}
	answer(t, rp.pa, sessionRequest("s1"), rp.bsA[1], "JSESSIONID=; Max-Age=0")
	testutil.Eventually(t, waitFor, "the logout followed by b", func() bool { return rp.b.Len() == 0 })
	expectPick(t, rp.pb, sessionRequest("s1"), nil, StickyNew)
	if n := rp.rc.Exists(context.Background(), sessionKey("s1")).Val(); n != 0 {
		t.Error("the session is still in Redis")
	}
}

// A reload that changes the learn options replaces b's policy by one that
// takes its sessions over. That one listens to the moves the other
// replicas publish at once, though it finds its sessions in memory and
// has no other reason to use Redis yet; and the requests still in flight
// on b's old pickers publish their moves through it.
func TestLearnRedisHandOverListens(t *testing.T) {
	rp := sharedSession(t)
	learn(t, rp.pb, rp.bsB[2], "JSESSIONID=s2")
	testutil.Eventually(t, waitFor, "s2 written", func() bool { return rp.rc.Get(context.Background(), sessionKey("s2")).Val() == "b2" })
	expectPick(t, rp.pa, sessionRequest("s2"), rp.bsA[2], StickyKept)
	subscribed(t, rp.rc, 2)

	o := redisOpts(rp.addr)
	o.Learn.TTL = 2 * time.Hour
	p, err := NewFrom(rp.b, "learn", o)
	if err != nil {
		t.Fatal(err)
	}
	next := p.(*learnPolicy)
	t.Cleanup(func() { _ = next.Close() })
	HandOver(rp.b, next)
	if err := rp.b.Close(); err != nil {
		t.Fatal(err)
	}
	pk := next.Build(allAvailable(rp.bsB))

	down := rp.a.Build(Set{All: rp.bsA, Available: []*Backend{rp.bsA[0], rp.bsA[2], rp.bsA[3]}})
	moved := expectPick(t, down, sessionRequest("s1"), nil, StickyRepinned).Backend
	testutil.Eventually(t, waitFor, "a's move followed by the new policy", func() bool {
		return mustPick(t, pk, sessionRequest("s1")).Backend.ID == moved.ID
	})

	// A request in flight on an old picker fails on s2's backend, and
	// its retry moves the session.
	to, _, ok := rp.pb.(Pinner).Repin(sessionRequest("s2"), []*Backend{rp.bsB[2]})
	if !ok {
		t.Fatal("no backend to repin s2 to")
	}
	testutil.Eventually(t, waitFor, "the old picker's move followed by a", func() bool {
		return mustPick(t, rp.pa, sessionRequest("s2")).Backend.ID == to.ID
	})
	expectPick(t, pk, sessionRequest("s2"), to, StickyKept)
}

// A replica renewing a session it still uses keeps what Redis holds: a
// move it did not hear of is not undone, and it takes it.
func TestLearnRedisRenewalKeepsMoves(t *testing.T) {
	rp := sharedSession(t)
	// Moved by a replica whose message b missed (it was not
	// subscribed, say): only Redis knows.
	if err := rp.rc.Set(context.Background(), sessionKey("s1"), "b3", time.Hour).Err(); err != nil {
		t.Fatal(err)
	}
	expectPick(t, rp.pb, sessionRequest("s1"), rp.bsB[1], StickyKept)
	rp.clockB.advance(rp.b.tab().keep() / 8)
	expectPick(t, rp.pb, sessionRequest("s1"), rp.bsB[1], StickyKept) // renews
	testutil.Eventually(t, waitFor, "the move taken by b", func() bool {
		return mustPick(t, rp.pb, sessionRequest("s1")).Backend == rp.bsB[3]
	})
	if got := rp.rc.Get(context.Background(), sessionKey("s1")).Val(); got != "b3" {
		t.Errorf("Redis holds %q after b's renewal, want b3 kept", got)
	}
	if ttl := rp.rc.PTTL(context.Background(), sessionKey("s1")).Val(); ttl > rp.b.tab().keep() {
		t.Errorf("Redis TTL %v after the renewal, want at most %v", ttl, rp.b.tab().keep())
	}
}

// The store authenticates as configured: the default user's password, an
// ACL user, and a database of its own. A wrong password fails, counted.
func TestLearnRedisAuth(t *testing.T) {
	r := testutil.StartRedisWith(t, testutil.RedisConfig{
		Args:     []string{"--requirepass", "s3cret", "--user", "app", "on", ">app-pw", "~affinity:*", "&*", "+@all"},
		Password: "s3cret",
	})
	tests := []struct {
		name string
		opts RedisOptions
		ok   bool
	}{
		{"default user", RedisOptions{Password: "s3cret"}, true},
		{"ACL user", RedisOptions{Username: "app", Password: "app-pw"}, true},
		{"another database", RedisOptions{Password: "s3cret", DB: 3}, true},
		{"no password", RedisOptions{}, false},
		{"wrong password", RedisOptions{Username: "app", Password: "s3cret"}, false},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := redisOpts(r.Addr)
			tt.opts.Addrs, tt.opts.Timeout = o.Learn.Redis.Addrs, time.Second
			o.Learn.Redis = tt.opts
			rc := inspectAs(t, &redis.Options{Addr: r.Addr, Password: "s3cret", DB: tt.opts.DB})
			expectStore(t, o, rc, fmt.Sprintf("s%d", i), tt.ok)
		})
	}
}

// expectStore makes a policy of o, learns session sid, and checks that it
// reaches rc (or, unless ok, that the write fails, counted), and that a
// second policy reads it back.
func expectStore(t *testing.T, o Options, rc *redis.Client, sid string, ok bool) {
	t.Helper()
	p, _ := newLearn(t, o)
	bs := testBackends(nil, 1, 1)
	learn(t, p.Build(allAvailable(bs)), bs[1], "JSESSIONID="+sid)
	if !ok {
		testutil.Eventually(t, waitFor, "failure counted", func() bool { return p.StoreErrors() == 1 })
		if n := rc.Exists(context.Background(), sessionKey(sid)).Val(); n != 0 {
			t.Error("the session reached Redis")
		}
		return
	}
	testutil.Eventually(t, waitFor, "session written", func() bool { return rc.Get(context.Background(), sessionKey(sid)).Val() == "b1" })
	other, _ := newLearn(t, o)
	expectPick(t, other.Build(allAvailable(bs)), sessionRequest(sid), bs[1], StickyKept)
	if n := p.StoreErrors() + other.StoreErrors(); n != 0 {
		t.Errorf("%d store errors", n)
	}
}

// The store speaks TLS to a server that asks for a client certificate,
// and fails, counted, without the certificate or trusting another
// authority.
func TestLearnRedisTLS(t *testing.T) {
	certs := testutil.NewCerts(t, "redis.internal")
	r := testutil.StartRedisWith(t, testutil.RedisConfig{TLS: certs})
	read := func(path string) []byte {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	good := RedisTLS{CA: read(certs.CA), Cert: read(certs.ClientCert), Key: read(certs.ClientKey)}
	byName := good
	byName.ServerName = "redis.internal"
	noClientCert := RedisTLS{CA: good.CA}
	otherCA := good
	otherCA.CA = read(testutil.NewCerts(t).CA)
	wrongName := good
	wrongName.ServerName = "other.internal"
	tests := []struct {
		name string
		tls  RedisTLS
		ok   bool
	}{
		{"client certificate", good, true},
		{"server name", byName, true},
		{"no client certificate", noClientCert, false},
		{"another authority", otherCA, false},
		{"another server name", wrongName, false},
	}
	rc := inspectAs(t, &redis.Options{Addr: r.Addr, TLSConfig: certs.Client})
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := redisOpts(r.Addr)
			o.Learn.Redis.TLS = &tt.tls
			o.Learn.Redis.Timeout = time.Second
			expectStore(t, o, rc, fmt.Sprintf("s%d", i), tt.ok)
		})
	}
}

// Through Redis Sentinel, with passwords on the servers and on the
// sentinel: sessions are written to the master, and, once the sentinel has
// failed it over to its replica, to the new master, where another replica
// of the proxy finds those written before.
func TestLearnRedisSentinelFailover(t *testing.T) {
	const master, pw, sentinelPW = "sessions", "s3cret", "watch-pw"
	// The master starts a replica's sync at once, rather than waiting 5 s
	// for others to sync with them.
	auth := []string{"--requirepass", pw, "--masterauth", pw, "--repl-diskless-sync-delay", "0"}
	primary := testutil.StartRedisWith(t, testutil.RedisConfig{Args: auth, Password: pw})
	host, port, _ := net.SplitHostPort(primary.Addr)
	replica := testutil.StartRedisWith(t, testutil.RedisConfig{Args: append(auth, "--replicaof", host, port), Password: pw})
	rp, rr := inspectAs(t, &redis.Options{Addr: primary.Addr, Password: pw}), inspectAs(t, &redis.Options{Addr: replica.Addr, Password: pw})
	testutil.Eventually(t, waitFor, "replica in sync", func() bool {
		return strings.Contains(rr.Info(context.Background(), "replication").Val(), "master_link_status:up")
	})
	sentinel := testutil.StartRedisWith(t, testutil.RedisConfig{Password: sentinelPW, Sentinel: strings.Join([]string{
		"sentinel monitor " + master + " " + host + " " + port + " 1",
		"sentinel auth-pass " + master + " " + pw,
		"sentinel down-after-milliseconds " + master + " 300",
		"sentinel failover-timeout " + master + " 2000",
		"requirepass " + sentinelPW,
	}, "\n")})
	sc := redis.NewSentinelClient(&redis.Options{Addr: sentinel.Addr, Password: sentinelPW, Protocol: 2, DisableIdentity: true})
	t.Cleanup(func() { _ = sc.Close() })
	testutil.Eventually(t, waitFor, "sentinel sees the replica", func() bool {
		return len(sc.Replicas(context.Background(), master).Val()) == 1
	})

	o := redisOpts("")
	o.Learn.Redis = RedisOptions{
		Sentinel: &RedisSentinel{Master: master, Addrs: []string{sentinel.Addr}, Password: sentinelPW},
		Password: pw, Timeout: time.Second,
	}
	p, clock := newLearn(t, o)
	bs := testBackends(nil, 1, 1)
	pk := p.Build(allAvailable(bs))
	learn(t, pk, bs[1], "JSESSIONID=before")
	testutil.Eventually(t, waitFor, "written to the master and replicated", func() bool {
		return rp.Get(context.Background(), sessionKey("before")).Val() == "b1" && rr.Get(context.Background(), sessionKey("before")).Val() == "b1"
	})

	primary.Stop()
	testutil.Eventually(t, 10*time.Second, "failed over to the replica", func() bool {
		addr := sc.GetMasterAddrByName(context.Background(), master).Val()
		return len(addr) == 2 && net.JoinHostPort(addr[0], addr[1]) == replica.Addr
	})
	// Writes in flight when the master died fail, and stop the writer for
	// the backoff; each round learns a session until one reaches the new
	// master.
	for i := 0; ; i++ {
		sid := fmt.Sprintf("after%d", i)
		clock.advance(redisBackoff)
		learn(t, pk, bs[0], "JSESSIONID="+sid)
		ok := false
		testutil.Eventually(t, waitFor, "write handled", func() bool {
			ok = rr.Get(context.Background(), sessionKey(sid)).Val() == "b0"
			return ok || p.StoreErrors() > uint64(i)
		})
		if ok {
			break
		}
		if i == 20 {
			t.Fatalf("no write reached the new master; %d errors", p.StoreErrors())
		}
	}
	other, _ := newLearn(t, o)
	expectPick(t, other.Build(allAvailable(bs)), sessionRequest("before"), bs[1], StickyKept)
}

// Anything published on the channel of moves is parsed without a panic;
// only a well-formed message names a session and a backend.
func TestParseMove(t *testing.T) {
	tests := []struct {
		msg, sid, id string
		ok           bool
	}{
		{moveMessage("s1", "web-1"), "s1", "web-1", true},
		{moveMessage("a:b 2:c", "b:9"), "a:b 2:c", "b:9", true},
		{"", "", "", false},
		{"5", "", "", false},
		{"5:web-1", "", "", false},              // no session
		{moveMessage("s1", ""), "s1", "", true}, // forgotten
		{"0:s1", "s1", "", true},
		{"00:s1", "", "", false},
		{"-0:s1", "", "", false},
		{"0:", "", "", false},
		{"-1:s1", "", "", false},
		{"x:s1", "", "", false},
		{"99999999999999999999:s", "", "", false},
		{"9:web", "", "", false},
	}
	for _, tt := range tests {
		sid, id, ok := parseMove(tt.msg)
		if sid != tt.sid || id != tt.id || ok != tt.ok {
			t.Errorf("parseMove(%q) = %q, %q, %v; want %q, %q, %v", tt.msg, sid, id, ok, tt.sid, tt.id, tt.ok)
		}
	}
}

func FuzzParseMove(f *testing.F) {
	f.Add("s1", "web-1", "5:web-1s1")
	f.Add("", "x", "1:")
	f.Fuzz(func(t *testing.T, sid, id, msg string) {
		parseMove(msg)
		if sid == "" || id == "" {
			return
		}
		if gs, gi, ok := parseMove(moveMessage(sid, id)); !ok || gs != sid || gi != id {
			t.Fatalf("round trip of %q, %q gave %q, %q, %v", sid, id, gs, gi, ok)
		}
	})
}

// The backlog keeps its writes in order within both bounds, dropping the
// oldest, and puts writes to send again back in front.
func TestBacklog(t *testing.T) {
	op := func(sid string) storeOp { return storeOp{kind: opSet, sid: sid, id: "b0"} }
	sids := func(ops []storeOp) string {
		var out []string
		for _, o := range ops {
			out = append(out, o.sid)
		}
		return strings.Join(out, " ")
	}
	b := backlog{maxOps: 4, maxBytes: 9}
	for _, s := range []string{"a", "b", "c", "d"} {
		if dropped := b.push(op(s)); len(dropped) != 0 {
			t.Fatalf("push %s dropped %q", s, sids(dropped))
		}
	}
	if dropped := b.push(op("e")); sids(dropped) != "a" {
		t.Errorf("past the count, dropped %q, want the oldest, a", sids(dropped))
	}
	// b c d e, 4 bytes; 7 more pass both bounds.
	if dropped := b.push(op("fffffff")); sids(dropped) != "b c" {
		t.Errorf("past the bytes, dropped %q, want b c", sids(dropped))
	}
	if got := sids(b.front(10)); got != "d e fffffff" || b.bytes != 9 {
		t.Errorf("held %q (%d bytes), want d e fffffff (9)", got, b.bytes)
	}
	// The oldest two were sent; e failed and goes back in front.
	b.replaceFront(2, []storeOp{op("e")})
	if got := sids(b.front(10)); got != "e fffffff" || b.bytes != 8 {
		t.Errorf("held %q (%d bytes), want e fffffff (8)", got, b.bytes)
	}
	if dropped := b.push(op("huge-session")); sids(dropped) != "e fffffff huge-session" || b.len() != 0 || b.bytes != 0 {
		t.Errorf("a write past the bytes alone: dropped %q, %d held (%d bytes); want all, none left", sids(dropped), b.len(), b.bytes)
	}

	// Many writes, sent a few at a time with some back in front, come out
	// in order.
	b = backlog{maxOps: 1000, maxBytes: 1 << 20}
	for i := range 100 {
		b.push(op(fmt.Sprint(i)))
	}
	var sent []string
	for b.len() > 0 {
		front := slices.Clone(b.front(7))
		sent = append(sent, sids(front[:3]))
		b.replaceFront(len(front), front[3:])
		b.push(op("x")) // written meanwhile, behind what is held
		if b.len() <= 40 {
			break
		}
	}
	if want := "0 1 2 3 4 5"; !strings.HasPrefix(strings.Join(sent, " "), want) {
		t.Errorf("sent %v, want %s first", sent, want)
	}
	rest := sids(b.front(b.len()))
	if !strings.HasPrefix(rest, fmt.Sprint(3*len(sent))+" ") || !strings.HasSuffix(rest, "x x") {
		t.Errorf("left %q, want %d onwards, then the writes made meanwhile", rest, 3*len(sent))
	}
}
