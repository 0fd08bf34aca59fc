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
	"github.com/affinityproxy/affinity/internal/testutil"
)

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	waitForWithin(t, 10*time.Second, what, cond)
}

// waitForWithin is waitFor with a bound of its own.
func waitForWithin(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

var listeningRE = regexp.MustCompile(`backend listening.*"addr": "([^"]+)"`)

// runningBackend is `affinity backend` running in-process.
type runningBackend struct {
	addr   string
	stderr *syncBuffer
	stop   func() int // stops the command and returns its exit code
}

// startBackendCmd runs `affinity backend --listen 127.0.0.1:0 args...` until
// the test ends or stop is called, and waits until it listens.
func startBackendCmd(t *testing.T, args ...string) *runningBackend {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errOut := new(syncBuffer)
	done := make(chan int, 1)
	args = append([]string{"backend", "--listen", "127.0.0.1:0"}, args...)
	go func() { done <- execute(ctx, args, io.Discard, errOut) }()
	b := &runningBackend{stderr: errOut}
	var code int
	stopped := false
	b.stop = func() int {
		if stopped {
			return code
		}
		stopped = true
		cancel()
		select {
		case code = <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("backend did not stop")
		}
		return code
	}
	t.Cleanup(func() { b.stop() })
	waitFor(t, "the backend to listen", func() bool {
		select {
		case code := <-done:
			t.Fatalf("backend exited with %d before listening; stderr:\n%s", code, errOut.String())
		default:
		}
		m := listeningRE.FindStringSubmatch(errOut.String())
		if m != nil {
			b.addr = m[1]
		}
		return m != nil
	})
	return b
}

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
			b := startBackendCmd(t, tc.args...)
			want := tc.want
			if want == "" {
				want = b.addr
			}
			c := testutil.Client(t)
			resp, err := c.Get("http://" + b.addr + "/")
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if got := resp.Header.Get(demoapp.HeaderBackend); got != want || !strings.HasPrefix(string(body), "name="+want+" ") {
				t.Errorf("%s %q, body %q; want %s", demoapp.HeaderBackend, got, body, want)
			}
			c.CloseIdleConnections()
			if code := b.stop(); code != exitOK {
				t.Errorf("exit %d after stop, want 0; stderr:\n%s", code, b.stderr.String())
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

func TestBackendBadFlags(t *testing.T) {
	tests := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--session-store", "disk"}, exitUsage, `"disk": want memory, redis, cached-redis, token`},
		{[]string{"--work", "soon"}, exitUsage, "--work"},
		{[]string{"--cache-size", "0"}, exitFailure, "--cache-size 0: want at least 1"},
		{[]string{"--work", "-1s"}, exitFailure, "--work -1s: want 0 or more"},
		{[]string{"--checkout-work", "-1ms"}, exitFailure, "--checkout-work -1ms: want 0 or more"},
		{[]string{"--token-denylist"}, exitFailure, "--token-denylist: applies to --session-store token only, not memory"},
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			args := append([]string{"backend", "--listen", "127.0.0.1:0"}, tc.args...)
			code, _, errOut := run(t, args...)
			if code != tc.code || !strings.Contains(errOut, tc.want) {
				t.Errorf("exit %d, stderr %q; want %d and %q", code, errOut, tc.code, tc.want)
			}
		})
	}
}

