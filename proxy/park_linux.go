package proxy

import (
	"net"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// parker holds the parked connections of one listener (park.go) in an
// epoll set of its own, one goroutine for all of them. It is also the
// listener of a second http.Server.Serve, whose Accept returns the parked
// connections that have a request waiting.
type parker struct {
	addr        net.Addr
	after, idle time.Duration // Server.parkAfter; http.Server's idle timeout

	epfd   int // the epoll set of the parked sockets and of wake
	wake   int // an eventfd: written by Close to end the loop
	woken  chan *boundConn
	done   chan struct{} // closed by Close
	looped chan struct{} // closed when the loop has returned

	mu     sync.Mutex // guards conns and closed; the loop takes it once per wake-up
	conns  map[int]*boundConn
	closed bool
}

// parkIdle starts parking b's idle connections: b's parker and the Serve
// that takes them back. The returned stop closes the parked connections and
// waits for that Serve to return.
func (s *Server) parkIdle(b *binding) (stop func()) {
	p, err := newParker(b.ln.Addr(), s.parkAfter, s.http.IdleTimeout)
	if err != nil {
		s.log.Warn("idle connections will not park", zap.Error(err))
		return func() {}
	}
	// Under lnMu for the tests' sake; connections read it unlocked, as
	// they are accepted after this.
	s.lnMu.Lock()
	b.park = p
	s.lnMu.Unlock()
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = s.http.Serve(p)
	}()
	return func() {
		_ = p.Close()
		<-served
	}
}

// newParker returns the parker of the listener at addr, with its loop
// running until Close.
func newParker(addr net.Addr, after, idle time.Duration) (*parker, error) {
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
	p := &parker{
		addr: addr, after: after, idle: idle,
		epfd: epfd, wake: wake,
		woken:  make(chan *boundConn, 64),
		done:   make(chan struct{}),
		looped: make(chan struct{}),
		conns:  make(map[int]*boundConn),
	}
	go p.loop()
	return p, nil
}

// park adds c to the epoll set; it reports false, leaving c to be closed,
// once the parker is closed or when the socket cannot be watched.
func (p *parker) park(c *boundConn) bool {
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
func (p *parker) loop() {
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
			// Its request is there: a retiring listener must let it be
			// served, as it does a new connection's first.
			c.idle.Store(false)
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
func (p *parker) sweep(now time.Time) {
	var expired []*boundConn
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

// parked returns how many connections are parked.
func (p *parker) parked() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// Accept returns the next parked connection with a request waiting.
func (p *parker) Accept() (net.Conn, error) {
	select {
	case c := <-p.woken:
		return c, nil
	case <-p.done:
		return nil, net.ErrClosed
	}
}

// Close closes the parked connections (they are idle: nothing is lost) and
// stops the loop. The listener's Serve calls it when the listener closes.
func (p *parker) Close() error {
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
func (p *parker) Addr() net.Addr { return p.addr }
