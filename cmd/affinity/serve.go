package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/affinityproxy/affinity/config"
	"github.com/affinityproxy/affinity/internal/gctune"
	"github.com/affinityproxy/affinity/internal/logging"
	"github.com/affinityproxy/affinity/internal/upgrade"
	"github.com/affinityproxy/affinity/internal/watch"
	"github.com/affinityproxy/affinity/proxy"
)

// reloadQuiet is how long the config file must stay unchanged before a
// change is reloaded: an editor's save, or a deployment tool's, is often
// several writes and renames in a row, and only the last state is wanted.
const reloadQuiet = 200 * time.Millisecond

// unsafeRetryFlag is the hidden flag of `affinity serve` that retries
// requests of every method; see proxy.Server.RetryEveryMethod.
const unsafeRetryFlag = "unsafe-retry-every-method"

// newServeCmd builds `affinity serve`: the proxy itself.
func newServeCmd() *cobra.Command {
	var (
		file        string
		level       levelFlag
		watchFile   bool
		everyMethod bool
		pidFile     string
		upTimeout   time.Duration
	)
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the proxy",
		Long: "Run the proxy with the configuration in --config until SIGINT or SIGTERM, " +
			"then stop accepting connections and let requests in flight finish (shutdown_timeout, 30 s by default); " +
			"what outlives it is cut and logged, and the exit status is still 0. " +
			"SIGHUP, and with --watch any change of the file, reloads the configuration; " +
			"an invalid one is logged and the running one kept. " +
			"SIGUSR2 starts a new process of the program with the same arguments and hands it the listening sockets; " +
			"once it serves, this one drains as on SIGTERM. A new process that fails leaves this one serving.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// SIGHUP is caught before anything slow: by Go's default it
			// would end the process, and `systemctl reload` right after a
			// start would then crash the proxy. One that comes during
			// start-up waits in the channel, and reloads once the proxy
			// serves. SIGINT and SIGTERM keep their default until then: a
			// proxy not yet serving has nothing to drain.
			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP)
			defer signal.Stop(hup)
			// SIGUSR2 too: its default ends the process.
			usr2 := make(chan os.Signal, 1)
			signal.Notify(usr2, syscall.SIGUSR2)
			defer signal.Stop(usr2)
			cfg, err := config.LoadChecked(file)
			if err != nil {
				return reportConfigError(cmd.ErrOrStderr(), file, err)
			}
			lvl := cfg.Log.Level
			if level != "" {
				lvl = string(level)
			}
			sl, err := logging.NewServe(lvl, cfg.Log.Format, proxy.AccessLogName, cmd.ErrOrStderr())
			if err != nil {
				return fmt.Errorf("%s: %w", file, err)
			}
			defer func() { _ = sl.Close() }()
			log := sl.Logger
			// The servers' and ReverseProxy's ErrorLog write to log
			// (proxy.NewServer); what the standard library writes
			// through the log package's own logger (http.Transport's
			// notes on a backend connection) goes there too.
			if restore, err := zap.RedirectStdLogAt(log, zap.WarnLevel); err == nil {
				defer restore()
			}
			proxy.LogWarnings(log, cfg)
			// GOGC follows the live heap (internal/gctune) unless the
			// environment sets it: less CPU per request under load
			// (make bench-cpu CPU_ENV=GOGC=100; docs/performance.md), for
			// at most 48 MiB more heap than Go's default. GOMEMLIMIT
			// applies either way.
			if _, set := os.LookupEnv("GOGC"); !set {
				defer gctune.Start()()
			}
			srv, err := proxy.NewServer(cfg, log)
			if err != nil {
				return fmt.Errorf("%s: %w", file, err)
			}
			if everyMethod {
				srv.RetryEveryMethod()
			}
			r := &reloader{file: file, srv: srv, log: log, hup: hup, usr2: usr2, load: config.LoadChecked, timeout: reloadTimeout}
			if r.up, err = startUpgrader(srv, log, pidFile, upTimeout); err != nil {
				return err
			}
			if level == "" {
				// Without --log-level, log.level follows the file.
				r.level = &sl.Level
			}
			if watchFile {
				// A proxy that cannot watch its file (out of inotify
				// watches, say) still serves, and reloads on SIGHUP.
				if w, err := watch.New(file, reloadQuiet, log); err != nil {
					log.Warn("not watching the config file: reload with SIGHUP", zap.Error(err))
				} else {
					defer func() { _ = w.Close() }()
					r.changes = w.C
				}
			}
			if cfg.TLS != nil && watchFile {
				r.certs.log = log
				defer r.certs.close()
				r.certs.follow(cfg.TLS)
			}
			log.Info("starting", zap.String("config", file), zap.String("hash", cfg.Hash),
				zap.String("version", versionString()), zap.Bool("watch", r.changes != nil),
				zap.Bool("upgraded", r.up != nil && r.up.HasParent()))
			return r.run(cmd.Context())
		},
	}
	cmd.Flags().StringVarP(&file, "config", "c", "affinity.yaml", "configuration file")
	cmd.Flags().Var(&level, "log-level", "override the config's log.level: debug, info, warn or error")
	cmd.Flags().BoolVar(&watchFile, "watch", true, "reload the configuration when its file changes")
	// Hidden: it makes retries unsafe, and exists only so that the
	// experiments can measure what that costs (proxy.Server.RetryEveryMethod).
	// A flag rather than a config key or an environment variable: it shows
	// on the process's command line, cannot be copied into a config, and
	// is inherited by nothing.
	cmd.Flags().BoolVar(&everyMethod, unsafeRetryFlag, false, "retry every method, POST included")
	_ = cmd.Flags().MarkHidden(unsafeRetryFlag)
	cmd.Flags().StringVar(&pidFile, "pid-file", "", "write the process's PID to this file once it serves (rewritten by the process an upgrade starts)")
	cmd.Flags().DurationVar(&upTimeout, "upgrade-timeout", time.Minute, "how long the process SIGUSR2 starts has to serve before it is killed and the upgrade fails")
	return cmd
}

