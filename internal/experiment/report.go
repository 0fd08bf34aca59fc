package experiment

import (
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/affinityproxy/affinity/internal/harness"
)

// WriteReport writes the report of res into dir: report.md, results.json,
// timeline.csv and the charts (SVG and PNG). It returns the paths written.
func WriteReport(dir string, res *Results) ([]string, error) {
	conclude(res)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("report directory: %w", err)
	}
	var written []string
	write := func(name string, f func(io.Writer) error) error {
		p := filepath.Join(dir, name)
		w, err := os.Create(p)
		if err != nil {
			return fmt.Errorf("report: %w", err)
		}
		if err := f(w); err != nil {
			_ = w.Close()
			return fmt.Errorf("report: %s: %w", name, err)
		}
		if err := w.Close(); err != nil {
			return fmt.Errorf("report: %w", err)
		}
		written = append(written, p)
		return nil
	}
	charts, err := writeCharts(dir, res)
	written = append(written, charts...)
	if err != nil {
		return written, err
	}
	for _, f := range []struct {
		name string
		fn   func(io.Writer) error
	}{
		{"results.json", func(w io.Writer) error { return writeJSON(w, res) }},
		{"timeline.csv", func(w io.Writer) error { return writeTimeline(w, res) }},
		{"report.md", func(w io.Writer) error { return writeMarkdown(w, res, charts) }},
	} {
		if err := write(f.name, f.fn); err != nil {
			return written, err
		}
	}
	return written, nil
}

func writeJSON(w io.Writer, res *Results) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(res)
}

// writeTimeline writes one row per cell and second: the requests by outcome,
// the latency, and the responses of each backend (b1..bN, the most any cell
// had).
func writeTimeline(w io.Writer, res *Results) error {
	n := 0
	for _, c := range res.Cells {
		n = max(n, len(c.Backends))
	}
	cw := csv.NewWriter(w)
	head := []string{"balancer", "store", "variant", "second", "requests", "ok", "errors", "session_lost", "session_stale", "p50_ms", "p99_ms", "imbalance"}
	for i := 1; i <= n; i++ {
		head = append(head, harness.BackendName(i))
	}
	_ = cw.Write(head)
	for _, c := range res.Cells {
		for _, s := range c.Timeline {
			row := []string{c.BalancerEntry(), c.StoreEntry(), c.RunEntry(), strconv.Itoa(int(s.Start / time.Second)), strconv.Itoa(s.Requests), strconv.Itoa(s.OK),
				strconv.Itoa(s.Errors), strconv.Itoa(s.Lost), strconv.Itoa(s.Stale), f2(s.P50Ms), f2(s.P99Ms), f2(s.Imbalance)}
			for i := 1; i <= n; i++ {
				row = append(row, strconv.Itoa(s.ByBackend[harness.BackendName(i)]))
			}
			_ = cw.Write(row)
		}
	}
	cw.Flush()
	return cw.Error()
}

