package upgrade

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
)

// Socket activation (sd_listen_fds(3)): systemd binds the sockets of a
// .socket unit itself, keeps them, and starts the service with a copy of
// each as descriptors 3, 4…, saying so in LISTEN_PID (the process they are
// for), LISTEN_FDS (how many) and LISTEN_FDNAMES (their names, separated
// by colons). A connection that comes while no process accepts waits in
// the socket's backlog instead of being refused: a restart refuses none.
//
// The protocol is these few variables, read here rather than through
// go-systemd's activation package, which would add a dependency for them.

// listenFDsStart is the first descriptor systemd passes
// (SD_LISTEN_FDS_START).
const listenFDsStart = 3

// listenEnv is the socket-activation environment as the process found it
// at start.
type listenEnv struct {
	pid, fds, names string
	// closed is the first of the descriptors LISTEN_FDS counts that was
	// not open at start, -1 when all were (or the variables are not for
	// this process).
	closed int
}

// atStart is read as the package is initialised, before the process opens
// most descriptors of its own: a LISTEN_FDS larger than what was passed
// would otherwise count those (the runtime's poller, a log file, a
// connection), which are not systemd's to take or close. The runtime opens
// a few before (the cgroup files it reads GOMAXPROCS from): those are not
// sockets, which activate refuses without closing.
var atStart = readListenEnv(os.Getpid(), listenFDsStart)

// readListenEnv reads the variables and, when they are for pid, which of
// the descriptors from first on that they count are open.
func readListenEnv(pid, first int) listenEnv {
	e := listenEnv{pid: os.Getenv("LISTEN_PID"), fds: os.Getenv("LISTEN_FDS"), names: os.Getenv("LISTEN_FDNAMES"), closed: -1}
	if p, err := strconv.Atoi(e.pid); err != nil || p != pid {
		return e
	}
	n, err := strconv.Atoi(e.fds)
	if err != nil {
		return e
	}
	// The first one closed ends the scan: a huge count costs no more
	// than the descriptors open.
	for fd := first; fd-first < n; fd++ {
		if !fdOpen(fd) {
			e.closed = fd
			break
		}
	}
	return e
}

// unsetListenEnv removes the variables, whoever they were for, as
// sd_listen_fds does when asked to: a process an upgrade starts gets the
// sockets from tableflip, and must not take its own descriptors for
// systemd's.
func unsetListenEnv() {
	for _, v := range []string{"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} {
		_ = os.Unsetenv(v)
	}
}

// Socket is a descriptor systemd passed.
type Socket struct {
	FD int
	// Name is its name in LISTEN_FDNAMES (the socket unit's
	// FileDescriptorName=, its unit's name by default), "" without one.
	Name string
	// Addr is the address it listens on; "" for one skipped.
	Addr string
	// Skipped says why the process does not use it (not a listening
	// stream socket); "" for a listener.
	Skipped string
}

// Activation is what socket activation gave the process.
type Activation struct {
	// Activated is set when LISTEN_PID named this process: Sockets are
	// the LISTEN_FDS descriptors systemd passed, in order.
	Activated bool
	Sockets   []Socket
	// Ignored is set when the variables are there but LISTEN_PID, which
	// OtherPID is, does not name this process (a wrapper that did not
	// exec it, say).
	Ignored  bool
	OtherPID string
}

// activated is a listener systemd passed that no Listen has taken yet.
type activated struct {
	sock Socket
	ln   net.Listener
}

