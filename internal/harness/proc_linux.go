package harness

import (
	"errors"
	"os"
	"syscall"
)

// sysProcAttr puts a child in its own process group, so that a Ctrl-C in the
// terminal reaches only the harness, which then stops its children in order,
// and has the kernel kill the child should the harness die without doing so
// (a test binary killed on timeout), so that no backend outlives a run.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// kill continues and kills the process group p leads. A group already gone
// is not an error.
func kill(p *os.Process) error {
	_ = syscall.Kill(-p.Pid, syscall.SIGCONT)
	if err := syscall.Kill(-p.Pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return err
	}
	return nil
}
