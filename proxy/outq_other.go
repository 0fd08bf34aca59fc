//go:build !linux

package proxy

import "net"

// socketQueue reports nothing where the socket's queue cannot be read: a
// write is then cut at send_timeout whatever left the socket meanwhile.
func socketQueue(net.Conn) (int64, bool) { return 0, false }
