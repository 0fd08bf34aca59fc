package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/affinityproxy/affinity/balancer"
	"github.com/affinityproxy/affinity/config"
	"github.com/affinityproxy/affinity/internal/testutil"
)

// testParkAfter is the parking delay of these tests.
const testParkAfter = 50 * time.Millisecond

// startParking serves cfg with idle connections parking after
// testParkAfter, and returns the proxy's address.
func startParking(t *testing.T, cfg *config.Config) (*Server, string) {
	t.Helper()
	cfg.Server.ParkAfter = testParkAfter
	s, u := startProxy(t, cfg, nil)
	return s, u.Host
}

// waitParked waits until s holds n connections parked.
func waitParked(t *testing.T, s *Server, n int) {
	t.Helper()
	testutil.Eventually(t, waitFor, fmt.Sprintf("%d connections did not park", n), func() bool {
		_, parked := s.clientConns()
		return parked == n
	})
}

// clientConnGauge scrapes affinity_client_connections, by state.
func clientConnGauge(t *testing.T, s *Server) map[string]int {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(collector{s})
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for _, mf := range mfs {
		if mf.GetName() != "affinity_client_connections" {
			continue
		}
		for _, m := range mf.GetMetric() {
			got[m.GetLabel()[0].GetValue()] = int(m.GetGauge().GetValue())
		}
	}
	return got
}

func parkBackendConfig(t *testing.T) *config.Config {
	return catchAll(poolOf("web", "round-robin", balancer.Options{}, testutil.StartBackend(t, "b1")))
}

// Idle connections leave http.Server for the parker (internal/park, whose
// tests hold it to http.Server's behaviour) and are counted as parked, not
// served; a request on a parked connection is answered on it through the
// proxy, and a connection closed while parked leaves the counts.
func TestParkIdleConnection(t *testing.T) {
	s, addr := startParking(t, parkBackendConfig(t))
	const n = 20
	type client struct {
		conn net.Conn
		br   *bufio.Reader
	}
	clients := make([]client, n)
	for i := range clients {
		c, br := testutil.DialRaw(t, addr, waitFor)
		clients[i] = client{c, br}
		if r, err := rawGet(c, br, "/first"); err != nil || r.status != http.StatusOK || r.body != "b1" {
			t.Fatalf("first request: %d %q, %v", r.status, r.body, err)
		}
	}
	testutil.Eventually(t, waitFor, "idle connections did not park", func() bool {
		served, parked := s.clientConns()
		return parked == n && served == 0
	})
	if got := clientConnGauge(t, s); got["parked"] != n || got["served"] != 0 {
		t.Errorf("affinity_client_connections = %v, want %d parked", got, n)
	}
	for round := range 2 {
		for i, c := range clients {
			if r, err := rawGet(c.conn, c.br, "/again"); err != nil || r.status != http.StatusOK || r.body != "b1" {
				t.Fatalf("round %d, connection %d: %d %q, %v", round, i, r.status, r.body, err)
			}
		}
		waitParked(t, s, n)
	}
	// A client closing a parked connection wakes it, and the proxy lets go.
	for _, c := range clients {
		_ = c.conn.Close()
	}
	testutil.Eventually(t, waitFor, "closed parked connections were kept", func() bool {
		served, parked := s.clientConns()
		return parked == 0 && served == 0
	})
}

