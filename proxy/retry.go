package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sync"
	"sync/atomic"

	"go.uber.org/zap"

	"github.com/affinityproxy/affinity/balancer"
)

// errRequestBody is wrapped by the retrier when reading the client's body
// failed: the client is at fault, not a backend.
var errRequestBody = errors.New("reading the request body")

// retrier is the ReverseProxy's Transport. It forwards each attempt with
// the shared transport, records the outcome for passive health, and moves a
// request that failed to another backend when that is safe:
//
//   - a request whose connection could not be made (a dial error: refused,
//     no route, dial timeout) reached no backend, and is retried whatever its
//     method;
//   - one that may have reached the backend (no response headers in time,
//     the connection reset or closed before any response) is retried only if
//     repeating it is harmless: an idempotent method or an Idempotency-Key
//     header, and a body small enough to have been kept for a replay.
//
// A response is final: it is passed on as it is, even a 5xx, and nothing is
// retried once RoundTrip returned one, so no retry follows a response byte
// sent to the client. (1xx interim responses, which ReverseProxy relays as
// they come, do not count: HTTP lets any number of them precede the final
// response, so a retry after one still gives the client a valid exchange.)
//
// Which other errors mean "nothing was sent" is known only inside
// http.Transport; they are treated as "may have reached the backend".
type retrier struct {
	next http.RoundTripper
	log  *zap.Logger
}

// RoundTrip forwards out to the exchange's backend, and to others after it
// as allowed; see retrier. The exchange in out's context follows the request
// to each backend tried: its backend and in-flight count, and the sticky
// cookie the response carries.
func (rt *retrier) RoundTrip(out *http.Request) (*http.Response, error) {
	ex := exchangeOf(out.Context())
	if ex == nil || ex.backend == nil {
		res, err := rt.next.RoundTrip(out)
		if err != nil {
			return nil, err
		}
		return relayable(res)
	}
	p := ex.pool
	next := rt.next
	if p.transport != nil {
		next = p.transport // the pool's own TLS settings (tls.go)
	}
	canRetry := p.retries > 0 && len(p.backends) > 1
	var body *replay
	if out.Body != nil && out.Body != http.NoBody && (canRetry || p.passive != nil) {
		// A body is wrapped to be replayed, and to tell a client's
		// broken body from a backend's failure, which passive health
		// must not blame on the backend.
		keep := p.maxBody
		if !canRetry {
			keep = -1
		}
		var err error
		if body, err = newReplay(out, keep); err != nil {
			return nil, err
		}
		defer body.release()
		out = body.attach(out)
	}
	tried := &ex.tried
	for n := 0; ; n++ {
		b := ex.backend
		tried[n] = b
		ex.attempts = n + 1
		ex.sends = 0
		start := clock()
		res, err := next.RoundTrip(out)
		if err == nil {
			if res, err = relayable(res); err != nil {
				// The backend is failing, but it answered: sending
				// the request again could repeat what it did.
				p.failed(b)
				return nil, err
			}
			st := statsOf(b)
			st.answered(res.StatusCode, clock()-start)
			if ex.long = longOf(out.Method, res); ex.long != notLong {
				st.began(ex.long)
			}
			p.answered(b, res.StatusCode)
			if l := p.snap.Load().learner; l != nil {
				// Before the proxy's own cookie is added: it is
				// not the backend's to learn from.
				l.Learn(b, res.Header)
			}
			if ex.setCookie != "" {
				ex.addCookie(res.Header)
			}
			return res, nil
		}
		if out.Context().Err() != nil {
			// The client left, or shutdown ran out of time: neither is
			// the backend's failure, and nobody waits for a retry.
			return nil, err
		}
		if body.broken() {
			return nil, fmt.Errorf("%w: %w", errRequestBody, err)
		}
		p.failed(b)
		if n >= p.retries || !retryable(out, err, body) {
			return nil, err
		}
		nb, setCookie := p.alternative(out, tried[:n+1])
		if nb == nil {
			return nil, err
		}
		p.retried.Add(1)
		if ce := rt.log.Check(zap.DebugLevel, "retrying request"); ce != nil {
			ce.Write(zap.String("pool", p.name), zap.String("backend", b.ID), zap.String("next", nb.ID),
				zap.Int("attempt", n+2), zap.String("method", out.Method), zap.Error(err))
		}
		finished(b)
		nb.Begin()
		ex.client.moved(nb)
		ex.backend, ex.setCookie = nb, setCookie
		out = retarget(out, &ex.url, nb, body)
	}
}

