package balancer

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
	"go.uber.org/zap"
)

// redisBackoff is how long the store stops using Redis after a failure, so
// that a Redis that is down costs a pick one timeout a while, not one per
// request, and is dialled (and logged about by the client library) about
// once a second; and how often the writer tries again to send the writes
// it holds.
const redisBackoff = time.Second

// redisStore shares a learn table between the replicas of the proxy: each
// session is a Redis string, key prefix:session, value the backend's ID,
// expiring with the entry. Writes go through a queue to one goroutine, in
// pipelines, so that a response never waits for Redis; lookups are made
// by picks, bounded by the timeout.
//
// A session moved to another backend, or forgotten (a logout), is also
// published on the channel named prefix, which every replica's store
// listens to, so that a replica holding the session in its memory table
// follows at once rather than when its entry is next read from Redis (a
// forgotten one would never be: the replica would keep routing it). A
// replica renewing an entry in use does not overwrite Redis: it keeps what
// Redis holds, and takes it if it differs (see touch), so that a move whose
// message it missed reaches it within the entry's renewal time.
//
// While Redis does not answer (down, unreachable, stalled), lookups skip
// it for a backoff after each failure, and the writer holds the writes, in
// order and within bounds, and sends them once it answers (see write). The
// start and the end of such an outage are logged, and what is lost, by
// the bounds or at close, is counted and logged.
//
// Nothing is dialled nor started until the first use: config validation
// makes policies it never builds, and a pool that serves nothing holds no
// connection.
type redisStore struct {
	prefix  string // of the keys, with a colon; without, the channel of moves
	expiry  time.Duration
	timeout time.Duration
	opts    *redis.UniversalOptions
	clock   func() int64 // monotonic nanoseconds, as the table's
	// adopt is told of a session that Redis or another replica says is
	// on the backend with ID id, or, with an empty id, forgotten.
	adopt func(sid, id string)

	mu     sync.Mutex // serialises start and close
	conn   atomic.Pointer[redisConn]
	closed atomic.Bool
	// downUntil is the clock time before which lookups do not use
	// Redis: the end of the backoff after the last failure.
	downUntil atomic.Int64
	// outage is set from a failure to the next success, so that each is
	// logged once.
	outage atomic.Bool
	log    atomic.Pointer[zap.Logger] // nil: logs nothing
	// errors counts failed lookups, and writes that failed to be sent,
	// once each; lost counts the writes never sent; heldN is how many
	// the writer holds for Redis now.
	errors, lost atomic.Uint64
	heldN        atomic.Int64
	// The writer's bounds (redisBacklog, redisBacklogBytes; tests lower
	// them).
	heldMax, heldMaxBytes int
}

// redisConn is the client and the goroutines of the store, once started.
type redisConn struct {
	client redis.UniversalClient
	moves  *redis.PubSub // the channel of moves, subscribed by listen
	ready  chan struct{} // closed once listen is first subscribed
	queue  chan storeOp
	stop   chan struct{}  // closed by close
	done   sync.WaitGroup // the writer and the listener
}

// redisOptions checks o and turns it into go-redis's options, for a
// single server, a Cluster (two or more addresses), or a Sentinel's
// master.
func redisOptions(o RedisOptions) (*redis.UniversalOptions, error) {
	addrs := o.Addrs
	if sn := o.Sentinel; sn != nil {
		switch {
		case len(addrs) > 0:
			return nil, errors.New("with sentinel, the addresses are the sentinels', in sentinel.addrs")
		case sn.Master == "":
			return nil, errors.New("sentinel: no master name")
		case sn.Username != "" && sn.Password == "":
			return nil, errors.New("sentinel: a username needs a password")
		}
		addrs = sn.Addrs
	}
	if len(addrs) == 0 {
		return nil, errors.New("no addresses")
	}
	for _, a := range addrs {
		host, port, err := net.SplitHostPort(a)
		if err != nil || host == "" {
			return nil, fmt.Errorf("address %q is not host:port", a)
		}
		if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
			return nil, fmt.Errorf("address %q: port must be from 1 to 65535", a)
		}
	}
	switch {
	case o.Timeout <= 0:
		return nil, fmt.Errorf("timeout %v must be positive", o.Timeout)
	case o.Username != "" && o.Password == "":
		return nil, errors.New("a username needs a password")
	case o.DB < 0:
		return nil, fmt.Errorf("db %d must not be negative", o.DB)
	case o.DB != 0 && o.Sentinel == nil && len(addrs) > 1:
		return nil, fmt.Errorf("db %d: a Redis Cluster has database 0 only", o.DB)
	}
	u := &redis.UniversalOptions{
		// One address is a server, several are seeds of a cluster; with
		// a master name, they are sentinels.
		Addrs:    addrs,
		Username: o.Username,
		Password: o.Password,
		DB:       o.DB,
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
	}
	if sn := o.Sentinel; sn != nil {
		u.MasterName, u.SentinelUsername, u.SentinelPassword = sn.Master, sn.Username, sn.Password
	}
	if o.TLS != nil {
		tc, err := redisTLS(o.TLS)
		if err != nil {
			return nil, fmt.Errorf("tls: %w", err)
		}
		u.TLSConfig = tc
	}
	return u, nil
}

