package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest/observer"

	"github.com/affinityproxy/affinity/balancer"
	"github.com/affinityproxy/affinity/config"
	"github.com/affinityproxy/affinity/internal/testutil"
)

// primed is how many keep-alive connections to each backend a test opens
// before the request it watches.
const primed = 3

// dyingBackend is a testutil.ConnBackend (in TLS with certs, unless nil)
// that answers requests on new connections, and on a reused one reads the
// request (body included), records it, and closes or resets the connection
// unanswered: a crash, a deploy, a keep-alive timeout racing the request.
// Requests to /prime are held until primed of them are in, so that each
// takes a connection of its own.
func dyingBackend(t *testing.T, certs *testutil.Certs, id string, end testutil.ConnEnd) *testutil.ConnBackend {
	allPrimed := barrier(primed)
	return connBackend(t, certs, func(r testutil.RawRequest) testutil.Reaction {
		if strings.HasPrefix(r.Target, "/prime") {
			allPrimed()
		} else if r.Reused {
			return testutil.Reaction{End: end}
		}
		head := "HTTP/1.1 200 OK\r\nContent-Length: " + strconv.Itoa(len(id)) + "\r\n\r\n"
		if r.Method == http.MethodHead {
			return testutil.Reaction{Raw: head}
		}
		return testutil.Reaction{Raw: head + id}
	})
}

// attemptRequest is a request TestEveryAttemptCounted sends.
type attemptRequest struct {
	method string
	header string // a header set to value, if not ""
	value  string
	body   int // bytes of body; 0 for none
}

func (ar attemptRequest) send(t *testing.T, c *http.Client, target string) reply {
	t.Helper()
	var body io.Reader
	if ar.body > 0 {
		body = strings.NewReader(strings.Repeat("b", ar.body))
	}
	return send(t, c, ar.method, target, body, func(r *http.Request) {
		if ar.header != "" {
			r.Header.Set(ar.header, ar.value)
		}
	})
}

// TestEveryAttemptCounted: every backend closes or resets a reused
// connection once it has read a request on it; each has several idle
// connections from the proxy when the request comes. However many idle
// connections there are, the request reaches each backend at most once,
// and goes on to another only when the retry rule allows it: at most
// 1+retries sends, each counted in the access log's attempts, each retry in
// affinity_retries_total and a debug line giving its reason.
func TestEveryAttemptCounted(t *testing.T) {
	const maxBody = 1024
	small, large := maxBody/2, 2*maxBody
	tests := []struct {
		name      string
		req       attemptRequest
		retryable bool
	}{
		{"GET", attemptRequest{method: "GET"}, true},
		{"HEAD", attemptRequest{method: "HEAD"}, true},
		{"DELETE", attemptRequest{method: "DELETE"}, true},
		{"PUT below retry_max_body", attemptRequest{method: "PUT", body: small}, true},
		{"PUT above retry_max_body", attemptRequest{method: "PUT", body: large}, false},
		{"POST", attemptRequest{method: "POST", body: small}, false},
		{"POST without a body", attemptRequest{method: "POST"}, false},
		{"POST with Idempotency-Key", attemptRequest{"POST", "Idempotency-Key", "k-1", small}, true},
		{"POST with Idempotency-Key, no body", attemptRequest{"POST", "Idempotency-Key", "k-1", 0}, true},
		{"POST with Idempotency-Key above retry_max_body", attemptRequest{"POST", "Idempotency-Key", "k-1", large}, false},
		{"POST with an empty Idempotency-Key, no body", attemptRequest{"POST", "Idempotency-Key", "", 0}, false},
		{"POST with X-Idempotency-Key", attemptRequest{"POST", "X-Idempotency-Key", "k-1", small}, false},
		{"POST with X-Idempotency-Key, no body", attemptRequest{"POST", "X-Idempotency-Key", "k-1", 0}, false},
	}
	ends := []struct {
		name string
		end  testutil.ConnEnd
	}{{"closed", testutil.CloseConn}, {"reset", testutil.ResetConn}}
	for _, scheme := range schemes {
		for _, e := range ends {
			for _, retries := range []int{0, 2} {
				for _, tt := range tests {
					name := scheme + "/" + e.name + "/retries " + strconv.Itoa(retries) + "/" + tt.name
					t.Run(name, func(t *testing.T) {
						t.Parallel()
						checkAttempts(t, scheme, e.end, retries, maxBody, tt.req, tt.retryable)
					})
				}
			}
		}
	}
}

