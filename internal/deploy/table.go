package deploy

import (
	"fmt"
	"strings"
	"time"
)

// Table renders results as a Markdown table, one row per run.
func Table(results []Result) string {
	var b strings.Builder
	b.WriteString("| run | users | requests | errors | at risk | sessions lost | new users on a draining backend | drains (target: took) |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|\n")
	for _, res := range results {
		var steps []string
		for _, d := range res.Deploys {
			step := fmt.Sprintf("%s: %s", d.Target, d.Took.Round(100*time.Millisecond))
			if d.Sessions >= 0 {
				step += fmt.Sprintf(" (%d sessions left)", d.Sessions)
			}
			steps = append(steps, step)
		}
		newOn := fmt.Sprint(res.NewOnTarget)
		if res.Run.Method == Remove {
			newOn = "n/a"
		}
		fmt.Fprintf(&b, "| %s | %d | %d | %d | %d | %d (%.1f%% of users) | %s | %s |\n",
			res.Run, res.Users, res.Requests, res.Errors, res.AtRisk, res.Lost,
			100*float64(res.Lost)/float64(max(res.Users, 1)), newOn, strings.Join(steps, ", "))
	}
	return b.String()
}
