package experiment

import (
	"cmp"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Ran is one preset of a run of several (`--preset all`): its results, or
// why it has none.
type Ran struct {
	Preset string
	// Dir is the preset's report folder, relative to the index.
	Dir     string
	Results *Results // nil when the preset did not run
	Err     string   // why it stopped, or did not run; empty when it ran whole
}

// Summary is summary.json: every claim's verdict from the presets of the
// run, and each preset's report.
type Summary struct {
	Command string          `json:"command"`
	Started time.Time       `json:"started"`
	Machine Machine         `json:"machine"`
	Claims  []SummaryClaim  `json:"claims"`
	Presets []SummaryPreset `json:"presets"`
}

// SummaryClaim is one claim as one preset measured it.
type SummaryClaim struct {
	Claim    int    `json:"claim"`
	Text     string `json:"text"`
	Preset   string `json:"preset"`
	Verdict  string `json:"verdict"`
	Headline string `json:"headline,omitempty"`
	Report   string `json:"report"`
}

// SummaryPreset is one preset of the run.
type SummaryPreset struct {
	Preset  string  `json:"preset"`
	Title   string  `json:"title"`
	Cells   int     `json:"cells"`
	Elapsed float64 `json:"elapsed_s"`
	Report  string  `json:"report"`
	Error   string  `json:"error,omitempty"`
}

// Summarize gathers the claims and presets of runs, the claims in order of
// their numbers, each claim's presets in the order of runs.
func Summarize(runs []Ran, command string) Summary {
	s := Summary{Command: command}
	for _, r := range runs {
		report := filepath.ToSlash(filepath.Join(r.Dir, "report.md"))
		p := SummaryPreset{Preset: r.Preset, Report: report, Error: r.Err}
		if res := r.Results; res != nil {
			conclude(res)
			p.Title, p.Cells, p.Elapsed = res.Title, len(res.Cells), res.Elapsed
			if !res.Started.IsZero() && (s.Started.IsZero() || res.Started.Before(s.Started)) {
				s.Started, s.Machine = res.Started, res.Machine
			}
			for _, f := range res.Findings {
				s.Claims = append(s.Claims, SummaryClaim{Claim: f.Claim, Text: claimText[f.Claim], Preset: r.Preset,
					Verdict: f.Verdict, Headline: f.Headline, Report: report})
			}
		}
		s.Presets = append(s.Presets, p)
	}
	slices.SortStableFunc(s.Claims, func(a, b SummaryClaim) int { return cmp.Compare(a.Claim, b.Claim) })
	return s
}

// WriteIndex writes index.md, the claims' verdicts on one screen with a
// link to each preset's report, and summary.json into dir.
func WriteIndex(dir string, runs []Ran, command string) error {
	s := Summarize(runs, command)
	var b strings.Builder
	b.WriteString("# affinity experiment: every preset\n\n")
	if !s.Started.IsZero() {
		m := s.Machine
		fmt.Fprintf(&b, "affinity %s, %s, nproc %d, %s; started %s.\n\n", m.Affinity, m.CPUModel, m.CPUs, m.OS,
			s.Started.UTC().Format("2006-01-02 15:04 UTC"))
	}
	b.WriteString("| # | claim | verdict | headline figure | preset |\n|--:|---|---|---|---|\n")
	for _, c := range s.Claims {
		headline := cmp.Or(c.Headline, "-")
		fmt.Fprintf(&b, "| %d | %s | %s | %s | [%s](%s) |\n", c.Claim, c.Text, c.Verdict, headline, c.Preset, c.Report)
	}
	b.WriteString("\nPresets: ")
	parts := make([]string, len(s.Presets))
	for i, p := range s.Presets {
		switch {
		case p.Cells == 0:
			parts[i] = fmt.Sprintf("%s (not run: %s)", p.Preset, p.Error)
		case p.Error != "":
			parts[i] = fmt.Sprintf("[%s](%s) (%d cells, %.0f s; stopped: %s)", p.Preset, p.Report, p.Cells, p.Elapsed, p.Error)
		default:
			parts[i] = fmt.Sprintf("[%s](%s) (%d cells, %.0f s)", p.Preset, p.Report, p.Cells, p.Elapsed)
		}
	}
	b.WriteString(strings.Join(parts, ", ") + ".\n\nEach report states its findings with their numbers and pass bands, " +
		"the setup, the tables and the charts. Reproduce:\n\n```sh\n" + command + "\n```\n")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("index: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "index.md"), []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("index: %w", err)
	}
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("index: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "summary.json"), append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("index: %w", err)
	}
	return nil
}
