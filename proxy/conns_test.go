package proxy

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/affinityproxy/affinity/config"
	"github.com/affinityproxy/affinity/internal/testutil"
)

// noticed reports whether the proxy can see what arrived on b's connection
// i: the connection is closed, or the bytes have reached the proxy's side,
// where the check before the connection's next use finds them.
func noticed(b *testutil.ConnBackend, i int) bool {
	return b.ConnClosed(i) || b.Delivered(i)
}

// freshGet sends a request on a connection of its own.
func freshGet(t *testing.T, method, target string) reply {
	t.Helper()
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: waitFor}
	return send(t, c, method, target, nil, nil)
}

// echoToken answers GET /ok?t=TOKEN with TOKEN.
func echoToken(r testutil.RawRequest) testutil.Reaction {
	u, _ := url.Parse(r.Target)
	tok := u.Query().Get("t")
	return testutil.Reaction{Raw: fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(tok), tok)}
}

// askEach has several clients, each on a connection of its own, ask for a
// token of their own, and fails t unless each got its own back.
func askEach(t *testing.T, u *url.URL) {
	t.Helper()
	for _, c := range []string{"B", "C", "D", "E"} {
		tok := "CLIENT-" + c
		r := freshGet(t, http.MethodGet, u.String()+"/ok?t="+tok)
		if r.status != http.StatusOK || r.body != tok {
			t.Errorf("client %s got %d %q, want 200 %q", c, r.status, r.body, tok)
		}
	}
}

const evilResponse = "HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\nEVIL-SMUGGLED"

// TestStrayBytesReachNoClient: whatever a backend sends on a connection
// beyond the response to the request it received (a second response in the
// same write, bytes that come once the response has ended, a body to HEAD),
// no later client receives it as its answer: the connection is not used
// again. To http:// and https:// backends; the backend answers the first
// request, then clients B to E each ask on a connection of their own for
// their own token.
func TestStrayBytesReachNoClient(t *testing.T) {
	long := strings.Repeat("x", 10000)
	tests := []struct {
		name   string
		method string
		first  string // the answer to the first request
		late   string // written once the first client has its response
		body   string // what the first client receives
	}{
		{"second response in the same write", "GET",
			"HTTP/1.1 200 OK\r\nContent-Length: 10000\r\n\r\n" + long + evilResponse, "", long},
		{"late response after a Content-Length body", "GET",
			"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst", evilResponse, "first"},
		{"late response after an empty body", "GET",
			"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", evilResponse, ""},
		{"late response after a chunked body", "GET",
			"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n0\r\n\r\n", evilResponse, "first"},
		{"late response after 204", "GET", "HTTP/1.1 204 No Content\r\n\r\n", evilResponse, ""},
		{"late response after 304", "GET", "HTTP/1.1 304 Not Modified\r\nETag: \"a\"\r\n\r\n", evilResponse, ""},
		{"late response after a second one", "GET",
			"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst" + evilResponse, evilResponse, "first"},
		{"body sent to HEAD in the same write", "HEAD",
			"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\nEVIL-SMUGGLED", "", ""},
		{"body sent to HEAD late", "HEAD", "HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\n", "EVIL-SMUGGLED", ""},
		{"response sent to HEAD late", "HEAD", "HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\n", evilResponse, ""},
		{"end of a chunked body sent to HEAD late", "HEAD",
			"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "0\r\n\r\n", ""},
	}
	for _, scheme := range schemes {
		for _, tt := range tests {
			t.Run(scheme+"/"+tt.name, func(t *testing.T) {
				t.Parallel()
				certs := certsFor(t, scheme)
				b := connBackend(t, certs, func(r testutil.RawRequest) testutil.Reaction {
					if r.Target == "/a" {
						return testutil.Reaction{Raw: tt.first}
					}
					return echoToken(r)
				})
				pc := &config.Pool{Name: "web", Balancer: config.Balancer{Type: "round-robin"},
					Backends: []config.Backend{{URL: b.BaseURL(), Name: "b"}}, TLS: poolTLS(certs)}
				_, u := startProxy(t, catchAll(pc), nil)
				r := freshGet(t, tt.method, u.String()+"/a")
				if r.status/100 != 2 && r.status != http.StatusNotModified || r.body != tt.body {
					t.Fatalf("first client got %d %q, want the first response", r.status, r.body)
				}
				first := b.ConnOf("/a")
				if tt.late != "" {
					b.Write(first, tt.late)
				}
				testutil.Eventually(t, waitFor, "the proxy sees what came after the response",
					func() bool { return noticed(b, first) })
				askEach(t, u)
				for _, r := range b.Requests() {
					if r.Target != "/a" && r.Conn == first {
						t.Errorf("%s went on the connection the stray bytes came on", r.Target)
					}
				}
			})
		}
	}
}

// TestStatusOutOfRange: a backend status below 100, which
// http.ReadResponse accepts and net/http's ResponseWriter refuses with a
// panic, is answered 502 and counted against the backend; later clients
// get their own answers.
func TestStatusOutOfRange(t *testing.T) {
	for _, scheme := range schemes {
		for _, status := range []string{"000 Zero", "099 Low", "+12 Signed"} {
			t.Run(scheme+"/"+status, func(t *testing.T) {
				t.Parallel()
				certs := certsFor(t, scheme)
				b := connBackend(t, certs, func(r testutil.RawRequest) testutil.Reaction {
					if r.Target == "/a" {
						return testutil.Reaction{Raw: "HTTP/1.1 " + status + "\r\nContent-Length: 2\r\n\r\nok"}
					}
					return echoToken(r)
				})
				pc := &config.Pool{Name: "web", Balancer: config.Balancer{Type: "round-robin"},
					Backends: []config.Backend{{URL: b.BaseURL(), Name: "b"}}, TLS: poolTLS(certs),
					Passive: &config.Passive{Failures: 5, Eject: time.Minute, MaxEject: time.Minute}}
				log, logs := observed()
				s, u := startProxy(t, catchAll(pc), log)
				if r := freshGet(t, http.MethodGet, u.String()+"/a"); r.status != http.StatusBadGateway {
					t.Errorf("got %d %q, want 502", r.status, r.body)
				}
				be := s.state.Load().pools[0].backends[0]
				if n := be.Succeed(); n != 1 {
					t.Errorf("%d failures counted against the backend, want 1", n)
				}
				askEach(t, u)
				if n := len(entries(logs, "backend request failed")); n != 1 {
					t.Errorf("%d failures logged, want 1", n)
				}
				for _, e := range logs.All() {
					if strings.Contains(e.Message, "panic") {
						t.Errorf("logged %q", e.Message)
					}
				}
			})
		}
	}
}
