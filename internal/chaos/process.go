package chaos

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"time"
)

// exitWait bounds how long a process may take to die once killed. SIGKILL
// is not negotiable, so only a wedged kernel could exceed it.
const exitWait = 10 * time.Second

// proc is a child process with its output in a log file.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string        // path of the file holding its stdout and stderr
	done chan struct{} // closed once the process has exited and been waited for
}

// startProc starts bin with args in its own process group, its output going
// to logPath. The process is killed when ctx ends; stop kills it sooner.
func startProc(ctx context.Context, name, bin, logPath string, args ...string) (*proc, error) {
	out, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("%s: log: %w", name, err)
	}
	// The child holds its own descriptor of the log; ours is not needed
	// once it has started (or failed to).
	defer func() { _ = out.Close() }()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = sysProcAttr()
	// Its own process group keeps a Ctrl-C at the terminal from reaching
	// the children before the harness can report; killing the group (and
	// resuming it first, in case it is stopped) leaves nothing behind.
	cmd.Cancel = func() error { return killGroup(cmd.Process.Pid) }
	cmd.WaitDelay = exitWait
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("%s: start: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		// A killed process exits with an error; that is the expected end.
		_ = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// exited tells whether the process has ended.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop kills the process and its group, resuming them first if stopped, and
// waits for it to exit.
func (p *proc) stop() error {
	if p.exited() {
		return nil
	}
	if err := killGroup(p.cmd.Process.Pid); err != nil && !p.exited() {
		return fmt.Errorf("%s: kill: %w", p.name, err)
	}
	return p.wait()
}

// wait waits for the process to exit, for exitWait at most.
func (p *proc) wait() error {
	select {
	case <-p.done:
		return nil
	case <-time.After(exitWait):
		return fmt.Errorf("%s: still running %v after SIGKILL", p.name, exitWait)
	}
}

// faultSignal is a signal the faults send; each system file maps it to its
// own.
type faultSignal int

const (
	sigKill faultSignal = iota // kill -9
	sigStop                    // hang: SIGSTOP
	sigCont                    // resume: SIGCONT
)

// errUnsupported is wrapped when the system cannot inject the faults:
// process groups and SIGSTOP are needed, and only Linux is supported.
var errUnsupported = errors.New("chaos: faults are supported on Linux only")

// signal sends s to the process alone, as kill(1) would.
func (p *proc) signal(s faultSignal) error {
	sig, err := s.osSignal()
	if err != nil {
		return fmt.Errorf("%s: %w", p.name, err)
	}
	if err := p.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("%s: %v: %w", p.name, sig, err)
	}
	return nil
}

// tail returns the end of the process's output, to explain a failure.
func (p *proc) tail() string { return tailFile(p.log, 2<<10) }

// tailFile returns the last n bytes of the file at path, or why it cannot.
func tailFile(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(no output: %v)", err)
	}
	defer func() { _ = f.Close() }()
	if fi, err := f.Stat(); err == nil && fi.Size() > n {
		_, _ = f.Seek(-n, io.SeekEnd)
	}
	b, _ := io.ReadAll(f)
	return string(b)
}

// errExited is wrapped when a process ends while it was expected to serve.
var errExited = errors.New("exited")

// waitReady polls ready every pollEvery until it succeeds, the process
// exits, or timeout passes.
func waitReady(ctx context.Context, p *proc, timeout time.Duration, ready func(context.Context) error) error {
	const pollEvery = 20 * time.Millisecond
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(pollEvery)
	defer tick.Stop()
	for {
		err := ready(ctx)
		if err == nil {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s: %w before it was ready; its output:\n%s", p.name, errExited, p.tail())
		case <-ctx.Done():
			if perr := parent.Err(); perr != nil {
				return fmt.Errorf("%s: waiting to be ready: %w", p.name, perr)
			}
			return fmt.Errorf("%s: not ready after %v: %w; its output:\n%s", p.name, timeout, err, p.tail())
		case <-tick.C:
		}
	}
}
