package balancer

import (
	"context"
	"errors"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// Bounds of the Redis writer.
const (
	// redisQueue is how many writes wait for the writer; more are lost
	// (and counted) rather than slow down a response. While Redis does not
	// answer, the writer moves them to its backlog as they come.
	redisQueue = 4096
	// redisBatch is the most writes sent in one pipeline.
	redisBatch = 256
	// redisBacklog and redisBacklogBytes bound the writes held while Redis
	// does not answer, to be sent in order once it does: a minute of a
	// thousand new sessions a second, in megabytes whatever the length of
	// the session IDs (a client may send a long one to a logout). Past
	// either bound the oldest are lost: a later write of the same session
	// supersedes them anyway, and a lost one costs another replica a
	// lookup that misses, or a move it hears of at the next renewal.
	redisBacklog      = 1 << 16
	redisBacklogBytes = 32 << 20
)

// storeOp is a write to Redis.
type storeOp struct {
	kind opKind
	// failed is set once a send of the write failed, which counted it
	// among the store's errors: it counts once however often it is sent.
	failed  bool
	sid, id string
}

type opKind uint8

const (
	opSet   opKind = iota // the session is on backend id
	opMove                // as opSet, and tell the other replicas
	opTouch               // keep the session in Redis, on id unless it is elsewhere
	opDel                 // forget the session, and tell the other replicas
)

// set queues a write of the session's backend ID.
func (s *redisStore) set(sid, id string) { s.enqueue(storeOp{kind: opSet, sid: sid, id: id}) }

// move queues a write of the session's new backend ID, which the other
// replicas are told of.
func (s *redisStore) move(sid, id string) { s.enqueue(storeOp{kind: opMove, sid: sid, id: id}) }

// touch queues a renewal of the session, on backend id if Redis has lost
// it; if Redis holds another backend, adopt is told.
func (s *redisStore) touch(sid, id string) { s.enqueue(storeOp{kind: opTouch, sid: sid, id: id}) }

// del queues a delete of the session, which the other replicas are told
// of.
func (s *redisStore) del(sid string) { s.enqueue(storeOp{kind: opDel, sid: sid}) }

// enqueue hands op to the writer without waiting: a full queue loses it.
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
		s.lose(op)
	}
}

// lose counts a write that will never be sent: lost, and an error unless
// its failure counted already.
func (s *redisStore) lose(op storeOp) {
	if !op.failed {
		s.errors.Add(1)
	}
	s.lost.Add(1)
}

// writer is the state of the goroutine that sends the writes, from write.
type writer struct {
	s    *redisStore
	c    *redisConn
	held backlog
	// Of the current outage, for the line logged when it ends: whether
	// one is under way, the writes sent from the backlog, and the count
	// of lost writes when it began.
	outage   bool
	sent     int
	lostFrom uint64
	dropping bool // the backlog dropped writes in this outage; logged once
	refusing bool // Redis refused the last batch's writes; logged once a run
}

// write sends the queued writes in pipelines until close. Writes that fail
// because Redis does not answer are held, in order with those that follow,
// and sent again every redisBackoff until Redis answers; at close, what is
// held or queued is sent within one timeout, and what is not is lost.
func (s *redisStore) write(c *redisConn) {
	defer c.done.Done()
	w := &writer{s: s, c: c, held: backlog{maxOps: s.heldMax, maxBytes: s.heldMaxBytes}}
	batch := make([]storeOp, 0, redisBatch)
	var retry <-chan time.Time
	for {
		select {
		case <-c.stop:
			w.last()
			return
		case <-retry:
			retry = nil
			if !w.sendHeld(context.Background()) {
				retry = time.After(redisBackoff)
			}
		case op := <-c.queue:
			if w.held.len() > 0 {
				w.hold(op)
				w.holdQueued()
				continue
			}
			batch = drain(c.queue, append(batch[:0], op))
			ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
			again, refused, err := s.flush(ctx, c.client, batch)
			cancel()
			w.refused(refused, err)
			if len(again) == 0 {
				s.up()
				continue
			}
			// Redis did not answer: an outage begins.
			w.outage, w.sent, w.lostFrom, w.dropping = true, 0, s.lost.Load(), false
			s.down(err)
			for _, op := range again {
				w.hold(op)
			}
			retry = time.After(redisBackoff)
		}
	}
}

