package experiment

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/affinityproxy/affinity/internal/loopback"
)

// Timeouts of the processes of a cell.
const (
	readyTimeout   = 10 * time.Second       // a process must answer within this of its start
	readyPoll      = 10 * time.Millisecond  // pause between readiness checks
	stopGrace      = 2 * time.Second        // a graceful stop turns into a kill after this
	scrapeTimeout  = 2 * time.Second        // one /metrics scrape
	healthInterval = 200 * time.Millisecond // the proxy's active checks
)

// cluster is the processes of one cell: the backends, the proxy in front of
// them, and the Redis they may share. It is used by one goroutine at a time:
// the fault schedule while the load runs, the harness before and after.
type cluster struct {
	exe      string
	dir      string // the cell's directory: proxy config and process logs
	balancer string
	store    string
	secret   string
	work     time.Duration
	redis    *redisStore // nil unless the store needs Redis

	backends  []*backendProc // every backend the cell had, in start order
	proxy     *proc
	proxyAddr string
	adminAddr string // the proxy's admin listener, whose /status tells when a reload took effect
	reloads   int    // of the proxy's config, for add and remove

	client *http.Client // readiness probes and scrapes
}

// backendProc is one backend of a cell, running or not.
type backendProc struct {
	name  string
	addr  string
	proc  *proc // nil once killed or removed
	state backendState
}

// start starts n backends and the proxy, and returns once the proxy has
// answered from every backend.
func (c *cluster) start(ctx context.Context, n int) error {
	for i := 1; i <= n; i++ {
		if _, err := c.addBackend(ctx); err != nil {
			return err
		}
	}
	return c.startProxy(ctx)
}

// close kills every process of the cell and stops its Redis. It is safe to
// call at any point, and more than once.
func (c *cluster) close() {
	if c.proxy != nil {
		_ = c.proxy.kill()
		c.proxy = nil
	}
	for _, b := range c.backends {
		if b.proc != nil {
			_ = b.proc.kill()
			b.proc = nil
		}
	}
	if c.redis != nil {
		c.redis.close()
	}
}

// addBackend starts the next backend, b<len+1>, on a free port.
func (c *cluster) addBackend(ctx context.Context) (*backendProc, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	b := &backendProc{name: BackendName(len(c.backends) + 1), addr: addr}
	c.backends = append(c.backends, b)
	return b, c.runBackend(ctx, b)
}

// runBackend starts b's process and waits until it answers /healthz.
func (c *cluster) runBackend(ctx context.Context, b *backendProc) error {
	args := []string{"backend", "--listen", b.addr, "--name", b.name,
		"--session-store", c.store, "--work", c.work.String()}
	if c.redis != nil {
		args = append(args, "--redis-addr", c.redis.addr)
	}
	if c.store == StoreToken {
		args = append(args, "--token-secret", c.secret)
	}
	p, err := c.spawn(b.name, args)
	if err != nil {
		return err
	}
	b.proc, b.state = p, running
	return c.waitReady(ctx, p, func() bool { return c.healthy(ctx, b.addr) })
}

// startProxy writes the proxy's config for the backends there are, starts
// the proxy, and waits until it has answered from every running backend.
// Later changes of the config are reloaded by the same process
// (reloadProxy).
func (c *cluster) startProxy(ctx context.Context) error {
	addrs, err := loopback.FreeAddrs(2)
	if err != nil {
		return err
	}
	c.proxyAddr, c.adminAddr = addrs[0], addrs[1]
	if err := c.writeConfig(); err != nil {
		return err
	}
	args := []string{"serve", "-c", c.configPath()}
	if sigReload != nil {
		// Only the harness's SIGHUP reloads, once the whole file is in
		// place, so that each change is applied exactly once.
		args = append(args, "--watch=false")
	}
	p, err := c.spawn("proxy", args)
	if err != nil {
		return err
	}
	c.proxy = p
	want := map[string]bool{}
	for _, b := range c.backends {
		if b.state == running {
			want[b.name] = true
		}
	}
	probe := 0
	return c.waitReady(ctx, p, func() bool {
		// Each probe carries a new user id so that hash balancers spread
		// the probes too; no cookie, so cookie balancers rotate them.
		probe++
		if name := c.probe(ctx, "probe-"+strconv.Itoa(probe)); name != "" {
			delete(want, name)
		}
		return len(want) == 0
	})
}

// poolName is the proxy's one pool.
const poolName = "shop"

// config renders the proxy's configuration: one pool of the backends not
// removed, with fast health checks and retries so that a dead backend costs
// little more than the sessions it held.
func (c *cluster) config() string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Written by affinity experiment for the cell %s × %s.\n", c.balancer, c.store)
	fmt.Fprintf(&b, "listen: %s\nadmin: %s\nlog: {level: warn}\n", c.proxyAddr, c.adminAddr)
	fmt.Fprintf(&b, "timeouts: {connect: 500ms, response_header: %s}\n", requestTimeout)
	fmt.Fprintf(&b, "pools:\n  %s:\n    balancer:\n", poolName)
	fmt.Fprintf(&b, "      type: %s\n", c.balancer)
	if c.balancer == "consistent-hash" {
		fmt.Fprintf(&b, "      hash: {key: \"header:%s\"}\n", headerUser)
	}
	fmt.Fprintf(&b, "    health_check: {interval: %s, timeout: 100ms, fall: 2, rise: 2}\n", healthInterval)
	b.WriteString("    retries: 2\n    backends:\n")
	for _, be := range c.backends {
		if be.state != removed {
			fmt.Fprintf(&b, "      - {url: \"http://%s\", name: %s}\n", be.addr, be.name)
		}
	}
	return b.String()
}

