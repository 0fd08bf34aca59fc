package proxy

import (
	"context"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/affinityproxy/affinity/balancer"
	"github.com/affinityproxy/affinity/config"
)

// Draining.
//
// A backend that is draining, in maintenance or removed by a reload takes
// no new client, but what it serves goes on: requests in flight, upgraded
// connections (WebSocket) and streamed responses (server-sent events),
// which may never end by themselves. drain_timeout bounds them: a drainer
// goroutine looks every tick at what each client connection is being
// served by, and closes a connection still served by such a backend
// drain_timeout after the backend left the ready state, or after the
// request began, whichever is later.
//
// The request path only publishes, per client connection, the backend of
// the request in progress (client.begin and end: two atomic stores and an
// atomic add, on a cache line of the connection's own), and, for a response
// that may last, its kind (client.lasts). Everything else is the drainer's,
// off the request path.
//
// The drainer knows a backend by its stats, not by its *balancer.Backend: a
// reload that changes a backend's weight gives it a new Backend sharing the
// old one's stats (Backend.Reweighted), and the requests that began before
// still hold the old one.

// client is one client connection of HTTP/1 (its requests come one at a
// time), or one request of its own (HTTP/2, or a request handed to
// ServeHTTP by another server): what the drainer needs to find what a
// backend still serves, and to close it.
type client struct {
	// conn is the HTTP/1 connection. Closing it ends the request in
	// progress: net/http cancels the request's context, which aborts the
	// backend's request, or the copying of an upgraded connection.
	conn net.Conn
	// cancel cancels the context of a request of its own; nil with conn.
	cancel context.CancelFunc
	// backend is the backend serving the request in progress; nil
	// between requests.
	backend atomic.Pointer[balancer.Backend]
	// seq counts the requests begun, so that the drainer tells a request
	// it has seen from the next one on the same connection.
	seq atomic.Uint64
	// long is the seq of the latest request whose response may last,
	// shifted left by two, ORed with the response's longKind; written
	// only for such responses, so that the common path pays nothing.
	long atomic.Uint64
	// cut is set when the drainer closed the client: the request it ends
	// is no client's abort.
	cut atomic.Bool
}

// begin records that a request of the client is being served by b.
func (c *client) begin(b *balancer.Backend) {
	c.seq.Add(1)
	c.backend.Store(b)
}

// moved records that a retry moved the request to b.
func (c *client) moved(b *balancer.Backend) { c.backend.Store(b) }

// lasts records that the response to the client's request in progress
// is of kind k, which may last.
func (c *client) lasts(k longKind) { c.long.Store(c.seq.Load()<<2 | uint64(k)) }

// kindOf returns the kind of the response to the client's request seq, as
// lasts recorded it; notLong when it did not.
func (c *client) kindOf(seq uint64) longKind {
	if v := c.long.Load(); v>>2 == seq {
		return longKind(v & 3)
	}
	return notLong
}

// end records that the client's request is done.
func (c *client) end() { c.backend.Store(nil) }

// close ends the client's request in progress, and its connection.
func (c *client) close() {
	c.cut.Store(true)
	if c.conn != nil {
		_ = c.conn.Close()
		return
	}
	c.cancel()
}

// clientSet holds clients that the drainer finds besides the HTTP/1
// connections of the listeners (binding.conns): the requests of their own,
// and the connections of upgrade requests, which http.Server forgets once
// hijacked. Shutdown waits for the latter, which http.Server.Shutdown does
// not. Only those requests use it, so its mutex is never on the common
// path.
type clientSet struct {
	mu   sync.Mutex
	set  map[*client]struct{}
	idle chan struct{} // closed when set empties; nil until someone waits
}

func (t *clientSet) add(c *client) {
	t.mu.Lock()
	if t.set == nil {
		t.set = make(map[*client]struct{})
	}
	t.set[c] = struct{}{}
	t.mu.Unlock()
}

