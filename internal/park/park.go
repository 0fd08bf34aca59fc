// Package park holds the idle keep-alive connections of an http.Server
// without a goroutine each, and hands each back to the server when its
// client sends again.
//
// # Why
//
// http.Server gives every client connection a goroutine, a read buffer and
// a write buffer for as long as it is open, and the goroutine keeps the
// stack it grew serving its first request, for a keep-alive connection that
// sends nothing as for a busy one (make bench-conns measures what they
// hold; the figures are in docs/performance.md). The standard library has
// no way to let go of them and keep the connection. Here a connection idle
// for a while (the proxy's server.park_after) is handed back instead: the
// serving goroutine ends and frees its buffers, and a Parker holds the bare
// socket in an epoll set, with no goroutine, until the client sends again
// or the idle timeout passes. Then the Parker hands the connection to the
// server as a newly accepted one, from its Accept: the parker is the
// listener of a second Serve of the same http.Server, which reads the
// waiting request as usual. Only the connections idle that long pay for the
// hand-over, about what accepting a new connection costs
// (BenchmarkParkedRequest in proxy); a busy one never parks. Parking needs
// epoll: on other systems New returns errors.ErrUnsupported.
//
// # What it keeps of http.Server's behaviour, and how that is tested
//
// Parking must be invisible to the server and its clients: no byte of a
// request lost or taken for another, no connection closed before
// http.Server's IdleTimeout, no request cut short by a deadline of ours.
// The hand-over therefore happens at one point only: the first read of an
// idle period (after StateIdle), while http.Server waits for the next
// request with nothing of it buffered. Conn's SetReadDeadline and Read are
// where it does. What http.Server does on a keep-alive connection after a
// response, and so what Conn must tell apart:
//
//	StateIdle                       SetIdle sets fresh
//	SetReadDeadline(now+idle)       the idle period's: armed (fresh cleared)
//	Peek(4)                         a Read only if under 4 bytes are buffered
//	SetReadDeadline(now+header)     ReadHeaderTimeout: the wait is over
//	read the request's head         more Reads if part of it is missing
//	SetReadDeadline(now+read / 0)   ReadTimeout for the body, or none
//
// Only the first deadline after StateIdle is the idle timeout. When the
// next request is already buffered (a pipelining client), no Read comes
// between it and the next deadlines, which must then disarm. Were they
// taken for the start of another idle period, they would be brought
// forward, ReadTimeout's into the past, and the first read of the body
// that found the buffer empty would time out at once and park the
// connection in the middle of the body: the request cut, the rest of its
// body later read as a request.
//
// The tests run a real http.Server over real sockets on loopback: idle
// connections park and serve again, round after round
// (TestParkIdleConnection); a request begun before the parking delay, or
// pipelined behind another, is never cut (TestParkKeepsPartialRequests,
// TestParkPipelinedBodyWithReadTimeout); pipelined requests of many body
// sizes, the stream cut at random points around the parking moment, are
// all answered in full and in order (TestParkPipelinedRandom); a parked
// connection closes at the server's idle timeout and not before
// (TestParkIdleTimeout); clients pausing at random around the delay under
// load are each answered on their own connection (TestParkUnderLoad).
package park

import (
	"errors"
	"io"
	"net"
	"os"
	"sync/atomic"
	"time"
)

// idleBufferSize is the size of http.Server's read buffer (bufio's default).
// The first read of an idle period asks for all of it exactly when none of
// the next request is buffered, which is when the connection can be handed
// back without losing a byte. Should net/http change the size, connections
// simply stop parking, which TestParkIdleConnection reports.
const idleBufferSize = 4096

// Conn is an accepted connection that parks when idle. Its server gets a
// Conn, or a type that embeds one, for each connection its listener
// accepts; its ConnState hook calls SetIdle at StateIdle; and the served
// connection's Close asks Parking first: when it reports true, Close calls
// Parker.Park with the connection as served, and closes it only if Park
// reports false.
type Conn struct {
	net.Conn
	// Parker is where the connection parks; nil: it never does.
	Parker *Parker

	// fresh is set at StateIdle and cleared by the idle period's
	// deadline; pending is set by a Read that hands the connection back,
	// for the Close that follows. The other fields are used by the
	// serving goroutine, then by the Parker while parked.
	fresh, pending atomic.Bool
	armed          bool      // the idle deadline was brought forward, and no Read has come since
	idleUntil      time.Time // http.Server's idle deadline
	fd             int       // the socket, while parked
	served         net.Conn  // what Accept returns for it; set by Park
}

// SetIdle tells c that http.Server holds it idle, waiting for the next
// request (StateIdle): the next read deadline set is the idle period's.
func (c *Conn) SetIdle() {
	if c.Parker != nil {
		c.fresh.Store(true)
	}
}

// SetReadDeadline brings the idle deadline forward to the parking delay
// on a connection that can park, and keeps http.Server's for the Parker,
// which closes the connection then. Any later deadline ends the idle
// period: passed on as it is, it leaves nothing armed.
func (c *Conn) SetReadDeadline(t time.Time) error {
	if c.fresh.Load() {
		c.fresh.Store(false)
		if p := c.Parker; !t.IsZero() && p.after < p.idle {
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

// Read hands the connection back when the first read of an idle period
// times out at the parking delay with nothing buffered: it reports the end
// of the connection, and http.Server closes it, which Parking tells the
// Close to turn into parking.
func (c *Conn) Read(p []byte) (int, error) {
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

// Parking reports, once, whether Read handed c back: the Close
// http.Server makes next should Park it rather than close it.
func (c *Conn) Parking() bool { return c.pending.CompareAndSwap(true, false) }

// CloseWrite half-closes a TCP connection, which http.Server does before
// closing one after a final response, so that the client reads the whole
// response rather than a reset.
func (c *Conn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
