package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"sync/atomic"
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

// Idle connections leave http.Server for the parker, and a request on a
// parked connection is answered on it.
func TestParkIdleConnection(t *testing.T) {
	s, addr := startParking(t, parkBackendConfig(t))
	const n = 20
	type client struct {
		conn net.Conn
		br   *bufio.Reader
	}
	clients := make([]client, n)
	for i := range clients {
		c, br := dialRaw(t, addr)
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

// A client that goes quiet in the middle of a request keeps it: a
// connection with part of the next request read never parks, and the
// first bytes of a request are not cut short by the parking deadline.
func TestParkKeepsPartialRequests(t *testing.T) {
	s, addr := startParking(t, parkBackendConfig(t))
	tests := []struct {
		name        string
		first, rest string // rest is sent after the connection would have parked
	}{
		{"pipelined with the first request", "GET /a HTTP/1.1\r\nHost: x\r\n\r\nGE", "T /b HTTP/1.1\r\nHost: x\r\n\r\n"},
		{"two bytes, then quiet", "GET /a HTTP/1.1\r\nHost: x\r\n\r\n", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn, br := dialRaw(t, addr)
			if _, err := io.WriteString(conn, tt.first); err != nil {
				t.Fatal(err)
			}
			readOK(t, br)
			if tt.rest == "" {
				// Two bytes before the parking delay, then quiet past it.
				time.Sleep(testParkAfter / 2)
				if _, err := io.WriteString(conn, "GE"); err != nil {
					t.Fatal(err)
				}
				tt.rest = "T /b HTTP/1.1\r\nHost: x\r\n\r\n"
			}
			time.Sleep(4 * testParkAfter)
			if _, parked := s.clientConns(); parked != 0 {
				t.Fatalf("%d connections parked with a request half read", parked)
			}
			if _, err := io.WriteString(conn, tt.rest); err != nil {
				t.Fatal(err)
			}
			readOK(t, br)
		})
	}
}

func readOK(t *testing.T, br *bufio.Reader) {
	t.Helper()
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	defer resp.Body.Close()
	if b, err := io.ReadAll(resp.Body); err != nil || resp.StatusCode != http.StatusOK || string(b) != "b1" {
		t.Fatalf("response %d %q, %v; want 200 b1", resp.StatusCode, b, err)
	}
}

// A parked connection still closes at the idle timeout, not before.
func TestParkIdleTimeout(t *testing.T) {
	cfg := parkBackendConfig(t)
	cfg.Server.IdleTimeout = 1500 * time.Millisecond
	s, addr := startParking(t, cfg)
	conn, br := dialRaw(t, addr)
	if _, err := rawGet(conn, br, "/"); err != nil {
		t.Fatal(err)
	}
	idleFrom := time.Now()
	waitParked(t, s, 1)
	expectEOF(t, br, "parked connection past its idle timeout")
	if idle := time.Since(idleFrom); idle < cfg.Server.IdleTimeout {
		t.Errorf("closed after %v idle, before the idle timeout %v", idle, cfg.Server.IdleTimeout)
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
	old, oldR := dialRaw(t, ln.Addr().String())
	if _, err := rawGet(old, oldR, "/"); err != nil {
		t.Fatal(err)
	}
	waitParked(t, s, 1)

	moved := *cfg
	moved.Listen = testutil.FreeAddr(t)
	reload(t, s, &moved)
	expectEOF(t, oldR, "parked connection of the old listener")

	conn, br := dialRaw(t, moved.Listen)
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

// Clients that go quiet for random spells, around the parking delay, while
// others keep sending: every request is answered on its own connection,
// whether it arrives as the connection parks, while parked or as it comes
// back. Bounded: 40 clients for 1.5 s.
func TestParkUnderLoad(t *testing.T) {
	s, addr := startParking(t, parkBackendConfig(t))
	const clients = 40
	deadline := time.Now().Add(1500 * time.Millisecond)
	errs := make(chan error, clients)
	var answered atomic.Int64
	for i := range clients {
		go func() {
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				errs <- err
				return
			}
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(waitFor))
			br := bufio.NewReader(conn)
			rng := rand.New(rand.NewPCG(uint64(i), 7))
			for time.Now().Before(deadline) {
				if r, err := rawGet(conn, br, "/"); err != nil || r.status != http.StatusOK || r.body != "b1" {
					errs <- fmt.Errorf("client %d: %d %q, %v", i, r.status, r.body, err)
					return
				}
				answered.Add(1)
				if i%4 != 0 { // a quarter of the clients never pause
					time.Sleep(time.Duration(rng.Int64N(int64(3 * testParkAfter))))
				}
			}
			errs <- nil
		}()
	}
	mostParked := 0
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for done := 0; done < clients; {
		select {
		case err := <-errs:
			if err != nil {
				t.Error(err)
			}
			done++
		case <-tick.C:
			_, parked := s.clientConns()
			mostParked = max(mostParked, parked)
		}
	}
	if n := answered.Load(); n < clients*2 {
		t.Errorf("%d requests answered, want at least %d", n, clients*2)
	}
	if mostParked == 0 {
		t.Error("no connection parked during the run")
	}
	testutil.Eventually(t, waitFor, "closed connections still counted", func() bool {
		served, parked := s.clientConns()
		return served == 0 && parked == 0
	})
	t.Logf("%d requests, up to %d connections parked at once", answered.Load(), mostParked)
}
