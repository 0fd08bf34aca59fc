package harness

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// exitWait bounds how long a process may take to die once killed. SIGKILL
// is not negotiable, so only a wedged kernel could exceed it.
const exitWait = 10 * time.Second

// Proc is a child process the harness started. Whoever starts one must end
// it with Kill or Terminate, which also reap it; a goroutine per Proc waits
// for the exit so that an unexpected death is seen at once.
type Proc struct {
	name    string
	log     string // path of the file holding its stdout and stderr; empty: discarded
	cmd     *exec.Cmd
	done    chan struct{} // closed once the process has exited and been reaped
	stopped atomic.Bool   // SIGSTOPped and not yet continued
}

// Start starts exe with args, its stdout and stderr appended to the file at
// logPath (empty discards them). The child writes to its own descriptor of
// the file, so no copying goroutine outlives it. On Linux it runs in its
// own process group, which Kill ends whole, and dies with the harness.
func Start(name, exe string, args []string, logPath string) (*Proc, error) {
	cmd := exec.Command(exe, args...)
	if logPath != "" {
		log, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return nil, fmt.Errorf("%s: log: %w", name, err)
		}
		// The child holds its own descriptor of the file once started.
		defer func() { _ = log.Close() }()
		cmd.Stdout, cmd.Stderr = log, log
	}
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Proc{name: name, log: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		// A killed process exits with an error; that is the expected end.
		_ = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// Name is the name the process was started with.
func (p *Proc) Name() string { return p.name }

// Done is closed once the process has exited and been reaped.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has ended.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Signal sends sig to the process alone, unless it is gone already.
func (p *Proc) Signal(sig os.Signal) error {
	if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("%s: signal %v: %w", p.name, sig, err)
	}
	return nil
}

// Stop freezes the process (SIGSTOP): its sockets stay open and nothing
// answers, the way a hung server looks from outside.
func (p *Proc) Stop() error {
	if sigStop == nil {
		return fmt.Errorf("%s: freeze: %w", p.name, errors.ErrUnsupported)
	}
	if err := p.Signal(sigStop); err != nil {
		return err
	}
	p.stopped.Store(true)
	return nil
}

// Cont undoes Stop.
func (p *Proc) Cont() error {
	if sigCont == nil {
		return fmt.Errorf("%s: continue: %w", p.name, errors.ErrUnsupported)
	}
	if err := p.Signal(sigCont); err != nil {
		return err
	}
	p.stopped.Store(false)
	return nil
}

// Kill ends the process at once (SIGKILL, to its whole group where it has
// one, continued first should it be stopped) and waits until it is reaped,
// so that its port is free when Kill returns. Killing a process that has
// exited already does nothing.
func (p *Proc) Kill() error {
	if p.Exited() {
		return nil
	}
	if err := kill(p.cmd.Process); err != nil && !p.Exited() {
		return fmt.Errorf("%s: kill: %w", p.name, err)
	}
	p.stopped.Store(false)
	return p.wait()
}

// Terminate asks the process to stop (SIGTERM), gives it grace to finish
// what it is doing, then kills it.
func (p *Proc) Terminate(grace time.Duration) error {
	if p.stopped.Load() {
		_ = p.Cont()
	}
	if err := p.Signal(syscall.SIGTERM); err != nil {
		return errors.Join(err, p.Kill())
	}
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.done:
		return nil
	case <-t.C:
		return p.Kill()
	}
}

// wait waits for the process to exit, for exitWait at most.
func (p *Proc) wait() error {
	t := time.NewTimer(exitWait)
	defer t.Stop()
	select {
	case <-p.done:
		return nil
	case <-t.C:
		return fmt.Errorf("%s: still running %v after SIGKILL", p.name, exitWait)
	}
}

// LogTail returns the last lines of the process's output, joined by " | ",
// to explain a failure in one line.
func (p *Proc) LogTail() string {
	if p.log == "" {
		return "(output discarded)"
	}
	data, err := os.ReadFile(p.log)
	if err != nil || len(data) == 0 {
		return "(no output)"
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	return strings.Join(lines[max(0, len(lines)-5):], " | ")
}
