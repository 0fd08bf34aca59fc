package proxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"testing"

	"github.com/affinityproxy/affinity/balancer"
	"github.com/affinityproxy/affinity/config"
	"github.com/affinityproxy/affinity/internal/testutil"
)

// rawGet sends a GET of path on conn and reads the response.
func rawGet(conn net.Conn, br *bufio.Reader, path string) (reply, error) {
	if _, err := io.WriteString(conn, "GET "+path+" HTTP/1.1\r\nHost: test\r\n\r\n"); err != nil {
		return reply{}, err
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return reply{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return reply{status: resp.StatusCode, body: string(b), header: resp.Header}, err
}

// expectEOF fails t unless the server closes the connection br reads.
func expectEOF(t *testing.T, br *bufio.Reader, what string) {
	t.Helper()
	if _, err := br.ReadByte(); !errors.Is(err, io.EOF) {
		t.Errorf("%s: read %v, want EOF: the proxy should have closed it", what, err)
	}
}

// TestReloadRebinds: a new listen address is served at once; the old
// listener takes no new connection, its idle connections close, and its
// request in flight finishes before its connection closes. Serve follows
// the move, returning only at Shutdown (startProxy's cleanup checks).
func TestReloadRebinds(t *testing.T) {
	su, started, release := blockingBackend(t)
	fast := startCtl(t, "fast")
	cfg := &config.Config{
		Listen:   "127.0.0.1:0",
		Timeouts: testTimeouts,
		Routes:   []config.Route{{Match: config.Match{Path: "/slow"}, Pool: "slow"}, {Pool: "fast"}},
		Pools: []*config.Pool{
			{Name: "slow", Balancer: config.Balancer{Type: "round-robin"}, Backends: []config.Backend{{URL: su, Name: "slow", Weight: 1}}},
			configure(&config.Pool{Name: "fast", Balancer: config.Balancer{Type: "round-robin"}}, fast),
		},
	}
	s, u := startProxy(t, cfg, nil)
	oldAddr := u.Host

	idle, idleR := testutil.DialRaw(t, oldAddr, waitFor)
	if r, err := rawGet(idle, idleR, "/"); err != nil || r.body != "fast" {
		t.Fatalf("first request: %v %q, %v", r.status, r.body, err)
	}
	busy, busyR := testutil.DialRaw(t, oldAddr, waitFor)
	done := make(chan reply, 1)
	go func() {
		r, err := rawGet(busy, busyR, "/slow")
		if err != nil {
			r.body = err.Error()
		}
		done <- r
	}()
	<-started

	moved := *cfg
	moved.Listen = testutil.FreeAddr(t)
	reload(t, s, &moved)
	expectEOF(t, idleR, "idle connection of the old listener")
	if c, err := net.Dial("tcp", oldAddr); err == nil {
		_ = c.Close()
		t.Error("the old listener still accepts connections")
	}
	if r := get(t, testutil.Client(t), "http://"+moved.Listen+"/", nil); r.status != http.StatusOK || r.body != "fast" {
		t.Errorf("new listener: %d %q, want 200 from fast", r.status, r.body)
	}
	release()
	if r := <-done; r.status != http.StatusOK || r.body != "finished" {
		t.Errorf("request in flight on the old listener: %d %q, want 200 finished", r.status, r.body)
	}
	expectEOF(t, busyR, "busy connection of the old listener, once its request is done")
}

// TestReloadRebindsListenAndServe: a server started with ListenAndServe
// follows its address too, and ListenAndServe returns ErrServerClosed at
// Shutdown. A rebind before serving only changes the address to bind.
func TestReloadRebindsListenAndServe(t *testing.T) {
	cfg := catchAll(poolOf("web", "round-robin", balancer.Options{}, testutil.StartBackend(t, "a")))
	cfg.Listen = testutil.FreeAddr(t)
	s, err := NewServer(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	moved := *cfg
	moved.Listen = testutil.FreeAddr(t)
	reload(t, s, &moved) // not serving yet
	served := make(chan error, 1)
	go func() { served <- s.ListenAndServe() }()
	testutil.WaitHTTP(t, "http://"+moved.Listen+"/", waitFor)

	again := moved
	again.Listen = testutil.FreeAddr(t)
	reload(t, s, &again)
	testutil.WaitHTTP(t, "http://"+again.Listen+"/", waitFor)
	if err := s.Shutdown(context.Background()); err != nil {
		t.Errorf("Shutdown = %v", err)
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		t.Errorf("ListenAndServe = %v, want ErrServerClosed", err)
	}
}

// TestReloadRespelledListen: a listen address written another way for the
// same address and port (a name for its address, an IPv4-mapped form)
// keeps the listener and its connections, where binding it again would
// fail on the listener holding it.
func TestReloadRespelledListen(t *testing.T) {
	cfg := catchAll(poolOf("web", "round-robin", balancer.Options{}, testutil.StartBackend(t, "a")))
	ln := testutil.Listen(t)
	cfg.Listen = ln.Addr().String()
	log, logs := observed()
	s, err := NewServer(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	conn, br := testutil.DialRaw(t, cfg.Listen, waitFor)
	_, port, _ := net.SplitHostPort(cfg.Listen)
	for _, spelling := range []string{"localhost:" + port, "[::ffff:127.0.0.1]:" + port} {
		next := *cfg
		next.Listen = spelling
		reload(t, s, &next)
		if r, err := rawGet(conn, br, "/"); err != nil || r.status != http.StatusOK {
			t.Errorf("after %s: the open connection got %d, %v", spelling, r.status, err)
		}
		cfg = &next
	}
	if n := len(entries(logs, "listen address written anew; the listener stays")); n != 2 {
		t.Errorf("%d log lines for the new spellings, want 2", n)
	}
	_ = conn.Close()
	if err := s.Shutdown(context.Background()); err != nil {
		t.Errorf("Shutdown = %v", err)
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		t.Errorf("Serve = %v, want ErrServerClosed", err)
	}
}
