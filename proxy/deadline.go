package proxy

import (
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Client connections keep coarse read deadlines. http.Server moves a
// connection's read deadline three times per request (idle_timeout while
// it waits, read_header_timeout once bytes come, none while the handler
// runs), and each move of a socket's deadline is a runtime timer to add,
// move or delete: together a twentieth of the proxy's CPU per request
// (the peer harness, README). Here a deadline is only written down; a
// sweeper goroutine wakes every tick and expires, by setting a past
// deadline on the socket, the connections whose deadline has passed. A
// timeout thus fires up to one tick late: tick is a tenth of the shortest
// of the server's read timeouts, between minTick and maxTick, so that the
// defaults (10 s for headers) expire within a second of their time.
//
// A deadline set in the past (http.Server's way of interrupting a read)
// and write deadlines go to the socket at once, as do all deadlines of a
// connection taken over by a protocol switch, which is no longer
// http.Server's.

const (
	minTick = 10 * time.Millisecond
	maxTick = time.Second
)

// sweeper expires the coarse read deadlines of the connections of one
// Server.
type sweeper struct {
	tick time.Duration
	now  atomic.Int64 // UnixNano at the latest tick

	mu    sync.Mutex
	conns map[*boundConn]struct{}

	start, stop sync.Once
	done        chan struct{} // closed to end run
	wg          sync.WaitGroup
}

// newSweeper returns a sweeper for read timeouts of at least shortest.
func newSweeper(shortest time.Duration) *sweeper {
	sw := &sweeper{tick: min(max(shortest/10, minTick), maxTick), conns: make(map[*boundConn]struct{}), done: make(chan struct{})}
	sw.now.Store(time.Now().UnixNano())
	return sw
}

// shortestTimeout returns the shortest positive duration among ds, or
// maxTick*10 when there is none.
func shortestTimeout(ds ...time.Duration) time.Duration {
	shortest := 10 * maxTick
	for _, d := range ds {
		if d > 0 {
			shortest = min(shortest, d)
		}
	}
	return shortest
}

// run starts the sweeps, once; end stops them.
func (sw *sweeper) run() {
	sw.start.Do(func() {
		sw.wg.Go(func() {
			t := time.NewTicker(sw.tick)
			defer t.Stop()
			for {
				select {
				case <-sw.done:
					return
				case now := <-t.C:
					sw.sweep(now)
				}
			}
		})
	})
}

// end stops the sweeps and waits for the last to finish. The deadlines of
// connections still open are left unexpired: end runs once http.Server
// has closed them all.
func (sw *sweeper) end() {
	sw.stop.Do(func() { close(sw.done) })
	sw.wg.Wait()
}

func (sw *sweeper) add(c *boundConn) {
	sw.mu.Lock()
	sw.conns[c] = struct{}{}
	sw.mu.Unlock()
}

func (sw *sweeper) remove(c *boundConn) {
	sw.mu.Lock()
	delete(sw.conns, c)
	sw.mu.Unlock()
}

// sweep expires the deadlines passed by now.
func (sw *sweeper) sweep(now time.Time) {
	at := now.UnixNano()
	sw.now.Store(at)
	sw.mu.Lock()
	defer sw.mu.Unlock()
	for c := range sw.conns {
		c.expire(at)
	}
}

// coarse is a boundConn's read deadline as the sweeper keeps it.
type coarse struct {
	sw *sweeper // nil: deadlines go to the socket
	mu sync.Mutex
	at int64 // the read deadline, UnixNano; 0 for none
	// past is set while the socket's read deadline is in the past: the
	// sweeper expired it, or it was set so.
	past bool
	// exact is set once the connection left http.Server (a protocol
	// switch): its deadlines go to the socket from then on.
	exact bool
}

// SetReadDeadline records t as the read deadline; see coarse.
func (c *boundConn) SetReadDeadline(t time.Time) error {
	d := &c.dl
	if d.sw == nil {
		return c.Conn.SetReadDeadline(t)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.exact {
		return c.Conn.SetReadDeadline(t)
	}
	if t.IsZero() {
		d.at = 0
	} else {
		d.at = t.UnixNano()
		if d.at <= d.sw.now.Load() {
			// In the past: whoever set it wants a read to end now.
			d.past = true
			return c.Conn.SetReadDeadline(t)
		}
	}
	if d.past {
		d.past = false
		return c.Conn.SetReadDeadline(time.Time{})
	}
	return nil
}

// SetDeadline sets both deadlines, the read one as SetReadDeadline does.
func (c *boundConn) SetDeadline(t time.Time) error {
	return errors.Join(c.SetReadDeadline(t), c.Conn.SetWriteDeadline(t))
}

// Read reads from the connection. A timeout the deadline does not call for
// (it moved after the sweeper expired it) is not one: the read goes on.
func (c *boundConn) Read(p []byte) (int, error) {
	for {
		n, err := c.Conn.Read(p)
		if err == nil || c.dl.sw == nil || !errors.Is(err, os.ErrDeadlineExceeded) || !c.staleTimeout() {
			return n, err
		}
		if n > 0 {
			return n, nil
		}
	}
}

// staleTimeout reports, after a read timed out, whether the deadline has
// moved since and not passed again; the socket's deadline is then cleared
// for the read to go on.
func (c *boundConn) staleTimeout() bool {
	d := &c.dl
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.exact || (d.at != 0 && d.at <= time.Now().UnixNano()) {
		return false
	}
	if d.past {
		d.past = false
		_ = c.Conn.SetReadDeadline(time.Time{})
	}
	return true
}

// expire sets a past read deadline on the socket if the recorded one has
// passed at now (UnixNano).
func (c *boundConn) expire(now int64) {
	d := &c.dl
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.exact || d.past || d.at == 0 || d.at > now {
		return
	}
	d.past = true
	_ = c.Conn.SetReadDeadline(aLongTimeAgo)
}

// makeExact hands the connection's deadlines to the socket from now on.
func (c *boundConn) makeExact() {
	d := &c.dl
	if d.sw == nil {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.exact {
		return
	}
	d.exact = true
	var t time.Time
	if d.at != 0 {
		t = time.Unix(0, d.at)
	}
	d.past = false
	_ = c.Conn.SetReadDeadline(t)
}

// aLongTimeAgo is a deadline that has passed, as net/http uses to end a
// pending read at once.
var aLongTimeAgo = time.Unix(1, 0)

var _ net.Conn = (*boundConn)(nil)
