package harness

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"slices"
	"time"
)

// DrainGrace is how long a removed backend keeps running after the proxy
// stopped sending it new requests. A request the proxy picked it for just
// before the reload may still be on its way when the reload is seen; the
// grace lets it arrive, so that the backend's graceful stop waits for it
// instead of closing the idle connection it was about to be sent on.
const DrainGrace = 200 * time.Millisecond

// errReloadFailed is returned when the proxy refused a configuration the
// harness wrote: a bug of the harness, never an effect being measured.
var errReloadFailed = errors.New("proxy refused the new config")

// writeConfig writes the proxy's config for the backends not removed, under
// a comment with its revision (0 for the first, n for the n-th reload). It writes a
// temporary file and renames it over the old one, so that the
// proxy never reads a half-written config.
func (c *Cluster) writeConfig(revision int) error {
	f, err := os.CreateTemp(c.Dir, "proxy-*.yaml.tmp")
	if err != nil {
		return fmt.Errorf("proxy config: %w", err)
	}
	var members []Member
	for _, b := range c.backends {
		if b.State != Removed {
			members = append(members, Member{Name: b.Name, Addr: b.Addr})
		}
	}
	// The revision makes every write differ, so that the proxy applies a
	// reload whose config says the same: it skips a file it already runs.
	cfg := c.Config(ProxyConfig{Listen: c.proxyAddr, Admin: c.adminAddr, Backends: members, Revision: revision})
	_, err = fmt.Fprintf(f, "# Revision %d of the harness's config.\n%s", revision, cfg)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), c.ConfigPath())
	}
	if err != nil {
		_ = os.Remove(f.Name())
		return fmt.Errorf("proxy config: %w", err)
	}
	return nil
}

// reloadProxy writes the proxy's config for the backends not removed, has
// the running proxy reload it (SIGHUP, or its own watch of the file), and
// waits until the proxy routes by it: it counted one more reload, its pool
// holds exactly those backends, and added, unless empty, is available. The
// proxy keeps its listener, its connections and the health of the backends
// that stay, so the load sees no error of the proxy's making.
func (c *Cluster) reloadProxy(ctx context.Context, added string) error {
	// The reload counts tell this reload from the state before it, which
	// may already route as wanted.
	before, err := c.proxyStatus(ctx)
	if err != nil {
		return fmt.Errorf("proxy status before the reload: %w", err)
	}
	if err := c.writeConfig(c.reloads + 1); err != nil {
		return err
	}
	// Without SIGHUP (not unix) the proxy watches its file instead.
	if !c.Watch && sigReload != nil {
		if err := c.proxy.Signal(sigReload); err != nil {
			return err
		}
	}
	c.reloads++
	want := c.configured()
	return c.waitFor(ctx, c.proxy, "reloaded", func() (bool, error) {
		st, err := c.proxyStatus(ctx)
		if err != nil {
			return false, nil // asked again until the deadline
		}
		switch {
		case st.Config.ReloadsFailed > before.Config.ReloadsFailed:
			return false, fmt.Errorf("%w: %s", errReloadFailed, c.proxy.LogTail())
		case st.Config.ReloadsOK == before.Config.ReloadsOK:
			return false, nil // the signal not handled yet
		}
		return st.routes(c.Pool, want, added), nil
	})
}

// drain stops a backend the proxy no longer sends new requests to, once
// those it had finished: after drainGrace, a graceful stop (SIGTERM) lets
// the backend answer the requests it holds before it exits.
func (c *Cluster) drain(ctx context.Context, b *Backend) error {
	if b.proc == nil {
		return nil
	}
	if err := (WallClock{}).SleepUntil(ctx, time.Now().Add(DrainGrace)); err != nil {
		return fmt.Errorf("drain %s: %w", b.Name, err)
	}
	err := b.proc.Terminate(stopGrace)
	b.proc = nil
	return err
}

// configured returns the names of the backends in the proxy's config, in
// order.
func (c *Cluster) configured() []string {
	var names []string
	for _, b := range c.backends {
		if b.State != Removed {
			names = append(names, b.Name)
		}
	}
	return names
}

// proxyStatus is the part of the proxy's admin /status document that the
// harness reads.
type proxyStatus struct {
	Config struct {
		ReloadsOK     uint64 `json:"reloads_ok"`
		ReloadsFailed uint64 `json:"reloads_failed"`
	} `json:"config"`
	Pools []statusPool `json:"pools"`
}

type statusPool struct {
	Name     string          `json:"name"`
	Backends []statusBackend `json:"backends"`
}

type statusBackend struct {
	Name      string `json:"name"`
	Available bool   `json:"available"` // receives new requests
}

// pool returns the pool called name, or nil.
func (st *proxyStatus) pool(name string) *statusPool {
	i := slices.IndexFunc(st.Pools, func(p statusPool) bool { return p.Name == name })
	if i < 0 {
		return nil
	}
	return &st.Pools[i]
}

// routes reports whether the proxy's pool holds exactly the backends want,
// in that order, with added (unless empty) available.
func (st *proxyStatus) routes(pool string, want []string, added string) bool {
	p := st.pool(pool)
	if p == nil || len(p.Backends) != len(want) {
		return false
	}
	for j, b := range p.Backends {
		if b.Name != want[j] || (b.Name == added && !b.Available) {
			return false
		}
	}
	return true
}

// available reports whether the pool has backend and sends it new
// requests.
func (st *proxyStatus) available(pool, backend string) bool {
	p := st.pool(pool)
	if p == nil {
		return false
	}
	i := slices.IndexFunc(p.Backends, func(b statusBackend) bool { return b.Name == backend })
	return i >= 0 && p.Backends[i].Available
}

// proxyStatus reads the proxy's admin /status.
func (c *Cluster) proxyStatus(ctx context.Context) (*proxyStatus, error) {
	url := "http://" + c.adminAddr + "/status"
	code, _, body, err := c.Get(ctx, url, nil)
	if err != nil {
		return nil, err
	}
	if code != http.StatusOK {
		return nil, fmt.Errorf("GET %s: status %d", url, code)
	}
	st := &proxyStatus{}
	if err := json.Unmarshal(body, st); err != nil {
		return nil, fmt.Errorf("GET %s: %w", url, err)
	}
	return st, nil
}

// Settle waits until the proxy routes by fault f, as its /status shows: a
// killed or hung backend no longer available (its health checks or its
// failures took it out), a restarted or resumed one available again. Add,
// remove and reload were waited for when applied; store faults do not show
// in the proxy. It fails when the proxy has not shown the change within a
// few seconds, or ctx ends first.
func (c *Cluster) Settle(ctx context.Context, f Fault) error {
	var want bool
	switch f.Action {
	case Kill, Hang:
		want = false
	case Restart, Resume:
		want = true
	default:
		return nil
	}
	return c.waitFor(ctx, c.proxy, "routing by "+f.String(), func() (bool, error) {
		st, err := c.proxyStatus(ctx)
		if err != nil {
			return false, nil // asked again until the deadline
		}
		return st.available(c.Pool, f.Target) == want, nil
	})
}
