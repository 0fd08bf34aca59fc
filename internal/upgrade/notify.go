package upgrade

import (
	"fmt"
	"net"
	"os"
)

// Notify sends state to the service manager, as sd_notify(3) does: one
// datagram to the unix socket named by NOTIFY_SOCKET (a name starting
// with @ is in the abstract namespace). Without NOTIFY_SOCKET (not run by
// systemd, or not as Type=notify) it does nothing. The variable is left
// set: a successor started by an upgrade notifies too, as the service's new
// main process (MAINPID=, which the unit must allow with NotifyAccess=all).
func Notify(state string) error {
	name := os.Getenv("NOTIFY_SOCKET")
	if name == "" {
		return nil
	}
	if name[0] == '@' {
		name = "\x00" + name[1:]
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("upgrade: notify systemd: %w", err)
	}
	defer func() { _ = conn.Close() }()
	if _, err := conn.Write([]byte(state)); err != nil {
		return fmt.Errorf("upgrade: notify systemd: %w", err)
	}
	return nil
}
