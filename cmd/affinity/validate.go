package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"

	"github.com/spf13/cobra"

	"github.com/affinityproxy/affinity/config"
)

// newValidateCmd builds `affinity validate`: check a config without serving.
func newValidateCmd() *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:   "validate",
		Short: "Check a configuration file",
		Long: "Load and check the configuration in --config as serve does before it listens: " +
			"the file, the certificate, key and CA files it names, and its listen and admin " +
			"addresses, resolved and compared; nothing is started or bound. On success print " +
			"any warnings on stderr and a one-line summary, and exit 0; otherwise print every " +
			"error as FILE:LINE:COL: message, one per line on stderr, and exit 1.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.LoadChecked(file)
			if err != nil {
				return reportConfigError(cmd.ErrOrStderr(), file, err)
			}
			for _, w := range cfg.Warnings {
				fmt.Fprintln(cmd.ErrOrStderr(), w)
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "%s: ok: %s\n", file, summary(cfg))
			return err
		},
	}
	cmd.Flags().StringVarP(&file, "config", "c", "affinity.yaml", "configuration file")
	return cmd
}

// summary counts what a config holds, e.g. "2 routes, 2 pools, 5 backends".
func summary(cfg *config.Config) string {
	backends := 0
	for _, p := range cfg.Pools {
		backends += len(p.Backends)
	}
	return fmt.Sprintf("%s, %s, %s",
		plural(len(cfg.Routes), "route"), plural(len(cfg.Pools), "pool"), plural(backends, "backend"))
}

// plural writes a count with its noun, e.g. "1 pool", "3 pools".
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

// reportConfigError prints the errors of loading file to w, one per line,
// each starting with the file name (FILE:LINE:COL: where there is a
// position), and returns errReported.
func reportConfigError(w io.Writer, file string, err error) error {
	var list config.ErrorList
	var pe *fs.PathError
	switch {
	case errors.As(err, &list):
		for _, e := range list {
			fmt.Fprintln(w, e.Error())
		}
	case errors.As(err, &pe):
		// The path is already the line's prefix; say only what failed.
		fmt.Fprintf(w, "%s: cannot read: %v\n", file, pe.Err)
	default:
		fmt.Fprintf(w, "%s: %v\n", file, err)
	}
	return errReported
}
