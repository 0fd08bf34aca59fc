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
//
// What http.Server does on a keep-alive connection after a response, and so
// what boundConn must tell apart:
//
//	StateIdle                       connState sets fresh
//	SetReadDeadline(now+idle)       the idle period's: armed (fresh cleared)
//	Peek(4)                         a Read only if under 4 bytes are buffered
//	SetReadDeadline(now+header)     read_header_timeout: the wait is over
//	read the request's head         more Reads if part of it is missing
//	SetReadDeadline(now+read / 0)   read_timeout for the body, or none
//
// Only the first deadline after StateIdle is the idle timeout. When the
// next request is already buffered (a pipelining client), no Read comes
// between it and the next deadlines, which must then disarm. Taken for the
// start of another idle period, they were brought forward, read_timeout's
// into the past, and the first read of the body that found the buffer
// empty timed out at once and parked the connection in the middle of the
// body: the request cut (499), the rest of its body later read as a
// request (400).

// idleBufferSize is the size of http.Server's read buffer (bufio's default).
// The first read of an idle period asks for all of it exactly when none of
// the next request is buffered, which is when the connection can be handed
// back without losing a byte. Should net/http change the size, connections
// simply stop parking, which TestParkIdleConnection reports.
const idleBufferSize = 4096

// SetReadDeadline brings the idle deadline forward to park_after on a
// connection that can park, and keeps http.Server's for the parker, which
// closes the connection then. Any later deadline ends the idle period:
// passed on as it is, it leaves nothing armed.
func (c *boundConn) SetReadDeadline(t time.Time) error {
	if c.fresh.Load() {
		c.fresh.Store(false)
		if p := c.b.park; !t.IsZero() && p.after < p.idle {
			// t is now + idle: no clock read on the request path.
			c.idleUntil = t
			t = t.Add(p.after - p.idle)
			c.armed = true
		}
	} else if c.armed {
		// The next request was buffered: no Read came.
		c.armed = false
	}
	return c.Conn.SetReadDeadline(t)
}

// Read parks the connection when the first read of an idle period times
// out at park_after with nothing buffered: it reports the end of the
// connection, and http.Server closes it, which Close turns into parking.
func (c *boundConn) Read(p []byte) (int, error) {
	if !c.armed {
		return c.Conn.Read(p)
	}
	c.armed = false
	n, err := c.Conn.Read(p)
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
