//go:build linux

package main

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/affinityproxy/affinity/internal/testutil"
)

// readPID returns the PID in the file, 0 while there is none.
func readPID(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// reapLater makes the test process the reaper of orphans, so that the
// process an upgrade starts, whose parent exits, can be waited for; the
// returned stop ends pid (SIGTERM, then SIGKILL) and reaps it.
func reapLater(t *testing.T) func(pid int) {
	t.Helper()
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Skipf("cannot reap the upgraded process: %v", err)
	}
	return func(pid int) {
		if pid <= 0 {
			return
		}
		_ = syscall.Kill(pid, syscall.SIGTERM)
		done := make(chan struct{})
		go func() {
			var ws syscall.WaitStatus
			_, _ = syscall.Wait4(pid, &ws, 0, nil)
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = syscall.Kill(pid, syscall.SIGKILL)
			<-done
		}
	}
}

// listenNotify listens for sd_notify datagrams at path, as systemd does,
// and returns what has come so far.
func listenNotify(t *testing.T, path string) func() []string {
	t.Helper()
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu   sync.Mutex
		got  []string
		done = make(chan struct{})
	)
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			mu.Lock()
			got = append(got, string(buf[:n]))
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		_ = conn.Close()
		<-done
	})
	return func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), got...)
	}
}

// load sends GETs to url over keep-alive and over new connections from a
// few clients, and over HTTP/2 from two more when url is https, until stop
// is closed (or 60 s, or 12,500 requests each), counting what succeeded
// and what failed.
type load struct {
	ok, failed atomic.Int64
	firstErr   atomic.Value
	stop       chan struct{}
	wg         sync.WaitGroup
}

func startLoad(t *testing.T, url string, tc *tls.Config) *load {
	t.Helper()
	l := &load{stop: make(chan struct{})}
	deadline := time.Now().Add(60 * time.Second)
	clients := 4
	if tc != nil {
		clients = 6
	}
	for i := range clients {
		// Of the first four, half keep their connections, half open one
		// per request; the last two speak HTTP/2, many streams on one
		// connection.
		tr := &http.Transport{DisableKeepAlives: i < 4 && i%2 == 1, MaxIdleConnsPerHost: 1, ForceAttemptHTTP2: i >= 4}
		if tc != nil {
			// A config of its own: HTTP/2 adds h2 to the one it has.
			tr.TLSClientConfig = tc.Clone()
		}
		c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
		l.wg.Go(func() {
			defer tr.CloseIdleConnections()
			for n := 0; n < 12_500 && time.Now().Before(deadline); n++ {
				select {
				case <-l.stop:
					return
				default:
				}
				resp, err := c.Get(url)
				if err == nil {
					var body []byte
					body, err = io.ReadAll(resp.Body)
					_ = resp.Body.Close()
					switch {
					case err != nil:
					case resp.StatusCode != http.StatusOK:
						err = fmt.Errorf("status %s", resp.Status)
					case string(body) != "ok":
						err = fmt.Errorf("body %q", body)
					case (resp.ProtoMajor == 2) != (i >= 4):
						err = fmt.Errorf("answered over %s", resp.Proto)
					}
				}
				if err != nil {
					l.failed.Add(1)
					l.firstErr.CompareAndSwap(nil, fmt.Sprintf("client %d (keep-alive %v, HTTP/2 %v) at %s: %v", i, i%2 == 0 || i >= 4, i >= 4, time.Now().Format("15:04:05.000"), err))
					continue
				}
				l.ok.Add(1)
			}
		})
	}
	t.Cleanup(l.end)
	return l
}

func (l *load) end() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	l.wg.Wait()
}

// waitOK waits until n more requests succeeded.
func (l *load) waitOK(t *testing.T, n int64) {
	t.Helper()
	want := l.ok.Load() + n
	waitForWithin(t, 30*time.Second, fmt.Sprintf("%d more requests answered", n), func() bool { return l.ok.Load() >= want })
}

// failedLine returns the i-th line (from 0) of logs that says an upgrade
// failed, "" when there are fewer.
func failedLine(logs string, i int) string {
	for line := range strings.Lines(logs) {
		if strings.Contains(line, "upgrade failed") {
			if i == 0 {
				return line
			}
			i--
		}
	}
	return ""
}

