package experiment

import (
	"fmt"
	"slices"
	"strings"
)

// column is one column of report.md's results table: its heading, its
// figure in a cell, and whether the run's cells have that figure at all.
type column struct {
	head   string
	figure func(c *CellResult) string
	// any, when not nil, says whether the column is shown: only when some
	// cell has the figure.
	any func(c *CellResult) bool
}

// columns are the results table's, in order.
var columns = []column{
	{head: "balancer", figure: (*CellResult).BalancerEntry},
	{head: "store", figure: (*CellResult).StoreEntry},
	{head: "variant", figure: (*CellResult).RunEntry, any: func(c *CellResult) bool { return c.RunEntry() != "" }},
	{head: "requests", figure: func(c *CellResult) string { return fmt.Sprint(c.Requests) }},
	{head: "errors", figure: func(c *CellResult) string { return fmt.Sprint(c.Errors) }},
	{head: "skipped", figure: func(c *CellResult) string { return fmt.Sprint(c.Skipped) }},
	{head: "users", figure: func(c *CellResult) string { return fmt.Sprint(c.Users) }},
	{
		head:   "busiest tenth %",
		figure: func(c *CellResult) string { return fmt.Sprintf("%.1f", c.BusiestTenthPct) },
		any:    func(c *CellResult) bool { return c.BusiestTenthPct > 20 },
	},
	{head: "sessions lost %", figure: func(c *CellResult) string { return fmt.Sprintf("%.1f", c.SessionsLostPct) }},
	{
		head: "users moved %",
		figure: func(c *CellResult) string {
			if c.UsersMovedPct == nil {
				return "-"
			}
			return fmt.Sprintf("%.1f of %d", *c.UsersMovedPct, c.UsersMovedOf)
		},
		any: func(c *CellResult) bool { return c.UsersMovedPct != nil },
	},
	{
		head:   "hash moves %",
		figure: func(c *CellResult) string { return opt(c.UsersMovedPredictedPct, "%.1f") },
		any:    func(c *CellResult) bool { return c.UsersMovedPredictedPct != nil },
	},
	{head: "imbalance", figure: func(c *CellResult) string { return fmt.Sprintf("%.2f", c.Imbalance) }},
	{head: "worst second", figure: func(c *CellResult) string { return fmt.Sprintf("%.2f", c.ImbalancePeak) }},
	{
		head:   "off first choice %",
		figure: func(c *CellResult) string { return opt(c.LeftFirstChoicePct, "%.1f") },
		any:    func(c *CellResult) bool { return c.LeftFirstChoicePct != nil },
	},
	{
		head: "replays accepted",
		figure: func(c *CellResult) string {
			if c.ReplaysAccepted == nil {
				return "-"
			}
			return fmt.Sprintf("%d of %d", *c.ReplaysAccepted, c.Replays)
		},
		any: func(c *CellResult) bool { return c.ReplaysAccepted != nil },
	},
	{
		head:   "checkouts",
		figure: func(c *CellResult) string { return fmt.Sprint(c.Checkouts) },
		any:    checkoutsMeasured,
	},
	{
		head:   "duplicate orders",
		figure: func(c *CellResult) string { return fmt.Sprint(c.DuplicateOrders) },
		any:    checkoutsMeasured,
	},
	{
		head:   "failed checkouts",
		figure: func(c *CellResult) string { return fmt.Sprint(c.FailedCheckouts) },
		any:    checkoutsMeasured,
	},
	{
		head:   "checkout p99 ms",
		figure: func(c *CellResult) string { return fmt.Sprintf("%.0f", c.CheckoutP99Ms) },
		any:    checkoutsMeasured,
	},
	{
		head:   "deploy s",
		figure: func(c *CellResult) string { return opt(c.DeploySeconds, "%.1f") },
		any:    func(c *CellResult) bool { return c.Deploys != nil },
	},
	{
		head:   "per backend s",
		figure: func(c *CellResult) string { return perBackend(c) },
		any:    func(c *CellResult) bool { return c.Deploys != nil },
	},
	{head: "p50 ms", figure: func(c *CellResult) string { return fmt.Sprintf("%.2f", c.P50Ms) }},
	{head: "p95 ms", figure: func(c *CellResult) string { return fmt.Sprintf("%.2f", c.P95Ms) }},
	{head: "p99 ms", figure: func(c *CellResult) string { return fmt.Sprintf("%.2f", c.P99Ms) }},
	{head: "ok rps", figure: func(c *CellResult) string { return fmt.Sprintf("%.0f", c.ThroughputRPS) }},
	{head: "cache hit %", figure: func(c *CellResult) string { return opt(c.CacheHitPct, "%.1f") }},
	{head: "store ops/req", figure: func(c *CellResult) string { return opt(c.StoreOpsPerRequest, "%.2f") }},
	{head: "bytes/req", figure: func(c *CellResult) string { return fmt.Sprintf("%.0f", c.BytesPerRequest) }},
}

