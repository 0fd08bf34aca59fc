package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"testing/iotest"
	"time"

	"github.com/affinityproxy/affinity/balancer"
	"github.com/affinityproxy/affinity/config"
	"github.com/affinityproxy/affinity/internal/h1"
	"github.com/affinityproxy/affinity/internal/testutil"
)

// idempotencyKey marks a request as safe to repeat.
func idempotencyKey(r *http.Request) { r.Header.Set("Idempotency-Key", "k-1") }

// TestRetryDeadBackend: a refused connection sent nothing, so any request,
// whatever its method, goes on to another backend.
func TestRetryDeadBackend(t *testing.T) {
	bs := startBackends(t, "a", "b")
	dead := testutil.ClosedURL(t)
	pc := poolOf("web", "round-robin", balancer.Options{}, bs...)
	pc.Backends = append([]config.Backend{{URL: dead, Name: "dead", Weight: 1}}, pc.Backends...)
	pc.Retries = config.DefaultRetries()
	log, logs := observed()
	s, u := startProxy(t, catchAll(pc), log)
	c := testutil.Client(t)
	const n = 9
	for i := range n {
		method, body := http.MethodGet, io.Reader(nil)
		if i%2 == 1 {
			method, body = http.MethodPost, strings.NewReader("form=1")
		}
		r := send(t, c, method, u.String()+"/", body, nil)
		if r.status != http.StatusOK || (r.body != "a" && r.body != "b") {
			t.Fatalf("%s #%d: %d %q, want 200 from a or b", method, i, r.status, r.body)
		}
		if strings.Contains(r.body, dead.Host) || strings.Contains(headerText(r.header), dead.Host) {
			t.Fatalf("the response tells the failed backend's address: %v %q", r.header, r.body)
		}
	}
	if got := bs[0].Hits() + bs[1].Hits(); got != n {
		t.Errorf("a and b answered %d requests, want %d", got, n)
	}
	p := s.state.Load().pools[0]
	if p.retried.Load() != 3 {
		t.Errorf("%d retries, want 3: one per request picked for the dead backend", p.retried.Load())
	}
	retries := entries(logs, "retrying request")
	if len(retries) != 3 || retries[0].Level.String() != "debug" || retries[0].ContextMap()["backend"] != "dead" ||
		retries[0].ContextMap()["reason"] != reasonUnsent {
		t.Errorf("retry lines %v, want 3 at debug naming the dead backend and the reason %q", retries, reasonUnsent)
	}
	if n := len(entries(logs, "backend request failed")); n != 0 {
		t.Errorf("%d failures logged, want none: every request was served", n)
	}
}

func headerText(h http.Header) string {
	var b strings.Builder
	_ = h.Write(&b)
	return b.String()
}

