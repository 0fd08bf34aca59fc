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
	fl.StringVar(&f.preset, "preset", "", "built-in experiment to run: "+strings.Join(presetNames(), ", ")+
		", or "+allPresets+" for every one, each in a folder of its own under --out, with an index of every claim's verdict")
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

// allPresets is the --preset value that runs every preset.
const allPresets = "all"

// runExperiment runs the experiment and writes its report, also when the
// run is interrupted after some cells.
func runExperiment(ctx context.Context, stdout io.Writer, file string, f experimentFlags) error {
	if file == "" && f.preset == allPresets {
		return runAll(ctx, stdout, f)
	}
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
	opts := options(stdout, f, reproduce(file, f))
	// What would fail the run later fails it now, before a report folder
	// is made and announced.
	if err := experiment.Preflight(ctx, spec, opts); err != nil {
		return err
	}
	out := f.out
	if out == "" {
		out = filepath.Join("reports", spec.Name+"-"+time.Now().Format("20060102-150405"))
	}
	ctx, stop := interruptible(ctx)
	defer stop()
	_, err = runOne(ctx, stdout, spec, opts, out)
	return err
}

// options are the run's options for the flags: every cell reports to
// stdout as it ends.
func options(stdout io.Writer, f experimentFlags, command string) experiment.Options {
	return experiment.Options{
		RedisAddr: f.redisAddr,
		Progress:  stdout,
		Quick:     f.quick,
		Version:   versionString(),
		Command:   command,
	}
}

// interruptible returns ctx ended by the first Ctrl-C (or SIGTERM), which
// stops the run in order; after it, a second one kills the harness at once
// (its children die with it).
func interruptible(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	context.AfterFunc(ctx, stop)
	return ctx, stop
}

// runOne runs spec into the folder out and writes its report, also when
// the run is interrupted after some cells. It returns the results, nil
// when no cell ran.
func runOne(ctx context.Context, stdout io.Writer, spec experiment.Spec, opts experiment.Options, out string) (*experiment.Results, error) {
	if err := os.MkdirAll(out, 0o755); err != nil {
		return nil, fmt.Errorf("experiment: %w", err)
	}
	fmt.Fprintf(stdout, "affinity experiment %s%s: %d cells × %v of load; report in %s\n",
		spec.Name, map[bool]string{true: " (quick)"}[opts.Quick], spec.Cells(), spec.Duration, out)
	opts.Dir = out
	res, runErr := experiment.Run(ctx, spec, opts)
	if res == nil || len(res.Cells) == 0 {
		if runErr != nil {
			return nil, fmt.Errorf("experiment: %w", runErr)
		}
		return nil, nil
	}
	paths, err := experiment.WriteReport(out, res)
	if err != nil {
		return res, errors.Join(runErr, err)
	}
	fmt.Fprintln(stdout)
	experiment.WriteSummary(stdout, res)
	fmt.Fprintf(stdout, "\nwrote %d files in %s: report.md, results.json, timeline.csv and charts\n", len(paths), out)
	if runErr != nil {
		return res, fmt.Errorf("experiment stopped after %d of %d cells (the report covers those): %w", len(res.Cells), spec.Cells(), runErr)
	}
	return res, nil
}

// runAll runs every preset, each into a folder of its own under --out, and
// writes an index of them: every claim's verdict, linked to its report. A
// preset that fails does not stop the others; Ctrl-C does, and the index
// covers what ran.
func runAll(ctx context.Context, stdout io.Writer, f experimentFlags) error {
	command := reproduce("", f)
	var specs []experiment.Spec
	for _, p := range experiment.Presets() {
		if f.quick {
			p = p.Shortened()
		}
		if err := experiment.Preflight(ctx, p, options(stdout, f, command)); err != nil {
			return fmt.Errorf("preset %s: %w (run the others one by one, or all without --redis-addr)", p.Name, err)
		}
		specs = append(specs, p)
	}
	out := f.out
	if out == "" {
		out = filepath.Join("reports", allPresets+"-"+time.Now().Format("20060102-150405"))
	}
	ctx, stop := interruptible(ctx)
	defer stop()
	var runs []experiment.Ran
	var errs []error
	for _, spec := range specs {
		one := f
		one.preset = spec.Name
		res, err := runOne(ctx, stdout, spec, options(stdout, f, reproduce("", one)), filepath.Join(out, spec.Name))
		r := experiment.Ran{Preset: spec.Name, Dir: spec.Name, Results: res}
		if err != nil {
			r.Err = err.Error()
			errs = append(errs, fmt.Errorf("preset %s: %w", spec.Name, err))
		}
		runs = append(runs, r)
		if ctx.Err() != nil {
			break
		}
		fmt.Fprintln(stdout)
	}
	if err := experiment.WriteIndex(out, runs, command); err != nil {
		errs = append(errs, err)
	}
	fmt.Fprintf(stdout, "index of %d presets in %s\n", len(runs), filepath.Join(out, "index.md"))
	return errors.Join(errs...)
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

// matrix writes the dimensions of s: "cookie, learn × memory, redis ×
// mode=remove, mode=drain".
func matrix(s experiment.Spec) string {
	m := strings.Join(s.Balancers, ", ") + " × " + strings.Join(s.Stores, ", ")
	if len(s.Variants) > 0 {
		m += " × " + strings.Join(s.Variants, ", ")
	}
	return m
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
					"  full:  %d cells (%s), %v each; faults: %s\n  quick: %d cells (%s), %v each, %d users\n",
					p.Name, p.Title, strings.Join(claims, ", "), p.Backends, p.Users, p.Rate,
					p.Cells(), matrix(p), p.Duration, strings.Join(faults, ", "),
					q.Cells(), matrix(q), q.Duration, q.Users)
			}
			return nil
		},
	}
}
