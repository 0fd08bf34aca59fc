package main

import (
	"errors"
	"syscall"
	"time"

	"unsafe"

	"golang.org/x/sys/unix"
)

// rxStampOn has the kernel stamp each segment a socket receives
// (SO_TIMESTAMPNS).
func rxStampOn(rc syscall.RawConn) error {
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1)
	}); err != nil {
		return err
	}
	return serr
}

// rxStamp waits for a byte on the socket and returns when the kernel
// received it, leaving it there (recvmsg with MSG_PEEK).
func rxStamp(rc syscall.RawConn) (time.Time, error) {
	var (
		buf  [1]byte
		oob  [64]byte
		at   time.Time
		rerr error
	)
	err := rc.Read(func(fd uintptr) bool {
		n, oobn, _, _, err := unix.Recvmsg(int(fd), buf[:], oob[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		if err == unix.EAGAIN {
			return false
		}
		if err == nil && n == 0 {
			err = errors.New("end of stream")
		}
		if err != nil {
			rerr = err
			return true
		}
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			rerr = err
			return true
		}
		for _, m := range msgs {
			if m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SCM_TIMESTAMPNS && len(m.Data) >= 16 {
				ts := *(*unix.Timespec)(unsafe.Pointer(&m.Data[0]))
				at = time.Unix(ts.Unix())
			}
		}
		if at.IsZero() {
			// The kernel turns stamping on with a deferred work item
			// when the first socket asks, and leaves segments before
			// it unstamped: such a request is timed as it is read, not
			// failed, which a run on new connections (keepalive off,
			// a wary host) would otherwise count as proxy errors.
			at = time.Now()
		}
		return true
	})
	if err != nil {
		return time.Time{}, err
	}
	return at, rerr
}