// writeMarkdown writes report.md.
func writeMarkdown(w io.Writer, res *Results, charts []string) error {
	var b strings.Builder
	s, st := &res.Spec, &res.Settings
	quick := ""
	if res.Quick {
		quick = " (quick)"
	}
	fmt.Fprintf(&b, "# affinity experiment: %s%s\n\n%s.\n\n", res.Preset, quick, res.Title)
	if res.Stopped != "" {
		fmt.Fprintf(&b, "**Stopped early**: %d of %d cells ran (%s). Findings that need a missing cell say so.\n\n",
			len(res.Cells), res.Spec.Cells(), res.Stopped)
	}

	if res.ForYou != "" {
		b.WriteString("**What this means for you**: " + res.ForYou + "\n\n")
	}
	b.WriteString("## Findings\n\n")
	for _, f := range res.Findings {
		fmt.Fprintf(&b, "- **Claim %d** (%s): %s\n  %s\n", f.Claim, f.Verdict, claimText[f.Claim], f.Text)
		if f.Band != "" {
			fmt.Fprintf(&b, "  Pass band: %s.\n", f.Band)
		}
	}
	if len(res.Findings) == 0 {
		b.WriteString("No claim named by this experiment: a spec names the claims of CLAIMS.md it measures with " +
			"`claims: [1, 2]`, or takes them from a preset with `preset: NAME`. See the tables.\n")
	}

	b.WriteString("\n## Setup\n\n")
	variants := ""
	if len(st.Variants) > 0 {
		variants = " × variants " + strings.Join(st.Variants, ", ")
	}
	fmt.Fprintf(&b, "- %d cells: balancers %s × stores %s%s, run one after another, each on fresh processes.\n",
		len(res.Cells), strings.Join(st.Balancers, ", "), strings.Join(st.Stores, ", "), variants)
	checkout := ""
	if st.CheckoutWorkMs > 0 {
		checkout = fmt.Sprintf(", `--checkout-work %gms`: the time a checkout takes between reading the cart and placing the order, "+
			"which it finishes even if its client left", st.CheckoutWorkMs)
	}
	fmt.Fprintf(&b, "- %d backends (b1..b%d, `affinity backend --work %gms`: simulated work per session loaded from Redis, "+
		"on every request with redis and on near-cache misses with cached-redis; memory and token load nothing%s) behind `affinity serve`; "+
		"the proxy checks health every %.0f ms (fall 2, rise 2), waits %.0f ms for a backend's answer, and retries a failed request "+
		"twice, on other backends, where its policy allows: a request that reached no backend, an idempotent method, or a request "+
		"with an Idempotency-Key.",
		st.Backends, st.Backends, st.WorkMs, checkout, st.HealthMs, st.ResponseTimeoutMs)
	if strings.Contains(strings.Join(st.Variants, " "), "retry="+retryAll) {
		b.WriteString(" With retry=all it retries every method, as nginx's `proxy_next_upstream ... non_idempotent` does: a setting of " +
			"`affinity serve` that only the harness sets (a hidden flag), not a configuration key.")
	}
	b.WriteString("\n")
	deal := fmt.Sprintf("in rounds that visit every user once in a shuffled order, so each user gets an arrival every %.2f s on average",
		float64(st.Users)/st.RateRPS)
	if st.Skew > 0 {
		deal = fmt.Sprintf("each to user i with a chance in proportion to 1/i^%g (Zipf's law), so that a few users send most requests", st.Skew)
	}
	fmt.Fprintf(&b, "- Open-loop load: %.0f arrivals/s for %.1f s per cell, dealt to %d users (seed %d) %s. "+
		"An arrival whose user still waits for its previous answer is skipped and counted. "+
		"Latency runs from the scheduled arrival; a request times out after %.0f ms.\n",
		st.RateRPS, st.DurationS, st.Users, st.Seed, deal, st.TimeoutMs)
	fmt.Fprintf(&b, "- Each user repeats: login, add %d to %d items, view the cart, check out. A 409 (session lost or stale) "+
		"sends it back to login; another error retries the same step.", st.Items[0], st.Items[1])
	switch {
	case st.Replay:
		b.WriteString(" After each checkout the user logs out (POST /logout), and its next request replays the cookies it held " +
			"before the logout, as a thief who copied them would (GET /cart); then it logs in again.")
	case st.Logout:
		b.WriteString(" After each checkout the user logs out (POST /logout).")
	}
	if strings.Contains(strings.Join(st.Variants, " "), "client=") {
		b.WriteString(" With client=key, each checkout carries an Idempotency-Key, one per cart, and a failed checkout is sent again " +
			"with it; with client=nokey, none, and a failed checkout is not sent again (the user cannot tell whether the order was " +
			"placed): it starts over with a new cart.")
	}
	if st.Churn > 0 {
		fmt.Fprintf(&b, " After a checkout a user leaves with probability %.2f and a new one (new id, no cookies) takes its place.", st.Churn)
	}

	b.WriteString("\n")
	if len(st.Faults) > 0 {
		fmt.Fprintf(&b, "- Faults, from the start of the load: %s. The times each was applied, and when the proxy was seen routing by it, per cell, are in results.json.\n",
			strings.Join(st.Faults, ", "))
	}
	if slices.ContainsFunc(s.Faults, func(f harness.Fault) bool { return f.Action == harness.Add || f.Action == harness.Remove }) {
		fmt.Fprintf(&b, "- For add and remove the harness rewrote the proxy's config and had the running proxy reload it (SIGHUP), "+
			"then waited until the proxy's /status showed the new set of backends: the proxy kept its listener, its connections "+
			"and the health of the backends that stayed. A removed backend got no new request from then on; %.0f ms later "+
			"it was stopped gracefully (SIGTERM), answering the requests it still held.\n", ms(harness.DrainGrace))
	}
	if slices.ContainsFunc(s.Faults, func(f harness.Fault) bool { return f.Action == harness.Deploy }) {
		fmt.Fprintf(&b, "- The deploy takes every backend in turn, b1 first. With mode=remove: out of the proxy's config (a reload), "+
			"stopped gracefully %.0f ms later, started again and put back in the config. With mode=drain: `affinity ctl drain %s BACKEND "+
			"--wait --idle %gms --timeout %gms` (the drain state: no new user, the backend's own users still served; then a wait until it "+
			"has had no request for the idle window; at the timeout the deploy goes on all the same), a kill, a restart and `affinity ctl "+
			"ready`. Each backend is back in service, as the proxy's /status shows, before the next is taken out.\n",
			ms(harness.DrainGrace), poolName, st.DrainIdleMs, st.DrainTimeoutMs)
	}
	switch {
	case !slices.ContainsFunc(st.Stores, needsRedis):
	case st.RedisStore == "embedded":
		fmt.Fprintf(&b, "- Redis: %s, a fresh one per cell, in the harness's process.\n", res.Machine.Redis)
	default:
		fmt.Fprintf(&b, "- Redis: %s, shared by every cell (session ids are random, so no cell reads another's sessions).\n", res.Machine.Redis)
	}

	b.WriteString("\n## Results\n\n")
	b.WriteString(resultsTable(res))

	head, rule, name := cellColumns(res)
	b.WriteString("\n### Errors by kind\n\n" + head + " errors |\n" + rule + "---|\n")
	for i := range res.Cells {
		c := &res.Cells[i]
		fmt.Fprintf(&b, "%s %s |\n", name(c), kinds(c.ErrorKinds))
	}

	b.WriteString("\n### Backends\n\nResponses per backend and the p99 latency of its successful ones; sessions held and resident " +
		"memory as each running backend reported at the end of the load.\n\n" +
		head + " backend | responses | p99 ms | sessions held | RSS MiB |\n" + rule + "---|--:|--:|--:|--:|\n")
	for i := range res.Cells {
		c := &res.Cells[i]
		for _, be := range c.Backends {
			fmt.Fprintf(&b, "%s %s | %d | %.2f | %d | %.1f |\n", name(c), be.Name, be.Requests, be.P99Ms, be.Sessions, float64(be.RSSBytes)/(1<<20))
		}
	}

	if len(charts) > 0 {
		b.WriteString("\n## Charts\n\nEach chart is also written as SVG beside the PNG. Dashed lines mark the faults.\n\n")
		for _, p := range charts {
			if name := filepath.Base(p); strings.HasSuffix(name, ".png") {
				base := strings.TrimSuffix(name, ".png")
				fmt.Fprintf(&b, "%s\n\n![%s](%s)\n\n", chartCaptions[base], base, name)
			}
		}
	}

	m := res.Machine
	b.WriteString("\n## Machine\n\n")
	fmt.Fprintf(&b, "- CPU: %s, nproc %d (GOMAXPROCS %d)\n- OS: %s, kernel %s\n- Go: %s\n- affinity: %s\n- Redis: %s\n",
		m.CPUModel, m.CPUs, m.GoMaxProc, m.OS, m.Kernel, m.Go, m.Affinity, m.Redis)
	fmt.Fprintf(&b, "- Run started %s, took %.1f s. The harness, the proxy and every backend shared this machine's CPUs.\n",
		res.Started.UTC().Format("2006-01-02 15:04:05 UTC"), res.Elapsed)

	b.WriteString("\n## Reproduce\n\n```sh\n" + res.Command + "\n```\n\n" +
		"Numbers vary from run to run and machine to machine; the users, their carts and the fault times do not.\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// cellColumns returns the heading and the rule of the columns that name a
// cell in report.md's tables (balancer, store, and variant when the run
// has variants), each ending with "|" for the next column, and the row
// start of a cell.
func cellColumns(res *Results) (head, rule string, name func(*CellResult) string) {
	if len(res.Settings.Variants) == 0 {
		return "| balancer | store |", "|---|---|", func(c *CellResult) string {
			return "| " + c.BalancerEntry() + " | " + c.StoreEntry() + " |"
		}
	}
	return "| balancer | store | variant |", "|---|---|---|", func(c *CellResult) string {
		return "| " + c.BalancerEntry() + " | " + c.StoreEntry() + " | " + c.RunEntry() + " |"
	}
}

// chartCaptions say what each chart shows, above it in report.md.
var chartCaptions = map[string]string{
	"timeline":         "Successful and failed requests per second in each cell (failures include 409 session_lost and session_stale).",
	"backend_load":     "Responses per second of each backend in each cell: where the load went when the pool changed.",
	"sessions_lost":    "Share of users whose workflow broke at least once (409 session_lost or session_stale), per cell.",
	"users_moved":      "Share of users whose backend changed across the first kill, add or remove, per cell.",
	"duplicate_orders": "Carts the shop ordered twice, per cell: a checkout that ran on the frozen backend and again where the proxy retried it.",
	"latency":          "Median latency of successful requests, from the scheduled arrival, per cell.",
}

// kinds lists error counts by kind, most frequent first.
func kinds(m map[string]int) string {
	if len(m) == 0 {
		return "none"
	}
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.SortFunc(ks, func(a, b string) int {
		if m[a] != m[b] {
			return m[b] - m[a]
		}
		return strings.Compare(a, b)
	})
	parts := make([]string, len(ks))
	for i, k := range ks {
		parts[i] = fmt.Sprintf("%s %d", k, m[k])
	}
	return strings.Join(parts, ", ")
}

// opt formats an optional figure, "-" when absent.
func opt(v *float64, format string) string {
	if v == nil {
		return "-"
	}
	return fmt.Sprintf(format, *v)
}

func f2(v float64) string { return strconv.FormatFloat(v, 'f', 2, 64) }

// WriteSummary writes the table of the cells and the findings for a
// terminal.
func WriteSummary(w io.Writer, res *Results) {
	conclude(res)
	var b strings.Builder
	b.WriteString("results:\n")
	for i := range res.Cells {
		b.WriteString("  " + cellLine(&res.Cells[i]) + "\n")
	}
	for _, f := range res.Findings {
		fmt.Fprintf(&b, "claim %d (%s): %s\n", f.Claim, f.Verdict, f.Text)
	}
	if res.ForYou != "" {
		fmt.Fprintf(&b, "what this means for you: %s\n", res.ForYou)
	}
	_, _ = io.WriteString(w, b.String())
}
