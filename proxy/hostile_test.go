package proxy

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/affinityproxy/affinity/config"
	"github.com/affinityproxy/affinity/internal/h1"
	"github.com/affinityproxy/affinity/internal/testutil"
)

// TestHostileResponse: each hostile backend response of the corpus
// (testdata/hostile-responses.txt), sent on a keep-alive connection to a
// GET, costs its client at most a failed answer (a 502, or a cut body for a
// response that ends early) and never hands anyone the bytes the backend
// sent past its response: the client asking next on that backend, and
// those after it, each get their own answer. That the proxy's client reads
// each exactly as http.Transport does is FuzzStream's, in internal/h1.
func TestHostileResponse(t *testing.T) {
	for _, h := range testutil.HostileResponses(t) {
		t.Run(h.Name, func(t *testing.T) {
			t.Parallel()
			b := connBackend(t, nil, func(r testutil.RawRequest) testutil.Reaction {
				if r.Target == "/a" {
					return testutil.Reaction{Raw: h.Raw}
				}
				return echoToken(r)
			})
			pc := &config.Pool{Name: "web", Balancer: config.Balancer{Type: "round-robin"},
				Backends: []config.Backend{{URL: b.BaseURL(), Name: "b"}},
				Passive:  &config.Passive{Failures: 100, Eject: time.Minute, MaxEject: time.Minute}}
			cfg := catchAll(pc)
			// A head or a body that never ends is cut by the header
			// timeout or by the client leaving, not waited for.
			cfg.Timeouts.ResponseHeader = time.Second
			_, u := startProxy(t, cfg, nil)
			tr := &http.Transport{DisableKeepAlives: true}
			defer tr.CloseIdleConnections()
			c := &http.Client{Transport: tr, Timeout: 2 * time.Second}
			if res, err := c.Get(u.String() + "/a"); err == nil {
				body, _ := io.ReadAll(res.Body)
				_ = res.Body.Close()
				if strings.Contains(string(body), "EVIL") || strings.Contains(res.Header.Get("Content-Length"), "EVIL") {
					t.Errorf("the client got %d %q: bytes past the response", res.StatusCode, body)
				}
			}
			askEach(t, u)
		})
	}
}

// TestKeepAliveOff: a pool with keepalive: false sends each request on a
// backend connection of its own, so that a backend's stray response can
// reach no other client; with keep-alive on, the same requests, one after
// the other, share one.
func TestKeepAliveOff(t *testing.T) {
	for _, off := range []bool{false, true} {
		t.Run(fmt.Sprintf("disabled=%v", off), func(t *testing.T) {
			b := connBackend(t, nil, echoToken)
			pc := &config.Pool{Name: "web", Balancer: config.Balancer{Type: "round-robin"},
				Backends: []config.Backend{{URL: b.BaseURL(), Name: "b"}}, DisableKeepAlives: off}
			_, u := startProxy(t, catchAll(pc), nil)
			askEach(t, u)
			reqs := b.Requests()
			conns := map[int]bool{}
			for _, r := range reqs {
				conns[r.Conn] = true
			}
			want := 1
			if off {
				want = len(reqs)
			}
			if len(reqs) != 4 || len(conns) != want {
				t.Errorf("%d requests on %d connections, want 4 on %d", len(reqs), len(conns), want)
			}
		})
	}
}

// TestResponseBodyTimeout: a backend that sends its head and part of its
// body, then nothing, has the client's response cut once
// timeouts.response_body passes, as any body that breaks off: the client
// sees its connection end (not its own timeout), and the access line says
// aborted. Both of the proxy's clients keep it: the h1 client, and Go's
// transport for a pool with keepalive: false.
func TestResponseBodyTimeout(t *testing.T) {
	tests := []struct{ name, raw string }{
		{"length", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nok"},
		{"chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n"},
		{"until close", "HTTP/1.1 200 OK\r\n\r\nok"},
	}
	for _, tt := range tests {
		for _, off := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/keepalive-off=%v", tt.name, off), func(t *testing.T) {
				rb := testutil.StartRaw(t, func(c net.Conn, br *bufio.Reader) {
					if _, err := http.ReadRequest(br); err != nil {
						return
					}
					_, _ = io.WriteString(c, tt.raw)
					_, _ = br.ReadByte() // silent until the proxy closes it
				})
				pc := &config.Pool{Name: "web", Balancer: config.Balancer{Type: "round-robin"},
					Backends: []config.Backend{{URL: &url.URL{Scheme: "http", Host: rb.Addr()}, Name: "b"}}, DisableKeepAlives: off}
				cfg := catchAll(pc)
				cfg.Timeouts.ResponseBody = 300 * time.Millisecond
				cfg.Log.Access = true
				log, logs := observed()
				_, u := startProxy(t, cfg, log)
				c := &http.Client{Timeout: 10 * time.Second}
				res, err := c.Get(u.String())
				if err == nil {
					_, err = io.ReadAll(res.Body)
					_ = res.Body.Close()
				}
				var ne net.Error
				if err == nil || (errors.As(err, &ne) && ne.Timeout()) {
					t.Fatalf("client's read ended with %v, want the proxy to cut it", err)
				}
				testutil.Eventually(t, waitFor, "backend connection closed", func() bool { return rb.Closed() == 1 })
				testutil.Eventually(t, waitFor, "access line", func() bool { return len(entries(logs, "request")) == 1 })
				if m := entries(logs, "request")[0].ContextMap(); m["aborted"] != true || m["status"] != int64(200) {
					t.Errorf("access line %v, want an aborted 200", m)
				}
			})
		}
	}
}