// TestRetryAfterSend covers failures after the request may have reached the
// backend: retried only when repeating it is harmless and its body was kept.
func TestRetryAfterSend(t *testing.T) {
	const maxBody = 1024
	small, large := strings.Repeat("s", maxBody), strings.Repeat("L", maxBody+1)
	tests := []struct {
		name    string
		method  string
		body    string
		chunked bool // send the body without a Content-Length
		edit    func(*http.Request)
		retried bool
	}{
		{"GET", http.MethodGet, "", false, nil, true},
		{"HEAD", http.MethodHead, "", false, nil, true},
		{"DELETE", http.MethodDelete, "", false, nil, true},
		{"PUT with a body at the limit", http.MethodPut, small, false, nil, true},
		{"PUT with a chunked body at the limit", http.MethodPut, small, true, nil, true},
		{"POST", http.MethodPost, small, false, nil, false},
		{"POST without a body", http.MethodPost, "", false, nil, false},
		{"POST with Idempotency-Key", http.MethodPost, small, false, idempotencyKey, true},
		{"PUT with a body over the limit", http.MethodPut, large, false, nil, false},
		{"PUT with a chunked body over the limit", http.MethodPut, large, true, nil, false},
	}
	failures := []struct {
		name   string
		start  func(t *testing.T) (*url.URL, func() int64)
		status int // answered when the request is not retried
	}{
		{"reset", func(t *testing.T) (*url.URL, func() int64) {
			u, hits := resetBackend(t)
			return u, hits.Load
		}, http.StatusBadGateway},
		{"hung", func(t *testing.T) (*url.URL, func() int64) {
			b := startCtl(t, "hung")
			b.hang.Store(true)
			return b.URL, b.hits.Load
		}, http.StatusGatewayTimeout},
	}
	for _, f := range failures {
		for _, tt := range tests {
			t.Run(f.name+"/"+tt.name, func(t *testing.T) {
				t.Parallel()
				badURL, badHits := f.start(t)
				good := startCtl(t, "good")
				pc := &config.Pool{Name: "web", Balancer: config.Balancer{Type: "round-robin"},
					Backends: []config.Backend{{URL: badURL, Name: "bad"}, {URL: good.URL, Name: "good"}},
					Retries:  config.Retries{Count: 2, MaxBody: maxBody}}
				cfg := catchAll(pc)
				cfg.Timeouts.ResponseHeader = 100 * time.Millisecond
				_, u := startProxy(t, cfg, nil)

				var body io.Reader
				if tt.body != "" {
					body = strings.NewReader(tt.body)
					if tt.chunked {
						body = io.MultiReader(body) // hides the length
					}
				}
				// Round-robin sends the first request to the first backend.
				r := send(t, testutil.Client(t), tt.method, u.String()+"/", body, tt.edit)
				if badHits() != 1 {
					t.Errorf("the failing backend saw %d requests, want 1", badHits())
				}
				if !tt.retried {
					if r.status != f.status || good.hits.Load() != 0 {
						t.Errorf("got %d, good backend saw %d; want %d and no retry", r.status, good.hits.Load(), f.status)
					}
					return
				}
				if r.status != http.StatusOK || good.hits.Load() != 1 {
					t.Fatalf("got %d %q, good backend saw %d; want 200 from a retry", r.status, r.body, good.hits.Load())
				}
				if got, want := r.header.Get(bodyHeader), describeBody([]byte(tt.body)); got != want {
					t.Errorf("the retry carried body %s, want %s", got, want)
				}
			})
		}
	}
}

// TestRetryEveryMethod: with RetryEveryMethod, a request whose backend
// did not answer in time goes to another whatever its method, as long as
// its body was kept; the reason logged says which rule allowed it.
func TestRetryEveryMethod(t *testing.T) {
	const maxBody = 1024
	tests := []struct {
		name, method, body string
		reason             string // "" when not retried
	}{
		{"POST", http.MethodPost, "order=1", reasonEveryMethod},
		{"POST without a body", http.MethodPost, "", reasonEveryMethod},
		{"PATCH", http.MethodPatch, "x", reasonEveryMethod},
		{"GET", http.MethodGet, "", reasonIdempotent},
		{"POST with a body over the limit", http.MethodPost, strings.Repeat("L", maxBody+1), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			hung, good := startCtl(t, "hung"), startCtl(t, "good")
			hung.hang.Store(true)
			pc := &config.Pool{Name: "web", Balancer: config.Balancer{Type: "round-robin"},
				Backends: []config.Backend{{URL: hung.URL, Name: "hung"}, {URL: good.URL, Name: "good"}},
				Retries:  config.Retries{Count: 2, MaxBody: maxBody}}
			cfg := catchAll(pc)
			cfg.Timeouts.ResponseHeader = 100 * time.Millisecond
			log, logs := observed()
			s, err := NewServer(cfg, log)
			if err != nil {
				t.Fatal(err)
			}
			s.RetryEveryMethod()
			u := testutil.Serve(t, s)
			var body io.Reader
			if tt.body != "" {
				body = strings.NewReader(tt.body)
			}
			r := send(t, testutil.Client(t), tt.method, u.String()+"/", body, nil)
			if hung.hits.Load() != 1 {
				t.Errorf("the hung backend saw %d requests, want 1", hung.hits.Load())
			}
			retries := entries(logs, "retrying request")
			if tt.reason == "" {
				if r.status != http.StatusGatewayTimeout || good.hits.Load() != 0 || len(retries) != 0 {
					t.Errorf("got %d, good backend saw %d, %d retries logged; want 504 and no retry", r.status, good.hits.Load(), len(retries))
				}
				return
			}
			if r.status != http.StatusOK || good.hits.Load() != 1 {
				t.Fatalf("got %d %q, good backend saw %d; want 200 from a retry", r.status, r.body, good.hits.Load())
			}
			if got, want := r.header.Get(bodyHeader), describeBody([]byte(tt.body)); got != want {
				t.Errorf("the retry carried body %s, want %s", got, want)
			}
			if len(retries) != 1 || retries[0].ContextMap()["reason"] != tt.reason {
				t.Errorf("retry lines %v, want one with the reason %q", retries, tt.reason)
			}
			if warned := entries(logs, "retrying requests of every method: a POST whose answer is late may run twice, on two backends (a setting for experiments)"); len(warned) != 1 {
				t.Errorf("%d warnings of the setting at start, want 1", len(warned))
			}
		})
	}
}

