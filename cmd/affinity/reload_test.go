package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/affinityproxy/affinity/internal/demoapp"
)

// serveProc is `affinity serve` running as a process.
type serveProc struct {
	cmd  *exec.Cmd
	out  *syncBuffer   // stderr and stdout
	done chan struct{} // closed once the process has exited
	err  error         // Wait's result; read only after done is closed
}

// startServe runs `affinity serve -c cfg args...` until the test ends.
func startServe(t *testing.T, bin, cfg string, args ...string) *serveProc {
	t.Helper()
	return startCmd(t, exec.Command(bin, append([]string{"serve", "-c", cfg}, args...)...))
}

// startCmd runs cmd, a serve, until the test ends, its output in out.
func startCmd(t *testing.T, cmd *exec.Cmd) *serveProc {
	t.Helper()
	p := &serveProc{cmd: cmd, out: new(syncBuffer), done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		// The process still runs only when a check failed. Wait's
		// result is read through done alone: reading the command's
		// ProcessState here would race with Wait setting it.
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

// signal sends sig to the process.
func (p *serveProc) signal(t *testing.T, sig os.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
}

// wait fails t unless the process exits with status 0 within 10 s.
func (p *serveProc) wait(t *testing.T) {
	t.Helper()
	select {
	case <-p.done:
		if p.err != nil {
			t.Errorf("exit: %v, want status 0; output:\n%s", p.err, p.out)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("proxy still running 10 s after being told to stop; output:\n%s", p.out)
	}
}

// slowBackend answers /slow once release is called, signalling on started
// when a request arrives.
func slowBackend(t *testing.T) (u string, started <-chan struct{}, release func()) {
	t.Helper()
	start := make(chan struct{}, 4)
	done := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/slow" {
			return
		}
		start <- struct{}{}
		select {
		case <-done:
			_, _ = io.WriteString(w, "finished")
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(srv.Close)
	release = sync.OnceFunc(func() { close(done) })
	// Cleanups run last-in first-out: this one frees blocked handlers
	// before Close waits for them.
	t.Cleanup(release)
	return srv.URL, start, release
}

// reloadConfig is a config sending /slow to the slow backend and the rest
// to the demo backends web, named web-1, web-2… in order.
func reloadConfig(listen, slow string, web ...string) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "listen: %s\nshutdown_timeout: 10s\nroutes:\n  - match: {path: /slow}\n    pool: slow\n  - pool: web\n", listen)
	fmt.Fprintf(&b, "pools:\n  slow:\n    backends: [{url: %q, name: slow}]\n  web:\n    backends:\n", slow)
	for i, u := range web {
		fmt.Fprintf(&b, "      - {url: %q, name: web-%d}\n", u, i+1)
	}
	return []byte(b.String())
}

// saveByRename replaces path as many editors save: a new file written
// beside it, renamed over it.
func saveByRename(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// servedBy returns the demo backend that answered a GET of url, "" when
// the request failed.
func servedBy(c *http.Client, url string) string {
	resp, err := c.Get(url)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return ""
	}
	return resp.Header.Get(demoapp.HeaderBackend)
}

// TestServeReloadsOnFileChange: a config saved by rename is applied; an
// invalid one is logged at its positions and the running one kept; SIGTERM
// lets a slow request finish and exits 0.
func TestServeReloadsOnFileChange(t *testing.T) {
	bin := buildBinary(t)
	w1, w2 := startBackend(t, "web-1"), startBackend(t, "web-2")
	slow, started, release := slowBackend(t)
	listen := freeAddr(t)
	cfg := writeFile(t, "affinity.yaml", reloadConfig(listen, slow, w1.URL))
	p := startServe(t, bin, cfg)
	c := &http.Client{Transport: &http.Transport{}, Timeout: 5 * time.Second}
	defer c.CloseIdleConnections()
	url := "http://" + listen + "/"
	waitFor(t, "the proxy to serve web-1", func() bool { return servedBy(c, url) == "web-1" })

	saveByRename(t, cfg, reloadConfig(listen, slow, w1.URL, w2.URL))
	waitFor(t, "the added web-2 to serve", func() bool { return servedBy(c, url) == "web-2" })

	bad := strings.Replace(string(reloadConfig(listen, slow, w1.URL, w2.URL)), w2.URL, "ftp://web-2", 1)
	saveByRename(t, cfg, []byte(bad))
	positioned := regexp.MustCompile(regexp.QuoteMeta(cfg) + `:\d+:\d+: pools\.web\.backends`)
	waitFor(t, "the invalid config to be reported", func() bool {
		out := p.out.String()
		return strings.Contains(out, "config reload failed") && positioned.MatchString(out)
	})
	seen := map[string]bool{}
	for range 4 {
		seen[servedBy(c, url)] = true
	}
	if !seen["web-1"] || !seen["web-2"] || len(seen) != 2 {
		t.Errorf("served by %v after an invalid config, want web-1 and web-2 as before", seen)
	}

	inFlight := make(chan string, 1)
	go func() {
		resp, err := c.Get(url + "slow")
		if err != nil {
			inFlight <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		inFlight <- fmt.Sprintf("%d %s", resp.StatusCode, b)
	}()
	<-started
	p.signal(t, syscall.SIGTERM)
	waitFor(t, "the listener to close", func() bool {
		conn, err := net.Dial("tcp", listen)
		if err == nil {
			_ = conn.Close()
		}
		return err != nil
	})
	release()
	if got := <-inFlight; got != "200 finished" {
		t.Errorf("request in flight at SIGTERM: %q, want 200 finished", got)
	}
	p.wait(t)
	out := p.out.String()
	for _, want := range []string{`"timeout": "10s"`, "stopped"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

// servingProxy is `affinity serve --watch=false` running reloadConfig
// over the demo backend web-1 and a slow backend, and serving.
type servingProxy struct {
	*serveProc
	cfg, listen string
	slow        string // the slow backend's URL
	c           *http.Client
	started     <-chan struct{} // a request reached the slow backend
}

// startServingProxy starts a servingProxy, its config passed through edit
// (nil: as it is), and waits for it to serve.
func startServingProxy(t *testing.T, edit func(string) string) *servingProxy {
	t.Helper()
	bin := buildBinary(t)
	w1 := startBackend(t, "web-1")
	slow, started, _ := slowBackend(t)
	sp := &servingProxy{listen: freeAddr(t), slow: slow, started: started}
	data := string(reloadConfig(sp.listen, slow, w1.URL))
	if edit != nil {
		data = edit(data)
	}
	sp.cfg = writeFile(t, "affinity.yaml", []byte(data))
	sp.serveProc = startServe(t, bin, sp.cfg, "--watch=false")
	sp.c = &http.Client{Transport: &http.Transport{}, Timeout: 10 * time.Second}
	t.Cleanup(sp.c.CloseIdleConnections)
	waitFor(t, "the proxy to serve web-1", func() bool { return servedBy(sp.c, "http://"+sp.listen+"/") == "web-1" })
	return sp
}

// TestServeReloadsOnSIGHUP: without --watch, SIGHUP applies the file.
func TestServeReloadsOnSIGHUP(t *testing.T) {
	p := startServingProxy(t, nil)
	w2 := startBackend(t, "web-2")
	cfg, listen, slow, c := p.cfg, p.listen, p.slow, p.c
	url := "http://" + listen + "/"

	if err := os.WriteFile(cfg, reloadConfig(listen, slow, w2.URL), 0o644); err != nil {
		t.Fatal(err)
	}
	p.signal(t, syscall.SIGHUP)
	waitFor(t, "web-2 to replace web-1", func() bool { return servedBy(c, url) == "web-2" })
	if out := p.out.String(); !strings.Contains(out, `"trigger": "SIGHUP"`) || !strings.Contains(out, "config reloaded") {
		t.Errorf("output does not tell of the reload by SIGHUP:\n%s", out)
	}
	p.signal(t, syscall.SIGINT)
	p.wait(t)
}
