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
	"sync"
	"testing"
	"time"

	"github.com/affinityproxy/affinity/balancer"
	"github.com/affinityproxy/affinity/config"
	"github.com/affinityproxy/affinity/internal/testutil"
)

func TestServerLimits(t *testing.T) {
	tests := []struct {
		name string
		in   config.Server
		want config.Server // zero: NewServer fails
	}{
		{"zero takes the defaults", config.Server{}, config.Server{
			ReadHeaderTimeout: config.DefaultReadHeaderTimeout, IdleTimeout: config.DefaultIdleTimeout,
			MaxHeaderBytes: config.DefaultMaxHeaderBytes,
		}},
		{"set", config.Server{ReadHeaderTimeout: time.Second, ReadTimeout: time.Minute, IdleTimeout: 3 * time.Second, MaxHeaderBytes: 4096, MaxBody: 10},
			config.Server{ReadHeaderTimeout: time.Second, ReadTimeout: time.Minute, IdleTimeout: 3 * time.Second, MaxHeaderBytes: 4096, MaxBody: 10}},
		{"negative", config.Server{IdleTimeout: -time.Second}, config.Server{}},
		{"negative body", config.Server{MaxBody: -1}, config.Server{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := catchAll(poolOf("web", "round-robin", balancer.Options{}, testutil.StartBackend(t, "a")))
			cfg.Server = tt.in
			s, err := NewServer(cfg, nil)
			if tt.want == (config.Server{}) {
				if err == nil {
					t.Fatal("NewServer accepted a negative limit")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := config.Server{
				ReadHeaderTimeout: s.http.ReadHeaderTimeout, ReadTimeout: s.http.ReadTimeout,
				IdleTimeout: s.http.IdleTimeout, MaxHeaderBytes: s.http.MaxHeaderBytes, MaxBody: s.state.Load().maxBody,
			}
			if got != tt.want {
				t.Errorf("server limits %+v, want %+v", got, tt.want)
			}
		})
	}
}

// bodyBackend answers 200 after reading the whole body, and records what it
// read of each request.
type bodyBackend struct {
	url *url.URL

	mu       sync.Mutex
	started  int
	finished int
	complete []int // sizes of the bodies read to their end
}

func startBodyBackend(t *testing.T) *bodyBackend {
	t.Helper()
	bb := &bodyBackend{}
	bb.url = testutil.StartServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		bb.mu.Lock()
		bb.started++
		bb.mu.Unlock()
		n, err := io.Copy(io.Discard, r.Body)
		bb.mu.Lock()
		bb.finished++
		if err == nil {
			bb.complete = append(bb.complete, int(n))
		}
		bb.mu.Unlock()
		if err == nil {
			fmt.Fprint(w, n)
		}
	}))
	return bb
}

// settled reports the bodies read whole, once every request the backend
// started has ended.
func (bb *bodyBackend) settled(t *testing.T) []int {
	t.Helper()
	var complete []int
	testutil.Eventually(t, waitFor, "backend requests ended", func() bool {
		bb.mu.Lock()
		defer bb.mu.Unlock()
		complete = append([]int(nil), bb.complete...)
		return bb.started == bb.finished
	})
	return complete
}

// unsized hides a reader's length, so that the client sends it chunked.
type unsized struct{ io.Reader }

func TestMaxBody(t *testing.T) {
	const limit = 1 << 10
	tests := []struct {
		name      string
		limit     int64
		method    string
		size      int
		chunked   bool
		resilient bool // the pool retries and ejects, so the body is wrapped for replay
		status    int
	}{
		{"declared, under", limit, http.MethodPost, limit - 1, false, false, http.StatusOK},
		{"declared, at the limit", limit, http.MethodPost, limit, false, false, http.StatusOK},
		{"declared, over", limit, http.MethodPost, limit + 1, false, false, http.StatusRequestEntityTooLarge},
		{"declared, over, resilient pool", limit, http.MethodPost, limit + 1, false, true, http.StatusRequestEntityTooLarge},
		{"chunked, under", limit, http.MethodPost, limit - 1, true, false, http.StatusOK},
		{"chunked, at the limit", limit, http.MethodPost, limit, true, false, http.StatusOK},
		{"chunked, over", limit, http.MethodPost, 64 * limit, true, false, http.StatusRequestEntityTooLarge},
		{"chunked, over, streamed for passive health", limit, http.MethodPost, 64 * limit, true, true, http.StatusRequestEntityTooLarge},
		{"chunked, over, buffered for a retry", limit, http.MethodPut, 64 * limit, true, true, http.StatusRequestEntityTooLarge},
		{"chunked, no limit", 0, http.MethodPost, 64 * limit, true, false, http.StatusOK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// In parallel: a server closing a connection after a cut body
			// waits half a second for the client to read the answer.
			t.Parallel()
			a, b := startBodyBackend(t), startBodyBackend(t)
			p := &config.Pool{Name: "web", Balancer: config.Balancer{Type: "round-robin"},
				Backends: []config.Backend{{URL: a.url, Name: "a"}, {URL: b.url, Name: "b"}}}
			if tt.resilient {
				passive := config.Passive{Failures: 1, Eject: time.Minute, MaxEject: time.Minute}
				p.Passive, p.Retries = &passive, config.DefaultRetries()
			}
			cfg := catchAll(p)
			cfg.Server.MaxBody = tt.limit
			s, u := startProxy(t, cfg, nil)

			var body io.Reader = strings.NewReader(strings.Repeat("x", tt.size))
			if tt.chunked {
				body = unsized{body}
			}
			req, err := http.NewRequest(tt.method, u.String(), body)
			if err != nil {
				t.Fatal(err)
			}
			if tt.chunked {
				req.ContentLength = -1
			}
			resp, err := testutil.Client(t).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tt.status)
			}
			complete := append(a.settled(t), b.settled(t)...)
			if tt.status == http.StatusOK {
				if len(complete) != 1 || complete[0] != tt.size {
					t.Errorf("backends read whole bodies of %v bytes, want one of %d", complete, tt.size)
				}
				return
			}
			if len(complete) != 0 {
				t.Errorf("a backend read a whole body (%v bytes) past the limit", complete)
			}
			// The client's excess is not the backend's failure.
			if n := len(s.state.Load().pools[0].snap.Load().available); n != 2 {
				t.Errorf("%d backends available after the refusal, want 2", n)
			}
		})
	}
}