// TestResponseHeadLimit: a backend's response head past
// h1.MaxResponseHeaderBytes is answered 502, whichever client sent the
// request (keep-alive: the h1 client; keepalive: false: http.Transport);
// one just under it passes.
func TestResponseHeadLimit(t *testing.T) {
	head := func(n int) string {
		return "HTTP/1.1 200 OK\r\nX-Big: " + strings.Repeat("a", n) + "\r\nContent-Length: 2\r\n\r\nok"
	}
	tests := []struct {
		name string
		raw  string
		want int
	}{
		{"under", head(h1.MaxResponseHeaderBytes - 1024), http.StatusOK},
		{"over", head(h1.MaxResponseHeaderBytes + 1), http.StatusBadGateway},
		{"far over", head(1 << 20), http.StatusBadGateway},
	}
	for _, off := range []bool{false, true} {
		for _, tt := range tests {
			t.Run(fmt.Sprintf("%s/keepalive-off=%v", tt.name, off), func(t *testing.T) {
				b := connBackend(t, nil, func(testutil.RawRequest) testutil.Reaction {
					return testutil.Reaction{Raw: tt.raw}
				})
				pc := &config.Pool{Name: "web", Balancer: config.Balancer{Type: "round-robin"},
					Backends: []config.Backend{{URL: b.BaseURL(), Name: "b"}}, DisableKeepAlives: off}
				cfg := catchAll(pc)
				_, u := startProxy(t, cfg, nil)
				res, err := testutil.Client(t).Get(u.String())
				if err != nil {
					t.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, res.Body)
				_ = res.Body.Close()
				if res.StatusCode != tt.want {
					t.Errorf("status %d, want %d", res.StatusCode, tt.want)
				}
			})
		}
	}
}

// TestUnsolicitedCounted: a backend seen sending bytes past a response is
// counted for affinity_backend_unsolicited_total and logged at warn, once
// for the watch period however many strays follow; the next clients still
// get their own answers, each on a connection of its own.
func TestUnsolicitedCounted(t *testing.T) {
	b := connBackend(t, nil, func(r testutil.RawRequest) testutil.Reaction {
		if r.Target == "/a" || r.Target == "/b" {
			return testutil.Reaction{Raw: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL"}
		}
		return echoToken(r)
	})
	pc := &config.Pool{Name: "web", Balancer: config.Balancer{Type: "round-robin"},
		Backends: []config.Backend{{URL: b.BaseURL(), Name: "b"}}}
	log, logs := observed()
	_, u := startProxy(t, catchAll(pc), log)
	c := testutil.Client(t)
	for _, p := range []string{"/a", "/b"} {
		if r := get(t, c, u.String()+p, nil); r.body != "ok" {
			t.Fatalf("GET %s: %q", p, r.body)
		}
	}
	askEach(t, u)
	if n := unsolicitedFrom(b.BaseURL()); n != 2 {
		t.Errorf("counted %d, want 2", n)
	}
	if n := len(logs.FilterMessageSnippet("no request asked for").All()); n != 1 {
		t.Errorf("%d warnings, want 1", n)
	}
	conns := map[int]bool{}
	reqs := b.Requests()
	for _, r := range reqs {
		conns[r.Conn] = true
	}
	if len(conns) != len(reqs) {
		t.Errorf("%d requests on %d connections, want one each once the backend was seen", len(reqs), len(conns))
	}
}
