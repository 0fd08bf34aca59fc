package proxy

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"sync/atomic"
	"time"

	"github.com/affinityproxy/affinity/config"
)

// serverLimits returns s with the defaults in place of the zero values a
// Config built in code may leave, so that such a config is as safe as a
// loaded one: no limit on header reading, idle connections, header size or
// open connections is never what a zero meant.
func serverLimits(s config.Server) (config.Server, error) {
	if s.ReadHeaderTimeout < 0 || s.ReadTimeout < 0 || s.IdleTimeout < 0 || s.ParkAfter < 0 || s.MaxHeaderBytes < 0 || s.MaxBody < 0 || s.MaxConns < 0 ||
		s.SendTimeout < 0 || s.MinBodyRate < 0 || s.MinBodyRateGrace < 0 {
		return s, fmt.Errorf("proxy: server: negative limit in %+v", s)
	}
	if s.ReadHeaderTimeout == 0 {
		s.ReadHeaderTimeout = config.DefaultReadHeaderTimeout
	}
	if s.IdleTimeout == 0 {
		s.IdleTimeout = config.DefaultIdleTimeout
	}
	if s.MaxHeaderBytes == 0 {
		s.MaxHeaderBytes = config.DefaultMaxHeaderBytes
	}
	if s.MaxConns == 0 {
		s.MaxConns = derivedMaxConns()
	}
	if s.MinBodyRateGrace == 0 {
		s.MinBodyRateGrace = config.DefaultMinBodyRateGrace
	}
	return s, nil
}

// guardBody prepares the body of r for forwarding, reporting false when it
// answered 413 itself. limit is max_body, 0 for none.
//
// A declared length over the limit is refused before anything reaches a
// backend. A body of unknown length (chunked, or HTTP/2 without
// Content-Length) is cut where it passes the limit: the read fails with
// *http.MaxBytesError, the transport aborts the backend request, and
// proxyError answers 413 if no response was sent yet. A body whose declared
// length fits needs no limit, since net/http never reads past
// Content-Length.
//
// Every body is then wrapped so that a failed read (a malformed chunk, a
// client gone mid-body) is known to be the client's: answered 400, never
// blamed on the backend, and so that an answer given before the body was
// read to its end can close the connection (see closeUnlessRead). A
// request without a body, the common GET, allocates nothing here.
func guardBody(w http.ResponseWriter, r *http.Request, limit int64) bool {
	if r.Body == nil || r.Body == http.NoBody {
		return true
	}
	if limit > 0 {
		switch {
		case r.ContentLength > limit:
			if r.ProtoMajor == 1 {
				// The body stays unread: closing spares reading it
				// only to find where the next request starts.
				w.Header().Set("Connection", "close")
			}
			writeError(w, http.StatusRequestEntityTooLarge)
			return false
		case r.ContentLength < 0:
			// The server's own writer, not a wrapper, lets
			// MaxBytesReader tell it to close the connection rather
			// than read on.
			r.Body = http.MaxBytesReader(unwrapWriter(w), r.Body, limit)
		}
	}
	r.Body = &clientBody{ReadCloser: r.Body, conn: r.ProtoMajor == 1}
	return true
}

// clientBody marks the errors of reading a client's body with
// errRequestBody, and keeps the first. The transport returns a body's read
// error as its own, or the context's instead once the server has cancelled
// the request (as it does when the client half-closes mid-body); the retrier
// asks the body itself, so that the client's failure, not the backend's nor
// a departure, is what proxyError answers and passive health sees. It also
// times its reads, for stalled.
type clientBody struct {
	io.ReadCloser
	failed atomic.Pointer[error]
	// conn is set for an HTTP/1 request, whose body shares the
	// connection with the requests after it.
	conn  bool
	ended atomic.Bool // a read returned io.EOF
	// began is when the latest Read began, on the proxy's clock; waited
	// how long it waited for the client, -1 while it waits.
	began, waited atomic.Int64
	// attempt is the backend connection the latest attempt took; see
	// traced.
	attempt atomic.Pointer[countedConn]
	// rate holds the body to server.min_body_rate; nil for none.
	rate *bodyRate
}

func (b *clientBody) Read(p []byte) (int, error) {
	start := clock()
	b.began.Store(int64(start))
	b.waited.Store(-1)
	n, err := b.ReadCloser.Read(p)
	waited := clock() - start
	b.waited.Store(int64(waited))
	b.rate.read(n, waited)
	switch {
	case err == io.EOF:
		b.ended.Store(true)
		b.rate.end()
	case err != nil:
		if b.rate.tooSlow() {
			err = fmt.Errorf("%w: %w", errTooSlow, err)
		}
		b.failed.CompareAndSwap(nil, &err)
		err = fmt.Errorf("%w: %w", errRequestBody, err)
	}
	return n, err
}

