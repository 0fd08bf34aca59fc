package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestServeStartsAdmin checks that `affinity serve` opens the configured
// admin listener with the proxy, and closes it when it stops.
func TestServeStartsAdmin(t *testing.T) {
	b := startBackend(t, "web-1")
	listen, admin := freeAddr(t), freeAddr(t)
	cfg := writeFile(t, "affinity.yaml", fmt.Appendf(nil, `listen: %s
admin: {listen: %s, pprof: true}
pools:
  web:
    backends: [{url: %s, name: web-1}]
`, listen, admin, b.URL))

	ctx, cancel := context.WithCancel(context.Background())
	var stderr syncBuffer
	exited := make(chan int, 1)
	go func() { exited <- execute(ctx, []string{"serve", "-c", cfg, "--watch=false"}, io.Discard, &stderr) }()
	t.Cleanup(func() {
		cancel()
		if code := <-exited; code != exitOK {
			t.Errorf("serve exited %d; output:\n%s", code, stderr.String())
		}
	})

	c := &http.Client{Transport: &http.Transport{}, Timeout: 5 * time.Second}
	defer c.CloseIdleConnections()
	body := func(u string) (int, string) {
		resp, err := c.Get(u)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	waitFor(t, "the admin listener to answer", func() bool {
		code, _ := body("http://" + admin + "/readyz")
		return code == http.StatusOK
	})
	if code, _ := body("http://" + listen + "/"); code != http.StatusOK {
		t.Fatalf("proxy answered %d", code)
	}
	tests := []struct {
		path string
		want string
	}{
		{"/metrics", `affinity_requests_total{backend="web-1",class="2xx",pool="web"} 1`},
		{"/status", `"name": "web-1"`},
		{"/", "web-1"},
		{"/debug/pprof/", "goroutine"},
	}
	for _, tt := range tests {
		if code, got := body("http://" + admin + tt.path); code != http.StatusOK || !strings.Contains(got, tt.want) {
			t.Errorf("GET %s = %d, want 200 with %q:\n%s", tt.path, code, tt.want, got)
		}
	}
	if !strings.Contains(stderr.String(), "admin listening") {
		t.Errorf("no admin listening line in the log:\n%s", stderr.String())
	}
}