// reloadTimeout bounds the reading and checking of the config file on a
// reload: a read that hangs (a file on a network file system that stopped
// answering) fails the reload instead of holding it forever.
const reloadTimeout = 10 * time.Second

// errReadPending refuses a reload while a read of the file that timed out
// has not returned: reading again would only add a second hung read.
var errReadPending = errors.New("the previous read of the file, which timed out, has not returned yet")

// reloader runs a proxy.Server and reloads its configuration file when
// asked to.
type reloader struct {
	file string
	srv  *proxy.Server
	log  *zap.Logger
	// level, when not nil, is set to each reloaded config's log.level.
	level *zap.AtomicLevel
	// hup receives SIGHUP; changes receives a value when the file
	// changed, and is nil without --watch; certs watches the TLS
	// listener's files, and is nil without TLS or --watch.
	hup     <-chan os.Signal
	changes <-chan struct{}
	certs   certWatch
	// usr2 receives SIGUSR2, which asks up for an upgrade; up is nil
	// where upgrades cannot be had.
	usr2 <-chan os.Signal
	up   *upgrade.Upgrader
	// load reads and checks the file (config.LoadChecked), for at most
	// timeout.
	load    func(string) (*config.Config, error)
	timeout time.Duration
	// reading is closed when the read started last returns; a reload
	// started while a timed-out read is still open fails at once.
	reading chan struct{}
}

