package harness

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"time"

	"github.com/affinityproxy/affinity/internal/loopback"
)

// Timeouts of the processes of a cluster.
const (
	readyTimeout = 10 * time.Second      // a process must answer within this of its start
	readyPoll    = 10 * time.Millisecond // pause between readiness checks
	stopGrace    = 2 * time.Second       // a graceful stop turns into a kill after this
	getTimeout   = 2 * time.Second       // one probe, status read or scrape
)

// HeaderBackend is the response header in which `affinity backend` names
// itself.
const HeaderBackend = "X-Backend"

// headerUser is the demo shop's user header; the readiness probes set it so
// that a balancer hashing it spreads them too.
const headerUser = "X-User"

// Cluster is the processes of one run: demo backends (`affinity backend`)
// and one proxy (`affinity serve`) in front of them, all on 127.0.0.1,
// started from the same binary. It carries out the faults of a Schedule on
// them. A Cluster is used by one goroutine at a time: the fault schedule
// while the load runs, its owner before and after.
type Cluster struct {
	// Exe is the affinity binary. Required.
	Exe string
	// Dir receives the proxy's config, proxy.yaml, and one log file per
	// process, NAME.log (a restarted backend appends to its own). Required.
	Dir string
	// BackendFlags are added to `affinity backend --listen ADDR --name
	// NAME`: the session store, the simulated work, ...
	BackendFlags []string
	// Config renders the proxy's config for p: one pool named Pool holding
	// p.Backends, in that order, with health checks (Settle waits for them
	// to see faults), and the admin listener on p.Admin. Required.
	Config func(p ProxyConfig) string
	// Pool is the name of that pool.
	Pool string
	// ProxyFlags are added to `affinity serve -c FILE`.
	ProxyFlags []string
	// Watch leaves the proxy watching its config file, so that a reload is
	// a file saved, as an editor does; otherwise the proxy watches nothing
	// and the harness sends it SIGHUP once the whole file is in place.
	Watch bool
	// TLS, when set, is how to reach the proxy's listener, which then
	// speaks HTTPS (Config puts its certificate in the proxy's config):
	// the probes through the proxy go over it.
	TLS *tls.Config

	backends  []*Backend // every backend the cluster had, in start order
	proxy     *Proc
	proxyAddr string
	adminAddr string
	reloads   int
	client    *http.Client // readiness probes, status reads, scrapes
	probes    int          // readiness probes sent, to give each a new user
}

// ProxyConfig is what Cluster.Config renders.
type ProxyConfig struct {
	Listen, Admin string
	// Backends are those in the config: every one but the removed, in
	// start order.
	Backends []Member
	// Revision is 0 for the config the proxy starts with, n for its n-th
	// reload.
	Revision int
}

// Member is a backend in the proxy's config.
type Member struct{ Name, Addr string }

// Backend is one backend of a cluster, running or not.
type Backend struct {
	Name  string
	Addr  string
	State State
	proc  *Proc // nil once killed or removed
}

