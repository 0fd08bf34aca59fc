package proxy

import (
	"net/http"
	"strings"
	"testing"

	"github.com/affinityproxy/affinity/balancer"
	"github.com/affinityproxy/affinity/config"
	"github.com/affinityproxy/affinity/internal/testutil"
)

// TestLoopDetected: a pool whose backend is the proxy itself answers 508
// after one hop, instead of forwarding the request to itself until it
// runs out of file descriptors; a Via of another proxy passes.
func TestLoopDetected(t *testing.T) {
	b := testutil.StartBackend(t, "b1")
	s, u := startProxy(t, catchAll(poolOf("web", "round-robin", balancer.Options{}, b)), nil)
	c := testutil.Client(t)
	if r := get(t, c, u.String(), func(r *http.Request) { r.Header.Set("Via", "1.1 other-proxy") }); r.status != http.StatusOK {
		t.Fatalf("with another proxy's Via: status %d, want 200", r.status)
	}
	if last, _ := b.Last(); !strings.HasPrefix(last.Header.Get("Via"), "1.1 other-proxy") || !strings.Contains(strings.Join(last.Header["Via"], ","), s.via) {
		t.Errorf("backend got Via %q, want the client's and this proxy's", last.Header["Via"])
	}
	self := catchAll(&config.Pool{Name: "web", Balancer: config.Balancer{Type: "round-robin"},
		Backends: []config.Backend{{URL: u, Name: "self", Weight: 1, State: config.StateReady}}})
	if err := s.Reload(self); err != nil {
		t.Fatal(err)
	}
	if r := get(t, c, u.String(), nil); r.status != http.StatusLoopDetected {
		t.Errorf("through a backend that is the proxy: status %d, want 508", r.status)
	}
	if n := s.state.Load().pool("web").view()[0].backend.InFlight(); n != 0 {
		t.Errorf("%d requests still in flight", n)
	}
}
