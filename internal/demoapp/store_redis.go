package demoapp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// RedisTimeout bounds each step of a Redis round trip: dialing, writing,
// reading, and waiting for a pooled connection. Redis on a LAN answers in
// well under a millisecond, so a store that takes longer is down or stuck,
// and the shop answers store_unavailable quickly instead of piling requests
// up behind it.
const RedisTimeout = 200 * time.Millisecond

// Every session is one Redis hash, so that its version and its data share a
// key and a TTL and are written together. writeScript spells the fields out
// too.
const (
	redisKeyPrefix = "shop:sess:"
	fieldVersion   = "ver"  // bumped by HINCRBY on every save
	fieldData      = "data" // the Session as JSON
)

// redisSessions reads and writes sessions in Redis; RedisStore and
// CachedRedisStore share it, and with it one layout. Each of its reads and
// writes is one command, sent once (no retries): one round trip, which it records in the request's usage. The handshake of a
// new connection is not counted: it is the pool's cost, paid once per
// connection, not the design's, paid per request.
type redisSessions struct {
	client *redis.Client
}

// newRedisSessions returns a client of the Redis server at addr (host:port).
// It connects lazily, on the first command.
func newRedisSessions(addr string) redisSessions {
	c := redis.NewClient(&redis.Options{
		Addr: addr,
		// RESP2 without client identification nor maintenance notifications:
		// a new connection costs one handshake command (HELLO), no more.
		Protocol:                 2,
		DisableIdentity:          true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
		DialTimeout:              RedisTimeout,
		ReadTimeout:              RedisTimeout,
		WriteTimeout:             RedisTimeout,
		PoolTimeout:              RedisTimeout,
		// A request fails at its first error. Retrying inside the request
		// would multiply the load on a store that is struggling and hide
		// from the experiment how often it fails.
		MaxRetries:    -1,
		DialerRetries: 1,
	})
	return redisSessions{client: c}
}

func redisKey(id string) string { return redisKeyPrefix + id }

// writeScript stores a session and returns its new version, or -1 when
// asked to update a session that no longer exists. KEYS[1] is the session's
// hash; ARGV: its data, its TTL in milliseconds, and "new" to create it.
//
// HINCRBY gives every save a version no other save of the session gets,
// even two saves racing from two backends, which is what lets a near-cache
// trust a version match. Refusing to update a vanished session keeps that
// true across a Redis restart or an expiry: recreated, the session would
// count its versions from 1 again, and a near-cache still holding the old
// version 1 would take it for current.
const writeScript = `
if ARGV[3] ~= 'new' and redis.call('EXISTS', KEYS[1]) == 0 then
	return -1
end
local v = redis.call('HINCRBY', KEYS[1], 'ver', 1)
redis.call('HSET', KEYS[1], 'data', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return v`

// write stores s under id, creating it if fresh, and returns its new
// version: one round trip. It sends the script itself (EVAL) rather than its
// digest, which would take a second round trip on every Redis that has not
// seen it yet, a restarted one included.
func (r redisSessions) write(ctx context.Context, id string, s Session, fresh bool) (int64, error) {
	data, err := json.Marshal(s)
	if err != nil {
		return 0, fmt.Errorf("redis store: encode session %q: %w", id, err)
	}
	mode := "update"
	if fresh {
		mode = "new"
	}
	usageOf(ctx).addOp()
	ver, err := r.client.Eval(ctx, writeScript, []string{redisKey(id)}, data, SessionTTL.Milliseconds(), mode).Int64()
	if err != nil {
		return 0, fmt.Errorf("redis store: save session %q: %w", id, err)
	}
	if ver < 0 {
		return 0, fmt.Errorf("redis store: save session %q: %w", id, ErrNoSession)
	}
	return ver, nil
}

