package balancer

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// Bounds of the Redis writer.
const (
	// redisQueue is how many writes wait for the writer; more are dropped
	// (and counted) rather than slow down a response.
	redisQueue = 4096
	// redisBatch is the most writes sent in one pipeline.
	redisBatch = 256
	// redisBackoff is how long the store stops using Redis after a
	// failure, so that a Redis that is down costs a pick one timeout a
	// while, not one per request, and is dialled (and logged about by the
	// client library) about once a second.
	redisBackoff = time.Second
)

// redisStore shares a learn table between the replicas of the proxy: each
// session is a Redis string, key prefix+session, value the backend's ID,
// expiring with the entry. Writes go through a queue to one goroutine, in
// pipelines, so that a response never waits for Redis; lookups are made
// by picks, bounded by the timeout.
//
// Nothing is dialled nor started until the first use: config validation
// makes policies it never builds, and a pool that serves nothing holds no
// connection.
type redisStore struct {
	prefix  string
	expiry  time.Duration
	timeout time.Duration
	opts    *redis.UniversalOptions
	clock   func() int64 // monotonic nanoseconds, as the table's

	mu     sync.Mutex // serialises start and close
	conn   atomic.Pointer[redisConn]
	closed atomic.Bool
	// downUntil is the clock time before which Redis is not used: the
	// end of the backoff after the last failure.
	downUntil atomic.Int64
	errors    atomic.Uint64
}

// redisConn is the client and the writer goroutine, once started.
type redisConn struct {
	client redis.UniversalClient
	queue  chan storeOp
	stop   chan struct{} // closed by close
	done   chan struct{} // closed by the writer as it returns
}

// storeOp writes a session to Redis, or deletes it when id is empty.
type storeOp struct {
	sid, id string
}

// newRedisStore makes a store of the sessions under prefix, expiring
// expiry after their last write. o must have passed checkRedis.
func newRedisStore(o RedisOptions, prefix string, expiry time.Duration, clock func() int64) *redisStore {
	return &redisStore{
		prefix:  prefix,
		expiry:  expiry,
		timeout: o.Timeout,
		clock:   clock,
		opts: &redis.UniversalOptions{
			// One address is a server, several are seeds of a cluster.
			Addrs: o.Addrs,
			// RESP2 without client identification nor maintenance
			// notifications: a new connection costs one handshake.
			Protocol:                 2,
			DisableIdentity:          true,
			MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
			DialTimeout:              o.Timeout,
			ReadTimeout:              o.Timeout,
			WriteTimeout:             o.Timeout,
			PoolTimeout:              o.Timeout,
			ContextTimeoutEnabled:    true,
			// A lookup that fails falls back to the rotation at once:
			// a retry would double the wait of the pick.
			MaxRetries:    -1,
			DialerRetries: 1,
		},
	}
}

// use returns the connection, making it on first use; nil once closed.
func (s *redisStore) use() *redisConn {
	if c := s.conn.Load(); c != nil {
		return c
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed.Load() {
		return nil
	}
	if c := s.conn.Load(); c != nil {
		return c
	}
	c := &redisConn{
		client: redis.NewUniversalClient(s.opts),
		queue:  make(chan storeOp, redisQueue),
		stop:   make(chan struct{}),
		done:   make(chan struct{}),
	}
	go s.write(c)
	s.conn.Store(c)
	return c
}

// get returns the backend ID Redis holds for the session, waiting at most
// the timeout. Not found, a failure, and the backoff after a failure all
// answer false: the pick then places the client as a new one.
func (s *redisStore) get(ctx context.Context, sid string) (string, bool) {
	if s.closed.Load() || s.clock() < s.downUntil.Load() {
		return "", false
	}
	c := s.use()
	if c == nil {
		return "", false
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	id, err := c.client.Get(ctx, s.prefix+sid).Result()
	switch {
	case err == nil:
		return id, true
	case errors.Is(err, redis.Nil):
	case ctx.Err() != nil && !errors.Is(ctx.Err(), context.DeadlineExceeded):
		// The client left: not Redis's failure.
	default:
		s.errors.Add(1)
		s.downUntil.Store(s.clock() + int64(redisBackoff))
	}
	return "", false
}

// set queues a write of the session's backend ID.
func (s *redisStore) set(sid, id string) { s.enqueue(storeOp{sid: sid, id: id}) }

// del queues a delete of the session.
func (s *redisStore) del(sid string) { s.enqueue(storeOp{sid: sid}) }

// enqueue hands op to the writer without waiting: a full queue drops it.
// The strings are kept as they are, substrings of a request's or a
// response's header included: they are immutable, and copying them would
// cost an allocation on the request path.
func (s *redisStore) enqueue(op storeOp) {
	if s.closed.Load() {
		return
	}
	c := s.use()
	if c == nil {
		return
	}
	select {
	case c.queue <- op:
	default:
		s.errors.Add(1)
	}
}

// write sends the queued operations in pipelines until close, then sends
// what is left, all within one timeout, and returns.
func (s *redisStore) write(c *redisConn) {
	defer close(c.done)
	batch := make([]storeOp, 0, redisBatch)
	for {
		select {
		case <-c.stop:
			ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
			defer cancel()
			for {
				batch = drain(c.queue, batch[:0])
				if len(batch) == 0 {
					return
				}
				if ctx.Err() != nil {
					s.errors.Add(uint64(len(batch)))
					continue
				}
				s.flush(ctx, c.client, batch)
			}
		case op := <-c.queue:
			batch = drain(c.queue, append(batch[:0], op))
			ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
			s.flush(ctx, c.client, batch)
			cancel()
		}
	}
}

// drain appends queued operations to batch, without waiting, up to its
// capacity.
func drain(q <-chan storeOp, batch []storeOp) []storeOp {
	for len(batch) < cap(batch) {
		select {
		case op := <-q:
			batch = append(batch, op)
		default:
			return batch
		}
	}
	return batch
}

// flush sends batch as one pipeline within ctx, and counts the operations
// that failed. Within the backoff after a failure it sends nothing, and
// counts them all.
func (s *redisStore) flush(ctx context.Context, client redis.UniversalClient, batch []storeOp) {
	if s.clock() < s.downUntil.Load() {
		s.errors.Add(uint64(len(batch)))
		return
	}
	pipe := client.Pipeline()
	for _, op := range batch {
		if op.id == "" {
			pipe.Del(ctx, s.prefix+op.sid)
		} else {
			pipe.Set(ctx, s.prefix+op.sid, op.id, s.expiry)
		}
	}
	cmds, err := pipe.Exec(ctx)
	if err == nil {
		return
	}
	failed := 0
	for _, cmd := range cmds {
		if cmd.Err() != nil {
			failed++
		}
	}
	if len(cmds) == 0 {
		failed = len(batch)
	}
	s.errors.Add(uint64(failed))
	if failed == len(batch) {
		// Redis is down or unreachable, not refusing one command.
		s.downUntil.Store(s.clock() + int64(redisBackoff))
	}
}

// close stops the writer once it has sent what is queued, or what it could
// of that within the timeout, then closes the client. Later writes are
// dropped and lookups skipped.
func (s *redisStore) close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed.Swap(true) {
		return nil
	}
	c := s.conn.Load()
	if c == nil {
		return nil
	}
	close(c.stop)
	<-c.done
	return c.client.Close()
}