// TestRetryPassesResponsesThrough: an answer, even a 500, is the backend's
// to give, and is not retried.
func TestRetryPassesResponsesThrough(t *testing.T) {
	var calls atomic.Int64
	bu := testutil.StartServer(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		calls.Add(1)
		w.Header().Set("X-App", "broken")
		http.Error(w, "boom", http.StatusInternalServerError)
	}))
	other := testutil.StartBackend(t, "other")
	pc := &config.Pool{Name: "web", Balancer: config.Balancer{Type: "round-robin"},
		Backends: []config.Backend{{URL: bu, Name: "broken"}, {URL: other.URL, Name: "other"}},
		Retries:  config.DefaultRetries()}
	s, u := startProxy(t, catchAll(pc), nil)
	r := get(t, testutil.Client(t), u.String()+"/", nil)
	if r.status != http.StatusInternalServerError || r.body != "boom\n" || r.header.Get("X-App") != "broken" {
		t.Errorf("got %d %q %v, want the backend's 500 as it was", r.status, r.body, r.header)
	}
	if calls.Load() != 1 || other.Hits() != 0 || s.state.Load().pools[0].retried.Load() != 0 {
		t.Errorf("backend called %d times, other %d, retries %d; want 1, 0, 0",
			calls.Load(), other.Hits(), s.state.Load().pools[0].retried.Load())
	}
}

// TestRetryNeverSameBackendTwice: every backend fails; each is tried once,
// and the client gets the last failure.
func TestRetryNeverSameBackendTwice(t *testing.T) {
	tests := []struct {
		name     string
		backends int
		retries  int
		tried    int
	}{
		{"retries to spare", 3, 5, 3},
		{"retries run out", 4, 1, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pc := &config.Pool{Name: "web", Balancer: config.Balancer{Type: "round-robin"},
				Retries: config.Retries{Count: tt.retries}}
			var hits []*atomic.Int64
			for i := range tt.backends {
				u, h := resetBackend(t)
				hits = append(hits, h)
				pc.Backends = append(pc.Backends, config.Backend{URL: u, Name: string(rune('a' + i))})
			}
			s, u := startProxy(t, catchAll(pc), nil)
			if r := get(t, testutil.Client(t), u.String()+"/", nil); r.status != http.StatusBadGateway {
				t.Errorf("got %d, want 502", r.status)
			}
			total := int64(0)
			for i, h := range hits {
				if h.Load() > 1 {
					t.Errorf("backend %d saw the request %d times", i, h.Load())
				}
				total += h.Load()
			}
			if total != int64(tt.tried) || s.state.Load().pools[0].retried.Load() != uint64(tt.tried-1) {
				t.Errorf("%d attempts, %d retries counted; want %d, %d", total, s.state.Load().pools[0].retried.Load(), tt.tried, tt.tried-1)
			}
		})
	}
}