// hold adds op to the backlog, losing the oldest writes past its bounds.
func (w *writer) hold(op storeOp) {
	for _, lost := range w.held.push(op) {
		w.s.lose(lost)
		if !w.dropping {
			w.dropping = true
			w.s.logger().Warn("learn: too many writes held for Redis, losing the oldest",
				zap.Int("max", w.held.maxOps), zap.Int("max_bytes", w.held.maxBytes))
		}
	}
	w.s.heldN.Store(int64(w.held.len()))
}

// holdQueued moves what is queued to the backlog.
func (w *writer) holdQueued() {
	for {
		select {
		case op := <-w.c.queue:
			w.hold(op)
		default:
			return
		}
	}
}

// sendHeld sends the backlog, oldest first, a batch at a time, each within
// a timeout, until it is empty or Redis fails again, moving what is queued
// meanwhile behind it; it reports whether the backlog is empty. ctx bounds
// the whole.
func (w *writer) sendHeld(ctx context.Context) bool {
	s := w.s
	batch := make([]storeOp, 0, redisBatch)
	for w.held.len() > 0 {
		batch = append(batch[:0], w.held.front(redisBatch)...)
		bctx, cancel := context.WithTimeout(ctx, s.timeout)
		again, refused, err := s.flush(bctx, w.c.client, batch)
		cancel()
		w.refused(refused, err)
		w.held.replaceFront(len(batch), again)
		w.sent += len(batch) - len(again)
		w.holdQueued()
		if len(again) > 0 {
			s.down(err)
			return false
		}
	}
	w.s.heldN.Store(0)
	s.up()
	if w.outage {
		w.outage = false
		s.logger().Info("learn: writes held for Redis sent", zap.Int("sent", w.sent),
			zap.Uint64("lost", s.lost.Load()-w.lostFrom))
	}
	return true
}

// refused logs the first batch of a run of batches in which Redis refused
// n writes (answered them with an error): those are lost, as they would be
// refused again.
func (w *writer) refused(n int, err error) {
	if n > 0 && !w.refusing {
		w.s.logger().Warn("learn: Redis refused writes, lost", zap.Int("writes", n), zap.Error(err))
	}
	w.refusing = n > 0
}