// run serves until the server fails, ctx ends, or the process gets SIGINT
// or SIGTERM; then it shuts the server down, letting requests in flight
// finish for the configuration's shutdown_timeout, and cutting those that
// outlive it (logged; not an error). SIGHUP and changes of the file reload
// the configuration meanwhile, one at a time, off this loop: a reload that
// hangs reading the file never delays a stop. A stop asked for is not an
// error.
func (r *reloader) run(ctx context.Context) error {
	term := make(chan os.Signal, 1)
	signal.Notify(term, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(term)

	served := make(chan error, 1)
	go func() { served <- r.srv.ListenAndServe() }()
	reloaded := make(chan struct{}, 1)
	running, again := false, ""
	upgraded := make(chan error, 1)
	upgrading, handedOver := false, false
	var exit <-chan struct{}
	if r.up != nil {
		exit = r.up.Exit()
	}
	reload := func(trigger string) {
		if running {
			// Changes made meanwhile are read by one more reload.
			again = trigger
			return
		}
		running = true
		go func() {
			r.reload(trigger)
			reloaded <- struct{}{}
		}()
	}
	for stop := false; !stop; {
		select {
		case err := <-served:
			return err
		case <-ctx.Done():
			stop = true
		case <-term:
			stop = true
		case <-r.hup:
			reload("SIGHUP")
		case <-r.changes:
			reload("file changed")
		case <-r.certs.cert:
			reload("certificate file changed")
		case <-r.certs.key:
			reload("key file changed")
		case <-r.usr2:
			switch {
			case r.up == nil:
				r.log.Warn("SIGUSR2 ignored: in-place upgrade is unavailable in this process")
			case upgrading:
				r.log.Info("SIGUSR2 ignored: an upgrade is under way")
			default:
				upgrading = true
				r.log.Info("upgrading: starting a new process", zap.String("executable", os.Args[0]))
				go func() { upgraded <- r.up.Upgrade() }()
			}
		case err := <-upgraded:
			upgrading = false
			if err != nil {
				r.log.Error("upgrade failed: this process goes on serving", zap.Error(err))
			}
		case <-exit:
			// Closed only by a successful upgrade until Stop, below.
			handedOver, stop = true, true
		case <-reloaded:
			running = false
			// The reload may have named other files for tls.
			r.certs.follow(r.srv.Config().TLS)
			if again != "" {
				trigger := again
				again = ""
				reload(trigger)
			}
		}
	}
	timeout := r.srv.Config().ShutdownTimeout
	if timeout <= 0 {
		timeout = config.DefaultShutdownTimeout
	}
	if r.up != nil {
		if handedOver {
			r.log.Info("the new process serves: this one stops accepting and drains")
			r.srv.HandOver()
		}
		// Kills a new process that is not ready yet: a stop wins.
		if err := r.up.Stop(handedOver); err != nil {
			r.log.Warn("stopping upgrades", zap.Error(err))
		}
	}
	r.log.Info("shutting down", zap.Duration("timeout", timeout))
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
	defer cancel()
	// A second SIGINT or SIGTERM ends the wait at once, for a user who
	// does not want to wait for slow requests: what is still running is
	// cut as at shutdown_timeout, and logged (the access log too), rather
	// than lost with a process killed by the signal.
	hurried := make(chan struct{})
	go func() {
		select {
		case <-term:
			close(hurried)
			cancel()
		case <-sctx.Done():
		}
	}()
	var cut *proxy.CutError
	switch err := r.srv.Shutdown(sctx); {
	case errors.As(err, &cut):
		// Cutting what outlives shutdown_timeout is what the timeout is
		// for: logged, and the stop is still a clean one.
		msg := "shutdown_timeout reached: cut what was still running"
		select {
		case <-hurried:
			msg = "stopped by a second signal: cut what was still running"
		default:
		}
		r.log.Warn(msg,
			zap.Duration("timeout", timeout), zap.Int("connections", cut.Connections), zap.Int("upgraded", cut.Upgraded))
	case err != nil:
		return fmt.Errorf("shutdown: %w", err)
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	if running {
		// A reload still running fails against the closed server; one
		// hung reading the file is left to the process's end.
		select {
		case <-reloaded:
		case <-time.After(time.Second):
		}
	}
	r.log.Info("stopped")
	return nil
}

// reload reads and checks the file off the caller's goroutine, for at most
// r.timeout, and applies it; the server logs and counts the outcome.
func (r *reloader) reload(trigger string) {
	r.log.Info("reloading config", zap.String("file", r.file), zap.String("trigger", trigger))
	cfg, err := r.read()
	if err := r.srv.ReloadLoaded(r.file, cfg, err); err != nil {
		return
	}
	if r.level != nil {
		if lvl, err := zapcore.ParseLevel(r.srv.Config().Log.Level); err == nil {
			r.level.SetLevel(lvl)
		}
	}
}

// read loads the file, giving up after r.timeout; a read that timed out
// goes on in the background, and the reloads until it returns fail at once.
func (r *reloader) read() (*config.Config, error) {
	if r.reading != nil {
		select {
		case <-r.reading:
		default:
			return nil, errReadPending
		}
	}
	type loaded struct {
		cfg *config.Config
		err error
	}
	done := make(chan loaded, 1)
	reading := make(chan struct{})
	r.reading = reading
	go func() {
		cfg, err := r.load(r.file)
		// Closed before the answer goes: once a read returned in time,
		// the next one must find it done, not pending.
		close(reading)
		done <- loaded{cfg, err}
	}()
	select {
	case l := <-done:
		return l.cfg, l.err
	case <-time.After(r.timeout):
		return nil, fmt.Errorf("reading the file did not finish within %v", r.timeout)
	}
}
