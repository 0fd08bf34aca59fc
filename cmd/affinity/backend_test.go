package main

import (
	"context"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/affinityproxy/affinity/internal/demoapp"
)

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

var listeningRE = regexp.MustCompile(`backend listening.*"addr": "([^"]+)"`)

func TestBackendServesUntilStopped(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string // expected backend name; empty: the bound address
	}{
		{"named", []string{"--name", "web-7"}, "web-7"},
		{"named after its address", nil, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var out, errOut syncBuffer
			done := make(chan int, 1)
			args := append([]string{"backend", "--listen", "127.0.0.1:0"}, tc.args...)
			go func() { done <- execute(ctx, args, &out, &errOut) }()

			var addr string
			waitFor(t, "the backend to listen", func() bool {
				m := listeningRE.FindStringSubmatch(errOut.String())
				if m != nil {
					addr = m[1]
				}
				return m != nil
			})
			want := tc.want
			if want == "" {
				want = addr
			}
			c := &http.Client{Transport: &http.Transport{}}
			defer c.CloseIdleConnections()
			resp, err := c.Get("http://" + addr + "/")
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if got := resp.Header.Get(demoapp.HeaderBackend); got != want || !strings.HasPrefix(string(body), "name="+want+" ") {
				t.Errorf("%s %q, body %q; want %s", demoapp.HeaderBackend, got, body, want)
			}

			cancel()
			select {
			case code := <-done:
				if code != exitOK {
					t.Errorf("exit %d after stop, want 0; stderr:\n%s", code, errOut.String())
				}
			case <-time.After(10 * time.Second):
				t.Fatal("backend did not stop")
			}
		})
	}
}

func TestBackendBusyPort(t *testing.T) {
	srv := startBackend(t, "web-1")
	addr := strings.TrimPrefix(srv.URL, "http://")
	code, _, errOut := run(t, "backend", "--listen", addr)
	if code != exitFailure || !strings.Contains(errOut, "address already in use") {
		t.Errorf("exit %d, stderr %q; want 1 and the bind error", code, errOut)
	}
}
