//go:build unix

package proxy

import (
	"net"
	"syscall"
)

// fileLimit returns the process's limit on open files, false when it
// cannot be read or there is none (RLIM_INFINITY, or near it).
func fileLimit() (int64, bool) {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil || l.Cur > 1<<40 {
		return 0, false
	}
	return int64(l.Cur), true
}

// unlisten stops ln's socket listening, in this process and in any other
// that holds a copy of it: connections to its address are then refused,
// not queued for no one to accept. A listener closed by one holder of the
// socket stays open in the others.
func unlisten(ln net.Listener) {
	sc, ok := ln.(syscall.Conn)
	if !ok {
		return
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) { _ = syscall.Shutdown(int(fd), syscall.SHUT_RDWR) })
}
