package experiment

import "syscall"

// childAttr puts a child in its own process group, so that a Ctrl-C in the
// terminal reaches only the harness, which then stops its children in order,
// and has the kernel kill the child should the harness die without doing so.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