// activate turns the descriptors env counts, from first on, into
// listeners, closing the original descriptors (the listeners hold
// duplicates that are not inherited by children). A descriptor that is a
// socket but not a listening stream one is closed and reported as
// skipped. A count that is not one, a descriptor that was not open, or one
// that is not a socket, is an error: the environment does not say what
// the process was given, and it must not guess (nor close what is not
// systemd's).
func activate(env listenEnv, pid, first int) (Activation, []*activated, error) {
	var act Activation
	if env.pid == "" && env.fds == "" {
		return act, nil, nil
	}
	if p, err := strconv.Atoi(env.pid); err != nil || p != pid {
		act.Ignored, act.OtherPID = true, env.pid
		return act, nil, nil
	}
	act.Activated = true
	n, err := strconv.Atoi(env.fds)
	if err != nil || n < 0 {
		return act, nil, fmt.Errorf("socket activation: LISTEN_FDS=%q is not a count of descriptors", env.fds)
	}
	if env.closed >= 0 {
		return act, nil, fmt.Errorf("socket activation: LISTEN_FDS=%d, but descriptor %d was not open at start", n, env.closed)
	}
	var names []string
	if env.names != "" {
		names = strings.Split(env.names, ":")
	}
	var lns []*activated
	for i := range n {
		s := Socket{FD: first + i}
		if i < len(names) {
			s.Name = names[i]
		}
		ln, skipped, err := listenerAt(s.FD, s.Name)
		if err != nil {
			for _, a := range lns {
				_ = a.ln.Close()
			}
			return act, nil, fmt.Errorf("socket activation: LISTEN_FDS=%d, but descriptor %d%s %w", n, s.FD, named(s.Name), err)
		}
		if ln != nil {
			s.Addr = ln.Addr().String()
			lns = append(lns, &activated{sock: s, ln: ln})
		} else {
			s.Skipped = skipped
		}
		act.Sockets = append(act.Sockets, s)
	}
	return act, lns, nil
}

// takeActivation takes the sockets env says systemd passed, unless the
// process was started by an upgrade (hasParent): its descriptors are then
// tableflip's, whatever the environment says. It removes the variables
// either way.
func takeActivation(env listenEnv, hasParent bool) (Activation, []*activated, error) {
	unsetListenEnv()
	if hasParent {
		return Activation{}, nil, nil
	}
	return activate(env, os.Getpid(), listenFDsStart)
}

// named is " (name)" for a name, "" for none.
func named(name string) string {
	if name == "" {
		return ""
	}
	return " (" + name + ")"
}

// errNotSocket is listenerAt's error for a descriptor that is not a socket.
var errNotSocket = errors.New("is not a socket")

// activations holds the listeners systemd passed until Listen takes them,
// or Ready closes them.
type activations struct {
	mu        sync.Mutex
	pending   []*activated
	unclaimed []Socket
}

// take returns the pending listener that Listen(network, addr) would
// bind, and removes it from those pending; nil when there is none.
func (a *activations) take(network, addr string) net.Listener {
	a.mu.Lock()
	defer a.mu.Unlock()
	for i, p := range a.pending {
		if matches(network, addr, p.ln.Addr()) {
			a.pending = append(a.pending[:i], a.pending[i+1:]...)
			return p.ln
		}
	}
	return nil
}

// closeUnclaimed closes the listeners no Listen took: nothing would
// accept on them, and connections would wait there unanswered.
func (a *activations) closeUnclaimed() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, p := range a.pending {
		_ = p.ln.Close()
		a.unclaimed = append(a.unclaimed, p.sock)
	}
	a.pending = nil
}

// matches reports whether a listener on la is the one Listen(network,
// addr) would bind: a TCP one on the same port, and the same IP, or both
// unspecified (an empty host, 0.0.0.0 and :: are all of them); a host
// name is resolved as net.Listen would.
func matches(network, addr string, la net.Addr) bool {
	have, ok := la.(*net.TCPAddr)
	if !ok || !strings.HasPrefix(network, "tcp") {
		return false
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	p, err := net.LookupPort(network, port)
	if err != nil || p == 0 || p != have.Port {
		return false
	}
	var ip net.IP
	if host != "" {
		if ip = net.ParseIP(host); ip == nil {
			ta, err := net.ResolveTCPAddr(network, addr)
			if err != nil {
				return false
			}
			ip = ta.IP
		}
	}
	if ip == nil || ip.IsUnspecified() {
		return have.IP == nil || have.IP.IsUnspecified()
	}
	return ip.Equal(have.IP)
}
