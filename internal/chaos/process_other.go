//go:build !linux

package chaos

import (
	"fmt"
	"os"
	"syscall"
)

// sysProcAttr has nothing to add outside Linux: Run refuses to start there.
func sysProcAttr() *syscall.SysProcAttr { return nil }

// killGroup is never reached outside Linux, where Run refuses to start.
func killGroup(int) error { return errUnsupported }

// osSignal is never reached outside Linux, where Run refuses to start.
func (s faultSignal) osSignal() (os.Signal, error) {
	return nil, fmt.Errorf("fault signal %d: %w", s, errUnsupported)
}
