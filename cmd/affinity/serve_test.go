package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/affinityproxy/affinity/internal/demoapp"
)

// startBackend serves a demo app called name on a loopback port.
func startBackend(t *testing.T, name string) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(demoapp.New(name))
	t.Cleanup(srv.Close)
	return srv
}

// freeAddr returns a loopback address no one listens on now.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// binary is the affinity command, built once for every test that runs it
// as a process, and removed when they are done (TestMain).
var binary struct {
	once      sync.Once
	dir, path string
	err       error
}

// buildBinary compiles the affinity command, once, and returns its path.
func buildBinary(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds the binary")
	}
	binary.once.Do(func() {
		if binary.dir, binary.err = os.MkdirTemp("", "affinity-test-"); binary.err != nil {
			return
		}
		binary.path = filepath.Join(binary.dir, "affinity")
		// Without a default.pgo (make pgo): a profile-guided build
		// recompiles every package, minutes that the behaviour under
		// test does not depend on. The other tests that build the
		// program do the same.
		out, err := exec.Command("go", "build", "-pgo=off", "-o", binary.path, ".").CombinedOutput()
		if err != nil {
			binary.err = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if binary.err != nil {
		t.Fatal(binary.err)
	}
	return binary.path
}

// TestServeProcess runs `affinity serve` as a real process over two demo
// backends, checks that a client sticks to one of them, and that SIGTERM
// stops the proxy cleanly.
func TestServeProcess(t *testing.T) {
	bin := buildBinary(t)
	b1, b2 := startBackend(t, "web-1"), startBackend(t, "web-2")
	listen := freeAddr(t)
	cfg := writeFile(t, "affinity.yaml", fmt.Appendf(nil, `listen: %s
log: {access: true}
pools:
  web:
    balancer: {type: cookie}
    backends:
      - {url: %s, name: web-1}
      - {url: %s, name: web-2}
`, listen, b1.URL, b2.URL))

	p := startServe(t, bin, cfg, "--log-level", "debug")

	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	c := &http.Client{Jar: jar, Transport: &http.Transport{}, Timeout: 5 * time.Second}
	defer c.CloseIdleConnections()
	url := "http://" + listen + "/"
	waitFor(t, "the proxy to answer", func() bool {
		resp, err := c.Get(url + "healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})

	var first string
	for i := 1; i <= 5; i++ {
		resp, err := c.Get(url)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		backend := resp.Header.Get(demoapp.HeaderBackend)
		if first == "" {
			first = backend
		}
		if resp.StatusCode != http.StatusOK || backend != first || backend == "" {
			t.Fatalf("request %d: %d from %q, want 200 from %q: %s", i, resp.StatusCode, backend, first, body)
		}
		if want := fmt.Sprintf("count=%d\n", i); !strings.HasSuffix(string(body), want) {
			t.Errorf("request %d: body %q, want %q: the session was not kept", i, body, want)
		}
	}

	p.signal(t, syscall.SIGTERM)
	p.wait(t)
	out := p.out.String()
	if strings.Contains(out, "panic") {
		t.Errorf("output has a panic:\n%s", out)
	}
	// Access lines are written in batches; a stop writes the last.
	if n := strings.Count(out, "access\trequest"); n < 5 {
		t.Errorf("%d access lines after SIGTERM, want at least 5:\n%s", n, out)
	}
}

// TestServeStandardLog: while serve runs, what the standard library logs
// through the log package's logger is a line of the proxy's log, at warn.
func TestServeStandardLog(t *testing.T) {
	b := startBackend(t, "web-1")
	listen := freeAddr(t)
	cfg := writeFile(t, "affinity.yaml", fmt.Appendf(nil, "listen: %s\nlog: {format: json}\npools:\n  web:\n    backends: [{url: %s, name: web-1}]\n",
		listen, b.URL))
	ctx, cancel := context.WithCancel(context.Background())
	var out, errOut syncBuffer
	exited := make(chan int, 1)
	go func() { exited <- execute(ctx, []string{"serve", "-c", cfg, "--watch=false"}, &out, &errOut) }()
	waitFor(t, "the proxy to start", func() bool { return strings.Contains(errOut.String(), `"msg":"starting"`) })
	log.Print("a note from the standard library")
	waitFor(t, "the note in the proxy's log", func() bool {
		return strings.Contains(errOut.String(), `"level":"warn"`) &&
			strings.Contains(errOut.String(), `"msg":"a note from the standard library"`)
	})
	cancel()
	select {
	case code := <-exited:
		if code != exitOK {
			t.Errorf("exit %d, want 0:\n%s", code, errOut.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("serve still running 10 s after its context ended")
	}
	if log.Writer() != os.Stderr {
		t.Error("the standard logger left writing to the proxy's log after serve returned")
	}
}

// TestServeInvalidConfig checks that serve refuses a bad config the way
// validate reports it, before listening.
func TestServeInvalidConfig(t *testing.T) {
	cfg := writeFile(t, "bad.yaml", []byte("listen: 127.0.0.1:8080\npools: {}\n"))
	code, _, errOut := run(t, "serve", "-c", cfg)
	if code != exitFailure || !strings.HasPrefix(errOut, cfg+":") {
		t.Errorf("exit %d, stderr %q; want 1 and errors prefixed with the file", code, errOut)
	}
}

func TestMissingDefaultConfig(t *testing.T) {
	t.Chdir(t.TempDir())
	for _, cmd := range []string{"serve", "validate"} {
		code, _, errOut := run(t, cmd)
		if code != exitFailure || !strings.HasPrefix(errOut, "affinity.yaml") {
			t.Errorf("%s: exit %d, stderr %q; want 1 naming affinity.yaml", cmd, code, errOut)
		}
	}
}

// TestUnsafeRetryFlagHidden: the flag that makes retries unsafe is accepted
// but not advertised, so that nobody finds it in the help and sets it.
func TestUnsafeRetryFlagHidden(t *testing.T) {
	code, out, _ := run(t, "serve", "--help")
	if code != 0 || strings.Contains(out, unsafeRetryFlag) || !strings.Contains(out, "--watch") {
		t.Errorf("serve --help: exit %d, output %q; want 0 and no mention of --%s", code, out, unsafeRetryFlag)
	}
	if f := newServeCmd().Flags().Lookup(unsafeRetryFlag); f == nil || !f.Hidden || f.DefValue != "false" {
		t.Errorf("--%s: %+v, want a hidden flag off by default", unsafeRetryFlag, f)
	}
}