func checkAttempts(t *testing.T, scheme string, end testutil.ConnEnd, retries int, maxBody int64, ar attemptRequest, retryable bool) {
	ids := []string{"a", "b", "c"}
	certs := certsFor(t, scheme)
	pc := &config.Pool{Name: "web", Balancer: config.Balancer{Type: "round-robin"},
		Retries: config.Retries{Count: retries, MaxBody: maxBody}, TLS: poolTLS(certs)}
	bs := make([]*testutil.ConnBackend, len(ids))
	for i, id := range ids {
		bs[i] = dyingBackend(t, certs, id, end)
		pc.Backends = append(pc.Backends, config.Backend{URL: bs[i].BaseURL(), Name: id})
	}
	cfg := catchAll(pc)
	cfg.Log.Access = true
	// Many connections at once, in TLS to https backends, from many
	// tests: a machine busy with other work must not time them out.
	cfg.Timeouts.Connect = waitFor
	log, logs := observed()
	s, u := startProxy(t, cfg, log)
	c := testutil.Client(t)

	// Each backend gets primed requests at once, so that the proxy holds
	// as many idle connections to it, of the client this request goes
	// through.
	var wg sync.WaitGroup
	for i := range primed * len(ids) {
		wg.Go(func() {
			if r := ar.send(t, c, u.String()+"/prime/"+strconv.Itoa(i)); r.status != http.StatusOK {
				t.Errorf("priming request %d: %d", i, r.status)
			}
		})
	}
	wg.Wait()

	if r := ar.send(t, c, u.String()+"/watched"); r.status != http.StatusBadGateway {
		t.Errorf("got %d %q, want 502: every backend fails", r.status, r.body)
	}
	want := 1
	if retryable {
		want = 1 + retries
	}
	total := 0
	for i, b := range bs {
		n := 0
		for _, r := range b.Requests() {
			if r.Target == "/watched" {
				n++
			}
		}
		if n > 1 {
			t.Errorf("backend %s executed the request %d times", ids[i], n)
		}
		total += n
	}
	if total != want {
		t.Errorf("the request reached %d backends, want %d", total, want)
	}
	var attempts []int64
	for _, e := range accessLines(logs) {
		if e.ContextMap()["path"] == "/watched" {
			attempts = append(attempts, e.ContextMap()["attempts"].(int64))
		}
	}
	if len(attempts) != 1 || attempts[0] != int64(want) {
		t.Errorf("access log attempts %v, want [%d]", attempts, want)
	}
	if n := s.state.Load().pools[0].retried.Load(); n != uint64(want-1) {
		t.Errorf("affinity_retries_total %d, want %d", n, want-1)
	}
	retriesLogged := entries(logs, "retrying request")
	if len(retriesLogged) != want-1 {
		t.Errorf("%d retries logged, want %d", len(retriesLogged), want-1)
	}
	for _, e := range retriesLogged {
		if e.Level.String() != "debug" || e.ContextMap()["reason"] != reasonIdempotent {
			t.Errorf("retry logged at %s with reason %v, want debug and %q", e.Level, e.ContextMap()["reason"], reasonIdempotent)
		}
	}
}

// accessLines returns the access log's entries.
func accessLines(logs *observer.ObservedLogs) []observer.LoggedEntry {
	return logs.Filter(func(e observer.LoggedEntry) bool { return e.LoggerName == AccessLogName }).AllUntimed()
}

// firstByteBackend answers with the body it read, after it reported on got
// that the first byte of the body had come (or, if none comes, the head).
func firstByteBackend(t *testing.T, got chan<- struct{}) *config.Backend {
	u := testutil.StartServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		first := make([]byte, 1)
		n, _ := io.ReadFull(r.Body, first)
		got <- struct{}{}
		rest, _ := io.ReadAll(r.Body)
		_, _ = w.Write(append(first[:n], rest...))
	}))
	return &config.Backend{URL: u, Name: "first"}
}