// SIGUSR2 starts a new process of the binary, which takes the listening
// sockets over; the old one drains and exits 0, and no request of a load
// running meanwhile fails. A new process that cannot serve (a broken
// config, a binary that exits, one that never gets ready) leaves the old
// one serving.
func TestServeUpgrade(t *testing.T) {
	built := buildBinary(t)
	reap := reapLater(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "affinity")
	copyBinary := func(from string) {
		t.Helper()
		data, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		// A new file renamed over the old, as a package upgrade does: the
		// running binary's file cannot be written.
		if err := os.WriteFile(bin+".new", data, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(bin+".new", bin); err != nil {
			t.Fatal(err)
		}
	}
	copyBinary(built)
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok")
	}))
	t.Cleanup(backend.Close)
	listen, admin := freeAddr(t), freeAddr(t)
	certs := testutil.NewCerts(t)
	good := fmt.Sprintf("listen: %s\nshutdown_timeout: 5s\ntls: {cert: %s, key: %s}\nadmin: {listen: %s}\npools:\n  web:\n    backends: [{url: %q, name: a}]\n",
		listen, certs.ServerCert, certs.ServerKey, admin, backend.URL)
	cfg := writeFile(t, "affinity.yaml", []byte(good))
	pidFile := filepath.Join(dir, "affinity.pid")
	// Its output goes to a file: the new process inherits it, and a pipe
	// would keep the old one's Wait waiting for the new one's end.
	logFile := filepath.Join(dir, "serve.log")
	out, err := os.Create(logFile)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	cmd := exec.Command(bin, "serve", "-c", cfg, "--watch=false", "--pid-file", pidFile, "--upgrade-timeout", "8s")
	cmd.Stdout, cmd.Stderr = out, out
	notified := listenNotify(t, filepath.Join(dir, "notify"))
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+filepath.Join(dir, "notify"))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	logs := func() string {
		b, _ := os.ReadFile(logFile)
		return string(b)
	}
	old := cmd.Process.Pid
	waitForWithin(t, 30*time.Second, "the PID file", func() bool { return readPID(pidFile) == old })
	l := startLoad(t, "https://"+listen+"/", &tls.Config{RootCAs: certs.Client.RootCAs})
	l.waitOK(t, 100)

	strayFile := filepath.Join(dir, "stray.pid")
	failures := []struct {
		name   string
		break_ func()
		log    string // what the old process logs of the failure
		pid    func() bool
	}{
		{"invalid config", func() {
			saveByRename(t, cfg, []byte("listen: [\n"))
		}, "exited", nil},
		{"PID file not writable", func() {
			// The new process cannot rename its PID file over a
			// directory: it must exit without serving, and without
			// telling systemd it is the main process.
			saveByRename(t, cfg, []byte(good))
			if err := os.Remove(pidFile); err != nil {
				t.Fatal(err)
			}
			if err := os.Mkdir(pidFile, 0o755); err != nil {
				t.Fatal(err)
			}
		}, "exited", func() bool {
			fi, err := os.Stat(pidFile)
			return err == nil && fi.IsDir()
		}},
		{"binary that exits", func() {
			if err := os.Remove(pidFile); err != nil {
				t.Fatal(err)
			}
			saveByRename(t, pidFile, []byte(strconv.Itoa(old)+"\n"))
			if err := os.WriteFile(bin+".new", []byte("#!/bin/sh\nexit 3\n"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(bin+".new", bin); err != nil {
				t.Fatal(err)
			}
		}, "exited", nil},
		{"binary never ready", func() {
			// A wrapper that does not exec: killed at the timeout, it
			// leaves its child, which holds the sockets too.
			script := fmt.Sprintf("#!/bin/sh\nsleep 60 &\necho $! > %s\nwait\n", strayFile)
			if err := os.WriteFile(bin+".new", []byte(script), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(bin+".new", bin); err != nil {
				t.Fatal(err)
			}
		}, "timed out", nil},
	}
	strayGone := func() bool {
		pid := readPID(strayFile)
		return pid > 0 && syscall.Kill(pid, 0) == syscall.ESRCH
	}
	for i, f := range failures {
		f.break_()
		if err := cmd.Process.Signal(syscall.SIGUSR2); err != nil {
			t.Fatal(err)
		}
		waitForWithin(t, 30*time.Second, f.name+": the failure logged", func() bool {
			return strings.Count(logs(), "upgrade failed") == i+1
		})
		if line := failedLine(logs(), i); !strings.Contains(line, f.log) {
			t.Errorf("%s: the old process logs %q, want it to say %q:\n%s", f.name, line, f.log, logs())
		}
		if f.pid != nil {
			if !f.pid() {
				t.Fatalf("%s: the PID file's path changed", f.name)
			}
		} else if pid := readPID(pidFile); pid != old {
			t.Fatalf("%s: PID file says %d, want the old process's %d", f.name, pid, old)
		}
		l.waitOK(t, 100)
	}
	// The wrapper's child, which the old process adopted as the wrapper
	// was killed, is killed too, and no process is left holding the
	// sockets.
	waitForWithin(t, 30*time.Second, "the never-ready wrapper's child gone", strayGone)

	copyBinary(built)
	next := upgradeAndWait(t, cmd, pidFile, old, exited, logs, reap)
	l.waitOK(t, 200)
	l.end()
	if n := l.failed.Load(); n > 0 {
		t.Errorf("%d of %d requests failed across the upgrades (first: %v); output:\n%s", n, n+l.ok.Load(), l.firstErr.Load(), logs())
	}
	// systemd hears of each process's readiness, with its PID, that the
	// old one stays the main one after each failure, and of no stop: the
	// service goes on, in the new process.
	want := []string{fmt.Sprintf("READY=1\nMAINPID=%d", old)}
	for range failures {
		want = append(want, fmt.Sprintf("MAINPID=%d", old))
	}
	want = append(want, fmt.Sprintf("READY=1\nMAINPID=%d", next))
	if got := notified(); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("systemd was told %q, want %q", got, want)
	}
	resp, err := http.Get("http://" + admin + "/healthz")
	if err != nil {
		t.Fatalf("admin listener after the upgrade: %v", err)
	}
	_ = resp.Body.Close()
	t.Logf("%d requests answered; pid %d then %d", l.ok.Load(), old, next)
}

// upgradeAndWait sends cmd, whose process old wrote pidFile, SIGUSR2, waits
// for the new process to write its PID there (reaped by reap, reapLater's)
// and for the old one to exit, with status 0, on exited; logs is the
// output the failures show. It returns the new process's PID.
func upgradeAndWait(t *testing.T, cmd *exec.Cmd, pidFile string, old int, exited <-chan error, logs func() string, reap func(int)) int {
	t.Helper()
	if err := cmd.Process.Signal(syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	var next int
	waitForWithin(t, 30*time.Second, "the new process's PID in the file", func() bool {
		next = readPID(pidFile)
		return next != 0 && next != old
	})
	t.Cleanup(func() { reap(next) })
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("old process: %v, want exit status 0; output:\n%s", err, logs())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("old process still running 30 s after the upgrade; output:\n%s", logs())
	}
	return next
}
