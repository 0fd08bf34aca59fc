package proxy

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/affinityproxy/affinity/config"
	"github.com/affinityproxy/affinity/internal/testutil"
)

// After a request whose framing is in doubt (TestRequestSmuggling), the
// connection closes whatever the answer: the backend's after interim 1xx
// responses (which ReverseProxy relays by clearing the ResponseWriter's
// header), the proxy's own 502 when the backend fails, 413 past max_body,
// and a response of unknown length.
func TestFramingClosesAfterEveryAnswer(t *testing.T) {
	const smuggled = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
	const chunked = "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n" +
		"5\r\nhello\r\n0\r\n\r\n" + smuggled
	tests := []struct {
		name     string
		answer   testutil.Reaction
		maxBody  int64
		statuses []int
	}{
		{
			name: "after early hints",
			answer: testutil.Reaction{Raw: "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n" +
				"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"},
			statuses: []int{103, 200},
		},
		{
			name:     "backend failed",
			answer:   testutil.Reaction{End: testutil.ResetConn},
			statuses: []int{502},
		},
		{
			name:     "past max_body",
			answer:   testutil.Reaction{Raw: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"},
			maxBody:  4,
			statuses: []int{413},
		},
		{
			name:     "response of unknown length",
			answer:   testutil.Reaction{Raw: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"},
			statuses: []int{200},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := testutil.StartConnBackend(t, func(testutil.RawRequest) testutil.Reaction { return tt.answer })
			cfg := catchAll(&config.Pool{Name: "web", Balancer: config.Balancer{Type: "round-robin"},
				Backends: []config.Backend{{URL: b.BaseURL(), Name: "a"}}})
			cfg.Server.MaxBody = tt.maxBody
			_, u := startProxy(t, cfg, nil)
			var statuses []int
			for _, r := range rawExchange(t, u.Host, chunked) {
				statuses = append(statuses, r.StatusCode)
			}
			if !slices.Equal(statuses, tt.statuses) {
				t.Errorf("statuses %v, want %v", statuses, tt.statuses)
			}
			for _, r := range b.Requests() {
				if r.Target == "/smuggled" {
					t.Errorf("the request after a chunked one reached the backend")
				}
			}
		})
	}
}

// Requests whose framing leaves nothing in doubt keep their connection:
// HTTP/1.1 with a Content-Length or no body, and every request over HTTP/2
// (a stream's end is its framing), chunked or not.
func TestFramingKeepsConnection(t *testing.T) {
	lb := startLineBackend(t)
	cfg := lineBackendConfig(t, lb)
	_, u := startProxy(t, cfg, nil)
	raw := "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello" +
		"GET /b HTTP/1.1\r\nHost: x\r\n\r\n" +
		"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n" +
		"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
	var statuses []int
	for _, r := range rawExchange(t, u.Host, raw) {
		statuses = append(statuses, r.StatusCode)
	}
	if want := []int{200, 200, 200, 200}; !slices.Equal(statuses, want) {
		t.Errorf("statuses %v, want %v", statuses, want)
	}

	lb2 := startLineBackend(t)
	_, addr, cert := startH2Proxy(t, lineBackendConfig(t, lb2))
	h := dialH2(t, addr, cert)
	for i, path := range []string{"/x", "/y"} {
		// No content-length: the proxy forwards the body chunked.
		if r := h.request(h2Fields(map[string]string{":method": "POST", ":path": path}), "hello"); r.status != http.StatusOK || r.reset {
			t.Fatalf("stream %d: %+v, want 200 on the same connection", i, r)
		}
	}
	got := lb2.wholeRequests()
	if len(got) != 2 || got[1].body != "hello" || !strings.HasPrefix(got[1].line, "POST /y ") {
		t.Errorf("backend read %+v", got)
	}
}

// FuzzRequestStream sends a stream of bytes as one client's connection to
// the proxy, half-closed after it, and holds what reached the backend to
// the standard library's reading of the same bytes: the backend reads to
// their end only requests that http.ReadRequest reads from the stream, in
// its order, each with its method, target and body, none after a request
// whose framing closes the connection (closesAfter, or Connection: close),
// and each one logged by the access log. The proxy may stop sooner (it
// refuses more than ReadRequest does, and a half-closed client's last
// request may be cancelled) but never read a request of its own.
func FuzzRequestStream(f *testing.F) {
	for _, seed := range []string{
		"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
		"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET /b?q=1 HTTP/1.1\r\nHost: x\r\n\r\n",
		"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;e=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n",
		"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: x\r\n\r\n",
		"POST /a HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
		"OPTIONS * HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET http://x/c HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /a HTTP/1.1\nHost: x\nX-A: 1\n b\n\nHEAD /b HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
		"PUT /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhelloDELETE /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nGET /c HTTP/1.1\r\nHost: x\r\n\r\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, stream []byte) {
		want := stdlibRequests(stream)
		lb := startLineBackend(t)
		cfg := lineBackendConfig(t, lb)
		cfg.Log.Access = true
		log, logs := observed()
		s, u := startProxy(t, cfg, log)

		c, br := testutil.DialRaw(t, u.Host, waitFor)
		_, _ = c.Write(stream)
		_ = c.(*net.TCPConn).CloseWrite()
		if _, err := io.Copy(io.Discard, br); err != nil {
			t.Fatalf("reading the answers: %v", err)
		}
		// The backend's view is whole once the proxy has ended its
		// requests (Shutdown waits for them) and closed its connections:
		// Shutdown closes the idle ones, and one given back after, its
		// request's body written late, as it is given back.
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Fatal(err)
		}
		testutil.Eventually(t, waitFor, "backend connections still open", func() bool {
			return lb.Closed() == lb.Accepted()
		})
		got := lb.wholeRequests()
		if len(got) > len(want) {
			t.Fatalf("backend read %d requests, the standard library %d: %+v", len(got), len(want), got)
		}
		for i, r := range got {
			w := want[i]
			if line := w.method + " " + w.target + " HTTP/1.1"; r.line != line || r.body != w.body {
				t.Fatalf("backend read request %d as %q with body %q, the standard library %q with %q", i, r.line, r.body, line, w.body)
			}
		}
		logged := accessLines(logs)
		j := 0
		for _, r := range got {
			method, target, _ := strings.Cut(r.line, " ")
			for j < len(logged) && logged[j].ContextMap()["method"] != method {
				j++
			}
			if j == len(logged) {
				t.Fatalf("backend read %s %s, which the access log does not show: %v", method, target, logged)
			}
			j++
		}
	})
}

// stdRequest is a request as http.ReadRequest read it, in the form the
// proxy forwards it: method, origin-form target, body.
type stdRequest struct{ method, target, body string }

// stdlibRequests returns the requests http.ReadRequest reads from stream,
// up to the first it cannot read or read to its end, and up to the first
// after which the proxy closes the connection; "OPTIONS *", which the
// proxy answers itself, left out.
func stdlibRequests(stream []byte) []stdRequest {
	br := bufio.NewReader(bytes.NewReader(stream))
	var out []stdRequest
	for {
		r, err := http.ReadRequest(br)
		if err != nil {
			return out
		}
		body, err := io.ReadAll(r.Body)
		if err != nil {
			return out
		}
		if r.RequestURI != "*" {
			out = append(out, stdRequest{r.Method, r.URL.RequestURI(), string(body)})
		}
		if r.Close || closesAfter(r) {
			return out
		}
	}
}
