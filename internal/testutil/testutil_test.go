package testutil

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestBackendAnswersWithIDAndRecords(t *testing.T) {
	b := StartBackend(t, "web-1")
	req, err := http.NewRequest(http.MethodPost, b.URL.String()+"/a/b?x=1", strings.NewReader("body"))
	if err != nil {
		t.Fatal(err)
	}
	req.Host = "example.test"
	req.Header.Set("X-Probe", "yes")
	resp, err := Client(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if string(body) != "web-1" || resp.Header.Get(IDHeader) != "web-1" {
		t.Errorf("answer = %q, %s: %q; want web-1 in both", body, IDHeader, resp.Header.Get(IDHeader))
	}
	if b.Hits() != 1 {
		t.Errorf("Hits() = %d, want 1", b.Hits())
	}
	got, ok := b.Last()
	if !ok {
		t.Fatal("Last() reports no request")
	}
	if got.Method != http.MethodPost || got.Host != "example.test" || got.Path != "/a/b" ||
		got.RawQuery != "x=1" || got.Header.Get("X-Probe") != "yes" || got.RemoteAddr == "" {
		t.Errorf("Last() = %+v", got)
	}
}

func TestLastBeforeAnyRequest(t *testing.T) {
	if _, ok := StartBackend(t, "idle").Last(); ok {
		t.Error("Last() reports a request before any was sent")
	}
}

func TestClosedURLRefusesConnections(t *testing.T) {
	u := ClosedURL(t)
	if u.Scheme != "http" || !strings.HasPrefix(u.Host, "127.0.0.1:") {
		t.Fatalf("ClosedURL() = %v, want http://127.0.0.1:port", u)
	}
	c, err := net.DialTimeout("tcp", u.Host, time.Second)
	if err == nil {
		_ = c.Close()
		t.Fatalf("dial %s succeeded, want refused", u.Host)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("dial %s: %v, want connection refused", u.Host, err)
	}
	// The port stays taken: nothing else can listen there while the
	// test runs.
	if ln, err := net.Listen("tcp", u.Host); err == nil {
		_ = ln.Close()
		t.Errorf("listen on %s succeeded; the port is not held", u.Host)
	}
}

func TestWaitReadyAndWaitHTTP(t *testing.T) {
	b := StartBackend(t, "ready")
	WaitReady(t, b.URL.Host, time.Second)
	WaitHTTP(t, b.URL.String(), time.Second)
}

func TestEventuallyPollsUntilTrue(t *testing.T) {
	var calls atomic.Int32
	Eventually(t, 5*time.Second, "never true", func() bool { return calls.Add(1) >= 3 })
	if n := calls.Load(); n != 3 {
		t.Errorf("cond called %d times, want 3", n)
	}
}

// fakeT records failures instead of stopping the test, to check that the
// helpers report a condition that never holds.
type fakeT struct {
	testing.TB
	failed bool
}

func (f *fakeT) Helper()               {}
func (f *fakeT) Fatalf(string, ...any) { f.failed = true }

func TestEventuallyFailsAfterTimeout(t *testing.T) {
	f := &fakeT{TB: t}
	Eventually(f, 20*time.Millisecond, "never true", func() bool { return false })
	if !f.failed {
		t.Error("Eventually did not fail on a condition that never held")
	}
}

func TestWaitReadyFailsOnClosedPort(t *testing.T) {
	f := &fakeT{TB: t}
	WaitReady(f, ClosedURL(t).Host, 20*time.Millisecond)
	if !f.failed {
		t.Error("WaitReady did not fail on a port nothing listens on")
	}
}

func TestServeStopsAtCleanup(t *testing.T) {
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok")
	})}
	var u string
	t.Run("serving", func(t *testing.T) {
		u = Serve(t, srv).String()
		WaitHTTP(t, u, time.Second)
	})
	// The subtest's Cleanup has shut the server down.
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := Client(t).Do(req)
	if err == nil {
		_ = resp.Body.Close()
		t.Fatal("server still answers after Cleanup")
	}
	var opErr *net.OpError
	if !errors.As(err, &opErr) {
		t.Errorf("error = %v, want a dial error", err)
	}
}
