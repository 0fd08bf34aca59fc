package experiment

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sync/atomic"
	"syscall"
	"time"
)

// proc is a child process the harness started. Whoever starts one must end
// it with kill or terminate, which also reap it; a goroutine per proc waits
// for the exit so that an unexpected death is seen at once.
type proc struct {
	name    string
	cmd     *exec.Cmd
	done    chan struct{} // closed once the process has exited and been reaped
	stopped atomic.Bool   // SIGSTOPped and not yet continued
}

// startProc starts exe with args, its stdout and stderr going to log (nil
// discards them). Being an *os.File, log is handed to the child directly, so
// no copying goroutine outlives the process.
func startProc(name, exe string, args []string, log *os.File) (*proc, error) {
	cmd := exec.Command(exe, args...)
	if log != nil {
		cmd.Stdout, cmd.Stderr = log, log
	}
	cmd.SysProcAttr = childAttr()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// exited reports whether the process has ended.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// signal sends sig unless the process is gone already.
func (p *proc) signal(sig os.Signal) error {
	if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("%s: signal %v: %w", p.name, sig, err)
	}
	return nil
}

// stop freezes the process (SIGSTOP): its sockets stay open and nothing
// answers, the way a hung server looks from outside.
func (p *proc) stop() error {
	if sigStop == nil {
		return fmt.Errorf("%s: freeze: %w", p.name, errors.ErrUnsupported)
	}
	if err := p.signal(sigStop); err != nil {
		return err
	}
	p.stopped.Store(true)
	return nil
}

// cont undoes stop.
func (p *proc) cont() error {
	if sigCont == nil {
		return fmt.Errorf("%s: continue: %w", p.name, errors.ErrUnsupported)
	}
	if err := p.signal(sigCont); err != nil {
		return err
	}
	p.stopped.Store(false)
	return nil
}

// kill ends the process at once (SIGKILL) and reaps it. A stopped process
// is continued first, so that nothing is left frozen should the kill be
// delayed.
func (p *proc) kill() error {
	if p.stopped.Load() {
		_ = p.cont()
	}
	err := p.signal(os.Kill)
	<-p.done
	return err
}

// terminate asks the process to stop (SIGTERM), gives it grace to finish
// what it is doing, then kills it.
func (p *proc) terminate(grace time.Duration) error {
	if p.stopped.Load() {
		_ = p.cont()
	}
	if err := p.signal(syscall.SIGTERM); err != nil {
		return errors.Join(err, p.kill())
	}
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.done:
		return nil
	case <-t.C:
		return p.kill()
	}
}
