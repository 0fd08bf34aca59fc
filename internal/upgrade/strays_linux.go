package upgrade

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// adoptOrphans makes the process the reaper of its descendants' orphans,
// so that killStrays finds them: a process an upgrade started may have
// started others (a wrapper script that does not exec the binary), which
// inherit the listening sockets, and outlive it when it is killed.
func adoptOrphans() error {
	return unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
}

// killStrays kills and reaps the process's children, after an upgrade
// failed: the process starts none but the upgrade's, which has exited or
// been killed by then, so any child left is one it left behind, holding
// the sockets, unserved. It returns once there is none, or after wait.
func killStrays(wait time.Duration) {
	self := os.Getpid()
	deadline := time.Now().Add(wait)
	for {
		pids := children(self)
		if len(pids) == 0 || time.Now().After(deadline) {
			return
		}
		for _, pid := range pids {
			_ = unix.Kill(pid, unix.SIGKILL)
			var ws unix.WaitStatus
			_, _ = unix.Wait4(pid, &ws, unix.WNOHANG, nil)
		}
		// The one killed last needs a moment to die; a child it
		// leaves comes to this process as it does.
		time.Sleep(20 * time.Millisecond)
	}
}

// children returns the PIDs of the processes whose parent is pid.
func children(pid int) []int {
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	var out []int
	for _, path := range stats {
		b, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...; comm may hold spaces and ')'.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := bytes.Fields(b[i+1:])
		if len(f) < 2 {
			continue
		}
		if ppid, _ := strconv.Atoi(string(f[1])); ppid == pid {
			if c, err := strconv.Atoi(filepath.Base(filepath.Dir(path))); err == nil {
				out = append(out, c)
			}
		}
	}
	return out
}
