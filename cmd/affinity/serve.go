package main

import (
	"fmt"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/affinityproxy/affinity/config"
	"github.com/affinityproxy/affinity/proxy"
)

// newServeCmd builds `affinity serve`: the proxy itself.
func newServeCmd() *cobra.Command {
	var (
		file  string
		level levelFlag
	)
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the proxy",
		Long: "Run the proxy with the configuration in --config until SIGINT or SIGTERM, " +
			"then stop accepting connections and let requests in flight finish (30 s at most).",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.Load(file)
			if err != nil {
				return reportConfigError(cmd.ErrOrStderr(), file, err)
			}
			if level != "" {
				cfg.Log.Level = string(level)
			}
			log, err := newLogger(cfg.Log.Level, cfg.Log.Format, cmd.ErrOrStderr())
			if err != nil {
				return fmt.Errorf("%s: %w", file, err)
			}
			defer func() { _ = log.Sync() }()
			srv, err := proxy.NewServer(cfg, log)
			if err != nil {
				return fmt.Errorf("%s: %w", file, err)
			}
			log.Info("starting", zap.String("config", file), zap.String("version", versionString()))
			return runUntilSignal(cmd.Context(), log, srv.ListenAndServe, srv.Shutdown)
		},
	}
	cmd.Flags().StringVarP(&file, "config", "c", "affinity.yaml", "configuration file")
	cmd.Flags().Var(&level, "log-level", "override the config's log.level: debug, info, warn or error")
	return cmd
}
