package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/affinityproxy/affinity/config"
	"github.com/affinityproxy/affinity/proxy"
)

// cpuTicks returns the CPU time a process has used, in clock ticks.
func cpuTicks(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// The fields after the command name, which is in parentheses:
	// utime and stime are the 12th and 13th of them.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	utime, _ := strconv.Atoi(f[11])
	stime, _ := strconv.Atoi(f[12])
	return utime + stime
}

// TestServeSIGHUPDuringStartup: a SIGHUP while serve is still starting
// (building large rings) neither kills it nor is lost: the reload runs once
// the proxy serves.
func TestServeSIGHUPDuringStartup(t *testing.T) {
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		t.Skip("reads the process's CPU time from /proc")
	}
	bin := buildBinary(t)
	listen := freeAddr(t)
	var b strings.Builder
	fmt.Fprintf(&b, "listen: %s\nroutes: [{pool: p0}]\npools:\n", listen)
	// Rings of 160,480 points each take serve a while to build.
	for i := range 4 {
		fmt.Fprintf(&b, "  p%d:\n    balancer: {type: consistent-hash, hash: {key: ip}}\n    backends:\n", i)
		// Never asked: the proxy gets no request.
		for j, w := range []int{1, 2, 1000} {
			fmt.Fprintf(&b, "      - {url: \"http://127.0.0.1:%d\", weight: %d}\n", 9001+j, w)
		}
	}
	cfg := writeFile(t, "affinity.yaml", []byte(b.String()))
	// The handler is installed first thing in serve, once the program's
	// packages have initialised: the CPU time a whole `affinity version`
	// takes, three times over, is past that (however busy the machine, as
	// it counts CPU, not time) and far from the end of the start-up.
	var initTime time.Duration
	for range 3 {
		v := exec.Command(bin, "version")
		if err := v.Run(); err != nil {
			t.Fatal(err)
		}
		initTime = max(initTime, v.ProcessState.UserTime()+v.ProcessState.SystemTime())
	}
	ticks := int(3*initTime/(10*time.Millisecond)) + 3
	p := startServe(t, bin, cfg, "--watch=false")
	waitFor(t, "serve to be busy starting", func() bool { return cpuTicks(t, p.cmd.Process.Pid) >= ticks })
	if strings.Contains(p.out.String(), "starting") {
		t.Fatalf("serve started before the test could signal it; output:\n%s", p.out)
	}
	p.signal(t, syscall.SIGHUP)
	// The reload of the same file ends as unchanged.
	// Building the rings takes long on a busy machine: a minute, not the
	// usual ten seconds.
	waitForWithin(t, time.Minute, "the reload asked for during start-up", func() bool {
		return strings.Contains(p.out.String(), "config unchanged")
	})
	out := p.out.String()
	if i, j := strings.Index(out, "starting"), strings.Index(out, `"trigger": "SIGHUP"`); i < 0 || j < i {
		t.Errorf("the reload did not follow the start-up:\n%s", out)
	}
	p.signal(t, syscall.SIGTERM)
	p.wait(t)
}

// TestServeConfigBecomesFIFO: a config path that has become a FIFO fails
// its reload at once rather than blocking it, and SIGTERM then stops the
// proxy cleanly.
func TestServeConfigBecomesFIFO(t *testing.T) {
	p := startServingProxy(t, nil)
	if err := os.Remove(p.cfg); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(p.cfg, 0o644); err != nil {
		t.Fatal(err)
	}
	p.signal(t, syscall.SIGHUP)
	waitFor(t, "the reload to fail", func() bool {
		out := p.out.String()
		return strings.Contains(out, "config reload failed") && strings.Contains(out, "not a regular file (a FIFO)")
	})
	p.signal(t, syscall.SIGTERM)
	p.wait(t)
	if servedBy(p.c, "http://"+p.listen+"/") != "" {
		t.Error("the proxy still answers after it stopped")
	}
}

// TestValidateFIFO: validate refuses a FIFO at once, where reading it would
// wait for a writer.
func TestValidateFIFO(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "affinity.yaml")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	type result struct {
		code   int
		errOut string
	}
	done := make(chan result, 1)
	go func() {
		var out, errOut strings.Builder
		code := execute(context.Background(), []string{"validate", "-c", fifo}, &out, &errOut)
		done <- result{code, errOut.String()}
	}()
	select {
	case r := <-done:
		if want := fifo + ": cannot read: not a regular file (a FIFO)\n"; r.code != exitFailure || r.errOut != want {
			t.Errorf("exit %d, stderr %q; want 1 and %q", r.code, r.errOut, want)
		}
	case <-time.After(10 * time.Second):
		// Open the FIFO for writing, so that the command ends.
		if f, err := os.OpenFile(fifo, os.O_WRONLY, 0); err == nil {
			_ = f.Close()
		}
		<-done
		t.Fatal("validate blocked on a FIFO")
	}
}

