package experiment

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// drainGrace is how long a removed backend keeps running after the proxy
// stopped sending it new requests. A request the proxy picked it for just
// before the reload may still be on its way when the reload is seen; the
// grace lets it arrive, so that the backend's graceful stop waits for it
// instead of closing the idle connection it was about to be sent on.
const drainGrace = 200 * time.Millisecond

// errReloadFailed is returned when the proxy refused a configuration the
// harness wrote: a bug of the harness, never an effect being measured.
var errReloadFailed = errors.New("proxy refused the new config")

// configPath is the proxy's config file.
func (c *cluster) configPath() string { return filepath.Join(c.dir, "proxy.yaml") }

// writeConfig writes the proxy's config for the backends not removed. It
// writes a temporary file and renames it over the old one, so that the
// proxy never reads a half-written config.
func (c *cluster) writeConfig() error {
	f, err := os.CreateTemp(c.dir, "proxy-*.yaml.tmp")
	if err != nil {
		return fmt.Errorf("proxy config: %w", err)
	}
	_, err = f.WriteString(c.config())
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), c.configPath())
	}
	if err != nil {
		_ = os.Remove(f.Name())
		return fmt.Errorf("proxy config: %w", err)
	}
	return nil
}

// reloadProxy writes the proxy's config for the backends not removed, has
// the running proxy reload it, and waits until the proxy routes by it: it
// counted one more reload, its pool holds exactly those backends, and
// added, unless empty, is available. The proxy keeps its listener, its
// connections and the health of the backends that stay, so the load sees
// no error of the proxy's making.
func (c *cluster) reloadProxy(ctx context.Context, added string) error {
	// The reload counts tell this reload from the state before it, which
	// may already route as wanted.
	before, err := c.proxyStatus(ctx)
	if err != nil {
		return fmt.Errorf("proxy status before the reload: %w", err)
	}
	if err := c.writeConfig(); err != nil {
		return err
	}
	// Without SIGHUP (not unix) the proxy watches its file instead.
	if sigReload != nil {
		if err := c.proxy.signal(sigReload); err != nil {
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
			return false, fmt.Errorf("%w: %s", errReloadFailed, c.logTail(c.proxy.name))
		case st.Config.ReloadsOK == before.Config.ReloadsOK:
			return false, nil // the signal not handled yet
		}
		return st.routes(want, added), nil
	})
}

// drain stops a backend the proxy no longer sends new requests to, once
// those it had finished: after drainGrace, a graceful stop (SIGTERM) lets
// the backend answer the requests it holds before it exits.
func (c *cluster) drain(ctx context.Context, b *backendProc) error {
	if b.proc == nil {
		return nil
	}
	if err := (wallClock{}).SleepUntil(ctx, time.Now().Add(drainGrace)); err != nil {
		return fmt.Errorf("drain %s: %w", b.name, err)
	}
	err := b.proc.terminate(stopGrace)
	b.proc = nil
	return err
}

// configured returns the names of the backends in the proxy's config, in
// order.
func (c *cluster) configured() []string {
	var names []string
	for _, b := range c.backends {
		if b.state != removed {
			names = append(names, b.name)
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

// routes reports whether the proxy's pool holds exactly the backends want,
// in that order, with added (unless empty) available.
func (st *proxyStatus) routes(want []string, added string) bool {
	i := slices.IndexFunc(st.Pools, func(p statusPool) bool { return p.Name == poolName })
	if i < 0 || len(st.Pools[i].Backends) != len(want) {
		return false
	}
	for j, b := range st.Pools[i].Backends {
		if b.Name != want[j] || (b.Name == added && !b.Available) {
			return false
		}
	}
	return true
}

// proxyStatus reads the proxy's admin /status.
func (c *cluster) proxyStatus(ctx context.Context) (*proxyStatus, error) {
	url := "http://" + c.adminAddr + "/status"
	code, _, body, err := c.get(ctx, url, nil)
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
