//go:build !linux

package park

import (
	"errors"
	"net"
	"time"
)

// Parker is not available: connections park on Linux only
// (parker_linux.go), where epoll can watch a socket without a goroutine.
type Parker struct{ after, idle time.Duration }

// New returns errors.ErrUnsupported.
func New(net.Addr, time.Duration, time.Duration) (*Parker, error) { return nil, errors.ErrUnsupported }

// Park reports false: nothing parks.
func (*Parker) Park(*Conn, net.Conn) bool { return false }

// Parked returns 0.
func (*Parker) Parked() int { return 0 }

// Accept returns net.ErrClosed.
func (*Parker) Accept() (net.Conn, error) { return nil, net.ErrClosed }

// Close does nothing.
func (*Parker) Close() error { return nil }

// Addr returns nil.
func (*Parker) Addr() net.Addr { return nil }
