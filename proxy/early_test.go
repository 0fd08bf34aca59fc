package proxy

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/url"
	"testing"

	"github.com/affinityproxy/affinity/config"
	"github.com/affinityproxy/affinity/internal/testutil"
)

// earlyBackend answers each request as soon as its head has arrived, as an
// application refusing an upload does (401, 413), without reading its
// body, unless the path is /read; then it reads on until the connection
// ends, as a backend that keeps its connection open does.
func earlyBackend(t *testing.T) *url.URL {
	t.Helper()
	rb := testutil.StartRaw(t, func(c net.Conn, br *bufio.Reader) {
		for {
			r, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			if r.URL.Path == "/read" {
				if _, err := io.Copy(io.Discard, r.Body); err != nil {
					return
				}
			}
			if _, err := io.WriteString(c, "HTTP/1.1 401 Unauthorized\r\nContent-Length: 4\r\n\r\nnope"); err != nil {
				return
			}
			if r.URL.Path != "/read" {
				_, _ = io.Copy(io.Discard, br)
				return
			}
		}
	})
	u, err := url.Parse(rb.URL())
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// A backend's answer to a request whose body is still coming reaches the
// client at once, and the connection is closed after it, since the rest of
// the body would otherwise be read as the next request: whether the
// declared length is over the 256 KiB net/http would read before
// answering, under it, or unknown. A body read whole keeps the connection.
// rawExchange fails the test if no answer came, or the connection stayed
// open, for waitFor; the clients here never send the rest of their bodies.
func TestEarlyAnswer(t *testing.T) {
	pc := &config.Pool{Name: "web", Balancer: config.Balancer{Type: "round-robin"},
		Backends: []config.Backend{{URL: earlyBackend(t), Name: "early"}}}
	_, u := startProxy(t, catchAll(pc), nil)
	tests := []struct {
		name    string
		raw     string
		answers int
	}{
		{"declared 1 MiB, 10 bytes sent", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1048576\r\n\r\n0123456789", 1},
		{"declared 100 bytes, 10 sent", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789", 1},
		{"chunked, one chunk sent", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n", 1},
		// A chunked request closes its connection after its answer
		// whatever happens (request framing, docs/security.md): last.
		{"whole bodies, read", "POST /read HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc" +
			"POST /read HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc" +
			"POST /read HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rs := rawExchange(t, u.Host, tt.raw)
			if len(rs) != tt.answers {
				t.Fatalf("%d answers, want %d", len(rs), tt.answers)
			}
			for _, r := range rs {
				body, _ := io.ReadAll(r.Body)
				if r.StatusCode != http.StatusUnauthorized || string(body) != "nope" {
					t.Errorf("answer %d %q, want the backend's 401", r.StatusCode, body)
				}
			}
			if last := rs[len(rs)-1]; !last.Close {
				t.Errorf("last answer without Connection: close")
			}
		})
	}
}
