package proxy

import (
	"errors"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Slow clients hold only their own connection: one that stops reading
// its response (server.send_timeout) or sends its body slower than
// server.min_body_rate is cut, and what it held (a goroutine, buffers, a
// backend connection) is let go.

// slowLimits are a Server's bounds on slow clients, and their counters.
type slowLimits struct {
	// send is server.send_timeout: how long a write to a client may make
	// no progress; 0 for no limit.
	send time.Duration
	// rate is server.min_body_rate in bytes per second, 0 for none, and
	// grace how long a body is waited for before it applies.
	rate  int64
	grace time.Duration

	sends  atomic.Uint64 // connections and streams cut by send
	bodies atomic.Uint64 // request bodies answered 408 for rate
	log    *zap.Logger
}

// sendSlack is the fraction of send_timeout by which a deadline is renewed
// late: renewing it on every write of a busy connection would cost a timer
// update per write for nothing. A write is then given between 15/16 and all
// of send_timeout.
const sendSlack = 16

// sentTo is the part of a client connection (boundConn) that bounds its
// writes by send_timeout, as nginx's send_timeout bounds the time between
// two writes: the connection's write deadline is kept send_timeout ahead
// of the last progress, so that only a write that makes none for that
// long fails. net/http's own WriteTimeout bounds a whole response instead,
// and would cut large downloads to clients that read.
//
// Progress is bytes leaving the socket (acknowledged by the client), not
// a Write returning: the kernel wakes a writer blocked on a full socket
// only once a third or so of its send buffer, which grows to megabytes,
// has drained, so a client reading steadily below about that much per
// send_timeout would be cut while it reads. Where the socket's queue
// cannot be read (not Linux), a Write returning is the only progress.
//
// A deadline someone else sets (net/http's, for a TLS handshake) is
// theirs, kept until they clear it.
type sentTo struct {
	lim *slowLimits // nil: no limit
	// by is the deadline set, on the proxy's clock; 0 when none is.
	by atomic.Int64
	// theirs is set while a deadline set by another holds.
	theirs atomic.Bool
	// written is the bytes the socket took; acked how many of them had
	// left it when the deadline was last set, -1 if unknown. Used by
	// Write only, which crypto/tls and net/http never call at once.
	written, acked int64
}

// before renews the write deadline of c, if due, before a write; sock
// is c's socket.
func (s *sentTo) before(c interface{ SetWriteDeadline(time.Time) error }, sock net.Conn) {
	if s.lim == nil || s.theirs.Load() {
		return
	}
	d := s.lim.send
	now := clock()
	if time.Duration(s.by.Load())-now > d-d/sendSlack {
		return
	}
	if c.SetWriteDeadline(time.Now().Add(d)) == nil {
		s.by.Store(int64(now + d))
		s.acked = s.left(sock)
	}
}

// left returns how many of the bytes written have left sock, -1 if
// unknown.
func (s *sentTo) left(sock net.Conn) int64 {
	q, ok := socketQueue(sock)
	if !ok {
		return -1
	}
	return s.written - q
}

// progressed reports whether a write that failed with err failed at our
// deadline with bytes leaving sock since it was set: the write is then to
// go on, under a deadline due for renewal.
func (s *sentTo) progressed(sock net.Conn, err error) bool {
	if s.lim == nil || s.theirs.Load() || !errors.Is(err, os.ErrDeadlineExceeded) ||
		s.acked < 0 || s.left(sock) <= s.acked {
		return false
	}
	s.by.Store(0)
	return true
}

// after counts and logs a write that failed at the deadline before set.
func (s *sentTo) after(err error) {
	if err == nil || s.lim == nil || s.theirs.Load() || !errors.Is(err, os.ErrDeadlineExceeded) {
		return
	}
	s.lim.cutSend("connection")
}

// set records a write deadline set by another: a zero one hands the
// deadline back.
func (s *sentTo) set(t time.Time) {
	s.theirs.Store(!t.IsZero())
	s.by.Store(0)
}

// cutSend counts a client cut by send_timeout.
func (l *slowLimits) cutSend(what string) {
	l.sends.Add(1)
	l.log.Debug("client cut: no write progress for server.send_timeout",
		zap.String("what", what), zap.Duration("send_timeout", l.send))
}

// streamWriter bounds the writes of an HTTP/2 response by send_timeout. A
// client that stops reading a stream keeps its flow-control window shut,
// which blocks the handler's writes with the connection itself still
// writable, so the connection's deadline (sentTo) never comes into it:
// the stream's own write deadline bounds each write instead, and resets
// the stream when it passes.
//
// Unlike a connection's deadline, which only fails a write that is
// pending when it passes, a stream's is a timer that resets the stream
// whatever it is doing. So the deadline is set only while a write or
// flush runs, and cleared when it returns: a response that goes quiet (an
// event stream between events, a backend computing after its headers) is
// not cut, as nginx's send_timeout, which only runs while a write waits.
type streamWriter struct {
	http.ResponseWriter
	lim *slowLimits
	by  time.Duration // the deadline of the write running, on the proxy's clock
}

// before sets the stream's write deadline for the write about to run.
func (w *streamWriter) before() {
	now := clock()
	if http.NewResponseController(w.ResponseWriter).SetWriteDeadline(time.Now().Add(w.lim.send)) == nil {
		w.by = now + w.lim.send
	}
}

// after clears the deadline the write ran under, and counts the write
// if it failed past it: the deadline reset the stream.
func (w *streamWriter) after(err error) {
	if err != nil {
		if clock() >= w.by {
			w.lim.cutSend("stream")
		}
		return
	}
	_ = http.NewResponseController(w.ResponseWriter).SetWriteDeadline(time.Time{})
}

// end bounds what net/http still writes of the response once the
// handler returned (what the writer buffers, and the stream's end): the
// deadline is set, and the stream's close stops it. A stream stuck behind
// a shut window then is reset too, rather than held until the
// connection's idle timeout, which an open stream keeps from coming.
func (w *streamWriter) end() { w.before() }

func (w *streamWriter) Write(p []byte) (int, error) {
	w.before()
	n, err := w.ResponseWriter.Write(p)
	w.after(err)
	return n, err
}

// FlushError flushes, bounded as a write is: a flush waits for the
// window too.
func (w *streamWriter) FlushError() error {
	w.before()
	err := http.NewResponseController(w.ResponseWriter).Flush()
	w.after(err)
	return err
}

// Flush is FlushError, for http.Flusher.
func (w *streamWriter) Flush() { _ = w.FlushError() }

// Unwrap returns the wrapped writer, for http.ResponseController.
func (w *streamWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// errTooSlow is the error of a body read cut by min_body_rate.
var errTooSlow = errors.New("request body slower than server.min_body_rate")

// bodyRate holds a client's body to server.min_body_rate: a body must
// arrive at that rate over the time the proxy waited for it, once it
// waited grace. Only waits count: while a backend is slow to take the
// body, the proxy reads none and the client is not blamed.
//
// The rate is kept as a bucket of time: it starts with the grace, each
// byte adds 1/rate, each wait takes its length away, and the body is cut
// when it is empty. It holds at most bodyBank graces, so that bytes sent
// early buy no more silence later than that: an average over the whole
// body let a burst of a megabyte buy an hour of silence at 240 B/s, with
// the request and a backend connection held all along.
//
// A timer checks the bucket at the time it would empty if nothing more
// came; by then the client has usually sent more, and the timer is set
// again, later. A body that fell below has its read ended by a past read
// deadline, and is answered 408. Reads only add up counters.
type bodyRate struct {
	lim  *slowLimits
	body *clientBody
	w    http.ResponseWriter // the server's writer, for its read deadline

	// n is the bytes read; waited the time reads waited and returned, on
	// the proxy's clock.
	n, waited atomic.Int64
	cut       atomic.Bool // the rate was not kept

	mu    sync.Mutex // guards what follows, against the timer
	timer *time.Timer
	done  bool // the request ended, or the body: w is not to be used
	// left is the time in the bucket at the last check, and counted
	// the bytes and waits it took in.
	left          time.Duration
	counted, paid int64
}

// bodyBank is how many graces of silence a body may bank by sending
// ahead of the rate: 60 s with the default grace of 5 s, nginx's
// client_body_timeout between two reads.
const bodyBank = 12

// watch starts holding b's reads to the rate of lim; w is the request's
// writer. stopReading ends it.
func (b *clientBody) watch(lim *slowLimits, w http.ResponseWriter) {
	if lim == nil || lim.rate <= 0 {
		return
	}
	r := &bodyRate{lim: lim, body: b, w: unwrapWriter(w), left: lim.grace}
	r.mu.Lock()
	r.timer = time.AfterFunc(lim.grace, r.check)
	r.mu.Unlock()
	b.rate = r
}

// read records a read of n bytes that waited d; called after the body's
// own record of the read, so that check, meanwhile, counts its wait at
// most once.
func (r *bodyRate) read(n int, d time.Duration) {
	if r == nil {
		return
	}
	r.n.Add(int64(n))
	r.waited.Add(int64(d))
}

// check cuts the body if its bucket is empty, else sets the timer for
// when it would be.
func (r *bodyRate) check() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.done {
		return
	}
	waited := r.waited.Load()
	if r.body.waited.Load() < 0 {
		// A read waits now, since began.
		waited += int64(clock() - time.Duration(r.body.began.Load()))
	}
	n := r.n.Load()
	// Within one check's span the order of bytes and waits is not known:
	// the bytes are counted first, which gives the client the benefit.
	r.left += time.Duration(n-r.counted) * time.Second / time.Duration(r.lim.rate)
	r.left = min(r.left, bodyBank*r.lim.grace) - time.Duration(waited-r.paid)
	r.counted, r.paid = n, waited
	if r.left > 0 {
		// Checked again no sooner than a tenth of the grace: a body
		// just at the rate is then checked ten times per grace, not
		// at every byte.
		r.timer.Reset(max(r.left, r.lim.grace/10))
		return
	}
	r.cut.Store(true)
	r.lim.bodies.Add(1)
	r.lim.log.Debug("client body cut: slower than server.min_body_rate",
		zap.Int64("bytes", n), zap.Duration("waited", time.Duration(waited)), zap.Int64("min_body_rate", r.lim.rate))
	// Ends the read waiting, or the next, with a timeout.
	_ = http.NewResponseController(r.w).SetReadDeadline(time.Now())
}

// end stops the checks: the body was read whole, or the handler is
// returning, after which its writer is not to be touched.
func (r *bodyRate) end() {
	if r == nil {
		return
	}
	r.mu.Lock()
	r.done = true
	r.timer.Stop()
	r.mu.Unlock()
}

// tooSlow reports whether the rate cut the body.
func (r *bodyRate) tooSlow() bool { return r != nil && r.cut.Load() }