// last sends, at close, what is held and queued within one timeout, and
// counts and logs what it could not send as lost.
func (w *writer) last() {
	w.holdQueued()
	ctx, cancel := context.WithTimeout(context.Background(), w.s.timeout)
	defer cancel()
	if w.held.len() == 0 || w.sendHeld(ctx) {
		return
	}
	n := w.held.len()
	for _, op := range w.held.front(n) {
		w.s.lose(op)
	}
	w.held.replaceFront(n, nil)
	w.s.heldN.Store(0)
	w.s.logger().Warn("learn: writes held for Redis lost at close", zap.Int("lost", n))
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

// flush sends batch as one pipeline within ctx, and tells adopt of the
// sessions a renewal found elsewhere. It returns the writes to send again:
// those that failed for want of an answer (all of them when Redis did not
// answer any), each counted as an error the first time; how many Redis
// refused while it answered others, which are lost; and the error.
func (s *redisStore) flush(ctx context.Context, client redis.UniversalClient, batch []storeOp) (again []storeOp, refused int, err error) {
	pipe := client.Pipeline()
	first := make([]redis.Cmder, len(batch))     // by op: its first command
	held := make([]*redis.StringCmd, len(batch)) // by op: what Redis holds after a touch
	for i, op := range batch {
		key := s.prefix + op.sid
		switch op.kind {
		case opSet:
			first[i] = pipe.Set(ctx, key, op.id, s.expiry)
		case opMove:
			first[i] = pipe.Set(ctx, key, op.id, s.expiry)
			pipe.Publish(ctx, s.channel(), moveMessage(op.sid, op.id))
		case opTouch:
			// Written only if Redis lost it (a restart, an eviction);
			// renewed either way, and read back.
			first[i] = pipe.SetNX(ctx, key, op.id, s.expiry)
			pipe.PExpire(ctx, key, s.expiry)
			held[i] = pipe.Get(ctx, key)
		case opDel:
			first[i] = pipe.Del(ctx, key)
			pipe.Publish(ctx, s.channel(), moveMessage(op.sid, ""))
		}
	}
	_, err = pipe.Exec(ctx)
	for i, op := range batch {
		if c := held[i]; c != nil && c.Err() == nil && c.Val() != op.id && c.Val() != "" {
			s.adopt(op.sid, c.Val())
		}
	}
	if err == nil || errors.Is(err, redis.Nil) {
		return nil, 0, nil
	}
	failed := 0
	for _, c := range first {
		if c.Err() != nil {
			failed++
		}
	}
	// Redis answered some writes and not others; when it answered none,
	// or the pipeline failed with no write's error (no command ran), it
	// did not answer at all, and every write is sent again.
	answered := failed > 0 && failed < len(batch)
	for i, op := range batch {
		cerr := first[i].Err()
		if answered && (cerr == nil || isRefusal(cerr)) {
			if cerr != nil {
				s.lose(op)
				refused++
			}
			continue
		}
		if !op.failed {
			op.failed = true
			s.errors.Add(1)
		}
		again = append(again, op)
	}
	return again, refused, err
}

// isRefusal reports whether err is Redis's answer to a command, rather
// than a failure to get one.
func isRefusal(err error) bool {
	var re redis.Error
	return errors.As(err, &re)
}

// backlog holds writes, oldest first, within bounds of count and of the
// bytes of their session IDs.
type backlog struct {
	ops              []storeOp // held from ops[head:]
	head             int
	bytes            int
	maxOps, maxBytes int
}

func (b *backlog) len() int { return len(b.ops) - b.head }

// push appends op and returns the oldest writes it drops to stay within
// the bounds (op itself, if it alone is past them).
func (b *backlog) push(op storeOp) (dropped []storeOp) {
	b.ops = append(b.ops, op)
	b.bytes += len(op.sid)
	for b.len() > 0 && (b.len() > b.maxOps || b.bytes > b.maxBytes) {
		dropped = append(dropped, b.ops[b.head])
		b.pop(1)
	}
	return dropped
}

// front returns the oldest n writes, or all of them when fewer are held,
// valid until the backlog changes.
func (b *backlog) front(n int) []storeOp { return b.ops[b.head : b.head+min(n, b.len())] }

// pop forgets the oldest n writes.
func (b *backlog) pop(n int) {
	for i := b.head; i < b.head+n; i++ {
		b.bytes -= len(b.ops[i].sid)
		b.ops[i] = storeOp{} // nothing of it stays reachable
	}
	b.head += n
	if b.head == len(b.ops) {
		b.ops, b.head = b.ops[:0], 0
	} else if b.head > cap(b.ops)/2 {
		n := copy(b.ops, b.ops[b.head:])
		clear(b.ops[n:])
		b.ops, b.head = b.ops[:n], 0
	}
}

// replaceFront forgets the oldest n writes and puts ops, at most n, in
// their place, oldest first.
func (b *backlog) replaceFront(n int, ops []storeOp) {
	b.pop(n)
	if len(ops) == 0 {
		return
	}
	if b.head < len(ops) {
		b.ops = append(ops[:len(ops):len(ops)], b.ops[b.head:]...)
		b.head = 0
	} else {
		b.head -= len(ops)
		copy(b.ops[b.head:], ops)
	}
	for _, op := range ops {
		b.bytes += len(op.sid)
	}
}
