package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/affinityproxy/affinity/config"
)

// ctlTimeout bounds each request ctl makes to the admin API.
const ctlTimeout = 10 * time.Second

// ctlOptions are the flags every ctl command shares.
type ctlOptions struct {
	admin string // --admin
	token string // --token
	file  string // -c
}

// newCtlCmd builds `affinity ctl`: the runtime API's client.
func newCtlCmd() *cobra.Command {
	var o ctlOptions
	cmd := &cobra.Command{
		Use:   "ctl",
		Short: "Read and set backends' states on a running proxy",
		Long: "Read and set backends' states (ready, drain, maint) through the admin listener's API.\n\n" +
			"The admin address is --admin, or the admin listener of the config file -c. Writes carry the " +
			"token --token, else $AFFINITY_TOKEN, else the config file's admin.token or admin.token_file.\n\n" +
			"Exit codes: 0 done (drained, with --wait), 1 not drained before --timeout, 2 a usage error or " +
			"a failure to reach the proxy or have it do what was asked.\n\n" +
			"A deploy of one backend:\n" +
			"  affinity ctl drain web app-2 --wait && restart app-2 && affinity ctl ready web app-2",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	f := cmd.PersistentFlags()
	f.StringVar(&o.admin, "admin", "", "the admin listener's address, host:port (default: admin.listen of -c FILE)")
	f.StringVar(&o.token, "token", "", "the bearer token for writes (default: $AFFINITY_TOKEN, or the token of -c FILE)")
	f.StringVarP(&o.file, "config", "c", "", "a config file, to take the admin address and token from")
	cmd.AddCommand(newCtlStatusCmd(&o))
	for _, st := range config.States {
		cmd.AddCommand(newCtlStateCmd(&o, st))
	}
	return cmd
}

func newCtlStatusCmd(o *ctlOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "List the pools' backends: state, health, requests in flight, idle time, sessions",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := o.client()
			if err != nil {
				return err
			}
			var doc struct{ Pools []ctlPool }
			if err := c.do(cmd.Context(), http.MethodGet, "/api/v1/pools", nil, &doc); err != nil {
				return err
			}
			printStatus(cmd.OutOrStdout(), doc.Pools)
			return nil
		},
	}
}

// ctlWait are the flags of a state change that waits for the backend to
// drain.
type ctlWait struct {
	wait          bool
	idle, timeout time.Duration
}

func newCtlStateCmd(o *ctlOptions, st config.State) *cobra.Command {
	var w ctlWait
	short := map[config.State]string{
		config.StateReady: "Put a backend back in service: it takes new clients",
		config.StateDrain: "Drain a backend: it keeps its pinned clients and takes no new one",
		config.StateMaint: "Take a backend out: its clients move to others",
	}[st]
	cmd := &cobra.Command{
		Use:   string(st) + " POOL BACKEND",
		Short: short,
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			switch {
			case st == config.StateReady:
			case w.idle < 0:
				return ctlFailure("--idle %s: must not be negative", w.idle)
			case w.timeout <= 0:
				return ctlFailure("--timeout %s: must be above 0", w.timeout)
			}
			c, err := o.client()
			if err != nil {
				return err
			}
			return c.setState(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr(), args[0], args[1], st, w)
		},
	}
	if st != config.StateReady {
		f := cmd.Flags()
		f.BoolVar(&w.wait, "wait", false, "wait until the backend is drained: no request in flight and none for --idle")
		f.DurationVar(&w.idle, "idle", 10*time.Second, "with --wait: how long the backend must have had no request")
		f.DurationVar(&w.timeout, "timeout", 5*time.Minute, "with --wait: how long to wait at most (exit 1 then)")
	}
	return cmd
}

// exitError ends a command with an exit code of its own; an err that is
// errReported was told to the user already.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// ctlFailure is an error of ctl's: a usage or connection error, exit 2.
func ctlFailure(format string, args ...any) error {
	return &exitError{code: exitUsage, err: fmt.Errorf(format, args...)}
}

