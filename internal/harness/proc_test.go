package harness

import (
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/affinityproxy/affinity/internal/testutil"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.Cleanup(func(int) { testutil.RemoveAffinityBinary() }))
}

// TestHelperProcess is not a test: it is the child process of the process
// tests, which run this test binary with AFFINITY_HELPER set. It says so on
// stdout, exits 0 on SIGTERM and otherwise sleeps until killed.
func TestHelperProcess(t *testing.T) {
	if os.Getenv("AFFINITY_HELPER") != "1" {
		t.Skip("child process of the process tests")
	}
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGTERM)
	_, _ = os.Stdout.WriteString("helper up\n")
	select {
	case <-ch:
		os.Exit(0)
	case <-time.After(time.Minute):
		os.Exit(3)
	}
}

func startHelper(t *testing.T, log string) *Proc {
	t.Helper()
	t.Setenv("AFFINITY_HELPER", "1")
	p, err := Start("helper", os.Args[0], []string{"-test.run=^TestHelperProcess$"}, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Kill() })
	return p
}

func TestProcKillReapsAStoppedProcess(t *testing.T) {
	p := startHelper(t, "")
	if err := p.Stop(); err != nil {
		t.Fatal(err)
	}
	if !p.stopped.Load() {
		t.Fatal("Stop did not record the stop")
	}
	if err := p.Kill(); err != nil {
		t.Fatal(err)
	}
	if !p.Exited() {
		t.Error("Kill returned before the process was reaped")
	}
	if err := p.Kill(); err != nil {
		t.Errorf("killing a dead process again: %v, want nil", err)
	}
}

func TestProcTerminateIsGraceful(t *testing.T) {
	p := startHelper(t, "")
	// The helper may not have installed its handler yet; a SIGTERM before
	// that kills it by the default action, which is an exit all the same.
	if err := p.Terminate(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	if !p.Exited() {
		t.Error("Terminate returned before the process exited")
	}
}

func TestProcTerminateContinuesAStoppedProcess(t *testing.T) {
	p := startHelper(t, "")
	if err := p.Stop(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := p.Terminate(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	if !p.Exited() || p.stopped.Load() {
		t.Error("a stopped process was not continued and ended")
	}
	// Diagnostic only: a frozen process would have needed the full grace.
	t.Logf("terminated a stopped process in %v", time.Since(start))
}

func TestProcLogsAppendAndTail(t *testing.T) {
	log := filepath.Join(t.TempDir(), "helper.log")
	for i := range 2 {
		p := startHelper(t, log)
		err := WaitFor(t.Context(), p, "up", 10*time.Second, func() (bool, error) {
			data, _ := os.ReadFile(log)
			return strings.Count(string(data), "helper up") > i, nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Kill(); err != nil {
			t.Fatal(err)
		}
	}
	// A restart under the same name appends: both lives are in the log.
	data, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(data), "helper up"); n != 2 {
		t.Errorf("log holds %d starts, want 2:\n%s", n, data)
	}
	p := &Proc{name: "helper", log: log}
	if tail := p.LogTail(); !strings.HasSuffix(tail, "helper up") || !strings.Contains(tail, " | ") {
		t.Errorf("LogTail = %q, want the last lines joined", tail)
	}
}

func TestWaitForFailsFastWhenTheProcessDies(t *testing.T) {
	p := startHelper(t, "")
	if err := p.Kill(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err := WaitFor(t.Context(), p, "ready", readyTimeout, func() (bool, error) { return false, nil })
	if err == nil || !strings.Contains(err.Error(), "exited before it was ready") {
		t.Errorf("WaitFor = %v, want an exit error", err)
	}
	if time.Since(start) > readyTimeout/2 {
		t.Error("WaitFor waited for its timeout on a dead process")
	}
}

func TestStartReportsAMissingBinary(t *testing.T) {
	if _, err := Start("x", "/nonexistent/affinity", nil, ""); err == nil {
		t.Error("started a binary that does not exist")
	}
}
