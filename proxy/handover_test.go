package proxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/affinityproxy/affinity/internal/testutil"
)

// After HandOver, a connection accepted before Shutdown whose request comes
// after Shutdown began is answered: another process accepts on the same
// socket, and this client had no way to know. Without HandOver, as on
// SIGTERM, http.Server.Shutdown closes it unanswered.
func TestShutdownAfterHandOverAnswersLastConnections(t *testing.T) {
	tests := []struct {
		name     string
		handOver bool
		answered bool
	}{
		{"handed over", true, true},
		{"plain shutdown", false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := NewServer(catchAll(poolOf("web", "round-robin", cookieOptions(), startBackends(t, "a")...)), nil)
			if err != nil {
				t.Fatal(err)
			}
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			served := make(chan error, 1)
			go func() { served <- s.Serve(ln) }()
			conn, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			testutil.Eventually(t, waitFor, "the connection accepted", func() bool {
				s.lnMu.Lock()
				defer s.lnMu.Unlock()
				return freshConns(s.bindings) == 1
			})
			if tt.handOver {
				s.HandOver()
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			stopped := make(chan error, 1)
			go func() { stopped <- s.Shutdown(ctx) }()
			testutil.Eventually(t, waitFor, "the listener closed", func() bool {
				c, err := net.DialTimeout("tcp", ln.Addr().String(), time.Second)
				if err == nil {
					_ = c.Close()
				}
				return err != nil
			})
			if _, err := io.WriteString(conn, "GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"); err != nil {
				t.Fatal(err)
			}
			_ = conn.SetReadDeadline(time.Now().Add(20 * time.Second))
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if answered := err == nil && resp.StatusCode == http.StatusOK; answered != tt.answered {
				t.Errorf("answered %v (%v), want %v", answered, err, tt.answered)
			}
			if err == nil {
				_ = resp.Body.Close()
			}
			_ = conn.Close()
			if err := <-stopped; err != nil {
				t.Errorf("Shutdown: %v", err)
			}
			if err := <-served; !errors.Is(err, http.ErrServerClosed) {
				t.Errorf("Serve returned %v, want %v", err, http.ErrServerClosed)
			}
		})
	}
}
