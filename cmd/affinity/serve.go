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
	"github.com/affinityproxy/affinity/internal/watch"
	"github.com/affinityproxy/affinity/proxy"
)

// reloadQuiet is how long the config file must stay unchanged before a
// change is reloaded: an editor's save, or a deployment tool's, is often
// several writes and renames in a row, and only the last state is wanted.
const reloadQuiet = 200 * time.Millisecond

// newServeCmd builds `affinity serve`: the proxy itself.
func newServeCmd() *cobra.Command {
	var (
		file      string
		level     levelFlag
		watchFile bool
	)
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the proxy",
		Long: "Run the proxy with the configuration in --config until SIGINT or SIGTERM, " +
			"then stop accepting connections and let requests in flight finish (shutdown_timeout, 30 s by default). " +
			"SIGHUP, and with --watch any change of the file, reloads the configuration; " +
			"an invalid one is logged and the running one kept.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
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
			proxy.LogWarnings(log, cfg)
			// GOGC follows the live heap (internal/gctune) unless the
			// environment sets it: 11 % less CPU per request under the
			// peer harness's load (make bench-cpu CPU_ENV=GOGC=100), for at
			// most 48 MiB more heap than Go's default. GOMEMLIMIT applies
			// either way.
			if _, set := os.LookupEnv("GOGC"); !set {
				defer gctune.Start()()
			}
			srv, err := proxy.NewServer(cfg, log)
			if err != nil {
				return fmt.Errorf("%s: %w", file, err)
			}
			r := &reloader{file: file, srv: srv, log: log}
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
			log.Info("starting", zap.String("config", file), zap.String("hash", cfg.Hash),
				zap.String("version", versionString()), zap.Bool("watch", r.changes != nil))
			return r.run(cmd.Context())
		},
	}
	cmd.Flags().StringVarP(&file, "config", "c", "affinity.yaml", "configuration file")
	cmd.Flags().Var(&level, "log-level", "override the config's log.level: debug, info, warn or error")
	cmd.Flags().BoolVar(&watchFile, "watch", true, "reload the configuration when its file changes")
	return cmd
}

// reloader runs a proxy.Server and reloads its configuration file when
// asked to.
type reloader struct {
	file string
	srv  *proxy.Server
	log  *zap.Logger
	// level, when not nil, is set to each reloaded config's log.level.
	level *zap.AtomicLevel
	// changes receives a value when the file changed; nil without --watch.
	changes <-chan struct{}
}

// run serves until the server fails, ctx ends, or the process gets SIGINT
// or SIGTERM; then it shuts the server down, letting requests in flight
// finish for the configuration's shutdown_timeout. SIGHUP and changes of
// the file reload the configuration meanwhile, one at a time. A stop asked
// for is not an error.
func (r *reloader) run(ctx context.Context) error {
	term := make(chan os.Signal, 1)
	signal.Notify(term, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(term)
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	served := make(chan error, 1)
	go func() { served <- r.srv.ListenAndServe() }()
	for stop := false; !stop; {
		select {
		case err := <-served:
			return err
		case <-ctx.Done():
			stop = true
		case <-term:
			stop = true
		case <-hup:
			r.reload("SIGHUP")
		case <-r.changes:
			r.reload("file changed")
		}
	}
	// A second SIGINT or SIGTERM now kills the process at once, for a
	// user who does not want to wait for slow requests.
	signal.Stop(term)
	timeout := r.srv.Config().ShutdownTimeout
	if timeout <= 0 {
		timeout = config.DefaultShutdownTimeout
	}
	r.log.Info("shutting down", zap.Duration("timeout", timeout))
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
	defer cancel()
	if err := r.srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	r.log.Info("stopped")
	return nil
}

// reload applies the file again; the server logs and counts the outcome.
func (r *reloader) reload(trigger string) {
	r.log.Info("reloading config", zap.String("file", r.file), zap.String("trigger", trigger))
	if err := r.srv.ReloadFile(r.file); err != nil {
		return
	}
	if r.level != nil {
		if lvl, err := zapcore.ParseLevel(r.srv.Config().Log.Level); err == nil {
			r.level.SetLevel(lvl)
		}
	}
}
