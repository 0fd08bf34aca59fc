package park

import (
	"net"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Parker holds the parked connections of one listener in an epoll set of
// its own, one goroutine for all of them. It is also the listener of a
// second http.Server.Serve, whose Accept returns the parked connections
// that have a request waiting.
type Parker struct {
	addr        net.Addr
	after, idle time.Duration // the parking delay; http.Server's idle timeout

	epfd   int // the epoll set of the parked sockets and of wake
	wake   int // an eventfd: written by Close to end the loop
	woken  chan *Conn
	done   chan struct{} // closed by Close
	looped chan struct{} // closed when the loop has returned

	mu     sync.Mutex // guards conns and closed; the loop takes it once per wake-up
	conns  map[int]*Conn
	closed bool
}

// New returns the Parker of the listener at addr, with its loop running
// until Close. Its connections park once idle for after, and close once
// idle for idle, the server's IdleTimeout; they park only if after is the
// shorter.
func New(addr net.Addr, after, idle time.Duration) (*Parker, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		_ = unix.Close(epfd)
		return nil, err
	}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wake, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wake)}); err != nil {
		_ = unix.Close(wake)
		_ = unix.Close(epfd)
		return nil, err
	}
	p := &Parker{
		addr: addr, after: after, idle: idle,
		epfd: epfd, wake: wake,
		woken:  make(chan *Conn, 64),
		done:   make(chan struct{}),
		looped: make(chan struct{}),
		conns:  make(map[int]*Conn),
	}
	go p.loop()
	return p, nil
}

// Park adds c to the epoll set, until its client sends again and Accept
// returns served, the connection as http.Server served it (c, or the type
// that embeds it). It reports false, leaving c to be closed, once the
// Parker is closed or when the socket cannot be watched.
func (p *Parker) Park(c *Conn, served net.Conn) bool {
	sc, ok := c.Conn.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	c.served = served
	added := false
	// The entry is in conns before the socket is in the set, so that the
	// loop, which takes mu, finds it however soon the client writes.
	// One-shot: a socket wakes the loop once, then waits in no set until
	// it is parked again.
	err = rc.Control(func(fd uintptr) {
		c.fd = int(fd)
		p.conns[c.fd] = c
		ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT, Fd: int32(fd)}
		if unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, c.fd, &ev) == nil {
			added = true
		} else {
			delete(p.conns, c.fd)
		}
	})
	return err == nil && added
}

// loop waits for parked sockets to become readable (a request, or the
// client closing) and hands those over; once a second it closes the ones
// whose idle timeout has passed.
func (p *Parker) loop() {
	defer close(p.looped)
	events := make([]unix.EpollEvent, 64)
	swept := time.Now()
	for {
		n, err := unix.EpollWait(p.epfd, events, 1000)
		if err != nil && err != unix.EINTR {
			// Not expected of a valid epoll set; the parked connections
			// are closed by Close.
			return
		}
		for _, ev := range events[:max(n, 0)] {
			fd := int(ev.Fd)
			if fd == p.wake {
				return
			}
			p.mu.Lock()
			c := p.conns[fd]
			if c != nil {
				delete(p.conns, fd)
				_ = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, fd, nil)
			}
			p.mu.Unlock()
			if c == nil {
				continue
			}
			select {
			case p.woken <- c:
			case <-p.done:
				_ = c.Conn.Close()
			}
		}
		if now := time.Now(); now.Sub(swept) >= time.Second {
			p.sweep(now)
			swept = now
		}
	}
}

// sweep closes the parked connections whose idle timeout has passed.
func (p *Parker) sweep(now time.Time) {
	var expired []*Conn
	p.mu.Lock()
	for fd, c := range p.conns {
		if !now.Before(c.idleUntil) {
			_ = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, fd, nil)
			delete(p.conns, fd)
			expired = append(expired, c)
		}
	}
	p.mu.Unlock()
	for _, c := range expired {
		_ = c.Conn.Close()
	}
}

// Parked returns how many connections are parked.
func (p *Parker) Parked() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// Accept returns the next parked connection with a request waiting.
func (p *Parker) Accept() (net.Conn, error) {
	select {
	case c := <-p.woken:
		return c.served, nil
	case <-p.done:
		return nil, net.ErrClosed
	}
}

// Close closes the parked connections (they are idle: nothing is lost) and
// stops the loop. The listener's Serve calls it when the listener closes.
func (p *Parker) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	conns := p.conns
	p.conns = nil
	p.mu.Unlock()
	close(p.done)
	for _, c := range conns {
		_ = c.Conn.Close()
	}
	var one [8]byte
	one[0] = 1 // the eventfd counter is a host-order uint64; any non-zero value wakes
	_, _ = unix.Write(p.wake, one[:])
	<-p.looped
	_ = unix.Close(p.wake)
	_ = unix.Close(p.epfd)
	for {
		select {
		case c := <-p.woken:
			_ = c.Conn.Close()
		default:
			return nil
		}
	}
}

// Addr is the address of the listener whose connections p parks.
func (p *Parker) Addr() net.Addr { return p.addr }
