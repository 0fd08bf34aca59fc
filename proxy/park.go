package proxy

import (
	"errors"
	"io"
	"os"
	"time"
)

// Parking idle connections.
//
// http.Server gives every client connection a goroutine, a 4 KiB read
// buffer and a 4 KiB write buffer for as long as it is open, and the
// goroutine keeps the 8 KiB stack it grew serving its first request: about
// 20 KB for a keep-alive connection that sends nothing. A connection idle
// for server.park_after (10 s by default) is handed back instead: the
// serving goroutine ends and frees its buffers, and a parker
// (park_linux.go) holds the bare socket in an epoll set, with no goroutine,
// until the client sends again or the idle timeout passes. Then the parker
// hands the connection to http.Server as a newly accepted one, which reads
// the waiting request as usual. Only the connections idle that long pay for
// the hand-over, about what accepting a new connection costs
// (BenchmarkParkedRequest); a busy one never parks.
//
// The hand-over happens at one point only: the first read of an idle period
// (after StateIdle), while http.Server waits for the next request with
// nothing of it buffered. boundConn's Read, SetReadDeadline and Close below
// are where it does.

// idleBufferSize is the size of http.Server's read buffer (bufio's default).
// The first read of an idle period asks for all of it exactly when none of
// the next request is buffered, which is when the connection can be handed
// back without losing a byte. Should net/http change the size, connections
// simply stop parking, which TestParkIdleConnection reports.
const idleBufferSize = 4096

// SetReadDeadline is how http.Server starts an idle period: it sets the
// idle timeout right after StateIdle, and clears it once the next request
// is there. On a connection that can park, the idle deadline is brought
// forward to park_after, and kept for the parker, which closes the
// connection then.
func (c *boundConn) SetReadDeadline(t time.Time) error {
	if c.fresh.Load() {
		if t.IsZero() {
			// The wait is over without a Read: the request was buffered.
			c.fresh.Store(false)
			c.armed = false
		} else if p := c.b.park; p.after < p.idle {
			// t is now + idle: no clock read on the request path.
			c.idleUntil = t
			t = t.Add(p.after - p.idle)
			c.armed = true
		}
	}
	return c.Conn.SetReadDeadline(t)
}

// Read parks the connection when the first read of an idle period times
// out at park_after with nothing buffered: it reports the end of the
// connection, and http.Server closes it, which Close turns into parking.
func (c *boundConn) Read(p []byte) (int, error) {
	if !c.fresh.Load() {
		return c.Conn.Read(p)
	}
	c.fresh.Store(false)
	n, err := c.Conn.Read(p)
	if !c.armed {
		return n, err
	}
	c.armed = false
	switch {
	case n == 0 && errors.Is(err, os.ErrDeadlineExceeded):
		if len(p) == idleBufferSize {
			c.pending.Store(true)
			return 0, io.EOF
		}
		// Part of the next request is buffered (a pipelining client):
		// wait out the idle timeout as http.Server asked.
		if err := c.Conn.SetReadDeadline(c.idleUntil); err != nil {
			return 0, err
		}
		return c.Conn.Read(p)
	case n > 0 && n < 4:
		// http.Server peeks at 4 bytes before it reads a request, so it
		// reads again: under its own deadline, not the shortened one.
		if err := c.Conn.SetReadDeadline(c.idleUntil); err != nil {
			return n, err
		}
	}
	return n, err
}

// Close parks a connection that Read handed back; any other close is real.
//
// The connection leaves its binding's table here, before the parker can
// wake it, rather than at the StateClosed that follows: by then the parker
// may have handed it to http.Server again, and StateNew put it back.
func (c *boundConn) Close() error {
	if c.pending.CompareAndSwap(true, false) {
		b := c.b
		b.mu.Lock()
		delete(b.conns, c)
		c.handedBack = true
		b.mu.Unlock()
		if b.park.park(c) {
			return nil
		}
		b.mu.Lock()
		c.handedBack = false
		b.mu.Unlock()
	}
	return c.Conn.Close()
}
