package demoapp

import (
	"context"
	"errors"
	"fmt"

	lru "github.com/hashicorp/golang-lru/v2"
)

// DefaultCacheSize is the number of sessions a CachedRedisStore keeps near
// when NewCachedRedisStore is given 0.
const DefaultCacheSize = 10_000

// CachedRedisStore keeps sessions in Redis, like RedisStore, and a copy of
// the ones this backend served recently in a near-cache in its memory, so
// that a request it can serve from the copy pays no load (Options.Work).
//
// A copy can be stale: without sticky routing, another backend may have
// changed the session since this one cached it, and serving the copy would
// hand the client an old cart. So every request first reads the session's
// version from Redis (one round trip with a reply of a few bytes) and uses
// the copy only if the versions match; otherwise it loads the whole session
// (a second round trip, and a load). Writes go to Redis and then to the
// near-cache. The version check is why a near-cache does not remove the
// round trip per request, only the load: how often it saves the load is the
// hit rate, which depends on how sticky the routing is.
type CachedRedisStore struct {
	redisSessions
	near *lru.Cache[string, Session] // by session id; Version is the one read from Redis
}

// NewCachedRedisStore returns a store on the Redis server at addr
// (host:port) with a near-cache of size sessions (0 or less means
// DefaultCacheSize). It connects lazily, like NewRedisStore.
func NewCachedRedisStore(addr string, size int) *CachedRedisStore {
	if size <= 0 {
		size = DefaultCacheSize
	}
	// lru.New fails only for a size below 1, ruled out above.
	near, _ := lru.New[string, Session](size)
	return &CachedRedisStore{redisSessions: newRedisSessions(addr), near: near}
}

// Cookie returns SessionCookie.
func (*CachedRedisStore) Cookie() string { return SessionCookie }

// New stores an empty session of user under a fresh id, in Redis (one round
// trip) and then in the near-cache.
func (c *CachedRedisStore) New(ctx context.Context, user string) (string, error) {
	id := newSessionID()
	if err := c.put(ctx, id, Session{User: user}, true); err != nil {
		return "", err
	}
	return id, nil
}

// Load returns the near-cache's copy of the session id names if Redis holds
// the same version (one round trip: a hit), and otherwise the session read
// from Redis (one more round trip and a load: a miss). A session this
// backend has no copy of is a miss at the cost of the read alone.
func (c *CachedRedisStore) Load(ctx context.Context, id string) (Session, error) {
	if !validSessionID(id) {
		return Session{}, fmt.Errorf("cached redis store: session %q: %w", id, ErrNoSession)
	}
	u := usageOf(ctx)
	if cached, ok := c.near.Get(id); ok {
		ver, err := c.version(ctx, id)
		if errors.Is(err, ErrNoSession) {
			// Expired in Redis, or Redis lost it: the copy must not outlive it.
			c.near.Remove(id)
		}
		if err != nil {
			return Session{}, err
		}
		if ver == cached.Version {
			u.setCache(true)
			return cached.clone(), nil
		}
	}
	u.setCache(false)
	s, err := c.read(ctx, id)
	if err != nil {
		return Session{}, err
	}
	u.addLoad()
	c.near.Add(id, s.clone())
	return s, nil
}

// Save writes s to Redis (one round trip) and then, with the version Redis
// gave it, to the near-cache. A session that has vanished from Redis since
// it was loaded stays lost: ErrNoSession.
func (c *CachedRedisStore) Save(ctx context.Context, id string, s Session) (string, error) {
	if err := c.put(ctx, id, s, false); err != nil {
		return "", err
	}
	return id, nil
}

// put writes s through to Redis and the near-cache.
func (c *CachedRedisStore) put(ctx context.Context, id string, s Session, fresh bool) error {
	ver, err := c.write(ctx, id, s, fresh)
	if err != nil {
		// What Redis holds now is unknown; the next Load must not trust the copy.
		c.near.Remove(id)
		return err
	}
	s = s.clone()
	s.Version = ver
	c.near.Add(id, s)
	return nil
}

// Revoke deletes the session id names from Redis (one round trip) and from
// the near-cache. Other backends' copies are not trusted without Redis's
// version, which is gone with the session.
func (c *CachedRedisStore) Revoke(ctx context.Context, id string) error {
	c.near.Remove(id)
	return c.remove(ctx, id)
}

// Held reports the sessions in the near-cache.
func (c *CachedRedisStore) Held() int { return c.near.Len() }