// client makes the API client of the options.
func (o *ctlOptions) client() (*ctlClient, error) {
	addr, token := o.admin, o.token
	if token == "" {
		token = os.Getenv("AFFINITY_TOKEN")
	}
	if o.file != "" {
		cfg, err := config.Load(o.file)
		if err != nil {
			return nil, ctlFailure("%s: %w", o.file, err)
		}
		if addr == "" {
			if cfg.Admin.Listen == "" {
				return nil, ctlFailure("%s has no admin listener; give --admin", o.file)
			}
			addr = dialable(cfg.Admin.Listen)
		}
		if token == "" {
			if token, err = cfg.Admin.ReadToken(); err != nil {
				return nil, ctlFailure("%s: %w", o.file, err)
			}
		}
	}
	if addr == "" {
		return nil, ctlFailure("no admin address: give --admin HOST:PORT or -c FILE")
	}
	base := addr
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	u, err := url.Parse(base)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return nil, ctlFailure("--admin %q: want host:port or an http:// URL", addr)
	}
	return &ctlClient{base: strings.TrimSuffix(base, "/"), token: token, http: &http.Client{Timeout: ctlTimeout}}, nil
}

// dialable turns a listen address into one to connect to: a listener on
// every interface is reached on loopback.
func dialable(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return listen
	}
	if ip, err := netip.ParseAddr(host); host == "" || (err == nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
		if err == nil && ip.Is6() {
			host = "::1"
		}
	}
	return net.JoinHostPort(host, port)
}

// ctlClient talks to the admin API.
type ctlClient struct {
	base  string
	token string
	http  *http.Client
}

// ctlPool and ctlBackend are what ctl reads of the API's answers.
type ctlPool struct {
	Name     string
	Backends []ctlBackend
	Removed  []ctlBackend
}

type ctlBackend struct {
	Name        string
	State       string
	StateSource string   `json:"state_source"`
	Health      string   `json:"health"`
	InFlight    int64    `json:"in_flight"`
	Upgraded    int64    `json:"upgraded"`
	Streams     int64    `json:"streams"`
	IdleSeconds *float64 `json:"idle_seconds"`
	Unused      bool     `json:"unused"`
	Sessions    *int     `json:"sessions"`
}

// errNotFound is wrapped by do for a 404.
var errNotFound = errors.New("not found")

