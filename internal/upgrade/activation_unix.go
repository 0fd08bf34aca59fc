//go:build unix

package upgrade

import (
	"fmt"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// fdOpen reports whether fd is an open descriptor.
func fdOpen(fd int) bool {
	_, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	return err == nil
}

// listenerAt makes a listener of fd, a descriptor systemd passed, and
// closes fd. A socket that is not a listening stream one is closed too,
// and why it is skipped returned instead; a descriptor that is not a
// socket is an error, and left alone.
func listenerAt(fd int, name string) (ln net.Listener, skipped string, err error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, "", fmt.Errorf("cannot be read: %w", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		// What it is, where the system says (Linux).
		if what, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd)); err == nil {
			return nil, "", fmt.Errorf("%w (it is %s)", errNotSocket, what)
		}
		return nil, "", errNotSocket
	}
	typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return nil, "", fmt.Errorf("is a socket of unknown type: %w", err)
	}
	switch typ {
	case unix.SOCK_STREAM:
		if acc, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err == nil && acc == 0 {
			// Accept=yes passes one accepted connection per process.
			// Or one a reload of an earlier process shut
			// (moving listen away makes it stop listening).
			skipped = "a stream socket that is not listening (a connection of Accept=yes, or a socket a reload that moved listen away shut)"
		}
	case unix.SOCK_DGRAM:
		skipped = "a datagram socket (ListenDatagram=): the proxy serves TCP"
	default:
		skipped = fmt.Sprintf("a socket of type %d, not a listening stream socket", typ)
	}
	f := os.NewFile(uintptr(fd), name)
	defer func() { _ = f.Close() }()
	if skipped != "" {
		return nil, skipped, nil
	}
	// A duplicate, closed on exec: f, which is not, is closed.
	ln, err = net.FileListener(f)
	if err != nil {
		return nil, err.Error(), nil
	}
	return ln, "", nil
}
