//go:build !linux

package harness

import (
	"errors"
	"os"
	"syscall"
)

// sysProcAttr leaves children in the harness's process group where the
// kernel offers no parent-death signal: a Ctrl-C in the terminal then
// reaches them too, and the harness still reaps them.
func sysProcAttr() *syscall.SysProcAttr { return nil }

// kill continues the process, should it be stopped, and kills it.
func kill(p *os.Process) error {
	if sigCont != nil {
		_ = p.Signal(sigCont)
	}
	if err := p.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	return nil
}
