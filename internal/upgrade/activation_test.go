//go:build unix

package upgrade

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestMatches(t *testing.T) {
	tcp := func(ip string, port int) net.Addr { return &net.TCPAddr{IP: net.ParseIP(ip), Port: port} }
	tests := []struct {
		network, addr string
		la            net.Addr
		want          bool
	}{
		{"tcp", "127.0.0.1:8080", tcp("127.0.0.1", 8080), true},
		{"tcp", "127.0.0.1:8080", tcp("127.0.0.1", 8081), false},
		{"tcp", "127.0.0.1:8080", tcp("127.0.0.2", 8080), false},
		{"tcp", "127.0.0.1:8080", tcp("0.0.0.0", 8080), false},
		{"tcp", "127.0.0.1:8080", tcp("::ffff:127.0.0.1", 8080), true},
		{"tcp", "[::1]:8080", tcp("::1", 8080), true},
		{"tcp", "[::1]:8080", tcp("127.0.0.1", 8080), false},
		// An empty host, 0.0.0.0 and :: are all unspecified, as are the
		// addresses systemd binds for ListenStream=8080.
		{"tcp", ":8080", tcp("::", 8080), true},
		{"tcp", ":8080", tcp("0.0.0.0", 8080), true},
		{"tcp", "0.0.0.0:8080", tcp("::", 8080), true},
		{"tcp", "[::]:8080", tcp("0.0.0.0", 8080), true},
		{"tcp", ":8080", &net.TCPAddr{Port: 8080}, true},
		{"tcp", ":8080", tcp("127.0.0.1", 8080), false},
		{"tcp", "0.0.0.0:8080", tcp("127.0.0.1", 8080), false},
		// A name is resolved as net.Listen resolves it, a port name too.
		{"tcp", "localhost:8080", tcp("127.0.0.1", 8080), true},
		{"tcp", "localhost:8080", tcp("0.0.0.0", 8080), false},
		{"tcp", "127.0.0.1:http", tcp("127.0.0.1", 80), true},
		// Port 0 is any port: never one systemd bound.
		{"tcp", "127.0.0.1:0", tcp("127.0.0.1", 0), false},
		{"tcp", "no-such-host.invalid:8080", tcp("0.0.0.0", 8080), false},
		{"tcp", "127.0.0.1", tcp("127.0.0.1", 8080), false},
		{"tcp", "127.0.0.1:nosuchport", tcp("127.0.0.1", 8080), false},
		{"udp", "127.0.0.1:8080", tcp("127.0.0.1", 8080), false},
		{"tcp", "/run/affinity.sock", &net.UnixAddr{Name: "/run/affinity.sock", Net: "unix"}, false},
	}
	for _, tt := range tests {
		if got := matches(tt.network, tt.addr, tt.la); got != tt.want {
			t.Errorf("matches(%q, %q, %v) = %v, want %v", tt.network, tt.addr, tt.la, got, tt.want)
		}
	}
}

// firstFD is where the tests place the descriptors they pass, as systemd
// places them from 3 on: high enough that the test process's own are
// below.
const firstFD = 200

// pass places the descriptors of files at firstFD on, as systemd does
// from 3 on, and closes those that activate left open when the test ends.
func pass(t *testing.T, files ...*os.File) {
	t.Helper()
	for i, f := range files {
		if err := unix.Dup2(int(f.Fd()), firstFD+i); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for i := range files {
			_ = unix.Close(firstFD + i)
		}
	})
}

// fileOf returns a duplicate of c's descriptor, closed when the test ends.
func fileOf(t *testing.T, c interface{ File() (*os.File, error) }) *os.File {
	t.Helper()
	f, err := c.File()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.Close() })
	return f
}