// TestRetryClientBodyFails: a client body that breaks off is the client's
// failure: it gets a 400, and no backend is blamed or asked again.
func TestRetryClientBodyFails(t *testing.T) {
	tests := []struct {
		name     string
		method   string
		backends int
		retries  int
		passive  bool
	}{
		{"copied for a retry", http.MethodPut, 2, 2, true},
		{"not copied, pool that could retry", http.MethodPost, 2, 2, true},
		{"passive health only", http.MethodPost, 1, 0, true},
		{"neither retries nor passive health", http.MethodPut, 1, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bs := startBackends(t, "a", "b")[:tt.backends]
			pc := poolOf("web", "round-robin", balancer.Options{}, bs...)
			pc.Retries = config.Retries{Count: tt.retries, MaxBody: 1024}
			if tt.passive {
				pc.Passive = &config.Passive{Failures: 1, Eject: time.Minute, MaxEject: time.Minute}
			}
			log, logs := observed()
			s, err := NewServer(catchAll(pc), log)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = s.Shutdown(t.Context()) }()
			body := io.MultiReader(strings.NewReader("partial"), iotest.ErrReader(errors.New("client went away")))
			req := httptest.NewRequest(tt.method, "/", body)
			req.ContentLength = -1
			rec := httptest.NewRecorder()
			s.ServeHTTP(rec, req)
			if rec.Code != http.StatusBadRequest {
				t.Errorf("got %d, want 400", rec.Code)
			}
			p := s.state.Load().pools[0]
			for _, b := range p.backends {
				if n := b.Succeed(); n != 0 {
					t.Errorf("backend %s blamed for %d failures", b.ID, n)
				}
			}
			hits := int64(0)
			for _, b := range bs {
				hits += b.Hits()
			}
			if hits > 1 || p.retried.Load() != 0 {
				t.Errorf("backends asked %d times, %d retries; want at most one attempt", hits, p.retried.Load())
			}
			if n := len(entries(logs, "backend request failed")); n != 0 {
				t.Errorf("a client failure was logged as the backend's %d times", n)
			}
		})
	}
}

func TestIdempotent(t *testing.T) {
	for _, tt := range []struct {
		method string
		header string
		value  string
		want   bool
	}{
		{http.MethodGet, "", "", true}, {http.MethodHead, "", "", true}, {http.MethodOptions, "", "", true},
		{http.MethodPut, "", "", true}, {http.MethodDelete, "", "", true}, {http.MethodTrace, "", "", true},
		{http.MethodPost, "", "", false}, {http.MethodPatch, "", "", false}, {"CONNECT", "", "", false},
		{http.MethodPost, "Idempotency-Key", "k-1", true}, {http.MethodPatch, "idempotency-key", "k-1", true},
		{http.MethodPost, "Idempotency-Key", "", false},
		{http.MethodPost, "X-Idempotency-Key", "k-1", false},
	} {
		r := httptest.NewRequest(tt.method, "/", nil)
		if tt.header != "" {
			r.Header.Set(tt.header, tt.value)
		}
		if got := idempotent(r); got != tt.want {
			t.Errorf("idempotent(%s, %s: %q) = %v, want %v", tt.method, tt.header, tt.value, got, tt.want)
		}
	}
}

// TestUnsent: which failures mean that nothing of the request reached a
// backend, by the errors the h1 client and http.Transport return.
func TestUnsent(t *testing.T) {
	dial := &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}
	read := &net.OpError{Op: "read", Net: "tcp", Err: errors.New("connection reset by peer")}
	for _, tt := range []struct {
		name string
		err  error
		want bool
	}{
		{"dial failed", fmt.Errorf("wrapped: %w", dial), true},
		{"the h1 client sent nothing", fmt.Errorf("wrapped: %w", h1.ErrNotSent), true},
		{"reset after the request", read, false},
		{"malformed response", errors.New(`malformed HTTP status code "x"`), false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := unsent(tt.err); got != tt.want {
				t.Errorf("unsent = %v, want %v", got, tt.want)
			}
		})
	}
}

