package proxy

import (
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// socketQueue returns how many bytes c's socket holds that its peer has not
// acknowledged (SIOCOUTQ), false when c is no socket.
func socketQueue(c net.Conn) (int64, bool) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return 0, false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return 0, false
	}
	var n int
	if rc.Control(func(fd uintptr) { n, err = unix.IoctlGetInt(int(fd), unix.SIOCOUTQ) }) != nil || err != nil {
		return 0, false
	}
	return int64(n), true
}
