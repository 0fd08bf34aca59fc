package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

type idleOptions struct {
	conns     int
	settle    time.Duration
	hold      time.Duration // how long to keep the connections after reporting, for inspection
	parkAfter time.Duration // the proxy's server.park_after; 0 leaves its default
	release   time.Duration // how long the runtime is given to return freed memory to the system
}

// dialers is how many connections are opened at a time.
const dialers = 64

// idleConns opens o.conns keep-alive connections to the proxy, sends one
// request on each, holds them idle and reports the proxy's resident
// memory before, after, and once the runtime has collected what the
// parked connections let go of.
func idleConns(ctx context.Context, bin string, o idleOptions, out io.Writer) error {
	if o.conns < 1 {
		return errors.New("idle-conns: want -conns of at least 1")
	}
	// Both ends of every connection are in this process or the proxy,
	// which inherits the limit.
	if err := raiseFileLimit(uint64(o.conns) + 1024); err != nil {
		return err
	}
	p, stop, err := start(ctx, bin, proxyOptions{parkAfter: o.parkAfter})
	if err != nil {
		return err
	}
	defer stop()
	tr := &http.Transport{Proxy: nil, MaxIdleConnsPerHost: dialers, DisableCompression: true}
	defer tr.CloseIdleConnections()
	if _, err := load(ctx, tr, p.addr, 6, time.Second); err != nil {
		return err
	}
	tr.CloseIdleConnections()
	time.Sleep(o.settle)
	before, err := rss(p.cmd.Process.Pid)
	if err != nil {
		return err
	}

	conns := make([]net.Conn, o.conns)
	defer func() {
		for _, c := range conns {
			if c != nil {
				_ = c.Close()
			}
		}
	}()
	start := time.Now()
	if err := openIdle(ctx, p.addr, conns); err != nil {
		return err
	}
	opened := time.Since(start)
	time.Sleep(o.settle)
	after, err := rss(p.cmd.Process.Pid)
	if err != nil {
		return err
	}
	// The proxy must still be serving with them held.
	if _, err := load(ctx, tr, p.addr, 3, 200*time.Millisecond); err != nil {
		return fmt.Errorf("with %d idle connections: %w", o.conns, err)
	}
	fmt.Fprintf(out, "idle keep-alive connections: %d (opened in %v)\n", o.conns, opened.Round(time.Millisecond))
	fmt.Fprintf(out, "proxy resident memory: %.1f MB before, %.1f MB with them held %v\n", mb(before), mb(after), o.settle)
	gauges := func() ([]byte, error) { return fetch(ctx, "http://"+p.admin+"/metrics") }
	report := func() {
		m, err := gauges()
		if err != nil {
			return
		}
		fmt.Fprintf(out, "  Go runtime: heap in use %.1f MB, goroutine stacks %.1f MB, goroutines %.0f; connections served %.0f, parked %.0f\n",
			mb(int64(metric(m, "go_memstats_heap_inuse_bytes"))), mb(int64(metric(m, "go_memstats_stack_inuse_bytes"))),
			metric(m, "go_goroutines"), metric(m, `affinity_client_connections{state="served"}`),
			metric(m, `affinity_client_connections{state="parked"}`))
	}
	report()
	// Wait for them to park (server.park_after), bounded.
	for wait := time.Now().Add(time.Minute); time.Now().Before(wait) && ctx.Err() == nil; time.Sleep(500 * time.Millisecond) {
		if m, err := gauges(); err == nil && metric(m, `affinity_client_connections{state="parked"}`) >= float64(o.conns) {
			break
		}
	}
	// Parked connections' buffers are garbage until the next collections
	// (sync.Pool keeps them through one), which an idle proxy runs at
	// least every 2 minutes; two forced here stand for that wait.
	for range 2 {
		if _, err := fetch(ctx, "http://"+p.admin+"/debug/pprof/heap?gc=1"); err != nil {
			return fmt.Errorf("force a collection: %w", err)
		}
	}
	// The runtime returns freed pages to the system in the background, at
	// a bounded pace.
	time.Sleep(o.release)
	settled, err := rss(p.cmd.Process.Pid)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "parked, %v after two collections: %.1f MB\n", o.release, mb(settled))
	report()
	fmt.Fprintf(out, "per connection: %.1f KB held, %.1f KB parked\n",
		float64(after-before)/1024/float64(o.conns), float64(settled-before)/1024/float64(o.conns))
	if o.hold > 0 {
		fmt.Fprintf(out, "holding them %v; admin listener (pprof on) at http://%s/\n", o.hold, p.admin)
		select {
		case <-time.After(o.hold):
		case <-ctx.Done():
		}
	}
	return nil
}

// metric returns the value of the series name (with its labels, as
// written: `m{state="parked"}`) in a Prometheus text exposition, or 0.
func metric(exposition []byte, name string) float64 {
	for line := range strings.Lines(string(exposition)) {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f
		}
	}
	return 0
}

// openIdle fills conns with connections to addr that have each been
// answered one request and kept alive.
func openIdle(ctx context.Context, addr string, conns []net.Conn) error {
	next := make(chan int)
	var (
		wg    sync.WaitGroup
		once  sync.Once
		first error
	)
	for range dialers {
		wg.Go(func() {
			for i := range next {
				c, err := oneRequest(ctx, addr)
				if err != nil {
					once.Do(func() { first = fmt.Errorf("connection %d: %w", i+1, err) })
					continue
				}
				conns[i] = c
			}
		})
	}
	for i := range conns {
		if ctx.Err() != nil {
			break
		}
		next <- i
	}
	close(next)
	wg.Wait()
	if first == nil {
		first = ctx.Err()
	}
	return first
}

// oneRequest opens a connection to addr and reads the answer to one GET
// on it, leaving it open.
func oneRequest(ctx context.Context, addr string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if err := c.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		_ = c.Close()
		return nil, err
	}
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: "+addr+"\r\n\r\n"); err != nil {
		_ = c.Close()
		return nil, err
	}
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err == nil {
		_, err = io.Copy(io.Discard, res.Body)
		_ = res.Body.Close()
		if err == nil && (res.StatusCode != http.StatusOK || res.Close) {
			err = fmt.Errorf("answered %s, close %v", res.Status, res.Close)
		}
	}
	if err == nil {
		err = c.SetDeadline(time.Time{})
	}
	if err != nil {
		_ = c.Close()
		return nil, err
	}
	return c, nil
}

// rss returns the resident memory of process pid in bytes, from Linux's
// /proc.
func rss(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("resident memory (Linux only): %w", err)
	}
	return parseRSS(string(b))
}

// parseRSS reads the VmRSS line of a /proc/<pid>/status.
func parseRSS(status string) (int64, error) {
	for line := range strings.Lines(status) {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("VmRSS %q: %w", v, err)
			}
			return kb << 10, nil
		}
	}
	return 0, errors.New("no VmRSS in the process status")
}

func mb(b int64) float64 { return float64(b) / (1 << 20) }