// spawn starts the binary with args, logging to <name>.log in the cell's
// directory.
func (c *cluster) spawn(name string, args []string) (*proc, error) {
	log, err := os.OpenFile(filepath.Join(c.dir, name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("%s log: %w", name, err)
	}
	// The child holds its own descriptor of the file from now on.
	defer func() { _ = log.Close() }()
	return startProc(name, c.exe, args, log)
}

// waitReady polls ready until it holds, failing early if p exits, ctx ends
// or readyTimeout passes. The error quotes the end of p's log.
func (c *cluster) waitReady(ctx context.Context, p *proc, ready func() bool) error {
	return c.waitFor(ctx, p, "ready", func() (bool, error) { return ready(), nil })
}

// waitFor polls done until it holds or fails, failing early too if p exits,
// ctx ends or readyTimeout passes. state says what p is once done holds
// ("ready"), for the errors, which quote the end of p's log.
func (c *cluster) waitFor(ctx context.Context, p *proc, state string, done func() (bool, error)) error {
	deadline := time.Now().Add(readyTimeout)
	for {
		ok, err := done()
		switch {
		case err != nil:
			return fmt.Errorf("%s not %s: %w", p.name, state, err)
		case ok:
			return nil
		case p.exited():
			return fmt.Errorf("%s exited before it was %s: %s", p.name, state, c.logTail(p.name))
		case time.Now().After(deadline):
			return fmt.Errorf("%s not %s after %v: %s", p.name, state, readyTimeout, c.logTail(p.name))
		}
		if err := (wallClock{}).SleepUntil(ctx, time.Now().Add(readyPoll)); err != nil {
			return fmt.Errorf("%s not %s: %w", p.name, state, err)
		}
	}
}

// healthy reports whether the backend at addr answers /healthz with 200.
func (c *cluster) healthy(ctx context.Context, addr string) bool {
	status, _, _, err := c.get(ctx, "http://"+addr+"/healthz", nil)
	return err == nil && status == http.StatusOK
}

// probe sends a health request through the proxy as user and returns the
// backend that answered, or "".
func (c *cluster) probe(ctx context.Context, user string) string {
	status, h, _, err := c.get(ctx, "http://"+c.proxyAddr+"/healthz", http.Header{headerUser: {user}})
	if err != nil || status != http.StatusOK {
		return ""
	}
	return h.Get(headerBackend)
}

// get sends a GET with the headers h and returns the status, headers and
// body (at most 1 MiB) of the response.
func (c *cluster) get(ctx context.Context, url string, h http.Header) (int, http.Header, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, scrapeTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, nil, fmt.Errorf("GET %s: %w", url, err)
	}
	for k, v := range h {
		req.Header[k] = v
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return 0, nil, nil, fmt.Errorf("GET %s: %w", url, err)
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return 0, nil, nil, fmt.Errorf("GET %s: %w", url, err)
	}
	return resp.StatusCode, resp.Header, body, nil
}

// logTail returns the last lines of a process's log, for error messages.
func (c *cluster) logTail(name string) string {
	data, err := os.ReadFile(filepath.Join(c.dir, name+".log"))
	if err != nil || len(data) == 0 {
		return "(no output)"
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	return strings.Join(lines[max(0, len(lines)-5):], " | ")
}

// backend returns the backend called name.
func (c *cluster) backend(name string) (*backendProc, error) {
	for _, b := range c.backends {
		if b.name == name {
			return b, nil
		}
	}
	return nil, fmt.Errorf("no backend %s", name)
}

// apply carries out one fault.
func (c *cluster) apply(ctx context.Context, f Fault) error {
	if err := c.applyFault(ctx, f); err != nil {
		return fmt.Errorf("%s: %w", f, err)
	}
	return nil
}

func (c *cluster) applyFault(ctx context.Context, f Fault) error {
	switch f.Action {
	case Add:
		b, err := c.addBackend(ctx)
		if err != nil {
			return err
		}
		return c.reloadProxy(ctx, b.name)
	case StoreDown, StoreUp:
		if c.redis == nil {
			return nil // memory and token cells have no store to stop
		}
		if f.Action == StoreDown {
			return c.redis.down()
		}
		return c.redis.up()
	}
	b, err := c.backend(f.Target)
	if err != nil {
		return err
	}
	switch f.Action {
	case Kill:
		b.state = killed
		if b.proc == nil {
			return nil
		}
		err := b.proc.kill()
		b.proc = nil
		return err
	case Restart:
		return c.runBackend(ctx, b)
	case Hang:
		b.state = hung
		return b.proc.stop()
	case Resume:
		b.state = running
		return b.proc.cont()
	case Remove:
		// Out of the config first, so that no new request is sent to it,
		// then a graceful stop that lets its requests in flight finish.
		b.state = removed
		if err := c.reloadProxy(ctx, ""); err != nil {
			return err
		}
		return c.drain(ctx, b)
	}
	return fmt.Errorf("%w: unknown action %q", ErrBadFault, f.Action)
}

// freeAddr returns a loopback address with a port free a moment ago. A
// process started on it could lose the port to another in between; the
// process then fails to start and the cell reports it.
func freeAddr() (string, error) {
	addrs, err := loopback.FreeAddrs(1)
	if err != nil {
		return "", err
	}
	return addrs[0], nil
}