// A connection that parked and is served again reads its requests as any
// other: after a request with both Content-Length and Transfer-Encoding it
// closes, and what follows in the same write is never read as a request;
// nor does the connection park again, to wait for more.
func TestParkedFramingCloses(t *testing.T) {
	const doubtful = "POST /a HTTP/1.1\r\nHost: test\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
	const smuggled = "GET /smuggled HTTP/1.1\r\nHost: test\r\n\r\n"
	b := testutil.StartConnBackend(t, func(testutil.RawRequest) testutil.Reaction {
		return testutil.Reaction{Raw: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"}
	})
	cfg := catchAll(&config.Pool{Name: "web", Balancer: config.Balancer{Type: "round-robin"},
		Backends: []config.Backend{{URL: b.BaseURL(), Name: "a"}}})
	s, addr := startParking(t, cfg)
	for _, raw := range []string{doubtful + smuggled, doubtful} {
		conn, br := testutil.DialRaw(t, addr, waitFor)
		if r, err := rawGet(conn, br, "/first"); err != nil || r.status != http.StatusOK {
			t.Fatalf("first request: %d, %v", r.status, err)
		}
		waitParked(t, s, 1)
		if _, err := io.WriteString(conn, raw); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("%q: %v, %v", raw, resp, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		expectEOF(t, br, "connection after a request with Content-Length and Transfer-Encoding")
	}
	for _, r := range b.Requests() {
		if r.Target == "/smuggled" {
			t.Errorf("the request after the doubtful one reached the backend")
		}
	}
}

// Shutdown closes parked connections (they are idle) and returns at once;
// a reload to another address closes those of the old listener.
func TestParkShutdownAndRebind(t *testing.T) {
	cfg := parkBackendConfig(t)
	cfg.Server.ParkAfter = testParkAfter
	s, err := NewServer(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	ln := testutil.Listen(t)
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	old, oldR := testutil.DialRaw(t, ln.Addr().String(), waitFor)
	if _, err := rawGet(old, oldR, "/"); err != nil {
		t.Fatal(err)
	}
	waitParked(t, s, 1)

	moved := *cfg
	moved.Listen = testutil.FreeAddr(t)
	reload(t, s, &moved)
	expectEOF(t, oldR, "parked connection of the old listener")

	conn, br := testutil.DialRaw(t, moved.Listen, waitFor)
	if _, err := rawGet(conn, br, "/"); err != nil {
		t.Fatal(err)
	}
	waitParked(t, s, 1)
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	expectEOF(t, br, "parked connection at shutdown")
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		t.Errorf("serve returned %v", err)
	}
}

// BenchmarkParkedRequest is a request on a keep-alive connection that has
// gone idle, parked or not: what parking adds to the client's latency
// (ns/op) and to the proxy's CPU (cpu-ns/op, the whole test process's
// user and system time, client included, the same in both). The requests
// go round 100 connections, so each one is idle for a while between two;
// parking after 1 ms, it is parked by then.
func BenchmarkParkedRequest(b *testing.B) {
	for _, bc := range []struct {
		name  string
		after time.Duration
	}{{"live", 0}, {"parked", time.Millisecond}} {
		b.Run(bc.name, func(b *testing.B) {
			backend := testutil.StartBackend(b, "b1")
			cfg := catchAll(poolOf("web", "round-robin", balancer.Options{}, backend))
			cfg.Server.ParkAfter = bc.after
			s, err := NewServer(cfg, nil)
			if err != nil {
				b.Fatal(err)
			}
			addr := testutil.Serve(b, s).Host
			conns := make([]net.Conn, 100)
			readers := make([]*bufio.Reader, len(conns))
			for i := range conns {
				c, err := net.Dial("tcp", addr)
				if err != nil {
					b.Fatal(err)
				}
				defer c.Close()
				conns[i], readers[i] = c, bufio.NewReader(c)
				if _, err := rawGet(c, readers[i], "/"); err != nil {
					b.Fatal(err)
				}
			}
			time.Sleep(10 * time.Millisecond)
			start := cpuTime(b)
			i := 0
			for b.Loop() {
				if r, err := rawGet(conns[i], readers[i], "/"); err != nil || r.status != http.StatusOK {
					b.Fatalf("%d, %v", r.status, err)
				}
				i = (i + 1) % len(conns)
			}
			b.ReportMetric(float64(cpuTime(b)-start)/float64(b.N), "cpu-ns/op")
		})
	}
}

// cpuTime is the user and system CPU time of this process so far.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
