package testutil

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// dnsmasq is Debian's small DNS server, which the discovery tests ask.
const dnsmasq = "dnsmasq"

// DNS is a dnsmasq serving a hosts file and SRV records on a loopback
// port, that a test rewrites as it goes.
type DNS struct {
	// Addr is the ip:port it answers on, over UDP and TCP.
	Addr string

	t     testing.TB
	path  string
	hosts string // the hosts file it serves

	mu   sync.Mutex
	srv  []string // --srv-host values
	proc *exec.Cmd
	done chan struct{}
	out  *LockedBuffer
}

// StartDNS starts dnsmasq on a free loopback port, answering for the
// names of hosts (lines of a hosts file: "127.0.0.2 app.test") and the
// SRV records of srv (dnsmasq's --srv-host values:
// "_http._tcp.app.test,b1.test,8080,0,10"), and nothing else: no upstream,
// no /etc/hosts. t's Cleanup stops it. Without dnsmasq on PATH it skips
// the test, unless the environment has CI=true, where .ci/run installs it.
func StartDNS(t testing.TB, hosts []string, srv []string) *DNS {
	t.Helper()
	path, err := exec.LookPath(dnsmasq)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true and %s is not installed: %v", dnsmasq, err)
		} else {
			t.Skipf("%s is not installed (apt-get install dnsmasq); this test asks a real DNS server", dnsmasq)
		}
		return nil
	}
	// dnsmasq drops to the user nobody before it reads the hosts file, so
	// that file lies in a directory anyone may enter, which t.TempDir's
	// parent is not.
	dir, err := os.MkdirTemp("", "affinity-dns-")
	if err == nil {
		err = os.Chmod(dir, 0o755)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	d := &DNS{t: t, path: path, hosts: filepath.Join(dir, "hosts"), srv: srv}
	d.writeHosts(hosts)
	t.Cleanup(d.Stop)
	// A port found free can be taken before dnsmasq binds it.
	for attempt := 1; ; attempt++ {
		d.Addr = FreeAddr(t)
		err := d.start()
		if err == nil {
			return d
		}
		if attempt == 3 {
			t.Fatalf("start %s: %v", dnsmasq, err)
			return nil
		}
	}
}

// SetHosts replaces the hosts file and has dnsmasq read it again
// (SIGHUP), waiting until it answers from the new one.
func (d *DNS) SetHosts(hosts []string) {
	d.t.Helper()
	d.writeHosts(hosts)
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.proc == nil {
		return
	}
	// It logs each reading of the file; wait for the new one.
	want := strings.Count(d.out.String(), "read "+d.hosts) + 1
	if err := d.proc.Process.Signal(syscall.SIGHUP); err != nil {
		d.t.Fatalf("signal %s: %v", dnsmasq, err)
	}
	if !poll(5*time.Second, func() bool { return strings.Count(d.out.String(), "read "+d.hosts) >= want }) {
		d.t.Fatalf("%s did not read %s again; its log:\n%s", dnsmasq, d.hosts, d.out)
	}
}

// SetSRV replaces the SRV records. dnsmasq reads them from its command
// line only, so it is restarted on the same port: meanwhile it answers
// nothing.
func (d *DNS) SetSRV(srv []string) {
	d.t.Helper()
	d.Stop()
	d.mu.Lock()
	d.srv = srv
	d.mu.Unlock()
	d.Start()
}

// Stop kills dnsmasq and waits for it to exit; a stopped server does
// nothing.
func (d *DNS) Stop() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.proc != nil {
		_ = d.proc.Process.Kill()
		<-d.done
		d.proc = nil
	}
}

// Start starts dnsmasq again on the same Addr, and waits until it answers.
func (d *DNS) Start() {
	d.t.Helper()
	if err := d.start(); err != nil {
		d.t.Fatalf("restart %s on %s: %v", dnsmasq, d.Addr, err)
	}
}

func (d *DNS) writeHosts(hosts []string) {
	d.t.Helper()
	if err := os.WriteFile(d.hosts, []byte(strings.Join(hosts, "\n")+"\n"), 0o644); err != nil {
		d.t.Fatal(err)
	}
}

func (d *DNS) start() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.proc != nil {
		return errors.New("already running")
	}
	host, port, err := net.SplitHostPort(d.Addr)
	if err != nil {
		return err
	}
	args := []string{"--keep-in-foreground", "--port=" + port, "--listen-address=" + host, "--bind-interfaces",
		"--no-resolv", "--no-hosts", "--addn-hosts=" + d.hosts, "--pid-file=", "--log-facility=-",
		// Every answer fresh: a test that changes a record sees it at once.
		"--cache-size=0", "--local-ttl=0", "--local=/test/"}
	for _, s := range d.srv {
		args = append(args, "--srv-host="+s)
	}
	cmd := exec.Command(d.path, args...)
	out := new(LockedBuffer)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("run %s: %w", d.path, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	if err := waitDNS(d.Addr, done); err != nil {
		_ = cmd.Process.Kill()
		<-done
		return fmt.Errorf("%w; its log:\n%s", err, out)
	}
	d.proc, d.done, d.out = cmd, done, out
	return nil
}

// waitDNS asks addr until it answers, the process exits (done is closed)
// or five seconds pass.
func waitDNS(addr string, done <-chan struct{}) error {
	q := new(dns.Msg)
	q.SetQuestion("ready.invalid.", dns.TypeA)
	c := &dns.Client{Timeout: 200 * time.Millisecond}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-done:
			return errors.New("exited")
		default:
		}
		if _, _, err := c.Exchange(q, addr); err == nil {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("no answer on %s", addr)
}