func (t *clientSet) remove(c *client) {
	t.mu.Lock()
	delete(t.set, c)
	if len(t.set) == 0 && t.idle != nil {
		close(t.idle)
		t.idle = nil
	}
	t.mu.Unlock()
}

// each calls f with every client of the set, under its lock.
func (t *clientSet) each(f func(*client)) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for c := range t.set {
		f(c)
	}
}

// wait returns when the set is empty, or with ctx's error.
func (t *clientSet) wait(ctx context.Context) error {
	t.mu.Lock()
	if len(t.set) == 0 {
		t.mu.Unlock()
		return nil
	}
	if t.idle == nil {
		t.idle = make(chan struct{})
	}
	idle := t.idle
	t.mu.Unlock()
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// eachClient calls f with every client the server is serving, or has
// served and keeps open: the connections of the listeners accepting now,
// and those of clientSets. A client may be seen twice.
func (s *Server) eachClient(f func(*client)) {
	s.lnMu.Lock()
	for _, b := range s.bindings {
		b.mu.Lock()
		for bc := range b.conns {
			if bc.client != nil {
				f(bc.client)
			}
		}
		b.mu.Unlock()
	}
	s.lnMu.Unlock()
	s.tunnels.each(f)
	s.detached.each(f)
}

// removedBackend is a backend a reload took out of a pool while requests still ran
// on it. It is shown, as removed, until the last of them ends.
type removedBackend struct {
	pool    string
	backend *balancer.Backend
	since   time.Time // when the reload removed it
	// left is when it left the ready state: since, or earlier when it
	// was draining or in maintenance then, which drain_timeout counts
	// from.
	left time.Time
}

// leaving lists the removed backends still serving.
type leaving struct {
	mu   sync.Mutex
	list []removedBackend
}

func (l *leaving) add(r removedBackend) {
	l.mu.Lock()
	l.list = append(l.list, r)
	l.mu.Unlock()
}

// drop forgets the removed backend of pool that b, added back by a reload,
// counts the requests of.
func (l *leaving) drop(pool string, b *balancer.Backend) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.list = slices.DeleteFunc(l.list, func(r removedBackend) bool {
		return r.pool == pool && r.backend.Stats == b.Stats
	})
}

// current drops the removed backends that serve nothing any more, and
// returns those left.
func (l *leaving) current() []removedBackend {
	l.mu.Lock()
	defer l.mu.Unlock()
	kept := l.list[:0]
	for _, r := range l.list {
		if r.backend.InFlight() > 0 {
			kept = append(kept, r)
		}
	}
	clear(l.list[len(kept):])
	l.list = kept
	return append([]removedBackend(nil), kept...)
}

// drainTick is the drainer's period: drain_timeout is kept to within it.
// Without a drain_timeout, the drainer only looks for one in a reloaded
// configuration.
func drainTick(timeout time.Duration) time.Duration {
	if timeout <= 0 {
		return time.Second
	}
	return min(max(timeout/8, 10*time.Millisecond), time.Second)
}

// drainer closes what outlives drain_timeout (see the top of this file).
// Requests carry no start time of their own: the drainer takes the time it
// first saw each one, while some backend is not ready. A request seen on
// the first such tick was there before, and is taken as older than the
// state change.
type drainer struct {
	s    *Server
	seen map[*client]sighting
	// walked is set when the latest tick looked at the clients, so that
	// a request first seen now began since.
	walked bool
}

// sighting is the request of a client, as the drainer first saw it.
type sighting struct {
	seq     uint64
	backend *balancer.Backend
	at      time.Time // zero: before the drainer looked
}

// outgoing is a backend that is not ready, and since when.
type outgoing struct {
	pool, id string
	state    string
	since    time.Time
}

// cut counts what a tick closed on one backend, by kind.
type cut struct {
	closed, upgraded, streams int
}

