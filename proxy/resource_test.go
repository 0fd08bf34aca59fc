package proxy

import (
	"errors"
	"io"
	"net/http"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/affinityproxy/affinity/config"
	"github.com/affinityproxy/affinity/internal/testutil"
)

// exhaustFiles lowers the process's descriptor limit to the descriptors
// open now and fills any gap below it, so that the next socket or file
// fails with EMFILE, until the returned release. The test's other
// descriptors must be open before.
func exhaustFiles(t *testing.T) (release func()) {
	t.Helper()
	var was syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &was); err != nil {
		t.Fatal(err)
	}
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	// ReadDir's own descriptor is closed again, so the highest number
	// listed bounds the ones open; gaps below it are filled below.
	lim := was
	lim.Cur = uint64(len(fds)) + 8
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	var held []*os.File
	// Once, and at the test's end too: a test that fails while the table
	// is full must not leave the limit to the tests after it.
	restore := sync.OnceFunc(func() {
		for _, f := range held {
			_ = f.Close()
		}
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &was); err != nil {
			t.Error(err)
		}
	})
	t.Cleanup(restore)
	for {
		f, err := os.Open(os.DevNull)
		if errors.Is(err, syscall.EMFILE) {
			return restore
		}
		if err != nil || len(held) > 1<<10 {
			restore()
			t.Fatalf("filling the descriptor table: %d held, %v", len(held), err)
		}
		held = append(held, f)
	}
}

// Running out of descriptors is the proxy's own failure, never a
// backend's: a request needing a new backend connection is answered 503
// with Retry-After, health checks that cannot open theirs give no verdict,
// and no backend is ejected, marked down or counted a 5xx. Once
// descriptors are free again, the same client connection is served.
func TestLocalResourceErrors(t *testing.T) {
	// Every answer closes its connection, so every request dials.
	closing := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		_, _ = io.WriteString(w, "ok")
	})
	// The backends run in this process, so they are out of descriptors
	// too: a check whose dial took a descriptor another check had just
	// freed reaches a backend that cannot accept it until release, and
	// would time out, blamed on the backend, were the timeout shorter
	// than the backend's wait to accept again (up to 1 s). Such a check
	// is answered once the descriptors are back.
	hc := testHealth(1, 1)
	hc.Timeout = 10 * time.Second
	pc := &config.Pool{Name: "web", Balancer: config.Balancer{Type: "round-robin"}, HealthCheck: hc}
	for _, id := range []string{"a", "b"} {
		pc.Backends = append(pc.Backends, config.Backend{URL: testutil.StartServer(t, closing), Name: id})
	}
	passive := config.DefaultPassive()
	passive.Failures = 1
	pc.Passive = &passive
	s, u := startProxy(t, catchAll(pc), nil)
	p := s.state.Load().pools[0]

	conn, br := testutil.DialRaw(t, u.Host, waitFor)
	ask := func() (int, string) {
		t.Helper()
		if _, err := io.WriteString(conn, "GET / HTTP/1.1\r\nHost: app.example\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		_, _ = io.Copy(io.Discard, res.Body)
		return res.StatusCode, res.Header.Get("Retry-After")
	}
	if status, _ := ask(); status != http.StatusOK {
		t.Fatalf("status %d before, want 200", status)
	}

	release := exhaustFiles(t)
	status, retry := ask()
	// Wait for checks of both backends to fail for want of descriptors,
	// or for one to take a backend down, as fall 1 would if blamed on it.
	testutil.Eventually(t, waitFor, "health checks failing", func() bool {
		return p.localChecks.Load() >= 4 || len(p.snap.Load().available) < 2
	})
	release()

	if status != http.StatusServiceUnavailable || retry == "" {
		t.Errorf("answer %d with Retry-After %q while out of descriptors, want 503 with one", status, retry)
	}
	if n := p.localRequests.Load(); n != 1 {
		t.Errorf("%d requests counted as local failures, want 1", n)
	}
	for _, m := range p.view() {
		if !m.available || !m.healthy || m.ejected {
			t.Errorf("backend %s: available %v, healthy %v, ejected %v; want available and healthy", m.backend.ID, m.available, m.healthy, m.ejected)
		}
		if n := m.stats.responses[classOf(http.StatusBadGateway)].Load(); n != 0 {
			t.Errorf("backend %s: %d 5xx counted, want none", m.backend.ID, n)
		}
	}
	if status, _ := ask(); status != http.StatusOK {
		t.Errorf("status %d after, want 200", status)
	}
}