// midBodyBackend reads a request's head and the first byte of its body,
// reports it on got, and resets the connection.
func midBodyBackend(t *testing.T, got chan<- struct{}) *config.Backend {
	ln := testutil.Listen(t)
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				req, err := http.ReadRequest(bufio.NewReader(c))
				if err != nil {
					return
				}
				if _, err := io.ReadFull(req.Body, make([]byte, 1)); err != nil {
					return
				}
				got <- struct{}{}
				_ = c.(*net.TCPConn).SetLinger(0)
			})
		}
	})
	t.Cleanup(func() {
		_ = ln.Close()
		wg.Wait()
	})
	return &config.Backend{URL: &url.URL{Scheme: "http", Host: ln.Addr().String()}, Name: "dying"}
}

// streamedPut sends a chunked PUT through c whose body is "a", then, once
// arrived says the "a" reached a backend, "b"; it returns the reply.
func streamedPut(t *testing.T, c *http.Client, target string, arrived <-chan struct{}) reply {
	t.Helper()
	pr, pw := io.Pipe()
	replied := make(chan reply, 1)
	go func() { replied <- send(t, c, http.MethodPut, target, pr, nil) }()
	if _, err := io.WriteString(pw, "a"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-arrived:
	case <-time.After(waitFor):
		_ = pw.CloseWithError(io.ErrUnexpectedEOF)
		t.Fatalf("the first byte of the body did not reach the backend before the rest was sent")
	}
	_, _ = io.WriteString(pw, "b")
	_ = pw.Close()
	return <-replied
}

// TestBodyStreamsThrough: that a request may be retried never holds its
// body back. A chunked PUT reaches the backend byte by byte as the client
// sends it; when the backend fails after the first byte, the copy kept
// meanwhile and the rest of the client's body go to the next one.
func TestBodyStreamsThrough(t *testing.T) {
	pool := func(bs ...config.Backend) *config.Config {
		return catchAll(&config.Pool{Name: "web", Balancer: config.Balancer{Type: "round-robin"},
			Backends: bs, Retries: config.Retries{Count: 2, MaxBody: 1024}})
	}
	t.Run("first byte before the rest", func(t *testing.T) {
		got := make(chan struct{}, 1)
		other := testutil.StartBackend(t, "other")
		_, u := startProxy(t, pool(*firstByteBackend(t, got), config.Backend{URL: other.URL, Name: "other"}), nil)
		if r := streamedPut(t, testutil.Client(t), u.String()+"/", got); r.status != http.StatusOK || r.body != "ab" {
			t.Errorf("got %d %q, want 200 \"ab\"", r.status, r.body)
		}
	})
	t.Run("retried after the first byte", func(t *testing.T) {
		got, echoed := make(chan struct{}, 1), make(chan struct{}, 1)
		s, u := startProxy(t, pool(*midBodyBackend(t, got), *firstByteBackend(t, echoed)), nil)
		if r := streamedPut(t, testutil.Client(t), u.String()+"/", got); r.status != http.StatusOK || r.body != "ab" {
			t.Errorf("got %d %q, want 200 \"ab\" from the second backend", r.status, r.body)
		}
		if n := s.state.Load().pools[0].retried.Load(); n != 1 {
			t.Errorf("%d retries, want 1", n)
		}
	})
}

// TestOpenHTTP2StreamReachesBackend: a GET over HTTP/2 whose request stream
// stays open (a body still to come) is sent on, not held until the stream
// ends.
func TestOpenHTTP2StreamReachesBackend(t *testing.T) {
	cert := newTestCert(t)
	got := make(chan struct{}, 1)
	other := testutil.StartBackend(t, "other")
	cfg := catchAll(&config.Pool{Name: "web", Balancer: config.Balancer{Type: "round-robin"},
		Backends: []config.Backend{*firstByteBackend(t, got), {URL: other.URL, Name: "other"}},
		Retries:  config.Retries{Count: 2, MaxBody: 1024}})
	cfg.TLS = &config.TLS{Cert: cert.certFile, Key: cert.keyFile}
	_, u := startProxy(t, cfg, nil)
	u.Scheme = "https"
	tr := &http.Transport{ForceAttemptHTTP2: true, TLSClientConfig: &tls.Config{RootCAs: cert.roots}}
	t.Cleanup(tr.CloseIdleConnections)
	pr, pw := io.Pipe()
	req, err := http.NewRequest(http.MethodGet, u.String()+"/events", pr)
	if err != nil {
		t.Fatal(err)
	}
	replied := make(chan *http.Response, 1)
	go func() {
		res, err := tr.RoundTrip(req)
		if err != nil {
			t.Error(err)
		}
		replied <- res
	}()
	if _, err := io.WriteString(pw, "x"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-got:
	case <-time.After(waitFor):
		_ = pw.Close()
		t.Fatal("the GET did not reach the backend while its stream was open")
	}
	_ = pw.Close()
	if res := <-replied; res != nil {
		body, _ := io.ReadAll(res.Body)
		_ = res.Body.Close()
		if res.ProtoMajor != 2 || res.StatusCode != http.StatusOK || string(body) != "x" {
			t.Errorf("got %s %d %q, want HTTP/2 200 \"x\"", res.Proto, res.StatusCode, body)
		}
	}
}