// checkoutsMeasured reports whether c is a cell whose checkouts the run is
// about: its users send keys or not (retry-safety), or the shop counted a
// duplicate order.
func checkoutsMeasured(c *CellResult) bool {
	return c.Variant["client"] != "" || c.DuplicateOrders > 0
}

// resultsTable renders the cells of res as a markdown table of the columns
// that apply, and the notes that say what each figure counts.
func resultsTable(res *Results) string {
	var shown []column
	for _, col := range columns {
		if col.any == nil || slices.ContainsFunc(res.Cells, func(c CellResult) bool { return col.any(&c) }) {
			shown = append(shown, col)
		}
	}
	var b strings.Builder
	for i, col := range shown {
		b.WriteString("| " + col.head + " ")
		if i == len(shown)-1 {
			b.WriteString("|\n")
		}
	}
	for i, col := range shown {
		if i < 2 || col.head == "variant" || col.head == "per backend s" {
			b.WriteString("|---")
		} else {
			b.WriteString("|--:")
		}
	}
	b.WriteString("|\n")
	for i := range res.Cells {
		for _, col := range shown {
			b.WriteString("| " + col.figure(&res.Cells[i]) + " ")
		}
		b.WriteString("|\n")
	}
	if slices.ContainsFunc(shown, func(c column) bool { return c.head == "busiest tenth %" }) {
		b.WriteString("\nBusiest tenth: the share of the requests sent by the tenth of the users who sent most.")
	}
	b.WriteString("\nSessions lost: share of the users that logged in (the users column) whose workflow broke at least once (409).")
	if slices.ContainsFunc(shown, func(c column) bool { return c.head == "users moved %" }) {
		b.WriteString(" Users moved: share of the users answered both before the first kill, add or remove and once the proxy " +
			"routed by it (the number after \"of\": those answered on both sides, which may be fewer than the users who logged in, " +
			"so the two shares can have different denominators), whose backend differs: the last before against the first after.")
	}
	if slices.ContainsFunc(shown, func(c column) bool { return c.head == "hash moves %" }) {
		b.WriteString(" Hash moves: the share of the same users that the balancer's own hash, built from the cell's config, " +
			"sends elsewhere after the change.")
	}
	b.WriteString(" Imbalance: max/mean over the backends of their responses per second while each was in rotation " +
		"(a killed, hung, removed or not yet added backend is left out while it is); worst second: the highest imbalance of any one second.")
	if slices.ContainsFunc(shown, func(c column) bool { return c.head == "off first choice %" }) {
		b.WriteString(" Off first choice: share of the responses not given by the backend the hash picks for the user " +
			"over the backends in rotation (bounded loads and retries send requests elsewhere).")
	}
	if slices.ContainsFunc(shown, func(c column) bool { return c.head == "replays accepted" }) {
		b.WriteString(" Replays accepted: of the requests made after a logout with the session cookie held before it, " +
			"those the shop answered as if the user were still logged in; a refused replay is not an error.")
	}
	if slices.ContainsFunc(shown, func(c column) bool { return c.head == "checkouts" }) {
		b.WriteString(" Checkouts: the carts the users tried to check out, each once however often its checkout was sent; " +
			"duplicate orders: orders the shop placed for a cart that already had one (a checkout that ran twice), as the backends " +
			"counted them; failed checkouts: carts whose checkout never got an order back; checkout p99: of the successful checkouts.")
	}
	if slices.ContainsFunc(shown, func(c column) bool { return c.head == "deploy s" }) {
		b.WriteString(" Deploy: from the start of the rolling deploy until the last backend was back in service (- when it did not end " +
			"before the load did); per backend: each backend's time out of service, in order, \"timed out\" when its drain did not end " +
			"within the drain's timeout and it was stopped with users still on it.")
	}
	b.WriteString(" Latency and ok rps count successful requests.\n")
	return b.String()
}
