//go:build linux

package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// activatedCmd is `affinity serve args...` started as systemd starts a
// socket-activated service: files are its descriptors 3, 4…, and
// LISTEN_PID its PID (the shell's, which exec keeps) unless env sets it.
// env holds LISTEN_FDS and LISTEN_FDNAMES.
func activatedCmd(bin string, env []string, files []*os.File, args ...string) *exec.Cmd {
	script := `LISTEN_PID=${LISTEN_PID:-$$} exec "$0" "$@"`
	cmd := exec.Command("sh", append([]string{"-c", script, bin, "serve"}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	cmd.ExtraFiles = files
	return cmd
}

// systemdSocket binds a loopback listening socket and returns its address
// and a descriptor of it, which the test keeps open until it ends, as
// systemd keeps the sockets of a .socket unit: connections to it wait in
// its backlog while no process accepts, rather than being refused.
func systemdSocket(t *testing.T) (string, *os.File) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.Close() })
	return ln.Addr().String(), f
}

// okBackend answers every request with "ok".
func okBackend(t *testing.T) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok")
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// body returns the body of a GET of url answered 200, "" otherwise.
func body(c *http.Client, url string) string {
	resp, err := c.Get(url)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return ""
	}
	return string(b)
}

// A proxy started with the sockets systemd passed serves them, the proxy's
// and the admin one; stopped, it leaves a connection made meanwhile
// waiting, not refused, and a proxy started again on the same sockets
// answers it; an in-place upgrade hands them on as it does its own.
func TestServeSocketActivation(t *testing.T) {
	bin := buildBinary(t)
	reap := reapLater(t)
	dir := t.TempDir()
	listen, lf := systemdSocket(t)
	admin, af := systemdSocket(t)
	cfg := writeFile(t, "affinity.yaml", fmt.Appendf(nil,
		"listen: %s\nshutdown_timeout: 5s\nadmin: {listen: %s}\npools:\n  web:\n    backends: [{url: %q, name: a}]\n",
		listen, admin, okBackend(t)))
	env := []string{"LISTEN_FDS=2", "LISTEN_FDNAMES=web:admin"}
	files := []*os.File{lf, af}
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}

	p := startCmd(t, activatedCmd(bin, env, files, "-c", cfg, "--watch=false"))
	// Had the proxy bound the address itself, it would have failed: the
	// test holds the socket.
	waitFor(t, "the proxy to serve on the socket from systemd", func() bool { return body(c, "http://"+listen+"/") == "ok" })
	if body(c, "http://"+admin+"/healthz") == "" {
		t.Errorf("admin listener not served on the socket from systemd; output:\n%s", p.out)
	}
	took := fmt.Sprintf(`sockets from systemd (socket activation)	{"passed": 2, "listening": [%q, %q]}`, listen, admin)
	if out := p.out.String(); !strings.Contains(out, took) || strings.Contains(out, "socket from systemd closed") {
		t.Errorf("output lacks %s, or closes one:\n%s", took, out)
	}
	p.signal(t, syscall.SIGTERM)
	p.wait(t)

	// No proxy runs: the request waits in the backlog of the socket
	// the test, standing for systemd, holds.
	conn, err := net.Dial("tcp", listen)
	if err != nil {
		t.Fatalf("connecting while no proxy runs: %v", err)
	}
	defer conn.Close()
	if _, err := fmt.Fprintf(conn, "GET /waited HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", listen); err != nil {
		t.Fatal(err)
	}

	// The second proxy's output goes to a file: the process its upgrade
	// starts inherits it, and a pipe would keep Wait waiting for that one.
	logFile := filepath.Join(dir, "serve.log")
	out, err := os.Create(logFile)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	logs := func() string {
		b, _ := os.ReadFile(logFile)
		return string(b)
	}
	pidFile := filepath.Join(dir, "affinity.pid")
	cmd := activatedCmd(bin, env, files, "-c", cfg, "--watch=false", "--pid-file", pidFile, "--upgrade-timeout", "8s")
	cmd.Stdout, cmd.Stderr = out, out
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
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("the request made while no proxy ran: %v; output:\n%s", err, logs())
	}
	b, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(b) != "ok" {
		t.Fatalf("the request made while no proxy ran: %s %q, want 200 ok", resp.Status, b)
	}

	old := cmd.Process.Pid
	waitFor(t, "the PID file", func() bool { return readPID(pidFile) == old })
	l := startLoad(t, "http://"+listen+"/", nil)
	l.waitOK(t, 50)
	next := upgradeAndWait(t, cmd, pidFile, old, exited, logs, reap)
	l.waitOK(t, 50)
	l.end()
	if n := l.failed.Load(); n > 0 {
		t.Errorf("%d of %d requests failed across the upgrade (first: %v); output:\n%s", n, n+l.ok.Load(), l.firstErr.Load(), logs())
	}
	if body(c, "http://"+admin+"/healthz") == "" {
		t.Errorf("admin listener not served after the upgrade; output:\n%s", logs())
	}
	// The new process took the sockets from its predecessor, which
	// removed systemd's variables before starting it.
	all := logs()
	if n := strings.Count(all, "sockets from systemd"); n != 1 || !strings.Contains(all, fmt.Sprintf(`ready	{"pid": %d, "upgraded": true}`, next)) {
		t.Errorf("want one process to say it took sockets from systemd (%d did), and %d ready:\n%s", n, next, all)
	}
	environ, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", next))
	if err != nil {
		t.Fatal(err)
	}
	for v := range strings.SplitSeq(string(environ), "\x00") {
		if strings.HasPrefix(v, "LISTEN_") {
			t.Errorf("the new process has %s in its environment", v)
		}
	}
}