// badStatusError is a response whose status no client may be sent.
type badStatusError int

func (e badStatusError) Error() string {
	return fmt.Sprintf("backend answered with status %d, outside 100-999", int(e))
}

// relayable returns res, or an error in its place when its status is one
// that http.ReadResponse accepts (any three characters Atoi reads: "000",
// "099", "+12") but that net/http's ResponseWriter refuses with a panic.
func relayable(res *http.Response) (*http.Response, error) {
	if c := res.StatusCode; c >= 100 && c <= 999 {
		return res, nil
	}
	_ = res.Body.Close()
	return nil, badStatusError(res.StatusCode)
}

// retryable reports whether out, which failed with err, may be sent again.
func retryable(out *http.Request, err error, body *replay) bool {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return body.untouched()
	}
	return idempotent(out) && body.complete()
}

// idempotent reports whether sending r twice does no more than sending it
// once, by its method (RFC 9110, 9.2.2) or an Idempotency-Key header, which
// net/http's own retries honour too.
func idempotent(r *http.Request) bool {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodPut, http.MethodDelete, http.MethodTrace:
		return true
	}
	_, key := r.Header["Idempotency-Key"]
	_, xkey := r.Header["X-Idempotency-Key"]
	return key || xkey
}

// retarget returns a copy of out sent to b instead: url is the outgoing URL
// before Rewrite pointed it at the first backend, and the Host header stays
// the client's.
func retarget(out *http.Request, u *url.URL, b *balancer.Backend, body *replay) *http.Request {
	next := out.Clone(out.Context())
	target := *u
	next.URL = &target
	pr := httputil.ProxyRequest{Out: next}
	pr.SetURL(b.URL)
	next.Host = out.Host
	if body != nil {
		next.Body, next.GetBody = body.attempt(), body.getBody()
	}
	return next
}

// replay keeps what it takes to send a request body again. A body of an
// idempotent request up to the pool's retry_max_body is read whole into a
// pooled buffer first, and every attempt reads a copy; any other body is
// streamed, and can be sent again only if an attempt failed before reading
// any of it. A nil *replay stands for no body.
type replay struct {
	buf  *bytes.Buffer // the body's first bytes, or all of it; nil if none were read
	rest io.ReadCloser // the body after buf; nil when buf holds all of it
	cur  *attemptBody  // the body of the latest attempt
	// failed is set when reading rest failed: the client's body broke.
	failed atomic.Bool
	// refs counts the holders of buf: the retrier, and each attempt's
	// body until the transport closes it, which may be after RoundTrip
	// returned. The last one returns buf to the pool.
	refs atomic.Int32
}

// newReplay prepares out's body for retries, buffering it if it is at most
// limit bytes long; a negative limit buffers nothing.
func newReplay(out *http.Request, limit int64) (*replay, error) {
	r := &replay{rest: out.Body}
	r.refs.Store(1)
	if limit < 0 || !idempotent(out) || out.ContentLength > limit {
		// Only a dial error can send it again, and then nothing was read.
		return r, nil
	}
	r.buf = bodyBuffers.Get().(*bytes.Buffer)
	if out.ContentLength > 0 {
		r.buf.Grow(int(out.ContentLength))
	}
	// One byte over the limit tells a body of unknown length that fits
	// from one that does not.
	n, err := r.buf.ReadFrom(io.LimitReader(out.Body, min(limit, math.MaxInt64-1)+1))
	if err != nil {
		r.release()
		return nil, fmt.Errorf("%w: %w", errRequestBody, err)
	}
	if n <= limit {
		r.rest = nil
	}
	return r, nil
}

