// Package loopback finds addresses on 127.0.0.1 for processes that a test
// harness starts, kills and starts again on the same address.
package loopback

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
)

// The ports handed out lie below Linux's default ephemeral range
// (32768-60999). A port taken from that range with a listen on :0 is free
// again once its process is killed, and the kernel may then hand it to any
// outgoing connection on the machine, such as the proxy's own dial to the
// dead backend, which connects to itself. Below the range, only a process
// that asks for the port by number gets it.
const (
	lowPort  = 20000
	highPort = 32000
	tries    = 200
)

// ErrNoPort is returned when no free port was found.
var ErrNoPort = errors.New("no free loopback port")

// FreeAddrs returns n distinct 127.0.0.1 addresses whose ports were free a
// moment ago. They are held open until the last is found, so none repeats.
func FreeAddrs(n int) ([]string, error) {
	addrs := make([]string, 0, n)
	lns := make([]net.Listener, 0, n)
	defer func() {
		for _, ln := range lns {
			_ = ln.Close()
		}
	}()
	for range n {
		ln, err := listenLow()
		if err != nil {
			return nil, err
		}
		lns = append(lns, ln)
		addrs = append(addrs, ln.Addr().String())
	}
	return addrs, nil
}

// listenLow listens on a random free port between lowPort and highPort.
func listenLow() (net.Listener, error) {
	var last error
	for range tries {
		port := lowPort + rand.IntN(highPort-lowPort)
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			return ln, nil
		}
		last = err
	}
	return nil, fmt.Errorf("%w in %d-%d after %d tries: %w", ErrNoPort, lowPort, highPort, tries, last)
}