// read loads the session id names, with its version, in one round trip.
func (r redisSessions) read(ctx context.Context, id string) (Session, error) {
	usageOf(ctx).addOp()
	vals, err := r.client.HMGet(ctx, redisKey(id), fieldVersion, fieldData).Result()
	if err != nil {
		return Session{}, fmt.Errorf("redis store: load session %q: %w", id, err)
	}
	ver, _ := vals[0].(string)
	data, _ := vals[1].(string)
	if ver == "" || data == "" {
		return Session{}, fmt.Errorf("redis store: session %q: %w", id, ErrNoSession)
	}
	var s Session
	if err := json.Unmarshal([]byte(data), &s); err != nil {
		return Session{}, fmt.Errorf("redis store: decode session %q: %w", id, err)
	}
	if s.Version, err = strconv.ParseInt(ver, 10, 64); err != nil {
		return Session{}, fmt.Errorf("redis store: version of session %q: %w", id, err)
	}
	return s, nil
}

// version reads only the version of the session id names: one round trip
// with a reply of a few bytes, whatever the size of the session.
func (r redisSessions) version(ctx context.Context, id string) (int64, error) {
	usageOf(ctx).addOp()
	v, err := r.client.HGet(ctx, redisKey(id), fieldVersion).Int64()
	if errors.Is(err, redis.Nil) {
		return 0, fmt.Errorf("redis store: session %q: %w", id, ErrNoSession)
	}
	if err != nil {
		return 0, fmt.Errorf("redis store: version of session %q: %w", id, err)
	}
	return v, nil
}

// remove deletes the session id names: one round trip.
func (r redisSessions) remove(ctx context.Context, id string) error {
	if !validSessionID(id) {
		return nil
	}
	usageOf(ctx).addOp()
	if err := r.client.Del(ctx, redisKey(id)).Err(); err != nil {
		return fmt.Errorf("redis store: delete session %q: %w", id, err)
	}
	return nil
}

// Ping checks that Redis answers, for a startup report.
func (r redisSessions) Ping(ctx context.Context) error {
	if err := r.client.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("redis store: ping %s: %w", r.client.Options().Addr, err)
	}
	return nil
}

// Close closes the connections to Redis.
func (r redisSessions) Close() error {
	if err := r.client.Close(); err != nil {
		return fmt.Errorf("redis store: close: %w", err)
	}
	return nil
}

// RedisStore keeps sessions in Redis only, under shop:sess:<id> with a TTL
// of SessionTTL: any backend can serve any request, and every request pays a
// round trip and a load (Options.Work) for it.
type RedisStore struct {
	redisSessions
}

// NewRedisStore returns a store on the Redis server at addr (host:port). It
// connects lazily: a Redis that is down fails requests, not the start.
func NewRedisStore(addr string) *RedisStore {
	return &RedisStore{redisSessions: newRedisSessions(addr)}
}

// Cookie returns SessionCookie.
func (*RedisStore) Cookie() string { return SessionCookie }

// New stores an empty session of user under a fresh id: one round trip.
func (s *RedisStore) New(ctx context.Context, user string) (string, error) {
	id := newSessionID()
	if _, err := s.write(ctx, id, Session{User: user}, true); err != nil {
		return "", err
	}
	return id, nil
}

// Load reads the session id names: one round trip, and one load.
func (s *RedisStore) Load(ctx context.Context, id string) (Session, error) {
	if !validSessionID(id) {
		return Session{}, fmt.Errorf("redis store: session %q: %w", id, ErrNoSession)
	}
	sess, err := s.read(ctx, id)
	if err == nil {
		usageOf(ctx).addLoad()
	}
	return sess, err
}

// Save writes sess under id: one round trip. A session that has vanished
// since it was loaded (expired, or Redis restarted) stays lost: ErrNoSession.
func (s *RedisStore) Save(ctx context.Context, id string, sess Session) (string, error) {
	if _, err := s.write(ctx, id, sess, false); err != nil {
		return "", err
	}
	return id, nil
}

// Revoke deletes the session id names from Redis: one round trip.
func (s *RedisStore) Revoke(ctx context.Context, id string) error { return s.remove(ctx, id) }

// Held reports 0: no session stays in this process.
func (*RedisStore) Held() int { return 0 }
