package upgrade

import (
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestNotify(t *testing.T) {
	tests := []struct {
		name     string
		socket   func(t *testing.T) string // the name NOTIFY_SOCKET gives
		listenAt func(name string) string  // the address to listen at
	}{
		{"path", func(t *testing.T) string { return filepath.Join(t.TempDir(), "notify") },
			func(name string) string { return name }},
		{"abstract", func(t *testing.T) string { return "@affinity-notify-test-" + filepath.Base(t.TempDir()) },
			func(name string) string { return "\x00" + name[1:] }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			name := tt.socket(t)
			conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: tt.listenAt(name), Net: "unixgram"})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = conn.Close() })
			t.Setenv("NOTIFY_SOCKET", name)
			if err := Notify("READY=1\nMAINPID=42"); err != nil {
				t.Fatal(err)
			}
			_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			buf := make([]byte, 256)
			n, err := conn.Read(buf)
			if err != nil {
				t.Fatal(err)
			}
			if got := string(buf[:n]); got != "READY=1\nMAINPID=42" {
				t.Errorf("datagram %q, want READY=1 and MAINPID=42", got)
			}
		})
	}
}

func TestNotifyWithoutSocket(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	if err := Notify("READY=1"); err != nil {
		t.Errorf("Notify without NOTIFY_SOCKET = %v, want nil", err)
	}
	t.Setenv("NOTIFY_SOCKET", filepath.Join(t.TempDir(), "none"))
	if err := Notify("READY=1"); err == nil || !strings.Contains(err.Error(), "notify systemd") {
		t.Errorf("Notify to a missing socket = %v, want an error", err)
	}
}
