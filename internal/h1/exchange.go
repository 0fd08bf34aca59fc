package h1

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"os"
	"time"
)

// headerTimeoutError is the error of a backend that sent no response
// headers within ResponseHeaderTimeout: a net.Error whose Timeout is
// true, as http.Transport's is, so that a caller tells it from a failure
// (the proxy answers 504).
type headerTimeoutError struct{}

func (headerTimeoutError) Error() string   { return "timeout awaiting response headers" }
func (headerTimeoutError) Timeout() bool   { return true }
func (headerTimeoutError) Temporary() bool { return true }

// max1xxResponses caps the interim responses read before the final one,
// at the number http.Transport once capped them at (its max1xxResponses;
// it no longer caps those a trace hears of, as ReverseProxy's trace
// does): past it, a backend that
// sends 103s or 100s in a loop would have each relayed to the client for
// as long as ResponseHeaderTimeout lets it. Early Hints come once or twice.
const max1xxResponses = 5

var errTooMany1xx = errors.New("too many 1xx informational responses")

// bodyTimeoutError is the error of a backend that sent nothing of its
// response body within ResponseBodyTimeout of its last bytes: a net.Error
// whose Timeout is true, as a header timeout's is.
type bodyTimeoutError struct{ wait time.Duration }

func (e bodyTimeoutError) Error() string {
	return "timeout reading the response body: the backend sent nothing for " + e.wait.String()
}
func (bodyTimeoutError) Timeout() bool   { return true }
func (bodyTimeoutError) Temporary() bool { return true }

// exchange sends r on hc and reads the response headers. A request without
// a body is written here, before the response is read; one with a body is
// written by a bodyWriter while the response is read (see there).
func (c *Client) exchange(ctx context.Context, hc *conn, r *http.Request) (res *http.Response, err error) {
	// The client leaving closes the connection, which ends whatever
	// read or write is under way; the connection is not used again.
	stop := context.AfterFunc(ctx, hc.abort)
	trace := httptrace.ContextClientTrace(ctx)
	hc.w.n = 0
	hc.r.wait = 0
	if hc.r.armed {
		// The last body's deadline would otherwise end this exchange's
		// wait for its head, whenever no header timeout replaces it.
		hc.r.armed = false
		_ = hc.nc.SetReadDeadline(time.Time{})
	}
	var bw *bodyWriter
	fail := func(err error) (*http.Response, error) {
		stop()
		hc.abort()
		if bw != nil {
			err = bw.end(err)
		}
		if cerr := ctx.Err(); cerr != nil {
			return nil, cerr
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			err = headerTimeoutError{}
		}
		if hc.w.n == 0 {
			// Not a byte of the request reached the connection.
			return nil, notSentError{err}
		}
		return nil, err
	}
	if r.Body != nil && r.Body != http.NoBody {
		bw = c.startBody(hc, r)
	} else {
		if !writeHead(hc.bw, r, trace) {
			err = r.Write(hc.bw)
		}
		if err == nil {
			err = hc.bw.Flush()
		}
		if err != nil {
			return fail(fmt.Errorf("writing the request: %w", err))
		}
		if c.headerTimeout > 0 {
			_ = hc.nc.SetReadDeadline(time.Now().Add(c.headerTimeout))
		}
	}
	hc.r.limit = c.maxHeader
	// The first read fills the buffer, where parseResponse finds the
	// common head whole.
	if _, err := hc.br.Peek(1); err != nil {
		return fail(fmt.Errorf("reading the response: %w", err))
	}
	var wrap *respBody
	for n1xx := 0; ; n1xx++ {
		if res, wrap, err = readResponse(hc.br, r); err != nil {
			if hc.r.limit <= 0 {
				err = errHeaderTooLarge
			}
			return fail(fmt.Errorf("reading the response: %w", err))
		}
		code := res.StatusCode
		if code == http.StatusContinue && bw != nil {
			if trace != nil && trace.Got100Continue != nil {
				trace.Got100Continue()
			}
			bw.proceed(true)
		}
		// 1xx responses before the final one are relayed through the
		// trace (ReverseProxy's), then the next is read; 101 is final.
		if code < 100 || code > 199 || code == http.StatusSwitchingProtocols {
			break
		}
		if n1xx == c.max1xx {
			return fail(errTooMany1xx)
		}
		if trace != nil && trace.Got1xxResponse != nil {
			if err := trace.Got1xxResponse(code, textproto.MIMEHeader(res.Header)); err != nil {
				return fail(err)
			}
			hc.r.limit = c.maxHeader
		}
	}
	if bw != nil {
		// Before the deadline is cleared: the writer arms none after.
		// The body still waiting for a 100 Continue goes unless the
		// connection is to close, as http.Transport decides.
		bw.headRead(!res.Close)
	}
	if c.headerTimeout > 0 {
		_ = hc.nc.SetReadDeadline(time.Time{})
	}
	hc.r.limit = math.MaxInt64
	hc.r.wait = c.bodyTimeout
	res.TLS = hc.state
	keep := !res.Close && res.StatusCode > 199
	if r.Method == http.MethodHead || res.ContentLength == 0 {
		watched := stop()
		c.giveBack(hc, keep && watched, bw)
		return res, nil
	}
	if wrap == nil {
		wrap = new(respBody)
	}
	*wrap = respBody{body: res.Body, ctx: ctx, c: c, hc: hc, bw: bw, stop: stop, keep: keep}
	res.Body = wrap
	return res, nil
}

// respBody is a response body that gives its connection back once read to
// the end, and closes it if abandoned before. Like ReverseProxy's use of
// it, its Read and Close must not run concurrently.
type respBody struct {
	body   io.ReadCloser
	ctx    context.Context
	c      *Client
	hc     *conn       // nil once given back or closed
	bw     *bodyWriter // the request's body, or nil
	stop   func() bool // ends the watch on ctx; false if it fired
	keep   bool        // the connection may serve another request
	closed bool
}

func (b *respBody) Read(p []byte) (int, error) {
	if b.closed {
		return 0, errBodyReadClosed
	}
	n, err := b.body.Read(p)
	if err != nil && b.hc != nil {
		if err == io.EOF {
			watched := b.stop()
			b.c.giveBack(b.hc, b.keep && watched, b.bw)
		} else {
			b.stop()
			b.hc.abort()
			if errors.Is(err, os.ErrDeadlineExceeded) {
				err = bodyTimeoutError{b.c.bodyTimeout}
			}
		}
		b.hc = nil
	}
	if err != nil && err != io.EOF {
		if cerr := b.ctx.Err(); cerr != nil {
			// The client left and the connection was closed under
			// the read, as http.Transport reports it.
			return n, cerr
		}
	}
	return n, err
}

func (b *respBody) Close() error {
	if b.closed {
		return nil
	}
	b.closed = true
	if b.hc != nil {
		b.stop()
		b.hc.abort()
		b.hc = nil
	}
	return nil
}