// attach returns a shallow copy of out carrying the first attempt's body,
// leaving out to its owner as a RoundTripper must.
func (r *replay) attach(out *http.Request) *http.Request {
	first := new(http.Request)
	*first = *out
	first.Body, first.GetBody = r.attempt(), r.getBody()
	return first
}

// attempt returns a reader of the whole body for one attempt.
func (r *replay) attempt() *attemptBody {
	r.refs.Add(1)
	a := &attemptBody{r: r}
	r.cur = a
	return a
}

// getBody returns a Request.GetBody for a body held whole, so that the
// transport can itself resend it on a stale keep-alive connection; nil for
// a streamed body.
func (r *replay) getBody() func() (io.ReadCloser, error) {
	if r.rest != nil {
		return nil
	}
	return func() (io.ReadCloser, error) { return r.attempt(), nil }
}

// complete reports whether the whole body can be sent again; a nil replay
// is an empty body, which can.
func (r *replay) complete() bool { return r == nil || r.rest == nil }

// untouched reports whether the body can be sent again after the latest
// attempt: it is held whole, or the attempt read none of it.
func (r *replay) untouched() bool {
	if r.complete() || r.cur == nil {
		return true
	}
	r.cur.mu.Lock()
	defer r.cur.mu.Unlock()
	return !r.cur.started
}

// broken reports whether reading the client's body failed.
func (r *replay) broken() bool { return r != nil && r.failed.Load() }

// release drops one hold on the buffer, returning it to the pool with the
// last.
func (r *replay) release() {
	if r.refs.Add(-1) == 0 && r.buf != nil {
		putBodyBuffer(r.buf)
		r.buf = nil
	}
}

// attemptBody is the request body of one attempt: the buffered bytes, then
// the rest of the client's body. Reads and Close may come from different
// goroutines of the transport.
type attemptBody struct {
	r  *replay
	mu sync.Mutex
	// off is the position in r.buf; the buffer is read under mu, so that
	// Close cannot hand it back to the pool in the middle of a copy.
	off             int
	started, closed bool
}

var errBodyClosed = errors.New("proxy: read of a closed request body")

func (a *attemptBody) Read(p []byte) (int, error) {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return 0, errBodyClosed
	}
	a.started = true
	if buf := a.r.buf; buf != nil && a.off < buf.Len() {
		n := copy(p, buf.Bytes()[a.off:])
		a.off += n
		a.mu.Unlock()
		return n, nil
	}
	a.mu.Unlock()
	if a.r.rest == nil {
		return 0, io.EOF
	}
	n, err := a.r.rest.Read(p)
	if err != nil && err != io.EOF {
		// After Close, the error is the one Close caused, not the
		// client's; Close marks the attempt closed before it closes rest.
		a.mu.Lock()
		if !a.closed {
			a.r.failed.Store(true)
		}
		a.mu.Unlock()
	}
	return n, err
}

// Close ends the attempt's hold on the buffer, and closes the client's body
// if the attempt read from it. A body the attempt did not touch stays open
// for the next attempt; ReverseProxy closes it when the request ends.
func (a *attemptBody) Close() error {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil
	}
	a.closed = true
	started := a.started
	a.mu.Unlock()
	var err error
	if started && a.r.rest != nil {
		err = a.r.rest.Close()
	}
	a.r.release()
	return err
}

// maxPooledBody is the largest buffer kept for reuse; bigger ones, from
// pools configured with a large retry_max_body, go to the garbage collector
// rather than pin their memory.
const maxPooledBody = 1 << 20

var bodyBuffers = sync.Pool{New: func() any { return new(bytes.Buffer) }}

func putBodyBuffer(b *bytes.Buffer) {
	if b.Cap() > maxPooledBody {
		return
	}
	b.Reset()
	bodyBuffers.Put(b)
}
