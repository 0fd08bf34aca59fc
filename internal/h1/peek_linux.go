package h1

import (
	"net"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// canPeek is set where idlePeek can ask a socket; elsewhere Client
// sends nothing and http.Transport sends every request.
const canPeek = true

// idlePeek asks a connection's socket, without blocking and without taking
// anything from it, whether a byte or the end of the stream is waiting: one
// recv with MSG_PEEK|MSG_DONTWAIT.
type idlePeek struct {
	rc   syscall.RawConn  // nil when the connection has no socket to ask
	ask  func(fd uintptr) // peekFD, bound once so that asking allocates nothing
	none bool             // what peekFD found: nothing waiting
	data bool             // what peekFD found: a byte waiting (not the end of the stream)
	buf  [1]byte
}

// init prepares p to ask nc's socket.
func (p *idlePeek) init(nc net.Conn) {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return
	}
	p.rc, p.ask = rc, p.peekFD
}

// quiet reports whether nothing arrived on the connection: no byte, no end
// of stream, no error. A connection it cannot ask is never quiet.
func (p *idlePeek) quiet() bool {
	if p.rc == nil {
		return false
	}
	p.none, p.data = false, false
	if err := p.rc.Control(p.ask); err != nil {
		return false
	}
	return p.none
}

// peekFD asks with recvfrom and no address to fill in: unix.Recvfrom
// allocates one per call.
func (p *idlePeek) peekFD(fd uintptr) {
	n, _, errno := unix.Syscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&p.buf[0])), 1,
		unix.MSG_PEEK|unix.MSG_DONTWAIT, 0, 0)
	p.none = errno == unix.EAGAIN
	p.data = errno == 0 && n > 0
}