// TestServeShutdownTimeout: a stop that reaches shutdown_timeout with a
// request still running cuts it, logs how many connections that took, and
// exits 0.
func TestServeShutdownTimeout(t *testing.T) {
	p := startServingProxy(t, func(cfg string) string {
		return strings.Replace(cfg, "shutdown_timeout: 10s", "shutdown_timeout: 100ms", 1)
	})
	cut := make(chan error, 1)
	go func() {
		resp, err := p.c.Get("http://" + p.listen + "/slow")
		if err == nil {
			_, err = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		cut <- err
	}()
	<-p.started
	p.signal(t, syscall.SIGTERM)
	p.wait(t)
	if err := <-cut; err == nil {
		t.Error("the request that outlived shutdown_timeout completed")
	}
	out := p.out.String()
	for _, want := range []string{"shutdown_timeout reached: cut what was still running", `"connections": 1`, "stopped"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

// TestServeSecondSignal: a second SIGTERM while serve waits for a slow
// request cuts it at once, long before shutdown_timeout, and the stop is
// still a clean one: exit 0, the cut logged, and the access log written
// out, the cut request's 499 and the lines of the last second with it.
func TestServeSecondSignal(t *testing.T) {
	p := startServingProxy(t, func(cfg string) string {
		cfg = strings.Replace(cfg, "shutdown_timeout: 10s", "shutdown_timeout: 5m", 1)
		return "log: {access: true}\n" + cfg
	})
	cut := make(chan error, 1)
	go func() {
		resp, err := p.c.Get("http://" + p.listen + "/slow")
		if err == nil {
			_, err = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		cut <- err
	}()
	<-p.started
	p.signal(t, syscall.SIGTERM)
	waitFor(t, "the shutdown to start", func() bool { return strings.Contains(p.out.String(), "shutting down") })
	p.signal(t, syscall.SIGTERM)
	p.wait(t)
	if err := <-cut; err == nil {
		t.Error("the request still running at the second signal completed")
	}
	out := p.out.String()
	for _, want := range []string{"stopped by a second signal: cut what was still running", `"connections": 1`, "stopped",
		`"path": "/slow", "status": 499`} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	// Every request the test made before the stop has its line.
	if n := strings.Count(out, `"path": "/", "status": 200`); n == 0 {
		t.Errorf("no access line of the requests before the stop:\n%s", out)
	}
}

// TestStopDuringHungRead: a reload stuck reading the file (a network file
// system that stopped answering) fails after the reload timeout, a reload
// asked for meanwhile fails at once, and a stop is never held up by it.
func TestStopDuringHungRead(t *testing.T) {
	w1 := startBackend(t, "web-1")
	cfgData := fmt.Sprintf("listen: 127.0.0.1:0\npools:\n  web:\n    backends: [{url: %q}]\n", w1.URL)
	cfg, err := config.Parse("affinity.yaml", []byte(cfgData))
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zapcore.InfoLevel)
	log := zap.New(core)
	srv, err := proxy.NewServer(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	reads := make(chan struct{}, 4)
	release := make(chan struct{})
	defer close(release)
	changes := make(chan struct{}, 1)
	r := &reloader{file: "affinity.yaml", srv: srv, log: log, changes: changes, timeout: 50 * time.Millisecond,
		load: func(string) (*config.Config, error) {
			reads <- struct{}{}
			<-release
			return nil, io.ErrUnexpectedEOF
		}}
	ctx, stop := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- r.run(ctx) }()

	changes <- struct{}{}
	<-reads
	waitFor(t, "the hung read to time out", func() bool {
		return logs.FilterMessage("config reload failed").FilterFieldKey("error").Len() == 1
	})
	if e := logs.FilterMessage("config reload failed").All()[0].ContextMap()["error"]; !strings.Contains(fmt.Sprint(e), "did not finish within 50ms") {
		t.Errorf("failure logged as %q, want the timeout", e)
	}
	changes <- struct{}{}
	waitFor(t, "the second reload to fail", func() bool { return logs.FilterMessage("config reload failed").Len() == 2 })
	if e := logs.FilterMessage("config reload failed").All()[1].ContextMap()["error"]; !strings.Contains(fmt.Sprint(e), "has not returned yet") {
		t.Errorf("second failure logged as %q, want the pending read", e)
	}
	if len(reads) != 0 {
		t.Error("the file was read again while the first read hung")
	}
	if st := srv.ReloadStats(); st.Failed != 2 || st.OK != 0 {
		t.Errorf("reload stats %+v, want 2 failed", st)
	}
	stop()
	select {
	case err := <-ran:
		if err != nil {
			t.Errorf("run = %v, want nil after a stop", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the stop waited for the hung read")
	}
}

// TestReadAfterReadReturns: a read of the file that returned in time leaves
// nothing pending, so a reload queued behind it reads the file again at
// once rather than failing as if a read had hung.
func TestReadAfterReadReturns(t *testing.T) {
	cfg, err := config.Parse("affinity.yaml", []byte("listen: 127.0.0.1:0\npools:\n  web:\n    backends: [{url: \"http://127.0.0.1:1\"}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	r := &reloader{file: "affinity.yaml", timeout: 10 * time.Second,
		load: func(string) (*config.Config, error) { return cfg, nil }}
	// Each read from a goroutine of its own, as each reload runs; 20,000
	// of them, as the window is narrow.
	for i := range 20_000 {
		read := make(chan error, 1)
		go func() {
			_, err := r.read()
			read <- err
		}()
		if err := <-read; err != nil {
			t.Fatalf("read %d: %v", i+1, err)
		}
	}
}
