package balancer

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/affinityproxy/affinity/internal/testutil"
)

// waitFor bounds every wait for something that should happen at once;
// reaching it means the behaviour is broken.
const waitFor = 5 * time.Second

func redisOpts(addr string) Options {
	o := learnOpts(1000, time.Hour)
	o.Learn.Store = LearnStoreRedis
	o.Learn.Redis = RedisOptions{Addrs: []string{addr}, Timeout: 50 * time.Millisecond}
	return o
}

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

// Writes that fail stop the writer from using Redis for the backoff too:
// what it is handed meanwhile is dropped and counted.
func TestLearnRedisWriteBackoff(t *testing.T) {
	r := testutil.StartRedis(t)
	p, clock := newLearn(t, redisOpts(r.Addr))
	bs := testBackends(nil, 1)
	pk := p.Build(allAvailable(bs))
	r.Stop()
	learn(t, pk, bs[0], "JSESSIONID=lost")
	testutil.Eventually(t, waitFor, "failed write counted", func() bool { return p.StoreErrors() == 1 })
	r.Start()
	rc := inspect(t, r.Addr)
	learn(t, pk, bs[0], "JSESSIONID=skipped")
	testutil.Eventually(t, waitFor, "skipped write counted", func() bool { return p.StoreErrors() == 2 })
	clock.advance(redisBackoff)
	// The pool may hand out a connection broken by the restart first.
	for i := 0; ; i++ {
		sid := fmt.Sprintf("s%d", i)
		learn(t, pk, bs[0], "JSESSIONID="+sid)
		testutil.Eventually(t, waitFor, "write handled", func() bool {
			return p.StoreErrors() > uint64(i+2) || rc.Exists(context.Background(), sessionKey(sid)).Val() == 1
		})
		if rc.Exists(context.Background(), sessionKey(sid)).Val() == 1 {
			break
		}
		if i == 2 {
			t.Fatalf("no write reached the restarted Redis; %d errors", p.StoreErrors())
		}
		clock.advance(redisBackoff)
	}
	if n := rc.Exists(context.Background(), sessionKey("lost"), sessionKey("skipped")).Val(); n != 0 {
		t.Errorf("%d writes made within the backoff reached Redis", n)
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

// A Redis that does not answer makes a lookup fail at its timeout and
// writes pile up to the queue's bound, then get dropped: neither picks nor
// responses wait for it, and Close still returns.
func TestLearnRedisSilent(t *testing.T) {
	p, _ := newLearn(t, redisOpts(silentRedis(t)))
	bs := testBackends(nil, 1)
	pk := p.Build(allAvailable(bs))
	expectPick(t, pk, sessionRequest("s"), bs[0], StickyNew)
	if n := p.StoreErrors(); n != 1 {
		t.Errorf("StoreErrors = %d after a lookup timed out, want 1", n)
	}
	const n = redisQueue + 4*redisBatch
	lines := make([]string, n)
	for i := range lines {
		lines[i] = fmt.Sprintf("JSESSIONID=s%d", i)
	}
	for _, l := range lines {
		learn(t, pk, bs[0], l)
	}
	// The writer takes a batch per timeout, far fewer than learned.
	if e := p.StoreErrors(); e < n-redisQueue-3*redisBatch {
		t.Errorf("StoreErrors = %d after %d writes to a stuck Redis, want the overflow counted", e, n)
	}
	if err := p.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if e := p.StoreErrors(); e != n+1 {
		t.Errorf("StoreErrors = %d after Close, want every write and the lookup: %d", e, n+1)
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
	if unused.(*learnPolicy).store.conn.Load() != nil {
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
