// Package testutil starts HTTP backends on free loopback ports and waits for
// servers to become ready, for the tests of affinity's packages. Everything
// it starts is stopped by the test's Cleanup, so tests that use it stay
// clean under goleak.
package testutil

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// IDHeader is the response header in which a Backend names itself, besides
// its body.
const IDHeader = "X-Backend-Id"

// Backend is an HTTP server on 127.0.0.1 that answers every request with
// status 200 and its ID as the body, and remembers the last request it saw.
type Backend struct {
	ID  string
	URL *url.URL

	srv  *httptest.Server
	hits atomic.Int64
	mu   sync.Mutex
	last Received // guarded by mu
}

// Received is what a Backend saw of a request.
type Received struct {
	Method     string
	Host       string // the Host header
	Path       string
	RawQuery   string
	RemoteAddr string
	Header     http.Header
}

// StartBackend starts a Backend on a free loopback port; t's Cleanup stops it.
func StartBackend(t testing.TB, id string) *Backend {
	t.Helper()
	b := &Backend{ID: id}
	b.srv = httptest.NewServer(http.HandlerFunc(b.serve))
	t.Cleanup(b.srv.Close)
	b.URL = mustParse(t, b.srv.URL)
	return b
}

func (b *Backend) serve(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	b.mu.Lock()
	b.last = Received{
		Method:     r.Method,
		Host:       r.Host,
		Path:       r.URL.Path,
		RawQuery:   r.URL.RawQuery,
		RemoteAddr: r.RemoteAddr,
		Header:     r.Header.Clone(),
	}
	b.mu.Unlock()
	b.hits.Add(1)
	w.Header().Set(IDHeader, b.ID)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = io.WriteString(w, b.ID)
}

// Hits reports how many requests the backend has answered.
func (b *Backend) Hits() int64 { return b.hits.Load() }

// Last returns the last request the backend answered, and false if none.
func (b *Backend) Last() (Received, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.last, b.last.Method != ""
}

// Close stops the backend before the test ends, closing its connections.
func (b *Backend) Close() { b.srv.Close() }

// StartServer serves h on a free loopback port and returns its base URL;
// t's Cleanup stops it.
func StartServer(t testing.TB, h http.Handler) *url.URL {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return mustParse(t, srv.URL)
}

// Listen returns a listener on a free loopback port; t's Cleanup closes it.
func Listen(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen on loopback: %v", err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	return ln
}

// FreeAddr returns a host:port on 127.0.0.1 that was free a moment ago, for
// a server a test starts there itself. Another process may take the port
// meanwhile; callers that start a server there retry on a new address when
// binding fails.
func FreeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen on loopback: %v", err)
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		t.Fatalf("close listener: %v", err)
	}
	return addr
}

// ClosedURL returns an http URL on 127.0.0.1 where a dial is refused. Its
// port is held, until t ends, by a socket that is bound but not listening:
// the kernel refuses connections to it, and no other listener (another
// test's, or another process's) can take the port meanwhile, as it could
// one merely closed.
func ClosedURL(t testing.TB) *url.URL {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("socket: %v", err)
	}
	t.Cleanup(func() { _ = unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatalf("bind on loopback: %v", err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatalf("getsockname: %v", err)
	}
	port := sa.(*unix.SockaddrInet4).Port
	return &url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(port))}
}

// Client returns an http.Client with a transport of its own that does not
// follow redirects; t's Cleanup closes its idle connections, so they leave
// no goroutines behind.
func Client(t testing.TB) *http.Client {
	t.Helper()
	tr := &http.Transport{
		Proxy:             nil,
		DialContext:       (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		ForceAttemptHTTP2: false,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{
		Transport:     tr,
		Timeout:       30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// Servable is a server with http.Server's lifecycle, such as proxy.Server.
type Servable interface {
	Serve(net.Listener) error
	Shutdown(context.Context) error
}

// shutdownTimeout bounds the graceful stop of a server Serve started.
const shutdownTimeout = 5 * time.Second

// Serve runs srv on a free loopback port and returns its base URL. t's
// Cleanup shuts srv down, waits for Serve to return, and fails t if it
// returned anything but http.ErrServerClosed.
func Serve(t testing.TB, srv Servable) *url.URL {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen on loopback: %v", err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("serve returned %v, want %v", err, http.ErrServerClosed)
		}
	})
	return &url.URL{Scheme: "http", Host: ln.Addr().String()}
}

// pollInterval is the pause between two checks of a condition.
const pollInterval = 5 * time.Millisecond

// Eventually checks cond until it is true, failing t with msg if it is
// still false after timeout.
func Eventually(t testing.TB, timeout time.Duration, msg string, cond func() bool) {
	t.Helper()
	if !poll(timeout, cond) {
		t.Fatalf("after %v: %s", timeout, msg)
	}
}

// WaitReady waits until addr ("host:port") accepts TCP connections, failing
// t after timeout.
func WaitReady(t testing.TB, addr string, timeout time.Duration) {
	t.Helper()
	d := net.Dialer{Timeout: pollInterval * 20}
	ok := poll(timeout, func() bool {
		c, err := d.Dial("tcp", addr)
		if err != nil {
			return false
		}
		_ = c.Close()
		return true
	})
	if !ok {
		t.Fatalf("%s did not accept connections within %v", addr, timeout)
	}
}

// WaitHTTP waits until a GET of u is answered with a status below 500,
// failing t after timeout.
func WaitHTTP(t testing.TB, u string, timeout time.Duration) {
	t.Helper()
	c := Client(t)
	ok := poll(timeout, func() bool {
		resp, err := c.Get(u)
		if err != nil {
			return false
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		return resp.StatusCode < http.StatusInternalServerError
	})
	if !ok {
		t.Fatalf("%s did not answer within %v", u, timeout)
	}
}

// poll checks cond every pollInterval until it is true (reporting true) or
// timeout passes (reporting false).
func poll(timeout time.Duration, cond func() bool) bool {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		if cond() {
			return true
		}
		select {
		case <-deadline.C:
			return cond()
		case <-tick.C:
		}
	}
}

func mustParse(t testing.TB, raw string) *url.URL {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatalf("parse %q: %v", raw, err)
	}
	return u
}