// Start starts n backends, b1..bn, and the proxy, and returns once the
// proxy has answered from every backend.
func (c *Cluster) Start(ctx context.Context, n int) error {
	if c.Exe == "" || c.Dir == "" || c.Config == nil {
		return errors.New("cluster: Exe, Dir and Config are required")
	}
	c.client = &http.Client{
		Transport:     &http.Transport{Proxy: nil, DialContext: (&net.Dialer{Timeout: time.Second}).DialContext, TLSClientConfig: c.TLS},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	for range n {
		if _, err := c.addBackend(ctx); err != nil {
			return err
		}
	}
	return c.startProxy(ctx)
}

// Close kills every process of the cluster. It is safe to call at any
// point, and more than once.
func (c *Cluster) Close() error {
	var errs []error
	if c.proxy != nil {
		errs = append(errs, c.proxy.Kill())
		c.proxy = nil
	}
	for _, b := range c.backends {
		if b.proc != nil {
			errs = append(errs, b.proc.Kill())
			b.proc = nil
		}
	}
	if c.client != nil {
		c.client.CloseIdleConnections()
	}
	return errors.Join(errs...)
}

// ProxyAddr is the proxy's listen address.
func (c *Cluster) ProxyAddr() string { return c.proxyAddr }

// AdminAddr is the proxy's admin listener.
func (c *Cluster) AdminAddr() string { return c.adminAddr }

// Proxy is the proxy's process.
func (c *Cluster) Proxy() *Proc { return c.proxy }

// Reloads counts the reloads of the proxy's config so far.
func (c *Cluster) Reloads() int { return c.reloads }

// ConfigPath is the proxy's config file.
func (c *Cluster) ConfigPath() string { return filepath.Join(c.Dir, "proxy.yaml") }

// Backends returns every backend the cluster had, in start order. They are
// the cluster's own: read them, do not change them.
func (c *Cluster) Backends() []*Backend { return c.backends }

// Backend returns the backend called name.
func (c *Cluster) Backend(name string) (*Backend, error) {
	for _, b := range c.backends {
		if b.Name == name {
			return b, nil
		}
	}
	return nil, fmt.Errorf("no backend %s", name)
}

// addBackend starts the next backend, b<len+1>, on a free port.
func (c *Cluster) addBackend(ctx context.Context) (*Backend, error) {
	addrs, err := loopback.FreeAddrs(1)
	if err != nil {
		return nil, err
	}
	b := &Backend{Name: BackendName(len(c.backends) + 1), Addr: addrs[0]}
	c.backends = append(c.backends, b)
	return b, c.runBackend(ctx, b)
}

// runBackend starts b's process and waits until it answers /healthz.
func (c *Cluster) runBackend(ctx context.Context, b *Backend) error {
	args := append([]string{"backend", "--listen", b.Addr, "--name", b.Name}, c.BackendFlags...)
	p, err := c.spawn(b.Name, args)
	if err != nil {
		return err
	}
	b.proc, b.State = p, Running
	return c.waitFor(ctx, p, "ready", func() (bool, error) { return c.healthy(ctx, b.Addr), nil })
}

// startProxy writes the proxy's config, starts the proxy, and waits until
// it has answered from every running backend. Later changes of the config
// are reloaded by the same process.
func (c *Cluster) startProxy(ctx context.Context) error {
	addrs, err := loopback.FreeAddrs(2)
	if err != nil {
		return err
	}
	c.proxyAddr, c.adminAddr = addrs[0], addrs[1]
	if err := c.writeConfig(0); err != nil {
		return err
	}
	args := append([]string{"serve", "-c", c.ConfigPath()}, c.ProxyFlags...)
	if !c.Watch && sigReload != nil {
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
		if b.State == Running {
			want[b.Name] = true
		}
	}
	return c.waitFor(ctx, p, "ready", func() (bool, error) {
		if name := c.Probe(ctx); name != "" {
			delete(want, name)
		}
		return len(want) == 0, nil
	})
}

// spawn starts the binary with args, logging to NAME.log in Dir.
func (c *Cluster) spawn(name string, args []string) (*Proc, error) {
	return Start(name, c.Exe, args, filepath.Join(c.Dir, name+".log"))
}

// waitFor polls done until it holds or fails, failing early too if p exits,
// ctx ends or readyTimeout passes. state says what p is once done holds
// ("ready"), for the errors, which quote the end of p's log.
func (c *Cluster) waitFor(ctx context.Context, p *Proc, state string, done func() (bool, error)) error {
	return WaitFor(ctx, p, state, readyTimeout, done)
}

// WaitFor polls done every few milliseconds until it holds or fails,
// failing early too if p exits, ctx ends or timeout passes. state says
// what p is once done holds ("ready"), for the errors, which quote the end
// of p's log.
func WaitFor(ctx context.Context, p *Proc, state string, timeout time.Duration, done func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	for {
		ok, err := done()
		switch {
		case err != nil:
			return fmt.Errorf("%s not %s: %w", p.name, state, err)
		case ok:
			return nil
		case p.Exited():
			return fmt.Errorf("%s exited before it was %s: %s", p.name, state, p.LogTail())
		case time.Now().After(deadline):
			return fmt.Errorf("%s not %s after %v: %s", p.name, state, timeout, p.LogTail())
		}
		if err := (WallClock{}).SleepUntil(ctx, time.Now().Add(readyPoll)); err != nil {
			return fmt.Errorf("%s not %s: %w", p.name, state, err)
		}
	}
}

// healthy reports whether the backend at addr answers /healthz with 200.
func (c *Cluster) healthy(ctx context.Context, addr string) bool {
	status, _, _, err := c.Get(ctx, "http://"+addr+"/healthz", nil)
	return err == nil && status == http.StatusOK
}

// Probe sends a health request through the proxy, as a new client (no
// cookie) and a new user, and returns the backend that answered, or "".
// A cookie balancer rotates such clients and a hash balancer spreads the
// users, so that probes reach every backend in rotation.
func (c *Cluster) Probe(ctx context.Context) string {
	c.probes++
	user := http.Header{headerUser: {"probe-" + strconv.Itoa(c.probes)}}
	scheme := "http://"
	if c.TLS != nil {
		scheme = "https://"
	}
	status, h, _, err := c.Get(ctx, scheme+c.proxyAddr+"/healthz", user)
	if err != nil || status != http.StatusOK {
		return ""
	}
	return h.Get(HeaderBackend)
}

// Get sends a GET with the headers h and returns the status, headers and
// body (at most 1 MiB) of the response.
func (c *Cluster) Get(ctx context.Context, url string, h http.Header) (int, http.Header, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, getTimeout)
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

// Apply carries out one fault on the cluster. It does not wait for the
// proxy to notice (Settle does), except for add, remove and reload, which
// are the proxy's own doing and done once it routes by its new config.
// Store faults and deploys are not the cluster's: they fail with
// errors.ErrUnsupported.
func (c *Cluster) Apply(ctx context.Context, f Fault) error {
	if err := c.apply(ctx, f); err != nil {
		return fmt.Errorf("%s: %w", f, err)
	}
	return nil
}

func (c *Cluster) apply(ctx context.Context, f Fault) error {
	switch f.Action {
	case Add:
		b, err := c.addBackend(ctx)
		if err != nil {
			return err
		}
		return c.reloadProxy(ctx, b.Name)
	case Reload:
		return c.reloadProxy(ctx, "")
	case StoreDown, StoreUp, Deploy:
		return errors.ErrUnsupported
	}
	b, err := c.Backend(f.Target)
	if err != nil {
		return err
	}
	switch f.Action {
	case Kill:
		b.State = Killed
		if b.proc == nil {
			return nil
		}
		err := b.proc.Kill()
		b.proc = nil
		return err
	case Restart:
		removed := b.State == Removed
		if err := c.runBackend(ctx, b); err != nil {
			return err
		}
		if removed {
			// Back in the config, where it was.
			return c.reloadProxy(ctx, b.Name)
		}
		return nil
	case Hang:
		b.State = Hung
		return b.proc.Stop()
	case Resume:
		b.State = Running
		return b.proc.Cont()
	case Remove:
		// Out of the config first, so that no new request is sent to it,
		// then a graceful stop that lets its requests in flight finish.
		b.State = Removed
		if err := c.reloadProxy(ctx, ""); err != nil {
			return err
		}
		return c.drain(ctx, b)
	}
	return fmt.Errorf("%w: unknown action %q", ErrBadFault, f.Action)
}
