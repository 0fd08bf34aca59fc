//go:build !linux

package experiment

import "syscall"

// childAttr leaves children in the harness's process group where the kernel
// offers no parent-death signal: a Ctrl-C in the terminal then reaches them
// too, and the harness still reaps them.
func childAttr() *syscall.SysProcAttr { return nil }