// TestReplay: the first attempt streams the body through and keeps a copy
// within the limit; a later attempt reads the copy, then the rest, and is
// possible only while the copy holds all that was read.
func TestReplay(t *testing.T) {
	tests := []struct {
		name       string
		body       string
		length     int64 // Content-Length; -1 unknown
		limit      int64 // as the retrier passes it: 0 for a body not to keep
		read       int   // bytes the first attempt reads before it fails; -1 all
		resendable bool
	}{
		{"small PUT", "hello", 5, 8, -1, true},
		{"chunked PUT at the limit", "12345678", -1, 8, -1, true},
		{"chunked PUT over the limit", "123456789", -1, 8, -1, false},
		{"PUT declared over the limit", "123456789", 9, 8, -1, false},
		{"PUT declared over the limit, nothing read", "123456789", 9, 8, 0, true},
		{"chunked PUT over the limit, first bytes read", "123456789", -1, 8, 3, true},
		{"POST", "hello", 5, 0, -1, false},
		{"POST, nothing read", "hello", 5, 0, 0, true},
		{"empty chunked body", "", -1, 0, -1, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := httptest.NewRequest(http.MethodPut, "/", strings.NewReader(tt.body))
			out.ContentLength = tt.length
			r := newReplay(out, tt.limit)
			first := r.attach(out)
			if first == out || out.Body == first.Body || first.GetBody != nil {
				t.Fatal("attach changed the caller's request, or left the transport a way to resend")
			}
			var got []byte
			var err error
			if tt.read < 0 {
				got, err = io.ReadAll(first.Body)
			} else {
				got = make([]byte, tt.read)
				_, err = io.ReadFull(first.Body, got)
			}
			if err != nil || !strings.HasPrefix(tt.body, string(got)) || (tt.read < 0 && string(got) != tt.body) {
				t.Fatalf("first attempt read %q, %v", got, err)
			}
			_ = first.Body.Close()
			if _, err := first.Body.Read(make([]byte, 1)); !errors.Is(err, errBodyClosed) {
				t.Errorf("read after close: %v, want errBodyClosed", err)
			}
			if r.resendable() != tt.resendable {
				t.Fatalf("resendable = %v, want %v", r.resendable(), tt.resendable)
			}
			if tt.resendable {
				second := r.attempt()
				if got, err := io.ReadAll(second); err != nil || string(got) != tt.body {
					t.Errorf("second attempt read %q, %v; want %q", got, err, tt.body)
				}
				_ = second.Close()
			}
			r.done()
			if r.refs != 0 || r.buf != nil {
				t.Errorf("%d holds left on the copy after every attempt closed", r.refs)
			}
		})
	}
}

// TestReplayDone: once the retrier returned, an attempt still streaming
// the body keeps no copy, and its copy lives until the attempt closes.
func TestReplayDone(t *testing.T) {
	out := httptest.NewRequest(http.MethodPut, "/", strings.NewReader("0123456789"))
	r := newReplay(out, 64)
	first := r.attach(out)
	if _, err := io.ReadFull(first.Body, make([]byte, 4)); err != nil {
		t.Fatal(err)
	}
	second := r.attempt()
	if _, err := io.ReadFull(second, make([]byte, 2)); err != nil {
		t.Fatal(err)
	}
	r.done()
	if r.buf == nil {
		t.Fatal("the copy went while an attempt still reads it")
	}
	if got, err := io.ReadAll(second); err != nil || string(got) != "23456789" {
		t.Fatalf("read %q, %v after done", got, err)
	}
	if r.resendable() {
		t.Error("the copy grew after done")
	}
	_ = first.Body.Close()
	_ = second.Close()
	if r.refs != 0 || r.buf != nil {
		t.Errorf("%d holds left on the copy", r.refs)
	}
}

func TestReplayBufferReuse(t *testing.T) {
	out := httptest.NewRequest(http.MethodPut, "/", bytes.NewReader(make([]byte, maxPooledBody+1)))
	r := newReplay(out, maxPooledBody+1)
	first := r.attach(out)
	if _, err := io.ReadAll(first.Body); err != nil {
		t.Fatal(err)
	}
	buf := r.buf
	_ = first.Body.Close()
	r.done()
	if buf.Len() == 0 {
		t.Error("a buffer too big to pool was reset and pooled")
	}
}