// do sends a request to the API and decodes its JSON answer into out. A
// failure to reach the proxy, or an answer other than 200, is a ctl
// failure; a 404 wraps errNotFound.
func (c *ctlClient) do(ctx context.Context, method, path string, body any, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return ctlFailure("%s %s: %w", method, path, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
		if c.token != "" {
			req.Header.Set("Authorization", "Bearer "+c.token)
		}
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return ctlFailure("%s %s: %w", method, c.base+path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return ctlFailure("%s %s: %w", method, c.base+path, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct{ Error string }
		if json.Unmarshal(data, &e) != nil || e.Error == "" {
			e.Error = strings.TrimSpace(string(data))
		}
		err := fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, e.Error)
		if resp.StatusCode == http.StatusNotFound {
			err = fmt.Errorf("%w: %w", errNotFound, err)
		}
		return &exitError{code: exitUsage, err: err}
	}
	if err := json.Unmarshal(data, out); err != nil {
		return ctlFailure("%s %s: the answer is not what ctl reads: %w", method, path, err)
	}
	return nil
}

// backendPath is the API's path of pool/backend.
func backendPath(pool, backend string) string {
	return "/api/v1/pools/" + url.PathEscape(pool) + "/backends/" + url.PathEscape(backend)
}

// setState sets pool/backend's state and, with w.wait, waits for it to
// drain.
func (c *ctlClient) setState(ctx context.Context, out, progress io.Writer, pool, backend string, st config.State, w ctlWait) error {
	var b ctlBackend
	body := map[string]string{"state": string(st)}
	if err := c.do(ctx, http.MethodPut, backendPath(pool, backend)+"/state", body, &b); err != nil {
		return err
	}
	fmt.Fprintf(out, "%s/%s: %s; %s\n", pool, backend, b.State, progressOf(b))
	if !w.wait {
		return nil
	}
	return c.wait(ctx, out, progress, pool, backend, st, w)
}

// wait polls pool/backend until it has had no request in flight for
// w.idle (exit 0), or w.timeout passes (exit 1). It prints its progress to
// progress when it changes.
func (c *ctlClient) wait(ctx context.Context, out, progress io.Writer, pool, backend string, st config.State, w ctlWait) error {
	start := time.Now()
	deadline := start.Add(w.timeout)
	poll := min(time.Second, max(w.idle/5, 50*time.Millisecond))
	name, last := pool+"/"+backend, ""
	for {
		var b ctlBackend
		err := c.do(ctx, http.MethodGet, backendPath(pool, backend), nil, &b)
		switch {
		case errors.Is(err, errNotFound):
			// A reload removed it, and its last request has ended.
			fmt.Fprintf(out, "%s drained: removed from the pool, nothing in flight\n", name)
			return nil
		case err != nil:
			return err
		case b.State != string(st) && b.State != "removed":
			// A run-time state does not outlive the process: a proxy
			// restarted or upgraded in place starts from the file's.
			return ctlFailure("%s is %s now: set by someone else while waiting, or the proxy restarted or was upgraded (a state set at run time is not carried over)", name, b.State)
		case drained(b, w.idle):
			fmt.Fprintf(out, "%s drained after %s: %s\n", name, roundDuration(time.Since(start)), progressOf(b))
			return nil
		}
		if line := progressOf(b); line != last {
			fmt.Fprintf(progress, "%s: %s (waiting %s)\n", name, line, roundDuration(time.Since(start)))
			last = line
		}
		if !time.Now().Before(deadline) {
			fmt.Fprintf(out, "%s not drained after %s: %s\n", name, roundDuration(w.timeout), progressOf(b))
			return &exitError{code: exitFailure, err: errReported}
		}
		t := time.NewTimer(min(poll, time.Until(deadline)))
		select {
		case <-ctx.Done():
			t.Stop()
			return ctlFailure("%s: %w", name, ctx.Err())
		case <-t.C:
		}
	}
}

// drained reports whether b has had no request in flight for idle. A
// backend that has had none since the proxy started has been idle for the
// proxy's uptime only, as far as anyone knows: the process before it may
// have served its clients a moment before.
func drained(b ctlBackend, idle time.Duration) bool {
	if b.InFlight > 0 || b.IdleSeconds == nil {
		return false
	}
	return time.Duration(*b.IdleSeconds*float64(time.Second)) >= idle
}

// progressOf tells how far b is from drained.
func progressOf(b ctlBackend) string {
	s := fmt.Sprintf("%d in flight", b.InFlight)
	if b.Upgraded > 0 || b.Streams > 0 {
		s += fmt.Sprintf(" (%d upgraded, %d streams)", b.Upgraded, b.Streams)
	}
	s += ", idle " + idleOf(b)
	if b.Sessions != nil {
		s += fmt.Sprintf(", %d sessions", *b.Sessions)
	}
	return s
}

// idleOf tells how long b has been idle, "since start" when it has had no
// request since the proxy started (or the reload that added it).
func idleOf(b ctlBackend) string {
	if b.IdleSeconds == nil {
		return "unknown"
	}
	d := roundDuration(time.Duration(*b.IdleSeconds * float64(time.Second)))
	if b.Unused {
		d += " since start"
	}
	return d
}

// roundDuration rounds d for people: to the second, or to the tenth of a
// second below ten seconds.
func roundDuration(d time.Duration) string {
	if d < 10*time.Second {
		return d.Round(100 * time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}

// printStatus writes a table of pools' backends.
func printStatus(w io.Writer, pools []ctlPool) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "POOL\tBACKEND\tSTATE\tHEALTH\tIN FLIGHT\tIDLE\tSESSIONS")
	for _, p := range pools {
		for _, b := range append(p.Backends, p.Removed...) {
			state := b.State
			if b.StateSource == "api" {
				state += " (api)"
			}
			inFlight := fmt.Sprint(b.InFlight)
			if b.Upgraded > 0 || b.Streams > 0 {
				inFlight += fmt.Sprintf(" (%d upgraded, %d streams)", b.Upgraded, b.Streams)
			}
			sessions := "-"
			if b.Sessions != nil {
				sessions = fmt.Sprint(*b.Sessions)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", p.Name, b.Name, state, b.Health, inFlight, idleOf(b), sessions)
		}
	}
	_ = tw.Flush()
}