func TestActivate(t *testing.T) {
	pid := os.Getpid()
	self := strconv.Itoa(pid)
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tcp.Close() })
	udp, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = udp.Close() })
	client, err := net.Dial("tcp", tcp.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	unixPath := filepath.Join(t.TempDir(), "sock")
	ul, err := net.Listen("unix", unixPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ul.Close() })
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close(); _ = w.Close() })

	tcpFile := func(t *testing.T) *os.File { return fileOf(t, tcp.(*net.TCPListener)) }
	tests := []struct {
		name  string
		env   listenEnv
		files func(t *testing.T) []*os.File
		err   string   // a part of the error, "" for none
		want  []Socket // Sockets, but for FD, which is firstFD on; nil when not Activated
		other string   // OtherPID
		// ignored: Ignored, the variables there but not for this process
		ignored bool
		taken   []bool // which of the descriptors activate closes
	}{
		{name: "no variables", env: listenEnv{closed: -1}},
		{name: "another process", env: listenEnv{pid: "1", fds: "1", closed: -1},
			files: func(t *testing.T) []*os.File { return []*os.File{tcpFile(t)} }, other: "1", ignored: true, taken: []bool{false}},
		{name: "LISTEN_PID not a number", env: listenEnv{pid: "x", fds: "1", closed: -1},
			files: func(t *testing.T) []*os.File { return []*os.File{tcpFile(t)} }, other: "x", ignored: true, taken: []bool{false}},
		{name: "no LISTEN_PID", env: listenEnv{fds: "1", closed: -1},
			files: func(t *testing.T) []*os.File { return []*os.File{tcpFile(t)} }, ignored: true, taken: []bool{false}},
		{name: "none passed", env: listenEnv{pid: self, fds: "0", closed: -1}, want: []Socket{}},
		{name: "count not a number", env: listenEnv{pid: self, fds: "one", closed: -1}, err: `LISTEN_FDS="one" is not a count`},
		{name: "negative count", env: listenEnv{pid: self, fds: "-1", closed: -1}, err: `LISTEN_FDS="-1" is not a count`},
		{name: "more than passed", env: listenEnv{pid: self, fds: "3", closed: firstFD + 1},
			files: func(t *testing.T) []*os.File { return []*os.File{tcpFile(t)} },
			err:   "LISTEN_FDS=3, but descriptor 201 was not open at start", taken: []bool{false}},
		{name: "not a socket", env: listenEnv{pid: self, fds: "2", names: "web:pipe", closed: -1},
			files: func(t *testing.T) []*os.File { return []*os.File{tcpFile(t), r} },
			err:   "LISTEN_FDS=2, but descriptor 201 (pipe) is not a socket (it is pipe:[", taken: []bool{true, false}},
		{name: "listeners", env: listenEnv{pid: self, fds: "2", names: "web:local", closed: -1},
			files: func(t *testing.T) []*os.File { return []*os.File{tcpFile(t), fileOf(t, ul.(*net.UnixListener))} },
			want:  []Socket{{Name: "web", Addr: tcp.Addr().String()}, {Name: "local", Addr: unixPath}}, taken: []bool{true, true}},
		{name: "skipped", env: listenEnv{pid: self, fds: "3", names: "udp", closed: -1},
			files: func(t *testing.T) []*os.File {
				return []*os.File{fileOf(t, udp.(*net.UDPConn)), fileOf(t, client.(*net.TCPConn)), tcpFile(t)}
			},
			want: []Socket{{Name: "udp", Skipped: "datagram"}, {Skipped: "not listening"}, {Addr: tcp.Addr().String()}}, taken: []bool{true, true, true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var files []*os.File
			if tt.files != nil {
				files = tt.files(t)
			}
			pass(t, files...)
			act, lns, err := activate(tt.env, pid, firstFD)
			t.Cleanup(func() {
				for _, a := range lns {
					_ = a.ln.Close()
				}
			})
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("activate: error %v, want one saying %q", err, tt.err)
				}
			} else if err != nil {
				t.Fatal(err)
			}
			for i, taken := range tt.taken {
				if open := fdOpen(firstFD + i); open == taken {
					t.Errorf("descriptor %d open %v after activate, want %v", firstFD+i, open, !taken)
				}
			}
			if act.OtherPID != tt.other || act.Ignored != tt.ignored {
				t.Errorf("OtherPID %q Ignored %v, want %q %v", act.OtherPID, act.Ignored, tt.other, tt.ignored)
			}
			if tt.err != "" {
				return
			}
			if act.Activated != (tt.want != nil) {
				t.Errorf("Activated %v, want %v", act.Activated, tt.want != nil)
			}
			if len(act.Sockets) != len(tt.want) {
				t.Fatalf("sockets %+v, want %d", act.Sockets, len(tt.want))
			}
			var listening int
			for i, s := range act.Sockets {
				w := tt.want[i]
				if s.FD != firstFD+i || s.Name != w.Name {
					t.Errorf("socket %d: fd %d name %q, want %d %q", i, s.FD, s.Name, firstFD+i, w.Name)
				}
				if (w.Skipped == "") != (s.Skipped == "") || !strings.Contains(s.Skipped, w.Skipped) {
					t.Errorf("socket %d skipped %q, want %q", i, s.Skipped, w.Skipped)
				}
				if s.Skipped != "" {
					continue
				}
				if s.Addr != w.Addr {
					t.Errorf("socket %d address %q, want %q", i, s.Addr, w.Addr)
				}
				if ln := lns[listening].ln; !accepts(t, ln) {
					t.Errorf("socket %d: listener on %v does not accept", i, ln.Addr())
				}
				listening++
			}
			if listening != len(lns) {
				t.Errorf("%d listeners for %d sockets listening", len(lns), listening)
			}
		})
	}
}

