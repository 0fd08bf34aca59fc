package proxy

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/affinityproxy/affinity/config"
	"github.com/affinityproxy/affinity/internal/testutil"
)

// switchingBackend answers every request with a 101 switching to the
// protocol its X-Answer header names (no Upgrade field when it is "-"),
// or else to the first the request's Upgrade offers, as gorilla/websocket
// and Python's websockets do with a list; then it echoes every byte of
// the tunnel until the connection ends.
func switchingBackend(t *testing.T) *testutil.RawBackend {
	t.Helper()
	return testutil.StartRaw(t, func(c net.Conn, br *bufio.Reader) {
		r, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		answer, ok := r.Header["X-Answer"]
		if !ok {
			first, _, _ := strings.Cut(r.Header.Get("Upgrade"), ",")
			answer = []string{strings.TrimSpace(first)}
		}
		head := "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
		if answer[0] != "-" {
			head += "Upgrade: " + answer[0] + "\r\n"
		}
		if _, err := io.WriteString(c, head+"\r\n"); err != nil {
			return
		}
		_, _ = io.Copy(c, br)
	})
}

// tunnelSilence is timeouts.response_body in switchingProxy, which a
// tunnel stays silent longer than in TestUpgradeRelaysEarlyBytes.
const tunnelSilence = 100 * time.Millisecond

// switchingProxy serves a pool of the one backend sb, with passive health
// and the access log, and a response body timeout of tunnelSilence, and
// returns the proxy's address.
func switchingProxy(t *testing.T, sb *testutil.RawBackend) (*Server, string, func(msg string) int) {
	t.Helper()
	u, err := url.Parse(sb.URL())
	if err != nil {
		t.Fatal(err)
	}
	pc := &config.Pool{Name: "ws", Balancer: config.Balancer{Type: "round-robin"},
		Backends: []config.Backend{{URL: u, Name: "ws-1"}}}
	passive := config.DefaultPassive()
	passive.Failures = 1
	pc.Passive = &passive
	cfg := catchAll(pc)
	cfg.Log.Access = true
	cfg.Timeouts.ResponseBody = tunnelSilence
	log, logs := observed()
	s, pu := startProxy(t, cfg, log)
	return s, pu.Host, func(msg string) int { return len(entries(logs, msg)) }
}

// A 101 that ReverseProxy will not relay, because its protocol is not
// the very value the client sent (a list of protocols, of which the
// backend rightly chose one), or none, or one the client did not ask
// for, used to be answered 502 with the backend's connection left open
// for ever, one leaked on each side per request, and the backend logged
// as failed. The connection is now closed, the client answered 502, and
// the backend, which answered, is not blamed: passive health, its 5xx
// count and the warning log are untouched.
func TestUpgradeNotRelayedClosesBackend(t *testing.T) {
	tests := []struct {
		name, upgrade, answer string
	}{
		{"list of protocols", "websocket, x-other", ""},
		{"list with versions", "websocket/13, websocket/8", ""},
		{"protocol not offered", "echo", "websocket"},
		{"no protocol", "echo", "-"},
		{"protocol in bytes beyond ASCII", "echo", "\xe9cho"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sb := switchingBackend(t)
			s, addr, logged := switchingProxy(t, sb)
			raw := "GET /chat HTTP/1.1\r\nHost: app.example\r\nConnection: Upgrade\r\nUpgrade: " + tt.upgrade + "\r\n"
			if tt.answer != "" {
				raw += "X-Answer: " + tt.answer + "\r\n"
			}
			// More than passive's one failure, and more than one
			// connection each.
			const rounds = 3
			for range rounds {
				if status := firstStatus(t, addr, raw+"\r\n"); status != http.StatusBadGateway {
					t.Fatalf("status %d, want 502", status)
				}
			}
			testutil.Eventually(t, waitFor, "the backend's connections closed", func() bool {
				return sb.Accepted() == rounds && sb.Closed() == rounds
			})
			b := s.state.Load().pools[0].backends[0]
			st := statsOf(b)
			if n := st.responses[classOf(http.StatusBadGateway)].Load(); n != 0 {
				t.Errorf("backend counted %d 5xx responses, want none", n)
			}
			if n := st.openUpgraded(); n != 0 {
				t.Errorf("%d upgraded connections counted open, want none", n)
			}
			if got := available(s.state.Load().pools[0]); len(got) != 1 {
				t.Errorf("available %v, want the backend", got)
			}
			if n := logged("backend request failed") + logged("backend ejected"); n != 0 {
				t.Errorf("%d failures and ejections logged, want none", n)
			}
			if n := logged("request"); n != rounds {
				t.Errorf("%d access lines, want %d", n, rounds)
			}
		})
	}
}