// login logs user in on the backend at addr and returns the response.
func login(t *testing.T, c *http.Client, addr, user string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, "http://"+addr+"/login", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set(demoapp.HeaderUser, user)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

// cart asks the backend at addr for the cart of user, holding cookie, with
// X-Step 0, and returns the status.
func cart(t *testing.T, c *http.Client, addr, user string, cookie *http.Cookie) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, "http://"+addr+"/cart", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set(demoapp.HeaderUser, user)
	req.Header.Set(demoapp.HeaderStep, "0")
	req.AddCookie(cookie)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// Each --session-store is wired to its store: the cookie, the round trips
// and the log tell them apart, and two backends on one shared store share
// sessions.
func TestBackendSessionStores(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		redis    bool
		cookie   string
		loginOps string
		shared   bool // a session started on one backend continues on another
		devKey   bool // warns that it signs with the development secret
	}{
		{"memory by default", nil, false, demoapp.SessionCookie, "0", false, false},
		{"redis", []string{"--session-store", "redis"}, true, demoapp.SessionCookie, "1", true, false},
		{"cached-redis", []string{"--session-store", "cached-redis", "--cache-size", "5", "--work", "1ms"}, true, demoapp.SessionCookie, "1", true, false},
		{"token with a secret", []string{"--session-store", "token", "--token-secret", "s3"}, false, demoapp.TokenCookie, "0", true, false},
		{"token with the dev secret", []string{"--session-store", "token"}, false, demoapp.TokenCookie, "0", true, true},
		{"token with a denylist", []string{"--session-store", "token", "--token-secret", "s3", "--token-denylist"}, true, demoapp.TokenCookie, "0", true, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args := tc.args
			if tc.redis {
				args = append(args, "--redis-addr", testutil.StartRedis(t).Addr)
			}
			a := startBackendCmd(t, append(args, "--name", "web-a")...)
			b := startBackendCmd(t, append(args, "--name", "web-b")...)
			c := testutil.Client(t)

			resp := login(t, c, a.addr, "alice")
			if resp.StatusCode != http.StatusOK || resp.Header.Get(demoapp.HeaderStoreOps) != tc.loginOps {
				t.Fatalf("login: %d, %s %q; want 200, %s", resp.StatusCode, demoapp.HeaderStoreOps,
					resp.Header.Get(demoapp.HeaderStoreOps), tc.loginOps)
			}
			cookies := resp.Cookies()
			if len(cookies) != 1 || cookies[0].Name != tc.cookie {
				t.Fatalf("login set %v, want one %s", cookies, tc.cookie)
			}
			if got := cart(t, c, a.addr, "alice", cookies[0]); got != http.StatusOK {
				t.Errorf("cart on the same backend: %d, want 200", got)
			}
			want := http.StatusConflict
			if tc.shared {
				want = http.StatusOK
			}
			if got := cart(t, c, b.addr, "alice", cookies[0]); got != want {
				t.Errorf("cart on another backend: %d, want %d", got, want)
			}
			if got := strings.Contains(a.stderr.String(), "development secret"); got != tc.devKey {
				t.Errorf("dev secret warning logged: %v, want %v; stderr:\n%s", got, tc.devKey, a.stderr.String())
			}
		})
	}
}

// --token-secret is the key tokens are signed with: a token signed with it
// elsewhere is accepted, one signed with another key is not.
func TestBackendTokenSecret(t *testing.T) {
	b := startBackendCmd(t, "--session-store", "token", "--token-secret", "shared")
	c := testutil.Client(t)
	for _, tc := range []struct {
		secret string
		want   int
	}{
		{"shared", http.StatusOK},
		{"other", http.StatusConflict},
	} {
		ts, err := demoapp.NewTokenStore([]byte(tc.secret))
		if err != nil {
			t.Fatal(err)
		}
		token, err := ts.New(context.Background(), "alice")
		if err != nil {
			t.Fatal(err)
		}
		if got := cart(t, c, b.addr, "alice", &http.Cookie{Name: demoapp.TokenCookie, Value: token}); got != tc.want {
			t.Errorf("token signed with %q: %d, want %d", tc.secret, got, tc.want)
		}
	}
}

// A Redis that is not there yet does not stop the backend: it starts, says
// so, and answers store_unavailable.
func TestBackendRedisNotThereYet(t *testing.T) {
	b := startBackendCmd(t, "--session-store", "redis", "--redis-addr", testutil.ClosedURL(t).Host)
	if !strings.Contains(b.stderr.String(), "session store does not answer yet") {
		t.Errorf("no warning about the missing Redis; stderr:\n%s", b.stderr.String())
	}
	if resp := login(t, testutil.Client(t), b.addr, "alice"); resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("login: %d, want 503", resp.StatusCode)
	}
}
