package proxy

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"

	"go.uber.org/zap"

	"github.com/affinityproxy/affinity/balancer"
	"github.com/affinityproxy/affinity/internal/h1"
)

// errRequestBody is wrapped by the retrier when reading the client's body
// failed: the client is at fault, not a backend.
var errRequestBody = errors.New("reading the request body")

// errBodyStalled is wrapped with errRequestBody when an attempt failed
// while the proxy waited for the client's body: a backend that gives up on
// a body too slow to come ends the exchange so.
var errBodyStalled = errors.New("the backend gave up waiting for the client's body")

// retrier is the ReverseProxy's Transport. It sends each attempt with the
// shared transport, records the outcome for passive health, and sends a
// request that failed to another backend when that is safe. Every send of
// a request to a backend is an attempt it makes: neither the h1 client nor
// http.Transport, which keeps no connection to reuse (newTransport), sends
// a request twice by itself. So each counts in the exchange's attempts (the
// access log's), each retry in affinity_retries_total and a debug line with
// its reason; there are at most 1+retries, never two to one backend. A
// failed attempt goes on to another available backend while retries last:
//
//   - whatever its method, when it reached no backend: the connection could
//     not be made (refused, no route, dial timeout, TLS handshake), or it
//     failed before a byte of the request was written (see unsent);
//   - when it may have reached the backend (the connection reset or closed
//     before any response, no response headers in time), only if repeating
//     it is harmless: an idempotent method, or an Idempotency-Key with a
//     value (idempotent);
//
// and either way only if its body can be sent again: none was read yet, or
// the copy kept while it streamed to the first backend holds all that was
// read, up to retry_max_body (replay.go).
//
// A response is final: it is passed on as it is, even a 5xx, and nothing is
// retried once RoundTrip returned one, so no retry follows a byte of a final
// response sent to the client. 1xx interim responses, which ReverseProxy
// relays as they come, do not count: HTTP lets any number of them precede
// the final response, so a retry after one still gives the client a valid
// exchange, whose final response comes from the backend that served it.
type retrier struct {
	next http.RoundTripper
	log  *zap.Logger
	// everyMethod retries every method as if it were idempotent; see
	// Server.RetryEveryMethod.
	everyMethod bool
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
	var body *replay
	if p.retries > 0 && len(p.backends) > 1 && out.Body != nil && out.Body != http.NoBody {
		keep := int64(0)
		if rt.everyMethod || idempotent(out) {
			keep = p.maxBody
		}
		body = newReplay(out, keep)
		defer body.done()
		out = body.attach(out)
	}
	if ex.body != nil {
		out = ex.body.traced(out)
	}
	tried := &ex.tried
	for n := 0; ; n++ {
		b := ex.backend
		tried[n] = b
		ex.attempts = n + 1
		start := clock()
		res, err := next.RoundTrip(out)
		if err == nil {
			if res, err = relayable(res); err != nil {
				// The backend is failing, but it answered: sending
				// the request again could repeat what it did.
				p.failed(b)
				return nil, err
			}
			p.connected()
			st := statsOf(b)
			st.answered(res.StatusCode, clock()-start)
			if err := relayedSwitch(out, res); err != nil {
				// The backend answered: passive health counts the
				// answer, and the client's 502 is no failure of it.
				p.answered(b, res.StatusCode)
				return nil, err
			}
			if ex.long = longOf(out.Method, res); ex.long != notLong {
				st.began(ex.long)
				ex.client.lasts(ex.long)
			}
			p.answered(b, res.StatusCode)
			if l := p.snap.Load().learner; l != nil {
				// Before the proxy's own cookie is added: it is
				// not the backend's to learn from.
				l.Learn(out, b, res.Header)
			}
			if ex.setCookie != "" {
				ex.addCookie(res.Header)
			}
			return res, nil
		}
		if cerr := ex.body.failure(); cerr != nil {
			// The client's body broke off, which may also have
			// cancelled the request: the body's error is the one to
			// answer (400, or 413 past max_body), not the backend's.
			return nil, fmt.Errorf("%w: %w", errRequestBody, cerr)
		}
		if out.Context().Err() != nil {
			// The client left, or shutdown ran out of time: neither is
			// the backend's failure, and nobody waits for a retry.
			return nil, err
		}
		if localResource(err) {
			// The proxy's host, not the backend, ran out: no
			// failure of it, and another would fail alike.
			return nil, p.localFailure(err, false)
		}
		if ex.body.stalled() {
			// The client was too slow for the backend, which no other
			// backend would wait for longer.
			return nil, fmt.Errorf("%w: %w: %w", errRequestBody, errBodyStalled, err)
		}
		p.failed(b)
		reason := rt.retryReason(out, err, body)
		if n >= p.retries || reason == "" {
			return nil, err
		}
		// Begun on nb already: a retry goes only where max_conns
		// leaves room, and waits for none.
		nb, setCookie := p.withRoom(out, tried[:n+1])
		if nb == nil {
			return nil, err
		}
		p.retried.Add(1)
		if ce := rt.log.Check(zap.DebugLevel, "retrying request"); ce != nil {
			ce.Write(zap.String("pool", p.name), zap.String("backend", b.ID), zap.String("next", nb.ID),
				zap.Int("attempt", n+2), zap.String("method", out.Method), zap.String("reason", reason),
				zap.Error(err))
		}
		finished(b)
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

// Why a failed attempt is sent to another backend, as logged.
const (
	reasonUnsent      = "not sent" // it reached no backend
	reasonIdempotent  = "idempotent"
	reasonEveryMethod = "every method" // Server.RetryEveryMethod
)

// retryReason returns why out, whose attempt failed with err, may be sent
// again, or "" if it may not.
func (rt *retrier) retryReason(out *http.Request, err error, body *replay) string {
	switch {
	case !body.resendable():
		return ""
	case unsent(err):
		return reasonUnsent
	case idempotent(out):
		return reasonIdempotent
	case rt.everyMethod:
		return reasonEveryMethod
	}
	return ""
}

// unsent reports whether the attempt that failed with err reached no
// backend: its connection could not be made, or failed before a byte of
// the request was written on it (h1.ErrNotSent). A protocol switch, which
// http.Transport sends, counts as unsent when its dial failed.
func unsent(err error) bool {
	var op *net.OpError
	return errors.Is(err, h1.ErrNotSent) || errors.As(err, &op) && op.Op == "dial"
}

// idempotent reports whether sending r twice does no more than sending it
// once: by its method (RFC 9110, 9.2.2), or by an Idempotency-Key header
// with a value (the IETF draft's header, draft-ietf-httpapi-idempotency-key-
// header, which the demo app honours). X-Idempotency-Key, which net/http's
// own retries honour too, does not count: a backend that knows only the
// draft's name would run a POST carrying it twice.
func idempotent(r *http.Request) bool {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodPut, http.MethodDelete, http.MethodTrace:
		return true
	}
	return r.Header.Get("Idempotency-Key") != ""
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
		next.Body = body.attempt()
	}
	return next
}