// Sockets or variables that are not what the proxy can serve: each is
// ignored with a line in the log, the proxy serving its configured
// address, or stops the start with an error that says what is wrong;
// never a crash.
func TestServeSocketActivationMisuse(t *testing.T) {
	bin := buildBinary(t)
	backend := okBackend(t)
	tcp := func(t *testing.T) (string, *os.File) { return systemdSocket(t) }
	udp := func(t *testing.T) (string, *os.File) {
		t.Helper()
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		f, err := pc.(*net.UDPConn).File()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = f.Close() })
		return pc.LocalAddr().String(), f
	}
	file := func(t *testing.T) (string, *os.File) {
		t.Helper()
		f, err := os.Create(filepath.Join(t.TempDir(), "not-a-socket"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = f.Close() })
		return "", f
	}
	tests := []struct {
		name string
		env  []string
		// socket makes the descriptor passed as 3, nil for none.
		socket func(t *testing.T) (string, *os.File)
		// own: the config listens on an address of its own, not the
		// socket's.
		own bool
		// log is what the output says, %s the socket's address; fails
		// tells that the start fails.
		log   string
		fails bool
	}{
		{"LISTEN_PID of another process", []string{"LISTEN_PID=1", "LISTEN_FDS=1"}, tcp, true,
			`LISTEN_FDS ignored: LISTEN_PID does not name this process`, false},
		{"LISTEN_FDS=0", []string{"LISTEN_FDS=0"}, nil, true,
			`sockets from systemd (socket activation)	{"passed": 0, "listening": []}`, false},
		{"socket of no configured address", []string{"LISTEN_FDS=1", "LISTEN_FDNAMES=stray"}, tcp, true,
			`socket from systemd closed: no configured address (listen, admin.listen) is its address	{"fd": 3, "name": "stray", "addr": "%s"}`, false},
		{"UDP socket", []string{"LISTEN_FDS=1"}, udp, true,
			`socket from systemd skipped	{"fd": 3, "name": "", "reason": "a datagram socket (ListenDatagram=): the proxy serves TCP"}`, false},
		// The runtime opens a few descriptors before anything else (the
		// cgroup files it reads GOMAXPROCS from): those LISTEN_FDS counts
		// beyond what was passed are those, or not open.
		{"more descriptors than passed", []string{"LISTEN_FDS=3"}, tcp, false,
			`affinity: upgrade: socket activation: LISTEN_FDS=3`, true},
		{"more descriptors than can be", []string{"LISTEN_FDS=9223372036854775807"}, tcp, false,
			`affinity: upgrade: socket activation: LISTEN_FDS=9223372036854775807`, true},
		{"LISTEN_FDS not a count", []string{"LISTEN_FDS=two"}, tcp, false,
			`affinity: upgrade: socket activation: LISTEN_FDS="two" is not a count of descriptors`, true},
		{"not a socket", []string{"LISTEN_FDS=1"}, file, true,
			`affinity: upgrade: socket activation: LISTEN_FDS=1, but descriptor 3 is not a socket (it is /`, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var addr string
			var files []*os.File
			if tt.socket != nil {
				var f *os.File
				addr, f = tt.socket(t)
				files = append(files, f)
			}
			listen := addr
			if tt.own {
				listen = freeAddr(t)
			}
			cfg := writeFile(t, "affinity.yaml", fmt.Appendf(nil, "listen: %s\npools:\n  web:\n    backends: [{url: %q}]\n", listen, backend))
			p := startCmd(t, activatedCmd(bin, tt.env, files, "-c", cfg, "--watch=false"))
			want := tt.log
			if strings.Contains(want, "%s") {
				want = fmt.Sprintf(want, addr)
			}
			if tt.fails {
				select {
				case <-p.done:
				case <-time.After(10 * time.Second):
					t.Fatalf("still running 10 s after start; output:\n%s", p.out)
				}
				if p.err == nil || !strings.Contains(p.out.String(), want) || strings.Contains(p.out.String(), "panic") {
					t.Errorf("exit %v, want an error saying %q; output:\n%s", p.err, want, p.out)
				}
				return
			}
			c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
			waitFor(t, "the proxy to serve its configured address", func() bool { return body(c, "http://"+listen+"/") == "ok" })
			if !strings.Contains(p.out.String(), want) {
				t.Errorf("output lacks %q:\n%s", want, p.out)
			}
			p.signal(t, syscall.SIGTERM)
			p.wait(t)
		})
	}
}
