package demoapp

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// answerBound is how long a request may take while its store is down or
// stuck: a few RedisTimeout, far from a hang. A client that waits longer
// fails the test.
const answerBound = 10 * RedisTimeout

// When Redis stops, requests fail fast with store_unavailable instead of
// hanging; when it is back, the shop serves again. Redis restarts empty, so
// the sessions it held are lost.
func TestRedisDownAndBack(t *testing.T) {
	for _, kind := range []string{"redis", "cached-redis"} {
		t.Run(kind, func(t *testing.T) {
			f := newFixture(t, kind)
			core, logs := observer.New(zap.InfoLevel)
			b := startApp(t, "web-1", Options{Store: f.store(t), Log: zap.New(core)})
			s := newShopper(t, "alice")
			s.c.Timeout = answerBound
			s.login(b.url).want(t, "login", http.StatusOK, "")
			s.add(b.url, 0, "x").want(t, "add", http.StatusOK, "1")

			f.redis.Stop()
			r := s.cart(b.url, 1)
			r.wantError(t, "cart with Redis down", http.StatusServiceUnavailable, CodeStoreUnavailable)
			if r.ops != 1 {
				t.Errorf("cart with Redis down: %d store ops, want 1: no retries", r.ops)
			}
			s.add(b.url, 1, "y").wantError(t, "add with Redis down", http.StatusServiceUnavailable, CodeStoreUnavailable)
			newShopper(t, "bob").login(b.url).wantError(t, "login with Redis down", http.StatusServiceUnavailable, CodeStoreUnavailable)

			f.redis.Start()
			var back shopReply
			eventually(t, "the shop to serve again once Redis is back", func() bool {
				back = s.cart(b.url, 1)
				return back.status != http.StatusServiceUnavailable
			})
			back.wantError(t, "cart after the restart", http.StatusConflict, CodeSessionLost)
			s.login(b.url).want(t, "login after the restart", http.StatusOK, "")
			s.add(b.url, 0, "z").want(t, "add after the restart", http.StatusOK, "1")
			wantMetrics(t, b.url, map[string]float64{
				`demoapp_session_errors_total{kind="store"}`: 3,
				`demoapp_session_errors_total{kind="lost"}`:  1,
			})
			// One line when the store failed, one when it came back: not
			// one per failed request.
			var lines []string
			for _, e := range logs.All() {
				lines = append(lines, e.Level.String()+" "+e.Message)
			}
			want := []string{"warn session store unavailable", "info session store available again"}
			if !slices.Equal(lines, want) {
				t.Errorf("logged %q, want %q", lines, want)
			}
		})
	}
}

// stuckRedis accepts connections and never answers, like a Redis that is
// frozen or behind a dead link.
func stuckRedis(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			// Reading keeps the client's writes from blocking: only the
			// answer is missing.
			wg.Go(func() { _, _ = io.Copy(io.Discard, c) })
		}
	})
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		for _, c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

func TestStuckRedisFailsFast(t *testing.T) {
	addr := stuckRedis(t)
	for _, kind := range []string{"redis", "cached-redis"} {
		t.Run(kind, func(t *testing.T) {
			var st Store
			if kind == "redis" {
				st = NewRedisStore(addr)
			} else {
				st = NewCachedRedisStore(addr, 0)
			}
			t.Cleanup(func() { _ = st.Close() })
			b := startApp(t, "web-1", Options{Store: st})
			s := newShopper(t, "alice")
			s.c.Timeout = answerBound
			s.login(b.url).wantError(t, "login", http.StatusServiceUnavailable, CodeStoreUnavailable)
			s.handle = &http.Cookie{Name: SessionCookie, Value: newSessionID()}
			s.cart(b.url, 0).wantError(t, "cart", http.StatusServiceUnavailable, CodeStoreUnavailable)
		})
	}
}

