package chaos

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// sysProcAttr puts a child in its own process group, and has the kernel kill
// it if the harness dies without cleaning up (a test binary killed on
// timeout), so that no backend outlives a run.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// killGroup resumes and kills the process group led by pid. A group already
// gone is not an error.
func killGroup(pid int) error {
	_ = syscall.Kill(-pid, syscall.SIGCONT)
	if err := syscall.Kill(-pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill group %d: %w", pid, err)
	}
	return nil
}

// osSignal maps a fault's signal to the system's.
func (s faultSignal) osSignal() (os.Signal, error) {
	switch s {
	case sigKill:
		return syscall.SIGKILL, nil
	case sigStop:
		return syscall.SIGSTOP, nil
	case sigCont:
		return syscall.SIGCONT, nil
	}
	return nil, fmt.Errorf("fault signal %d: %w", s, errUnsupported)
}