// TestRetryAfterInterimResponse: a 103 a backend sends before it fails does
// not end the request's chances: it reaches the client, as 1xx responses
// come, and the request is retried; the final response is the next
// backend's.
func TestRetryAfterInterimResponse(t *testing.T) {
	for _, scheme := range schemes {
		t.Run(scheme, func(t *testing.T) {
			certs := certsFor(t, scheme)
			hinting := connBackend(t, certs, func(testutil.RawRequest) testutil.Reaction {
				return testutil.Reaction{Raw: "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n", End: testutil.ResetConn}
			})
			other := testutil.StartBackend(t, "other")
			pc := &config.Pool{Name: "web", Balancer: config.Balancer{Type: "round-robin"},
				Backends: []config.Backend{{URL: hinting.BaseURL(), Name: "hinting"}, {URL: other.URL, Name: "other"}},
				Retries:  config.DefaultRetries(), TLS: poolTLS(certs)}
			s, u := startProxy(t, catchAll(pc), nil)
			var interim []int
			trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, _ textproto.MIMEHeader) error {
				interim = append(interim, code)
				return nil
			}}
			req, err := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace),
				http.MethodGet, u.String()+"/", nil)
			if err != nil {
				t.Fatal(err)
			}
			res, err := testutil.Client(t).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(res.Body)
			_ = res.Body.Close()
			if len(interim) != 1 || interim[0] != http.StatusEarlyHints || res.StatusCode != http.StatusOK || string(body) != "other" {
				t.Errorf("got interim %v, then %d %q; want 103, then 200 \"other\"", interim, res.StatusCode, body)
			}
			if n := s.state.Load().pools[0].retried.Load(); n != 1 {
				t.Errorf("%d retries, want 1", n)
			}
		})
	}
}

// TestBodyCutByHalfClose: a client that sends half its declared body and
// half-closes gets 400, as for any body that breaks off, not the 499 of a
// client gone, and no backend is blamed; with or without a copy kept for a
// retry.
func TestBodyCutByHalfClose(t *testing.T) {
	for _, tt := range []struct {
		name    string
		method  string
		retries int
	}{
		{"PUT copied for a retry", http.MethodPut, 2},
		{"POST", http.MethodPost, 2},
		{"PUT without retries", http.MethodPut, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			bs := startBackends(t, "a", "b")
			pc := poolOf("web", "round-robin", balancer.Options{}, bs...)
			pc.Retries = config.Retries{Count: tt.retries, MaxBody: 1024}
			pc.Passive = &config.Passive{Failures: 1, Eject: time.Minute, MaxEject: time.Minute}
			cfg := catchAll(pc)
			cfg.Log.Access = true
			log, logs := observed()
			s, u := startProxy(t, cfg, log)
			conn, err := net.Dial("tcp", u.Host)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(waitFor))
			head := tt.method + " /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
			if _, err := io.WriteString(conn, head+strings.Repeat("h", 50)); err != nil {
				t.Fatal(err)
			}
			if err := conn.(*net.TCPConn).CloseWrite(); err != nil {
				t.Fatal(err)
			}
			res, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil {
				t.Fatal(err)
			}
			_ = res.Body.Close()
			if res.StatusCode != http.StatusBadRequest {
				t.Errorf("got %d, want 400", res.StatusCode)
			}
			for _, b := range s.state.Load().pools[0].backends {
				if n := b.Succeed(); n != 0 {
					t.Errorf("backend %s blamed for %d failures", b.ID, n)
				}
			}
			testutil.Eventually(t, waitFor, "the request logged", func() bool { return len(accessLines(logs)) == 1 })
			if st := accessLines(logs)[0].ContextMap()["status"]; st != int64(http.StatusBadRequest) {
				t.Errorf("access log status %v, want 400", st)
			}
		})
	}
}
