package experiment

import (
	"os"
	"os/signal"
	"syscall"
	"testing"
	"time"
)

// TestHelperProcess is not a test: it is the child process of the process
// tests, which run this test binary with AFFINITY_HELPER set. It exits 0 on
// SIGTERM and otherwise sleeps until killed.
func TestHelperProcess(t *testing.T) {
	if os.Getenv("AFFINITY_HELPER") != "1" {
		t.Skip("child process of the process tests")
	}
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGTERM)
	select {
	case <-ch:
		os.Exit(0)
	case <-time.After(time.Minute):
		os.Exit(3)
	}
}

func startHelper(t *testing.T) *proc {
	t.Helper()
	t.Setenv("AFFINITY_HELPER", "1")
	p, err := startProc("helper", os.Args[0], []string{"-test.run=^TestHelperProcess$"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.kill() })
	return p
}

func TestProcKillReapsAStoppedProcess(t *testing.T) {
	p := startHelper(t)
	if err := p.stop(); err != nil {
		t.Fatal(err)
	}
	if !p.stopped.Load() {
		t.Fatal("stop did not record the stop")
	}
	if err := p.kill(); err != nil {
		t.Fatal(err)
	}
	if !p.exited() {
		t.Error("kill returned before the process was reaped")
	}
	if err := p.kill(); err != nil {
		t.Errorf("killing a dead process again: %v, want nil", err)
	}
}

func TestProcTerminateIsGraceful(t *testing.T) {
	p := startHelper(t)
	// The helper may not have installed its handler yet; a SIGTERM before
	// that kills it by the default action, which is an exit all the same.
	if err := p.terminate(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	if !p.exited() {
		t.Error("terminate returned before the process exited")
	}
}

func TestProcTerminateContinuesAStoppedProcess(t *testing.T) {
	p := startHelper(t)
	if err := p.stop(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := p.terminate(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	if !p.exited() || p.stopped.Load() {
		t.Error("a stopped process was not continued and ended")
	}
	// Diagnostic only: a frozen process would have needed the full grace.
	t.Logf("terminated a stopped process in %v", time.Since(start))
}

func TestStartProcReportsAMissingBinary(t *testing.T) {
	if _, err := startProc("x", "/nonexistent/affinity", nil, nil); err == nil {
		t.Error("started a binary that does not exist")
	}
}
