package proxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/affinityproxy/affinity/balancer"
	"github.com/affinityproxy/affinity/config"
	"github.com/affinityproxy/affinity/internal/testutil"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

func TestNewServerRejectsBadConfig(t *testing.T) {
	good := func() *config.Config {
		u := &url.URL{Scheme: "http", Host: "127.0.0.1:9"}
		return &config.Config{
			Routes: []config.Route{{Pool: "web"}},
			Pools: []*config.Pool{{
				Name:     "web",
				Balancer: config.Balancer{Type: "round-robin"},
				Backends: []config.Backend{{URL: u, Name: "a"}, {URL: u, Name: "b"}},
			}},
		}
	}
	tests := []struct {
		name string
		edit func(*config.Config)
		want error // nil: any error
	}{
		{"unknown balancer", func(c *config.Config) { c.Pools[0].Balancer.Type = "magic" }, balancer.ErrUnknownPolicy},
		{"bad balancer options", func(c *config.Config) { c.Pools[0].Balancer.Type = "cookie" }, balancer.ErrInvalidCookie},
		{"route to unknown pool", func(c *config.Config) { c.Routes[0].Pool = "api" }, errUnknownPool},
		{"duplicate pool", func(c *config.Config) { c.Pools = append(c.Pools, c.Pools[0]) }, errDuplicatePool},
		{"nil pool", func(c *config.Config) { c.Pools = append(c.Pools, nil) }, errUnknownPool},
		{"backend without URL", func(c *config.Config) { c.Pools[0].Backends[0].URL = nil }, errBadBackend},
		{"backend not http", func(c *config.Config) {
			c.Pools[0].Backends[0].URL = &url.URL{Scheme: "ftp", Host: "127.0.0.1:21"}
		}, errBadBackend},
		{"backend without host", func(c *config.Config) {
			c.Pools[0].Backends[0].URL = &url.URL{Scheme: "http", Path: "/x"}
		}, errBadBackend},
		{"duplicate backend id", func(c *config.Config) { c.Pools[0].Backends[1].Name = "a" }, errBadBackend},
	}
	if _, err := NewServer(good(), nil); err != nil {
		t.Fatalf("NewServer(valid config) = %v", err)
	}
	if _, err := NewServer(nil, nil); err == nil {
		t.Error("NewServer(nil) succeeded")
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := good()
			tt.edit(cfg)
			_, err := NewServer(cfg, nil)
			if !errors.Is(err, tt.want) {
				t.Errorf("NewServer = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestBackendIDDefaultsToHost(t *testing.T) {
	u := &url.URL{Scheme: "http", Host: "127.0.0.1:9"}
	cfg := catchAll(&config.Pool{Name: "web", Balancer: config.Balancer{Type: "round-robin"},
		Backends: []config.Backend{{URL: u}}})
	s, err := NewServer(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if id := s.state.Load().pools[0].backends[0].ID; id != u.Host {
		t.Errorf("backend id = %q, want %q", id, u.Host)
	}
}

func TestServeLogsListenerPoolsAndBackends(t *testing.T) {
	a, b := testutil.StartBackend(t, "a"), testutil.StartBackend(t, "b")
	log, logs := observed()
	_, u := startProxy(t, catchAll(poolOf("web", "cookie", cookieOptions(), a, b)), log)
	testutil.Eventually(t, waitFor, "start-up lines logged", func() bool {
		return len(entries(logs, "backend")) == 2
	})
	ls := entries(logs, "listening")
	if len(ls) != 1 || ls[0].ContextMap()["addr"] != u.Host {
		t.Errorf("listening lines = %v, want one with addr %s", ls, u.Host)
	}
	ps := entries(logs, "pool")
	if len(ps) != 1 || ps[0].ContextMap()["pool"] != "web" || ps[0].ContextMap()["balancer"] != "cookie" {
		t.Errorf("pool lines = %v", ps)
	}
	for i, e := range entries(logs, "backend") {
		m := e.ContextMap()
		want := []*testutil.Backend{a, b}[i]
		if m["backend"] != want.ID || m["url"] != want.URL.String() || m["weight"] != int64(1) {
			t.Errorf("backend line %d = %v, want %s at %s", i, m, want.ID, want.URL)
		}
	}
}

func TestListenAndServe(t *testing.T) {
	cfg := catchAll(poolOf("web", "round-robin", balancer.Options{}, testutil.StartBackend(t, "a")))
	cfg.Listen = testutil.FreeAddr(t)
	s, err := NewServer(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.ListenAndServe() }()
	testutil.WaitHTTP(t, "http://"+cfg.Listen+"/", waitFor)
	if err := s.Shutdown(context.Background()); err != nil {
		t.Errorf("Shutdown = %v", err)
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		t.Errorf("ListenAndServe = %v, want ErrServerClosed", err)
	}

	// A second server cannot bind the same address while the first holds it.
	ln := testutil.Listen(t)
	cfg.Listen = ln.Addr().String()
	s2, err := NewServer(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s2.ListenAndServe(); err == nil || errors.Is(err, http.ErrServerClosed) {
		t.Errorf("ListenAndServe on a taken address = %v, want a listen error", err)
	}
}

func TestServeAfterShutdownReturnsServerClosed(t *testing.T) {
	s, err := NewServer(catchAll(poolOf("web", "round-robin", balancer.Options{}, testutil.StartBackend(t, "a"))), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatalf("Shutdown = %v", err)
	}
	if err := s.Serve(testutil.Listen(t)); !errors.Is(err, http.ErrServerClosed) {
		t.Errorf("Serve after Shutdown = %v, want ErrServerClosed", err)
	}
}

func TestShutdownWaitsForInFlightRequest(t *testing.T) {
	bu, started, release := blockingBackend(t)
	cfg := catchAll(&config.Pool{Name: "web", Balancer: config.Balancer{Type: "round-robin"},
		Backends: []config.Backend{{URL: bu, Name: "slow"}}})
	s, err := NewServer(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	ln := testutil.Listen(t)
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()

	replied := make(chan reply, 1)
	go func() {
		c := testutil.Client(t)
		resp, err := c.Get("http://" + ln.Addr().String() + "/")
		if err != nil {
			replied <- reply{body: err.Error()}
			return
		}
		body, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		replied <- reply{status: resp.StatusCode, body: string(body)}
	}()
	<-started

	shut := make(chan error, 1)
	go func() { shut <- s.Shutdown(context.Background()) }()
	// Once the listener refuses connections, Shutdown is under way.
	testutil.Eventually(t, waitFor, "listener closed by Shutdown", func() bool {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err == nil {
			_ = c.Close()
		}
		return err != nil
	})
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v with a request in flight", err)
	default:
	}
	release()
	if r := <-replied; r.status != http.StatusOK || r.body != "finished" {
		t.Errorf("in-flight request got %d %q, want 200 \"finished\"", r.status, r.body)
	}
	if err := <-shut; err != nil {
		t.Errorf("Shutdown = %v", err)
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		t.Errorf("Serve = %v, want ErrServerClosed", err)
	}
}

// serveBlocked serves a proxy with access lines, recorded in logs, in front
// of a backend that holds every request; started tells each request it got.
func serveBlocked(t *testing.T) (s *Server, ln net.Listener, served <-chan error, started <-chan struct{}, logs *observer.ObservedLogs) {
	t.Helper()
	bu, started, _ := blockingBackend(t)
	cfg := catchAll(&config.Pool{Name: "web", Balancer: config.Balancer{Type: "round-robin"},
		Backends: []config.Backend{{URL: bu, Name: "slow"}}})
	cfg.Log.Access = true
	log, logs := observed()
	s, err := NewServer(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	ln = testutil.Listen(t)
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	return s, ln, done, started, logs
}

func TestShutdownTimeoutAbortsRequests(t *testing.T) {
	s, ln, served, started, logs := serveBlocked(t)
	failed := make(chan error, 1)
	go func() {
		resp, err := testutil.Client(t).Get("http://" + ln.Addr().String() + "/")
		if err == nil {
			_, err = io.ReadAll(resp.Body)
			_ = resp.Body.Close()
		}
		failed <- err
	}()
	<-started
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // already over: Shutdown must abort rather than wait
	err := s.Shutdown(ctx)
	var cut *CutError
	if !errors.Is(err, context.Canceled) || !errors.As(err, &cut) || cut.Connections != 1 || cut.Upgraded != 0 {
		t.Errorf("Shutdown = %v, want context.Canceled and one connection cut", err)
	}
	// The cut request's line is written by the time Shutdown returns: a
	// process that ends then (a second SIGTERM) does not lose it.
	if lines := logs.FilterMessage("request").FilterField(zap.Int("status", 499)).Len(); lines != 1 {
		t.Errorf("%d access lines with status 499 when Shutdown returned, want 1: %v", lines, logs.All())
	}
	if err := <-failed; err == nil {
		t.Error("aborted request completed")
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		t.Errorf("Serve = %v, want ErrServerClosed", err)
	}
	if n := len(entries(logs, "backend request failed")); n != 0 {
		t.Errorf("aborting a request logged %d backend failures, want 0", n)
	}
}

// echoBackend accepts a switch to protocol "echo" and then echoes every
// byte back, as a WebSocket server would exchange frames.
func echoBackend(t *testing.T) *url.URL {
	t.Helper()
	return testutil.StartServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "echo" {
			http.Error(w, "want Upgrade: echo", http.StatusBadRequest)
			return
		}
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
		if brw.Flush() != nil {
			return
		}
		_, _ = io.Copy(conn, brw)
	}))
}

// openTunnel switches a raw connection to the proxy at addr to the echo
// protocol and returns it with its reader.
func openTunnel(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(waitFor))
	req := "GET /ws HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"
	if _, err := io.WriteString(conn, req); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("read switch response: %v", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Upgrade") != "echo" {
		t.Fatalf("switch response = %d, Upgrade %q; want 101, echo", resp.StatusCode, resp.Header.Get("Upgrade"))
	}
	return conn, br
}

func TestUpgradeEcho(t *testing.T) {
	for _, access := range []bool{false, true} {
		t.Run(map[bool]string{false: "plain", true: "access-log"}[access], func(t *testing.T) {
			cfg := catchAll(&config.Pool{Name: "ws", Balancer: config.Balancer{Type: "round-robin"},
				Backends: []config.Backend{{URL: echoBackend(t), Name: "echo"}}})
			cfg.Log.Access = access
			log, logs := observed()
			_, u := startProxy(t, cfg, log)
			conn, br := openTunnel(t, u.Host)
			for _, msg := range []string{"hello\n", "second frame\n"} {
				if _, err := io.WriteString(conn, msg); err != nil {
					t.Fatal(err)
				}
				got, err := br.ReadString('\n')
				if err != nil || got != msg {
					t.Fatalf("echo = %q, %v; want %q", got, err, msg)
				}
			}
			_ = conn.Close()
			if !access {
				return
			}
			testutil.Eventually(t, waitFor, "access line for the tunnel", func() bool {
				return len(entries(logs, "request")) == 1
			})
			if st := entries(logs, "request")[0].ContextMap()["status"]; st != int64(http.StatusSwitchingProtocols) {
				t.Errorf("access status = %v, want 101", st)
			}
		})
	}
}

func TestShutdownWaitsForTunnel(t *testing.T) {
	cfg := catchAll(&config.Pool{Name: "ws", Balancer: config.Balancer{Type: "round-robin"},
		Backends: []config.Backend{{URL: echoBackend(t), Name: "echo"}}})
	s, err := NewServer(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	ln := testutil.Listen(t)
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	conn, br := openTunnel(t, ln.Addr().String())

	shut := make(chan error, 1)
	go func() { shut <- s.Shutdown(context.Background()) }()
	// Serve returns once the listener is closed; the tunnel still runs.
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		t.Fatalf("Serve = %v, want ErrServerClosed", err)
	}
	if _, err := io.WriteString(conn, "still there\n"); err != nil {
		t.Fatal(err)
	}
	if got, err := br.ReadString('\n'); err != nil || got != "still there\n" {
		t.Fatalf("echo during shutdown = %q, %v", got, err)
	}
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v with a tunnel open", err)
	default:
	}
	_ = conn.Close()
	if err := <-shut; err != nil {
		t.Errorf("Shutdown = %v after the tunnel closed, want nil", err)
	}

	// A tunnel outliving Shutdown's context is cut.
	s2, err := NewServer(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	u := testutil.Serve(t, s2)
	conn2, br2 := openTunnel(t, u.Host)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err = s2.Shutdown(ctx)
	var cut *CutError
	if !errors.Is(err, context.Canceled) || !errors.As(err, &cut) || cut.Upgraded != 1 {
		t.Errorf("Shutdown with a tunnel and no time = %v, want context.Canceled and one upgraded connection cut", err)
	}
	if _, err := br2.ReadString('\n'); err == nil {
		t.Error("tunnel still open after Shutdown gave up")
	}
	_ = conn2.Close()
}

func TestClientSetWait(t *testing.T) {
	var set clientSet
	if err := set.wait(context.Background()); err != nil {
		t.Fatalf("wait with nothing held = %v", err)
	}
	a, b := new(client), new(client)
	set.add(a)
	set.add(b)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := set.wait(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("wait with 2 held and no time = %v", err)
	}
	waited := make(chan error, 1)
	go func() { waited <- set.wait(context.Background()) }()
	set.remove(a)
	select {
	case err := <-waited:
		t.Fatalf("wait returned %v with 1 still held", err)
	default:
	}
	n := 0
	set.each(func(c *client) {
		if c != b {
			t.Errorf("each gave %p, want only %p", c, b)
		}
		n++
	})
	if n != 1 {
		t.Errorf("each gave %d clients, want 1", n)
	}
	set.remove(b)
	if err := <-waited; err != nil {
		t.Errorf("wait = %v", err)
	}
}

// TestShutdownCutUploadIs499: an upload whose body is still coming when
// Shutdown cuts it is logged 499, as any request cut, not 400 as a body
// its client broke off: the proxy closed the connection.
func TestShutdownCutUploadIs499(t *testing.T) {
	s, ln, _, started, logs := serveBlocked(t)
	c, err := net.DialTimeout("tcp", ln.Addr().String(), waitFor)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "POST /upload HTTP/1.1\r\nHost: app.example\r\nContent-Length: 1000\r\n\r\npartial"); err != nil {
		t.Fatal(err)
	}
	<-started
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var cut *CutError
	if err := s.Shutdown(ctx); !errors.As(err, &cut) {
		t.Fatalf("Shutdown = %v, want the upload cut", err)
	}
	lines := logs.FilterMessage("request").FilterField(zap.String("path", "/upload")).All()
	if len(lines) != 1 || lines[0].ContextMap()["status"] != int64(statusClientClosed) {
		t.Errorf("access lines of the upload %v, want one with status 499", lines)
	}
}