// accepts reports whether ln accepts a connection made to its address.
func accepts(t *testing.T, ln net.Listener) bool {
	t.Helper()
	c, err := net.Dial(ln.Addr().Network(), ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	a, err := ln.Accept()
	if err != nil {
		return false
	}
	_ = a.Close()
	return true
}

// readListenEnv finds the first descriptor LISTEN_FDS counts that is not
// open, and looks at none when LISTEN_PID names another process.
func TestReadListenEnv(t *testing.T) {
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tcp.Close() })
	f := fileOf(t, tcp.(*net.TCPListener))
	pass(t, f, f)
	self := strconv.Itoa(os.Getpid())
	tests := []struct {
		pid, fds string
		closed   int
	}{
		{self, "2", -1},
		{self, "0", -1},
		{self, "3", firstFD + 2},
		{self, "1000000", firstFD + 2},
		{self, "9223372036854775807", firstFD + 2},
		{self, "many", -1},
		{"1", "3", -1},
		{"", "", -1},
	}
	for _, tt := range tests {
		t.Setenv("LISTEN_PID", tt.pid)
		t.Setenv("LISTEN_FDS", tt.fds)
		t.Setenv("LISTEN_FDNAMES", "a:b")
		e := readListenEnv(os.Getpid(), firstFD)
		want := listenEnv{pid: tt.pid, fds: tt.fds, names: "a:b", closed: tt.closed}
		if e != want {
			t.Errorf("LISTEN_PID=%s LISTEN_FDS=%s: %+v, want %+v", tt.pid, tt.fds, e, want)
		}
	}
}

// The variables are gone after takeActivation, whoever they were for, and
// a process started by an upgrade takes nothing whatever they say.
func TestTakeActivationUnsets(t *testing.T) {
	for _, hasParent := range []bool{false, true} {
		for _, v := range []string{"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} {
			t.Setenv(v, "1")
		}
		env := listenEnv{pid: "1", fds: "1", names: "1", closed: -1}
		if hasParent {
			// Would fail if taken: LISTEN_FDS is not a count.
			env = listenEnv{pid: strconv.Itoa(os.Getpid()), fds: "x", closed: -1}
		}
		act, lns, err := takeActivation(env, hasParent)
		if err != nil || lns != nil {
			t.Fatalf("hasParent %v: %v %v", hasParent, lns, err)
		}
		if want := map[bool]string{false: "1", true: ""}[hasParent]; act.OtherPID != want || act.Ignored != !hasParent || act.Activated {
			t.Errorf("hasParent %v: %+v, want OtherPID %q", hasParent, act, want)
		}
		for _, v := range []string{"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} {
			if val, ok := os.LookupEnv(v); ok {
				t.Errorf("hasParent %v: %s=%q still set", hasParent, v, val)
			}
		}
	}
}

// Listen takes the activated listener of its address, once; those not
// taken are closed at Ready and reported.
func TestActivationsTake(t *testing.T) {
	var a activations
	var addrs []string
	for range 3 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = ln.Close() })
		addrs = append(addrs, ln.Addr().String())
		a.pending = append(a.pending, &activated{sock: Socket{FD: 3 + len(addrs) - 1, Addr: ln.Addr().String()}, ln: ln})
	}
	if ln := a.take("tcp", addrs[1]); ln == nil || ln.Addr().String() != addrs[1] {
		t.Fatalf("take(%s) = %v", addrs[1], ln)
	}
	if ln := a.take("tcp", addrs[1]); ln != nil {
		t.Errorf("taken twice: %v", ln.Addr())
	}
	if ln := a.take("tcp", "127.0.0.1:1"); ln != nil {
		t.Errorf("take of another port: %v", ln.Addr())
	}
	a.closeUnclaimed()
	if len(a.unclaimed) != 2 || a.unclaimed[0].Addr != addrs[0] || a.unclaimed[1].Addr != addrs[2] {
		t.Errorf("unclaimed %+v, want %s and %s", a.unclaimed, addrs[0], addrs[2])
	}
	for _, addr := range []string{addrs[0], addrs[2]} {
		if c, err := net.Dial("tcp", addr); err == nil {
			_ = c.Close()
			t.Errorf("%s still listening after closeUnclaimed", addr)
		}
	}
	if ln := a.take("tcp", addrs[0]); ln != nil {
		t.Errorf("take after closeUnclaimed: %v", ln.Addr())
	}
}
