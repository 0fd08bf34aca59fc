package main

import (
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/affinityproxy/affinity/internal/demoapp"
)

// newBackendCmd builds `affinity backend`: the demo app, to put behind the
// proxy and see which backend serves a client and whether its session
// survived.
func newBackendCmd() *cobra.Command {
	var listen, name string
	cmd := &cobra.Command{
		Use:   "backend",
		Short: "Run a demo backend",
		Long: "Run a demo web app that answers every path with its name, a session id and a " +
			"per-session request counter (cookie " + demoapp.CookieName + ", kept in memory), " +
			"and /healthz with ok. A client that loses its session sees a new id and count=1.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger("info", "console", cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			defer func() { _ = log.Sync() }()
			// Listening before logging means "listening" is only said once
			// it is true, and a busy port fails the command at once.
			ln, err := net.Listen("tcp", listen)
			if err != nil {
				return fmt.Errorf("backend: %w", err)
			}
			if name == "" {
				// The bound address, so that port 0 names the real port.
				name = ln.Addr().String()
			}
			srv := &http.Server{
				Handler:           demoapp.New(name),
				ReadHeaderTimeout: 10 * time.Second,
				ErrorLog:          zap.NewStdLog(log),
			}
			log.Info("backend listening", zap.String("name", name), zap.Stringer("addr", ln.Addr()))
			return runUntilSignal(cmd.Context(), log, func() error { return srv.Serve(ln) }, srv.Shutdown)
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:9001", "address to listen on")
	cmd.Flags().StringVar(&name, "name", "", "backend name shown in responses (default: the --listen address)")
	return cmd
}
