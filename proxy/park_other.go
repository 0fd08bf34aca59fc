//go:build !linux

package proxy

import "time"

// Idle connections park on Linux only (park_linux.go), where epoll can
// watch a socket without a goroutine.
type parker struct{ after, idle time.Duration }

func (*parker) park(*boundConn) bool { return false }

func (*parker) parked() int { return 0 }

func (s *Server) parkIdle(*binding) (stop func()) { return func() {} }
