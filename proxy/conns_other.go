//go:build !unix

package proxy

import "net"

// fileLimit reports no limit where there is no RLIMIT_NOFILE.
func fileLimit() (int64, bool) { return 0, false }

// unlisten does nothing where sockets are not handed to other processes.
func unlisten(net.Listener) {}
