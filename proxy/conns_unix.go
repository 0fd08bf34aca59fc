//go:build unix

package proxy

import "syscall"

// fileLimit returns the process's limit on open files, false when it
// cannot be read or there is none (RLIM_INFINITY, or near it).
func fileLimit() (int64, bool) {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil || l.Cur > 1<<40 {
		return 0, false
	}
	return int64(l.Cur), true
}