// rawExchange writes raw to a new connection to addr and reads every
// response until the server closes the connection.
func rawExchange(t *testing.T, addr, raw string) []*http.Response {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(waitFor)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(conn, raw); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	var out []*http.Response
	for {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("connection still open after %v and %d responses", waitFor, len(out))
			}
			return out // closed
		}
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("read response body: %v", err)
		}
		resp.Body = io.NopCloser(strings.NewReader(string(body)))
		out = append(out, resp)
	}
}

func TestHopByHopHeadersStripped(t *testing.T) {
	tests := []struct {
		name    string
		headers string   // request header lines
		absent  []string // must not reach the backend
		want    map[string]string
	}{
		{"custom header named in Connection", "Connection: X-Secret\r\nX-Secret: s3cr3t\r\n",
			[]string{"Connection", "X-Secret"}, nil},
		{"several names, any case", "Connection: keep-alive, x-one ,X-TWO\r\nX-One: 1\r\nX-Two: 2\r\nKeep-Alive: timeout=5\r\n",
			[]string{"Connection", "X-One", "X-Two", "Keep-Alive"}, nil},
		{"Connection on two lines", "Connection: X-One\r\nConnection: X-Two\r\nX-One: 1\r\nX-Two: 2\r\n",
			[]string{"Connection", "X-One", "X-Two"}, nil},
		{"standard hop-by-hop headers", "Proxy-Connection: keep-alive\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\nTrailer: X-Sum\r\nUpgrade: h2c\r\n",
			[]string{"Proxy-Connection", "Proxy-Authorization", "Trailer", "Upgrade"}, nil},
		{"TE keeps only trailers", "TE: gzip, trailers\r\n", nil, map[string]string{"Te": "trailers"}},
		{"end-to-end headers pass", "X-Kept: yes\r\nAuthorization: Bearer t\r\n", nil,
			map[string]string{"X-Kept": "yes", "Authorization": "Bearer t"}},
	}
	b := testutil.StartBackend(t, "a")
	_, u := startProxy(t, catchAll(poolOf("web", "round-robin", balancer.Options{}, b)), nil)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			raw := "GET /hop HTTP/1.1\r\nHost: shop.example.com\r\n" + tt.headers + "Connection: close\r\n\r\n"
			rs := rawExchange(t, u.Host, raw)
			if len(rs) != 1 || rs[0].StatusCode != http.StatusOK {
				t.Fatalf("responses %v, want one 200", rs)
			}
			got, _ := b.Last()
			for _, h := range tt.absent {
				if v, ok := got.Header[h]; ok {
					t.Errorf("backend saw %s: %q", h, v)
				}
			}
			for h, want := range tt.want {
				if v := got.Header.Get(h); v != want {
					t.Errorf("backend saw %s %q, want %q", h, v, want)
				}
			}
		})
	}
}

func TestClientTimeoutsAndHeaderSize(t *testing.T) {
	b := testutil.StartBackend(t, "a")
	cfg := catchAll(poolOf("web", "round-robin", balancer.Options{}, b))
	cfg.Server = config.Server{ReadHeaderTimeout: 100 * time.Millisecond, IdleTimeout: 100 * time.Millisecond, MaxHeaderBytes: 4096}
	_, u := startProxy(t, cfg, nil)

	t.Run("headers too large", func(t *testing.T) {
		raw := "GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 16<<10) + "\r\n\r\n"
		rs := rawExchange(t, u.Host, raw)
		if len(rs) != 1 || rs[0].StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Fatalf("responses %v, want one 431", rs)
		}
	})
	t.Run("headers within the limit", func(t *testing.T) {
		raw := "GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 2<<10) + "\r\nConnection: close\r\n\r\n"
		if rs := rawExchange(t, u.Host, raw); len(rs) != 1 || rs[0].StatusCode != http.StatusOK {
			t.Fatalf("responses %v, want one 200", rs)
		}
	})
	// rawExchange fails when the server keeps the connection past
	// waitFor: these end because the server closes them.
	t.Run("headers trickling", func(t *testing.T) {
		if rs := rawExchange(t, u.Host, "GET / HTTP/1.1\r\nHost: x\r\n"); len(rs) > 1 {
			t.Fatalf("responses %v to an unfinished request", rs)
		}
	})
	t.Run("idle keep-alive", func(t *testing.T) {
		rs := rawExchange(t, u.Host, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		if len(rs) != 1 || rs[0].StatusCode != http.StatusOK {
			t.Fatalf("responses %v, want one 200 and then the connection closed", rs)
		}
	})
}
