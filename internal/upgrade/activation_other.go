//go:build !unix

package upgrade

import (
	"errors"
	"net"
)

// fdOpen reports no descriptor open: socket activation is systemd's.
func fdOpen(int) bool { return false }

// listenerAt fails: socket activation is systemd's.
func listenerAt(int, string) (net.Listener, string, error) {
	return nil, "", errors.New("socket activation is supported on Unix only")
}
