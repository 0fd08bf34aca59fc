package proxy

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"syscall"

	"go.uber.org/zap"
)

const (
	// fileReserve is the open files server.max_conns's default leaves to
	// all but client and backend connections: listeners, the admin
	// listener's connections (so that /metrics and /healthz answer while
	// the proxy's are at their limit), health checks, log files, epoll
	// sets.
	fileReserve = 128
	// minDerivedConns is the least server.max_conns's default gives, on a
	// host whose limit on open files leaves less.
	minDerivedConns = 16
)

// derivedMaxConns is server.max_conns's default: half of what the limit
// on open files leaves after fileReserve, since each client connection
// may hold a backend connection while its request is in flight. It is 0,
// no limit, where the limit cannot be read or there is none.
func derivedMaxConns() int {
	files, ok := fileLimit()
	if !ok {
		return 0
	}
	return int(max((files-fileReserve)/2, minDerivedConns))
}

// connLimit caps the connections a listener holds open at once. Past
// its max, Accept waits for one to close; the clients wait in the
// kernel's queue meanwhile, or are refused by it when it is full, and the
// proxy keeps the descriptors its backend connections and checks need.
// An episode of waits is counted and logged once as it starts, and once
// as it ends: when a connection finds a place without waiting, with a
// tenth of the places free, so that a listener that stays at its limit, or
// hovers about it as a queue of clients comes and goes, logs no line per
// connection.
type connLimit struct {
	max   int64
	open  atomic.Int64
	freed chan struct{} // signalled, without blocking, as a connection closes
	// paused is set while Accept waits; pauses counts the waits.
	paused atomic.Bool
	pauses atomic.Uint64
	log    *zap.Logger
}

// newConnLimit returns a limit of max connections, nil for none.
func newConnLimit(max int, log *zap.Logger) *connLimit {
	if max <= 0 {
		return nil
	}
	return &connLimit{max: int64(max), freed: make(chan struct{}, 1), log: log}
}

// wrap returns ln accepting within l; ln itself when l is nil.
func (l *connLimit) wrap(ln net.Listener) net.Listener {
	if l == nil {
		return ln
	}
	return &limitedListener{Listener: ln, lim: l, done: make(chan struct{})}
}

// acquire takes a connection's place, waiting for one to be freed; false
// when done closed first.
func (l *connLimit) acquire(done <-chan struct{}) bool {
	waited := false
	for {
		n := l.open.Load()
		if n < l.max {
			if !l.open.CompareAndSwap(n, n+1) {
				continue
			}
			if !waited && n < l.max-l.max/10 && l.paused.Load() && l.paused.CompareAndSwap(true, false) {
				l.log.Info("accepting connections again", zap.Int64("max_conns", l.max))
			}
			return true
		}
		if l.paused.CompareAndSwap(false, true) {
			l.pauses.Add(1)
			l.log.Warn("client connections at server.max_conns: accepting no more until one closes",
				zap.Int64("max_conns", l.max))
		}
		select {
		case <-l.freed:
			waited = true
		case <-done:
			return false
		}
	}
}

// release frees a connection's place.
func (l *connLimit) release() {
	l.open.Add(-1)
	select {
	case l.freed <- struct{}{}:
	default:
	}
}

// limitedListener accepts within its connLimit.
type limitedListener struct {
	net.Listener
	lim       *connLimit
	done      chan struct{} // closed by Close
	closeOnce sync.Once
}

// Accept waits for a place under the limit, then for a connection.
func (l *limitedListener) Accept() (net.Conn, error) {
	if !l.lim.acquire(l.done) {
		return nil, net.ErrClosed
	}
	c, err := l.Listener.Accept()
	if err != nil {
		l.lim.release()
		return nil, err
	}
	return &limitedConn{Conn: c, lim: l.lim}, nil
}

// Close closes the listener, ending an Accept that waits for a place.
func (l *limitedListener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return l.Listener.Close()
}

// limitedConn holds its place under a connLimit until closed. It is the
// socket as accepted, under any parking (internal/park closes a parked
// connection through it) and TLS.
type limitedConn struct {
	net.Conn
	lim    *connLimit
	closed atomic.Bool
}

// Close closes the connection and frees its place, once.
func (c *limitedConn) Close() error {
	if c.closed.CompareAndSwap(false, true) {
		c.lim.release()
	}
	return c.Conn.Close()
}

// SyscallConn reaches the socket, for internal/park.
func (c *limitedConn) SyscallConn() (syscall.RawConn, error) {
	sc, ok := c.Conn.(syscall.Conn)
	if !ok {
		return nil, errors.ErrUnsupported
	}
	return sc.SyscallConn()
}

// CloseWrite half-closes the socket, as net/http does before closing a
// connection it refused a request on (431, 400): it then reads what the
// client still sends for a moment, so that the close does not reset the
// connection and lose the answer on its way.
func (c *limitedConn) CloseWrite() error {
	cw, ok := c.Conn.(interface{ CloseWrite() error })
	if !ok {
		return errors.ErrUnsupported
	}
	return cw.CloseWrite()
}