// Close closes the body, except one still coming over HTTP/1: a
// transport's read of it may be waiting for the client, and net/http's
// Close would wait for that read to return, keeping the answer's handler
// from returning. net/http closes it itself after the handler, once
// stopReading has ended that read.
func (b *clientBody) Close() error {
	if b.unread() {
		return nil
	}
	return b.ReadCloser.Close()
}

// unread reports whether b is an HTTP/1 body not yet read to its end;
// false for a nil b, a request without a body.
func (b *clientBody) unread() bool {
	return b != nil && b.conn && !b.ended.Load()
}

// closeUnlessRead has the answer whose header is h close the connection
// when the body is still coming: a backend answering early (401, 413, a
// redirect) often reads no more of it, and the rest of it would be read as
// the client's next request. Without it net/http, before writing the
// header, reads up to 256 KiB more of the body to reuse the connection,
// and the answer waits for a client that may send it slowly or never.
// A 101 is left alone: its connection is the tunnel's.
func (b *clientBody) closeUnlessRead(h http.Header, status int) {
	if status != http.StatusSwitchingProtocols && b.unread() {
		h.Set("Connection", "close")
	}
}

// stopReading ends, once the request is answered, the reading of a body
// still coming, which a transport may still be waiting on to send it to a
// backend. net/http's Close of the body would wait for that read, then
// read on itself, up to 256 KiB, from a client that may never send them.
// An expired read deadline ends both at once; the body is closed here,
// under it, since net/http clears a read deadline when it finds a read in
// progress as the handler returns. The answer (closeUnlessRead) has
// closed the connection.
func (b *clientBody) stopReading(w http.ResponseWriter) {
	b.rate.end()
	if b.unread() {
		_ = http.NewResponseController(w).SetReadDeadline(time.Now())
		_ = b.ReadCloser.Close()
	}
}

// traced returns out carrying a trace that records in b the backend
// connection each attempt takes.
func (b *clientBody) traced(out *http.Request) *http.Request {
	trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		b.attempt.Store(backendConn(info.Conn))
	}}
	return out.WithContext(httptrace.WithClientTrace(out.Context(), trace))
}

// bodyStall is how long a read of a client's body must have waited for the
// client when the backend's connection ended, for the backend's failure to
// be the client's: the backend gave up on a body too slow to come. Servers
// wait for a body far longer (nginx's client_body_timeout is a minute; Go's,
// Node's and Java's servers are given seconds at the least), and a client
// sending steadily keeps no read waiting nearly as long, so that a backend
// failing while a body streams is still charged with it.
const bodyStall = time.Second

// stalled reports whether the backend's connection of the latest attempt
// ended while a read of the body waited for the client, bodyStall or more
// into that wait: the backend gave up on the body. http.Transport waits for
// that read before it returns the failure, so it may have returned since,
// with bytes the client sent after; a connection that ended after the read
// (the body was in, the backend failed on it) does not count. False for a
// nil b, a request without a body.
func (b *clientBody) stalled() bool {
	if b == nil {
		return false
	}
	c := b.attempt.Load()
	if c == nil {
		return false
	}
	closed := time.Duration(c.closedAt.Load())
	// waited first: a Read sets began, then waited.
	waited := time.Duration(b.waited.Load())
	began := time.Duration(b.began.Load())
	if closed == 0 || began == 0 || closed < began+bodyStall {
		return false
	}
	return waited < 0 || closed <= began+waited
}

// failure returns the error reading the body failed with, or nil; nil for
// a nil b, a request without a body.
func (b *clientBody) failure() error {
	if b == nil {
		return nil
	}
	if err := b.failed.Load(); err != nil {
		return *err
	}
	return nil
}

// unwrapWriter returns the ResponseWriter under the proxy's wrappers of it
// (the access log's, closingWriter), net/http's own.
func unwrapWriter(w http.ResponseWriter) http.ResponseWriter {
	for {
		u, ok := w.(interface{ Unwrap() http.ResponseWriter })
		if !ok {
			return w
		}
		w = u.Unwrap()
	}
}

// tooLarge reports whether err is a request body cut at max_body.
func tooLarge(err error) bool {
	var mbe *http.MaxBytesError
	return errors.As(err, &mbe)
}
