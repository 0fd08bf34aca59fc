package proxy

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"

	"github.com/affinityproxy/affinity/config"
)

// serverLimits returns s with the defaults in place of the zero values a
// Config built in code may leave, so that such a config is as safe as a
// loaded one: no limit on header reading, idle connections or header size
// is never what a zero meant.
func serverLimits(s config.Server) (config.Server, error) {
	if s.ReadHeaderTimeout < 0 || s.ReadTimeout < 0 || s.IdleTimeout < 0 || s.ParkAfter < 0 || s.MaxHeaderBytes < 0 || s.MaxBody < 0 {
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
// blamed on the backend. A request without a body, the common GET,
// allocates nothing here.
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
	r.Body = &clientBody{ReadCloser: r.Body}
	return true
}

// clientBody marks the errors of reading a client's body with
// errRequestBody, and keeps the first. The transport returns a body's read
// error as its own, or the context's instead once the server has cancelled
// the request (as it does when the client half-closes mid-body); the retrier
// asks the body itself, so that the client's failure, not the backend's nor
// a departure, is what proxyError answers and passive health sees.
type clientBody struct {
	io.ReadCloser
	failed atomic.Pointer[error]
}

func (b *clientBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && err != io.EOF {
		b.failed.CompareAndSwap(nil, &err)
		err = fmt.Errorf("%w: %w", errRequestBody, err)
	}
	return n, err
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