// A relayed switch counts as an upgraded connection while it lasts, and
// bytes the client sent right behind its request, before the 101 (which
// protocols other than WebSocket may do), reach the backend first: net/http
// has them in the hijacked connection's buffer, which ReverseProxy does
// not read.
func TestUpgradeRelaysEarlyBytes(t *testing.T) {
	sb := switchingBackend(t)
	s, addr, _ := switchingProxy(t, sb)
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(waitFor))
	const req = "GET /chat HTTP/1.1\r\nHost: app.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
	if _, err := io.WriteString(conn, req+"early|"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status %d, want 101", resp.StatusCode)
	}
	// A tunnel is no response body: silent past timeouts.response_body,
	// it stays open.
	time.Sleep(3 * tunnelSilence)
	if _, err := io.WriteString(conn, "late|"); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len("early|late|"))
	if _, err := io.ReadFull(br, got); err != nil || string(got) != "early|late|" {
		t.Fatalf("echo %q, %v; want %q", got, err, "early|late|")
	}
	st := statsOf(s.state.Load().pools[0].backends[0])
	if n := st.openUpgraded(); n != 1 {
		t.Errorf("%d upgraded connections counted open, want 1", n)
	}
	_ = conn.Close()
	testutil.Eventually(t, waitFor, "the tunnel counted closed", func() bool { return st.openUpgraded() == 0 })
	testutil.Eventually(t, waitFor, "the backend's connection closed", func() bool { return sb.Closed() == 1 })
}

// firstStatus writes raw to a new connection to addr and returns the
// status of the first response, closing the connection after it.
func firstStatus(t *testing.T, addr, raw string) int {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(waitFor))
	if _, err := io.WriteString(conn, raw); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode
}

// TestUpgradeConnectionNotKept: the connection of a protocol switch a
// backend declines (a plain answer to the upgrade request) serves no other
// request: http.Transport, which sends upgrades, keeps no connection, so
// none can be handed to a request waiting for one before the transport has
// seen what the backend sent behind its answer.
func TestUpgradeConnectionNotKept(t *testing.T) {
	b := testutil.StartConnBackend(t, func(testutil.RawRequest) testutil.Reaction {
		return testutil.Reaction{Raw: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"}
	})
	pc := &config.Pool{Name: "ws", Balancer: config.Balancer{Type: "round-robin"},
		Backends: []config.Backend{{URL: b.BaseURL(), Name: "ws-1"}}}
	_, u := startProxy(t, catchAll(pc), nil)
	c := testutil.Client(t)
	for i := range 3 {
		r := get(t, c, u.String()+"/", func(r *http.Request) {
			r.Header.Set("Connection", "Upgrade")
			r.Header.Set("Upgrade", "websocket")
		})
		if r.status != http.StatusOK || r.body != "ok" {
			t.Fatalf("request %d: got %d %q, want the backend's answer", i, r.status, r.body)
		}
	}
	for _, r := range b.Requests() {
		if r.Reused {
			t.Errorf("request %s went on a connection used before", r.Target)
		}
	}
	testutil.Eventually(t, waitFor, "every connection closed", func() bool {
		for _, r := range b.Requests() {
			if !b.ConnClosed(r.Conn) {
				return false
			}
		}
		return true
	})
}