// startDrainer starts the server's drainer; the function returned stops
// it and waits for it to return.
func (s *Server) startDrainer() func() {
	ctx, cancel := context.WithCancel(context.Background())
	d := &drainer{s: s, seen: map[*client]sighting{}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		d.run(ctx)
	}()
	return func() {
		cancel()
		<-done
	}
}

// run ticks until ctx ends.
func (d *drainer) run(ctx context.Context) {
	for {
		timeout := d.s.state.Load().cfg.DrainTimeout
		t := time.NewTimer(drainTick(timeout))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		d.tick(time.Now(), timeout)
	}
}

// tick closes, as of now, the requests served for timeout by a backend
// that is not ready, counted from when it left the ready state or from
// when they began, whichever is later; it logs and counts them per
// backend. It walks the clients only while some backend is not ready.
func (d *drainer) tick(now time.Time, timeout time.Duration) {
	out := d.s.outgoing()
	if timeout <= 0 || len(out) == 0 {
		clear(d.seen)
		d.walked = false
		return
	}
	closed := map[*backendStats]*cut{}
	visited := make(map[*client]bool, len(d.seen))
	d.s.eachClient(func(c *client) {
		b := c.backend.Load()
		if b == nil || visited[c] {
			return
		}
		visited[c] = true
		seq := c.seq.Load()
		sg, ok := d.seen[c]
		if !ok || sg.seq != seq || sg.backend != b {
			sg = sighting{seq: seq, backend: b}
			if d.walked {
				sg.at = now
			}
			d.seen[c] = sg
		}
		st := statsOf(b)
		o, ok := out[st]
		if !ok {
			return
		}
		start := o.since
		if sg.at.After(start) {
			start = sg.at
		}
		// Unless the request ended meanwhile: closing would then cut
		// the connection's next request, to a backend that may be ready.
		if now.Sub(start) >= timeout && c.seq.Load() == seq && c.backend.Load() == b {
			kind := c.kindOf(seq)
			// Counted before the close, whose effects (the client's
			// error, the 499 access line) may be seen at once: whoever
			// sees them sees the cut counted.
			st.drainClosed(1)
			c.close()
			n := closed[st]
			if n == nil {
				n = new(cut)
				closed[st] = n
			}
			n.closed++
			switch kind {
			case longUpgraded:
				n.upgraded++
			case longStream:
				n.streams++
			}
		}
	})
	d.walked = true
	for c := range d.seen {
		if !visited[c] {
			delete(d.seen, c)
		}
	}
	for st, n := range closed {
		o := out[st]
		d.s.log.Warn("closed connections that outlived drain_timeout",
			zap.String("pool", o.pool), zap.String("backend", o.id), zap.String("state", o.state),
			zap.Duration("drain_timeout", timeout), zap.Int("closed", n.closed),
			zap.Int("upgraded", n.upgraded), zap.Int("streams", n.streams))
	}
}

// outgoing returns the backends that are not ready, by their stats:
// draining or in maintenance in the pools in service, or removed by a
// reload.
func (s *Server) outgoing() map[*backendStats]outgoing {
	out := map[*backendStats]outgoing{}
	for _, p := range s.state.Load().pools {
		p.mu.Lock()
		for i, b := range p.backends {
			m := &p.members[i]
			if drains, since := m.draining(); drains {
				out[statsOf(b)] = outgoing{pool: p.name, id: b.ID, state: string(config.StateDrain), since: since}
			} else if m.state != config.StateReady {
				out[statsOf(b)] = outgoing{pool: p.name, id: b.ID, state: string(m.state), since: m.since}
			}
		}
		p.mu.Unlock()
	}
	for _, r := range s.leaving.current() {
		if _, kept := out[statsOf(r.backend)]; !kept {
			out[statsOf(r.backend)] = outgoing{pool: r.pool, id: r.backend.ID, state: stateRemoved, since: r.left}
		}
	}
	return out
}

// stateRemoved is the state shown for a backend a reload removed, while it
// still serves.
const stateRemoved = "removed"
