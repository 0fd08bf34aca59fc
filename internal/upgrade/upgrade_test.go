package upgrade

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// Ready tells systemd nothing when the PID file cannot be written, and
// puts the PID file back when systemd cannot be told: a process whose
// Ready fails exits, and must leave no trace of having served.
func TestReadyTellsNothingOnFailure(t *testing.T) {
	u, err := New("", time.Minute)
	if err != nil {
		t.Skipf("no upgrader in this process: %v", err)
	}
	t.Cleanup(func() { u.flip.Stop() })
	dir := t.TempDir()
	sock := filepath.Join(dir, "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	self := strconv.Itoa(os.Getpid()) + "\n"
	tests := []struct {
		name    string
		setup   func(pidFile string) // makes the failure
		notify  string               // NOTIFY_SOCKET
		wantErr bool
		pid     string // what the PID file then holds
		told    string // what systemd was told, "" for nothing
	}{
		{"PID file is a directory", func(p string) {
			if err := os.Mkdir(p, 0o755); err != nil {
				t.Fatal(err)
			}
		}, sock, true, "", ""},
		{"systemd unreachable", func(p string) {
			if err := os.WriteFile(p, []byte("123\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}, filepath.Join(dir, "none"), true, "123\n", ""},
		{"systemd unreachable, no PID file before", func(string) {}, filepath.Join(dir, "none"), true, "", ""},
		{"ready", func(p string) {
			if err := os.WriteFile(p, []byte("123\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}, sock, false, self, "READY=1\nMAINPID=" + strconv.Itoa(os.Getpid())},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u.pidFile = filepath.Join(t.TempDir(), "affinity.pid")
			tt.setup(u.pidFile)
			t.Setenv("NOTIFY_SOCKET", tt.notify)
			if err := u.Ready(); (err != nil) != tt.wantErr {
				t.Fatalf("Ready() = %v, want error %v", err, tt.wantErr)
			}
			if fi, err := os.Stat(u.pidFile); err != nil || !fi.IsDir() {
				b, _ := os.ReadFile(u.pidFile)
				if string(b) != tt.pid {
					t.Errorf("PID file holds %q, want %q", b, tt.pid)
				}
			}
			// Anything sent came before Ready returned.
			_ = conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
			buf := make([]byte, 256)
			n, _ := conn.Read(buf)
			if got := string(buf[:n]); got != tt.told {
				t.Errorf("systemd was told %q, want %q", got, tt.told)
			}
			entries, _ := os.ReadDir(filepath.Dir(u.pidFile))
			for _, e := range entries {
				if e.Name() != filepath.Base(u.pidFile) {
					t.Errorf("left behind: %s", e.Name())
				}
			}
		})
	}
}