func TestRedisStoreErrors(t *testing.T) {
	f := newFixture(t, "redis")
	st := NewRedisStore(f.redis.Addr)
	t.Cleanup(func() { _ = st.Close() })
	ctx := context.Background()
	if err := st.Ping(ctx); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	for _, id := range []string{"", "made-up", newSessionID()} {
		if _, err := st.Load(ctx, id); !errors.Is(err, ErrNoSession) {
			t.Errorf("Load(%q) = %v, want %v", id, err, ErrNoSession)
		}
	}
	f.redis.Stop()
	if err := st.Ping(ctx); err == nil {
		t.Error("Ping succeeded with Redis stopped")
	}
	_, err := st.Load(ctx, newSessionID())
	if err == nil || errors.Is(err, ErrNoSession) {
		t.Errorf("Load with Redis stopped = %v, want a store error, not %v", err, ErrNoSession)
	}
}

// A session that expires in Redis is lost, also for a backend that still
// has a copy in its near-cache.
func TestNearCacheDropsExpiredSession(t *testing.T) {
	f := newFixture(t, "cached-redis")
	st := NewCachedRedisStore(f.redis.Addr, 0)
	t.Cleanup(func() { _ = st.Close() })
	ctx := context.Background()
	id, err := st.New(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	if st.Held() != 1 {
		t.Fatalf("Held() = %d after New, want 1", st.Held())
	}
	if err := st.client.Del(ctx, redisKey(id)).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Load(ctx, id); !errors.Is(err, ErrNoSession) {
		t.Errorf("Load of an expired session = %v, want %v", err, ErrNoSession)
	}
	if st.Held() != 0 {
		t.Errorf("Held() = %d, want 0: the copy must go with the session", st.Held())
	}
}

func TestRedisSessionTTL(t *testing.T) {
	f := newFixture(t, "redis")
	st := NewRedisStore(f.redis.Addr)
	t.Cleanup(func() { _ = st.Close() })
	ctx := context.Background()
	id, err := st.New(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	ttl, err := st.client.PTTL(ctx, redisKey(id)).Result()
	if err != nil {
		t.Fatal(err)
	}
	if ttl <= SessionTTL-time.Minute || ttl > SessionTTL {
		t.Errorf("TTL of a new session %v, want about %v", ttl, SessionTTL)
	}
}

// A session that Redis lost between a backend's load and its save stays
// lost: recreated, its versions would count from 1 again, and another
// backend's near-cache, still holding the old version 1, would serve that
// old copy as current.
func TestSaveNeverResurrects(t *testing.T) {
	f := newFixture(t, "cached-redis")
	ctx := context.Background()
	a := NewCachedRedisStore(f.redis.Addr, 0)
	b := NewCachedRedisStore(f.redis.Addr, 0)
	plain := NewRedisStore(f.redis.Addr)
	for _, st := range []Store{a, b, plain} {
		t.Cleanup(func() { _ = st.Close() })
	}
	id, err := a.New(ctx, "alice") // a caches version 1, an empty cart
	if err != nil {
		t.Fatal(err)
	}
	onB, err := b.Load(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	onPlain, err := plain.Load(ctx, id)
	if err != nil {
		t.Fatal(err)
	}

	f.redis.Stop()
	f.redis.Start() // empty

	onB.Items = append(onB.Items, "x")
	if _, err := b.Save(ctx, id, onB); !errors.Is(err, ErrNoSession) {
		t.Errorf("cached store: Save of a session Redis lost = %v, want %v", err, ErrNoSession)
	}
	if _, err := plain.Save(ctx, id, onPlain); !errors.Is(err, ErrNoSession) {
		t.Errorf("redis store: Save of a session Redis lost = %v, want %v", err, ErrNoSession)
	}
	if s, err := a.Load(ctx, id); !errors.Is(err, ErrNoSession) {
		t.Errorf("Load on the backend with the old copy = %+v, %v; want %v", s, err, ErrNoSession)
	}
	if n, err := plain.client.Exists(ctx, redisKey(id)).Result(); err != nil || n != 0 {
		t.Errorf("the session's key exists (%d, %v); want it gone", n, err)
	}
}