// TestRetryNotSentOrDelivered: a request none of which reached a backend
// goes to another whatever its method, logged as not sent: a refused dial,
// a TLS handshake that failed. One the backend read, and answered with a
// head no client may be sent, was delivered: a POST without a key is not
// sent again (502), a GET is.
func TestRetryNotSentOrDelivered(t *testing.T) {
	certs := testutil.NewCerts(t)
	untrusted := testutil.NewCerts(t) // the pool trusts certs' authority only
	tests := []struct {
		name   string
		bad    func(t *testing.T) (*url.URL, func() int) // the first backend, and the requests it read
		method string
		reason string // the retry's; "" for none
	}{
		{"refused dial, POST", func(t *testing.T) (*url.URL, func() int) {
			u := testutil.ClosedURL(t)
			u.Scheme = "https"
			return u, func() int { return 0 }
		}, http.MethodPost, reasonUnsent},
		{"TLS handshake failed, POST", func(t *testing.T) (*url.URL, func() int) {
			b := connBackend(t, untrusted, func(testutil.RawRequest) testutil.Reaction {
				return testutil.Reaction{Raw: "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nbad"}
			})
			return b.BaseURL(), func() int { return len(b.Requests()) }
		}, http.MethodPost, reasonUnsent},
		{"malformed head, POST", malformedBackend(certs), http.MethodPost, ""},
		{"malformed head, GET", malformedBackend(certs), http.MethodGet, reasonIdempotent},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			badURL, badRead := tt.bad(t)
			good := connBackend(t, certs, func(r testutil.RawRequest) testutil.Reaction {
				return testutil.Reaction{Raw: "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ngood"}
			})
			pc := &config.Pool{Name: "web", Balancer: config.Balancer{Type: "round-robin"},
				Backends: []config.Backend{{URL: badURL, Name: "bad"}, {URL: good.BaseURL(), Name: "good"}},
				Retries:  config.Retries{Count: 2, MaxBody: 1024}, TLS: poolTLS(certs)}
			log, logs := observed()
			_, u := startProxy(t, catchAll(pc), log)
			var body io.Reader
			if tt.method == http.MethodPost {
				body = strings.NewReader("order=1")
			}
			// Round-robin sends the first request to the first backend.
			r := send(t, testutil.Client(t), tt.method, u.String()+"/", body, nil)
			retries := entries(logs, "retrying request")
			if tt.reason == "" {
				if r.status != http.StatusBadGateway || len(good.Requests()) != 0 || len(retries) != 0 {
					t.Errorf("got %d %q, good backend read %d, %d retries; want 502 and no retry",
						r.status, r.body, len(good.Requests()), len(retries))
				}
				if n := badRead(); n != 1 {
					t.Errorf("the failing backend read %d requests, want 1", n)
				}
				return
			}
			if r.status != http.StatusOK || r.body != "good" || len(good.Requests()) != 1 {
				t.Fatalf("got %d %q, good backend read %d; want 200 from a retry", r.status, r.body, len(good.Requests()))
			}
			want := 1
			if tt.reason == reasonUnsent {
				want = 0
			}
			if n := badRead(); n != want {
				t.Errorf("the failing backend read %d requests, want %d", n, want)
			}
			if len(retries) != 1 || retries[0].ContextMap()["reason"] != tt.reason {
				t.Errorf("retry lines %v, want one with the reason %q", retries, tt.reason)
			}
		})
	}
}

// malformedBackend returns a start function of an https backend whose
// certificate certs signs and that answers every request it reads with a
// status line no parser takes.
func malformedBackend(certs *testutil.Certs) func(t *testing.T) (*url.URL, func() int) {
	return func(t *testing.T) (*url.URL, func() int) {
		b := connBackend(t, certs, func(testutil.RawRequest) testutil.Reaction {
			return testutil.Reaction{Raw: "HTTP/1.1 2x0 Broken\r\nContent-Length: 0\r\n\r\n"}
		})
		return b.BaseURL(), func() int { return len(b.Requests()) }
	}
}
