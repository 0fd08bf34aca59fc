// Command affinity is a sticky-session reverse proxy, and the tools around it:
// a config checker and a demo backend to put behind it.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"
)

// Exit codes, so scripts can tell a bad command line from a bad config.
const (
	exitOK      = 0
	exitFailure = 1 // invalid config, or a failure while running
	exitUsage   = 2 // unknown command or flag, wrong arguments
)

// shutdownTimeout bounds how long a server waits for requests in flight once
// asked to stop.
const shutdownTimeout = 30 * time.Second

// errReported is returned by a command that has already told the user what
// went wrong, so that only the exit code is left to set.
var errReported = errors.New("error already reported")

func main() {
	os.Exit(execute(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}

// execute runs the command line args and returns the process exit code. It
// never lets cobra print: errors are printed here, once, without usage text
// for failures that are not usage errors.
func execute(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var ran bool // set once cobra has parsed and checked the command line
	root := newRootCmd(func() { ran = true })
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	cmd, err := root.ExecuteContextC(ctx)
	var ee *exitError
	switch {
	case err == nil:
		return exitOK
	case !ran:
		fmt.Fprintf(stderr, "affinity: %v\nRun '%s --help' for usage.\n", err, cmd.CommandPath())
		return exitUsage
	case errors.As(err, &ee):
		if !errors.Is(ee.err, errReported) {
			fmt.Fprintf(stderr, "affinity: %v\n", ee.err)
		}
		return ee.code
	case errors.Is(err, errReported):
		return exitFailure
	default:
		fmt.Fprintf(stderr, "affinity: %v\n", err)
		return exitFailure
	}
}

// newRootCmd builds the command tree. parsed is called once the command line
// has been accepted, just before a command runs: any error before that is a
// usage error.
func newRootCmd(parsed func()) *cobra.Command {
	root := &cobra.Command{
		Use:   "affinity",
		Short: "A sticky-session reverse proxy",
		Long: "affinity is a reverse proxy and load balancer that keeps clients on the " +
			"backend holding their session (cookie or consistent-hash affinity).",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRun: func(*cobra.Command, []string) {
			parsed()
		},
	}
	root.CompletionOptions.DisableDefaultCmd = true
	root.AddCommand(newServeCmd(), newValidateCmd(), newBackendCmd(), newCtlCmd(), newVersionCmd(), newExperimentCmd())
	return root
}

// levelFlag is a --log-level value checked while flags are parsed, so that a
// wrong level is a usage error like any other bad flag. Empty means unset:
// the config's level applies.
type levelFlag string

// String returns the level set, for help text.
func (f *levelFlag) String() string { return string(*f) }

// Set accepts the levels a config file accepts.
func (f *levelFlag) Set(s string) error {
	switch s {
	case "debug", "info", "warn", "error":
		*f = levelFlag(s)
		return nil
	}
	return fmt.Errorf("%q: want debug, info, warn or error", s)
}

// Type names the flag's kind in help text.
func (*levelFlag) Type() string { return "level" }

// runUntilSignal runs serve until it fails or ctx ends or the process gets
// SIGINT or SIGTERM; then it calls shutdown, which has shutdownTimeout to let
// requests in flight finish. serve must return http.ErrServerClosed once
// shutdown is called, as http.Server.Serve does. A stop asked for is not an
// error.
func runUntilSignal(ctx context.Context, log *zap.Logger, serve func() error, shutdown func(context.Context) error) error {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	served := make(chan error, 1)
	go func() { served <- serve() }()
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	// A second signal now kills the process at once, for a user who does not
	// want to wait for slow requests.
	stop()
	log.Info("shutting down", zap.Duration("timeout", shutdownTimeout))
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	if err := shutdown(sctx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	log.Info("stopped")
	return nil
}
