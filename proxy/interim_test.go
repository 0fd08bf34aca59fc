package proxy

import (
	"io"
	"net/http"
	"testing"

	"github.com/affinityproxy/affinity/config"
	"github.com/affinityproxy/affinity/internal/testutil"
)

// TestNoInterimToHTTP10: a 1xx a backend sends before its answer reaches
// an HTTP/1.1 client, and never an HTTP/1.0 one, who may be sent none:
// a 103 Early Hints, and a 100 Continue to the Expect the client sent.
func TestNoInterimToHTTP10(t *testing.T) {
	const final = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
	b := testutil.StartConnBackend(t, func(r testutil.RawRequest) testutil.Reaction {
		interim := "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
		if r.Method == http.MethodPost {
			interim = "HTTP/1.1 100 Continue\r\n\r\n"
		}
		return testutil.Reaction{Raw: interim + final}
	})
	pc := &config.Pool{Name: "web", Balancer: config.Balancer{Type: "round-robin"},
		Backends: []config.Backend{{URL: b.BaseURL(), Name: "b"}}}
	_, u := startProxy(t, catchAll(pc), nil)
	tests := []struct {
		name    string
		request string
		interim int // the 1xx the client must see first; 0 for none
	}{
		{"HTTP/1.1", "GET / HTTP/1.1\r\nHost: x\r\n\r\n", http.StatusEarlyHints},
		{"HTTP/1.0", "GET / HTTP/1.0\r\nHost: x\r\n\r\n", 0},
		{"HTTP/1.0 expecting 100-continue", "POST / HTTP/1.0\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\nbody", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn, br := testutil.DialRaw(t, u.Host, waitFor)
			if _, err := io.WriteString(conn, tt.request); err != nil {
				t.Fatal(err)
			}
			var interims []int
			for {
				res, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatal(err)
				}
				if res.StatusCode/100 == 1 {
					interims = append(interims, res.StatusCode)
					continue
				}
				body, _ := io.ReadAll(res.Body)
				if res.StatusCode != http.StatusOK || string(body) != "ok" {
					t.Errorf("got %d %q, want the backend's 200", res.StatusCode, body)
				}
				break
			}
			if tt.interim == 0 && len(interims) > 0 || tt.interim != 0 && (len(interims) != 1 || interims[0] != tt.interim) {
				t.Errorf("interim responses %v before the answer, want %d (0: none)", interims, tt.interim)
			}
		})
	}
}
