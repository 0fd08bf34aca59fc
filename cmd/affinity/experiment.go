package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/affinityproxy/affinity/internal/experiment"
)

// newExperimentCmd builds `affinity experiment`: the harness that measures
// the claims about sticky sessions on real processes.
func newExperimentCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "experiment",
		Short: "Measure what sticky sessions keep and lose, on this machine",
		Long: "Run balancers × session stores against scripted faults on real processes " +
			"(demo backends and the proxy, started from this binary) and write a report: " +
			"tables, charts, and one finding per claim, all from the numbers measured.",
		Args: cobra.NoArgs,
	}
	cmd.AddCommand(newExperimentRunCmd(), newExperimentListCmd())
	return cmd
}

// experimentFlags are the options of `affinity experiment run`.
type experimentFlags struct {
	preset    string
	quick     bool
	out       string
	redisAddr string
}

func newExperimentRunCmd() *cobra.Command {
	var f experimentFlags
	cmd := &cobra.Command{
		Use:   "run [FILE]",
		Short: "Run an experiment: a preset, or the spec in FILE",
		Long: "Run the experiment named by --preset (see `affinity experiment list`) or described in " +
			"the YAML spec FILE. Each cell of balancers × stores starts its own backends and proxy on " +
			"127.0.0.1, plays the same open-loop load and faults, and is stopped before the next. " +
			"The report (report.md, results.json, timeline.csv, charts) goes to --out. Ctrl-C stops " +
			"the run, every process it started, and writes the cells done so far.",
		Args: func(cmd *cobra.Command, args []string) error {
			if err := cobra.MaximumNArgs(1)(cmd, args); err != nil {
				return err
			}
			if (len(args) == 1) == cmd.Flags().Changed("preset") {
				return errors.New("give either a spec FILE or --preset NAME (see 'affinity experiment list')")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			file := ""
			if len(args) == 1 {
				file = args[0]
			}
			return runExperiment(cmd.Context(), cmd.OutOrStdout(), file, f)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.preset, "preset", "", "built-in experiment to run: "+strings.Join(presetNames(), ", "))
	fl.BoolVar(&f.quick, "quick", false, "the short version: a shorter load, a smaller matrix, the same story")
	fl.StringVar(&f.out, "out", "", "report directory (default reports/<name>-<timestamp>)")
	fl.StringVar(&f.redisAddr, "redis-addr", "", "use this Redis (host:port) instead of an embedded one per cell; "+
		"store faults then cannot run, and its data is shared by every cell")
	return cmd
}

func presetNames() []string {
	var names []string
	for _, p := range experiment.Presets() {
		names = append(names, p.Name)
	}
	return names
}

// runExperiment runs the experiment and writes its report, also when the
// run is interrupted after some cells.
func runExperiment(ctx context.Context, stdout io.Writer, file string, f experimentFlags) error {
	var (
		spec experiment.Spec
		err  error
	)
	if file != "" {
		spec, err = experiment.LoadSpec(file)
	} else {
		spec, err = experiment.Preset(f.preset)
	}
	if err != nil {
		return err
	}
	if f.quick {
		spec = spec.Shortened()
	}
	opts := experiment.Options{
		RedisAddr: f.redisAddr,
		Progress:  stdout,
		Quick:     f.quick,
		Version:   versionString(),
		Command:   reproduce(file, f),
	}
	// What would fail the run later fails it now, before a report folder
	// is made and announced.
	if err := experiment.Preflight(ctx, spec, opts); err != nil {
		return err
	}
	out := f.out
	if out == "" {
		out = filepath.Join("reports", spec.Name+"-"+time.Now().Format("20060102-150405"))
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return fmt.Errorf("experiment: %w", err)
	}

	// The first Ctrl-C stops the run in order; after it, a second one
	// kills the harness at once (its children die with it).
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	context.AfterFunc(ctx, stop)

	fmt.Fprintf(stdout, "affinity experiment %s%s: %d cells × %v of load; report in %s\n",
		spec.Name, map[bool]string{true: " (quick)"}[f.quick], spec.Cells(), spec.Duration, out)
	opts.Dir = out
	res, runErr := experiment.Run(ctx, spec, opts)
	if res == nil || len(res.Cells) == 0 {
		if runErr != nil {
			return fmt.Errorf("experiment: %w", runErr)
		}
		return nil
	}
	paths, err := experiment.WriteReport(out, res)
	if err != nil {
		return errors.Join(runErr, err)
	}
	fmt.Fprintln(stdout)
	experiment.WriteSummary(stdout, res)
	fmt.Fprintf(stdout, "\nwrote %d files in %s: report.md, results.json, timeline.csv and charts\n", len(paths), out)
	if runErr != nil {
		return fmt.Errorf("experiment stopped after %d of %d cells (the report covers those): %w", len(res.Cells), spec.Cells(), runErr)
	}
	return nil
}

// reproduce is the command line that runs the same experiment again.
func reproduce(file string, f experimentFlags) string {
	args := []string{"affinity", "experiment", "run"}
	if file != "" {
		args = append(args, file)
	} else {
		args = append(args, "--preset", f.preset)
	}
	if f.quick {
		args = append(args, "--quick")
	}
	if f.redisAddr != "" {
		args = append(args, "--redis-addr", f.redisAddr)
	}
	return strings.Join(args, " ")
}

func newExperimentListCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List the built-in experiments",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			w := cmd.OutOrStdout()
			for _, p := range experiment.Presets() {
				q := p.Shortened()
				var faults []string
				for _, ft := range p.Faults {
					faults = append(faults, ft.String())
				}
				if len(faults) == 0 {
					faults = []string{"none"}
				}
				claims := make([]string, len(p.Claims))
				for i, c := range p.Claims {
					claims[i] = fmt.Sprint(c)
				}
				if len(claims) == 0 {
					claims = []string{"none"}
				}
				fmt.Fprintf(w, "%s: %s\n  claims %s; %d backends, %d users, %.0f arrivals/s\n"+
					"  full:  %d cells (%s × %s), %v each; faults: %s\n  quick: %d cells (%s × %s), %v each, %d users\n",
					p.Name, p.Title, strings.Join(claims, ", "), p.Backends, p.Users, p.Rate,
					p.Cells(), strings.Join(p.Balancers, ", "), strings.Join(p.Stores, ", "), p.Duration, strings.Join(faults, ", "),
					q.Cells(), strings.Join(q.Balancers, ", "), strings.Join(q.Stores, ", "), q.Duration, q.Users)
			}
			return nil
		},
	}
}