// redisTLS returns the client TLS config of t.
func redisTLS(t *RedisTLS) (*tls.Config, error) {
	tc := &tls.Config{ServerName: t.ServerName, MinVersion: tls.VersionTLS12}
	if len(t.CA) > 0 {
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(t.CA) {
			return nil, errors.New("ca: no PEM certificate found")
		}
		tc.RootCAs = roots
	}
	if len(t.Cert) > 0 || len(t.Key) > 0 {
		cert, err := tls.X509KeyPair(t.Cert, t.Key)
		if err != nil {
			return nil, fmt.Errorf("cert and key: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// newRedisStore makes a store of the sessions under prefix, expiring
// expiry after their last write, that tells adopt of the sessions moved by
// other replicas.
func newRedisStore(opts *redis.UniversalOptions, prefix string, expiry time.Duration, clock func() int64, adopt func(sid, id string)) *redisStore {
	return &redisStore{
		prefix:  prefix + ":",
		expiry:  expiry,
		timeout: opts.ReadTimeout,
		opts:    opts,
		clock:   clock,
		adopt:   adopt,

		heldMax:      redisBacklog,
		heldMaxBytes: redisBacklogBytes,
	}
}

// logger returns the logger set by the store's owner, or one that logs
// nothing.
func (s *redisStore) logger() *zap.Logger {
	if l := s.log.Load(); l != nil {
		return l
	}
	return zap.NewNop()
}

// down starts the backoff, and logs the start of an outage.
func (s *redisStore) down(err error) {
	s.downUntil.Store(s.clock() + int64(redisBackoff))
	if s.outage.CompareAndSwap(false, true) {
		s.logger().Warn("learn: Redis unavailable; lookups fall back to the rotation, writes are held", zap.Error(err))
	}
}

// up logs the end of an outage, if one was under way.
func (s *redisStore) up() {
	if s.outage.Load() && s.outage.CompareAndSwap(true, false) {
		s.logger().Info("learn: Redis available again")
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
		ready:  make(chan struct{}),
	}
	// No channel yet: Subscribe would dial here, on the request path.
	c.moves = c.client.Subscribe(context.Background())
	c.done.Add(2)
	go s.write(c)
	go s.listen(c)
	s.conn.Store(c)
	return c
}

// listening starts the store, if it has not started, and waits until it
// listens to the channel of moves, its timeout at most; it reports whether
// it does.
func (s *redisStore) listening() bool {
	c := s.use()
	if c == nil {
		return false
	}
	t := time.NewTimer(s.timeout)
	defer t.Stop()
	select {
	case <-c.ready:
		return true
	case <-t.C:
		return false
	}
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
		s.up()
		return id, true
	case errors.Is(err, redis.Nil):
		s.up()
	case ctx.Err() != nil && !errors.Is(ctx.Err(), context.DeadlineExceeded):
		// The client left: not Redis's failure.
	default:
		s.errors.Add(1)
		s.down(err)
	}
	return "", false
}

// channel is where moves and deletes are published.
func (s *redisStore) channel() string { return strings.TrimSuffix(s.prefix, ":") }

// moveMessage encodes a move for the channel: the length of the backend ID,
// a colon, the ID, then the session ID, which may hold any byte. An empty
// ID says the session was forgotten; replicas of earlier versions, which
// took only IDs of one byte or more, ignore it.
func moveMessage(sid, id string) string { return strconv.Itoa(len(id)) + ":" + id + sid }

// parseMove decodes a moveMessage.
func parseMove(msg string) (sid, id string, ok bool) {
	n, rest, found := strings.Cut(msg, ":")
	l, err := strconv.Atoi(n)
	if !found || err != nil || l < 0 || l >= len(rest) || (l == 0 && n != "0") {
		return "", "", false
	}
	return rest[l:], rest[:l], true
}

// listen subscribes to the channel of moves and tells adopt of each (and of
// each delete), until
// close. A subscription that breaks (Redis restarted, failed over, or is
// down) is made again, once per backoff at most; moves published meanwhile
// are missed, and reach this replica by its renewals instead (touch).
func (s *redisStore) listen(c *redisConn) {
	defer c.done.Done()
	subscribed, confirmed := false, false
	for {
		var err error
		if !subscribed {
			ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
			err = c.moves.Subscribe(ctx, s.channel())
			cancel()
			subscribed = err == nil
		}
		if err == nil {
			// The client reconnects and subscribes again itself when
			// a receive finds the connection broken.
			var msg any
			msg, err = c.moves.Receive(context.Background())
			switch m := msg.(type) {
			case *redis.Message:
				if sid, id, ok := parseMove(m.Payload); ok {
					s.adopt(sid, id)
				}
			case *redis.Subscription:
				if !confirmed {
					confirmed = true
					close(c.ready)
				}
			}
		}
		if err == nil {
			continue
		}
		select {
		case <-c.stop:
			return
		case <-time.After(redisBackoff):
		}
	}
}

// close stops the writer once it has sent what is queued, or what it could
// of that within the timeout, and the listener, then closes the client.
// Later writes are dropped and lookups skipped.
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
	// Ends a receive in progress; the listener then sees stop.
	err := c.moves.Close()
	c.done.Wait()
	return errors.Join(err, c.client.Close())
}
