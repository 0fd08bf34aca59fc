package proxy

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/affinityproxy/affinity/balancer"
	"github.com/affinityproxy/affinity/internal/testutil"
)

// askRaw sends a GET on c and reads its answer's status.
func askRaw(t *testing.T, c net.Conn, br *bufio.Reader) int {
	t.Helper()
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: app.example\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, res.Body)
	_ = res.Body.Close()
	return res.StatusCode
}

// Past server.max_conns the proxy accepts no more connections until one
// closes: a client past it waits, unanswered, and is served once another
// leaves. The admin listener answers meanwhile. The episode is logged once
// as it starts, however many clients wait, and once as it ends, when a
// client finds a place without waiting; and counted.
func TestMaxConns(t *testing.T) {
	const limit = 3
	cfg := catchAll(poolOf("web", "round-robin", balancer.Options{}, testutil.StartBackend(t, "a")))
	cfg.Server.MaxConns = limit
	log, logs := observed()
	s, u, admin := startWithAdmin(t, cfg, log)

	var held []net.Conn
	for range limit {
		c, br := testutil.DialRaw(t, u.Host, waitFor)
		if status := askRaw(t, c, br); status != http.StatusOK {
			t.Fatalf("status %d within the limit, want 200", status)
		}
		held = append(held, c)
	}
	testutil.Eventually(t, waitFor, "accepting paused", func() bool { return s.conns.pauses.Load() == 1 })

	var waiting []*bufio.Reader
	var waitingConns []net.Conn
	for range 2 {
		c, br := testutil.DialRaw(t, u.Host, waitFor)
		if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: app.example\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		var ne net.Error
		if _, err := br.Peek(1); !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("a client past max_conns got %v, want no answer while the others stay", err)
		}
		_ = c.SetReadDeadline(time.Now().Add(waitFor))
		waiting, waitingConns = append(waiting, br), append(waitingConns, c)
	}

	fams := scrape(t, &http.Client{}, admin)
	if v, _ := metricValue(fams, "affinity_client_connections_max", ""); v != limit {
		t.Errorf("affinity_client_connections_max = %v, want %d", v, limit)
	}
	if v, _ := metricValue(fams, "affinity_accept_pauses_total", ""); v != 1 {
		t.Errorf("affinity_accept_pauses_total = %v, want 1", v)
	}

	// Each client leaving lets one waiting in.
	for i, br := range waiting {
		_ = held[i].Close()
		res, err := http.ReadResponse(br, nil)
		if err != nil || res.StatusCode != http.StatusOK {
			t.Fatalf("waiting client %d: %v, want 200 once a place was free", i, err)
		}
		_ = res.Body.Close()
	}
	// Room for two more: the next client finds a place at once.
	_ = held[2].Close()
	_ = waitingConns[0].Close()
	// One connection left, and the place the accepting loop holds for
	// the next.
	testutil.Eventually(t, waitFor, "two places freed", func() bool { return s.conns.open.Load() <= 2 })
	c, br := testutil.DialRaw(t, u.Host, waitFor)
	if status := askRaw(t, c, br); status != http.StatusOK {
		t.Fatalf("status %d after the episode, want 200", status)
	}
	testutil.Eventually(t, waitFor, "end of the episode logged", func() bool {
		return len(entries(logs, "accepting connections again")) == 1
	})
	if n := len(entries(logs, "client connections at server.max_conns: accepting no more until one closes")); n != 1 {
		t.Errorf("%d lines for one episode, want 1", n)
	}
	if n := s.conns.pauses.Load(); n != 1 {
		t.Errorf("%d pauses counted, want 1", n)
	}
}

// server.max_conns's default leaves fileReserve descriptors and half the
// rest for backend connections, and never less than minDerivedConns.
func TestDerivedMaxConns(t *testing.T) {
	var was syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &was); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &was) }()
	for _, tt := range []struct{ files, want int }{
		{4096, (4096 - fileReserve) / 2},
		{fileReserve + 2*minDerivedConns + 2, minDerivedConns + 1},
		{fileReserve, minDerivedConns},
	} {
		lim := was
		lim.Cur = uint64(tt.files)
		if lim.Cur > lim.Max {
			t.Skipf("hard limit %d below %d", lim.Max, tt.files)
		}
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			t.Fatal(err)
		}
		if got := derivedMaxConns(); got != tt.want {
			t.Errorf("%d open files: max_conns %d, want %d", tt.files, got, tt.want)
		}
	}
}
