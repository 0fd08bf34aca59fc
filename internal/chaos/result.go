package chaos

import (
	"cmp"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/affinityproxy/affinity/internal/harness"
)

// Result is what a run measured. Counts are of the load's requests only: the
// probes that watch for the pool to heal and the fresh clients sent after
// the load are reported in their own fields.
type Result struct {
	Fault  Fault
	Victim string // name of the backend the fault hit

	Requests  int // requests of the load, all of which were sent
	Failed    int // non-2xx responses and transport errors
	FailedGET int // the part of Failed that were GET requests
	// Failures breaks Failed down by kind: "HTTP 502", "timeout" (the
	// client's deadline), "connection" (refused, reset, closed early), or
	// "no X-Backend" (a 2xx that does not name its backend).
	Failures map[string]int

	// Moved counts clients served by more than one backend in a row, in the
	// order their responses arrived: each move costs an in-memory session.
	Moved int
	// MovedTwice counts clients that moved more than once, losing their
	// session again each time: sent back to the victim once it recovered,
	// or bounced between the survivors while it failed.
	MovedTwice int
	// Returned counts clients served by the victim again after they had
	// moved off it: the peers' "flapped back".
	Returned int

	// PinnedAtFault is how many clients the victim had served last when the
	// fault struck, and InFlightAtFault how many of their requests were
	// unanswered then: the requests a hang could not help but hold.
	PinnedAtFault   int
	InFlightAtFault int

	// WholeAfter is the time from recovery (restart or SIGCONT) until the
	// victim served a request started after it: how long the pool took to
	// be whole again. It is -1 when that never happened within the run.
	WholeAfter time.Duration

	// NewClients fresh clients were sent after the load, two requests each;
	// NewOnVictim of them were placed on the recovered victim.
	NewClients  int
	NewOnVictim int

	P50, P99 time.Duration // latency of the load's requests, failures included

	// Reloads is how many times the config was rewritten during the load
	// (Scenario.Reloads), and Reloaded how many reloads the proxy logged
	// as applied.
	Reloads, Reloaded int
}

// record is the outcome of one request.
type record struct {
	client  int           // index of the virtual user; -1 for one without cookies
	method  string        // GET or POST
	start   time.Duration // when it was sent, since the load began
	latency time.Duration // until its body was read or it failed
	backend string        // X-Backend of a successful response
	fail    string        // empty for a success, else a key of Result.Failures
}

// done is when the client had the whole answer, since the load began.
func (r record) done() time.Duration { return r.start + r.latency }

// countFailures fills the request and failure counts of res from recs.
func countFailures(res *Result, recs []record) {
	res.Requests = len(recs)
	res.Failures = make(map[string]int)
	for _, r := range recs {
		if r.fail == "" {
			continue
		}
		res.Failed++
		res.Failures[r.fail]++
		if r.method == http.MethodGet {
			res.FailedGET++
		}
	}
}

// servedBy returns, for each of n clients, the backends that served it, in
// the order the responses arrived, with repeats collapsed: [b2 b1] is a
// client moved once. Arrival order is what the client's cookie jar follows,
// so it is the order in which its session moved. Every request of the load
// carries a cookie (the clients are placed before it starts, see
// load.pin), so a change of backend is the proxy's doing.
func servedBy(recs []record, n int) [][]string {
	sorted := slices.Clone(recs)
	slices.SortStableFunc(sorted, func(a, b record) int {
		return cmp.Or(cmp.Compare(a.done(), b.done()), cmp.Compare(a.start, b.start))
	})
	seq := make([][]string, n)
	for _, r := range sorted {
		if r.fail != "" || r.client < 0 || r.client >= n {
			continue
		}
		s := seq[r.client]
		if len(s) == 0 || s[len(s)-1] != r.backend {
			seq[r.client] = append(s, r.backend)
		}
	}
	return seq
}

// countMoves returns how many of the sequences of servedBy show a move, how
// many more than one, and how many went back to victim after leaving it.
func countMoves(seq [][]string, victim string) (moved, twice, returned int) {
	for _, s := range seq {
		if len(s) >= 2 {
			moved++
		}
		if len(s) >= 3 {
			twice++
		}
		// Repeats are collapsed, so a second occurrence is a return.
		if countOf(s, victim) >= 2 {
			returned++
		}
	}
	return moved, twice, returned
}

// countOf counts the elements of s equal to v.
func countOf(s []string, v string) int {
	n := 0
	for _, x := range s {
		if x == v {
			n++
		}
	}
	return n
}

// wholeAfter returns how long after recoverAt the victim first served a
// request sent at or after recoverAt, or -1 if it never did. Requests sent
// earlier do not count: a hung backend answers those when it resumes, before
// the proxy sends it anything new.
func wholeAfter(recs []record, victim string, recoverAt time.Duration) time.Duration {
	first := time.Duration(-1)
	for _, r := range recs {
		if r.fail == "" && r.backend == victim && r.start >= recoverAt && (first < 0 || r.start < first) {
			first = r.start
		}
	}
	if first < 0 {
		return -1
	}
	return first - recoverAt
}

// latencies returns the p50 and p99 latency of recs.
func latencies(recs []record) (p50, p99 time.Duration) {
	ds := make([]time.Duration, len(recs))
	for i, r := range recs {
		ds[i] = r.latency
	}
	slices.Sort(ds)
	return harness.Percentile(ds, 50), harness.Percentile(ds, 99)
}

// tableHeader starts with the columns of the peers' failover table, in its
// order, so rows of both can be set side by side.
const tableHeader = "| proxy | fault | requests | failed | clients moved | moved twice (flapped back) | new clients on %[1]s after | failed GET | back on %[1]s | pool whole after | p50 | p99 |\n" +
	"|---|---|---|---|---|---|---|---|---|---|---|---|\n"

// Table renders results as a markdown table, one row per run. The victim's
// name in the header is the first result's.
func Table(rs ...Result) string {
	var b strings.Builder
	victim := "the victim"
	if len(rs) > 0 {
		victim = rs[0].Victim
	}
	fmt.Fprintf(&b, tableHeader, victim)
	for _, r := range rs {
		fault := string(r.Fault)
		if r.Reloads > 0 {
			fault += fmt.Sprintf(" + %d reloads", r.Reloads)
		}
		whole := "never"
		if r.WholeAfter >= 0 {
			whole = fmt.Sprintf("%.2f s", r.WholeAfter.Seconds())
		}
		fmt.Fprintf(&b, "| affinity | %s | %d | %d (%.1f%%) | %d | %d | %d/%d | %d | %d | %s | %s | %s |\n",
			fault, r.Requests, r.Failed, 100*float64(r.Failed)/float64(max(r.Requests, 1)),
			r.Moved, r.MovedTwice, r.NewOnVictim, r.NewClients, r.FailedGET, r.Returned, whole,
			fmtMillis(r.P50), fmtMillis(r.P99))
	}
	return b.String()
}

// String renders r as a one-row Table.
func (r Result) String() string { return Table(r) }

func fmtMillis(d time.Duration) string {
	return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
}
