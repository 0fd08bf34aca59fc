package chaos

import (
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/affinityproxy/affinity/internal/harness"
)

const ms = time.Millisecond

// ok is a successful GET of client c sent at start and answered after lat.
func ok(c int, start, lat time.Duration, backend string) record {
	return record{client: c, method: "GET", start: start, latency: lat, backend: backend}
}

// failed is a failed request of client c.
func failed(c int, method string, start time.Duration, kind string) record {
	return record{client: c, method: method, start: start, latency: 5 * ms, fail: kind}
}

func TestServedByAndMoves(t *testing.T) {
	tests := []struct {
		name         string
		clients      int
		recs         []record
		want         [][]string
		moved, twice int
		returned     int // to b2
	}{
		{
			name:    "no records",
			clients: 2,
			want:    [][]string{nil, nil},
		},
		{
			name:    "steady clients do not move",
			clients: 2,
			recs:    []record{ok(0, 0, ms, "b1"), ok(1, ms, ms, "b2"), ok(0, 2*ms, ms, "b1"), ok(1, 3*ms, ms, "b2")},
			want:    [][]string{{"b1"}, {"b2"}},
		},
		{
			name:    "a client of the victim moves once; failures are not a backend",
			clients: 2,
			recs: []record{
				ok(0, 0, ms, "b2"), ok(1, 0, ms, "b1"),
				failed(0, "GET", 10*ms, harness.KindConnection),
				ok(0, 20*ms, ms, "b3"), ok(0, 30*ms, ms, "b3"), ok(1, 30*ms, ms, "b1"),
			},
			want:  [][]string{{"b2", "b3"}, {"b1"}},
			moved: 1,
		},
		{
			name:    "sent back to the recovered backend: moved twice, returned",
			clients: 1,
			recs:    []record{ok(0, 0, ms, "b2"), ok(0, 10*ms, ms, "b1"), ok(0, 20*ms, ms, "b2")},
			want:    [][]string{{"b2", "b1", "b2"}},
			moved:   1, twice: 1, returned: 1,
		},
		{
			name:    "bounced between survivors: moved twice, not returned",
			clients: 1,
			recs:    []record{ok(0, 0, ms, "b2"), ok(0, 10*ms, ms, "b1"), ok(0, 20*ms, ms, "b3"), ok(0, 30*ms, ms, "b1")},
			want:    [][]string{{"b2", "b1", "b3", "b1"}},
			moved:   1, twice: 1,
		},
		{
			name:    "moved onto the victim and off it is no return",
			clients: 1,
			recs:    []record{ok(0, 0, ms, "b1"), ok(0, 10*ms, ms, "b2"), ok(0, 20*ms, ms, "b3")},
			want:    [][]string{{"b1", "b2", "b3"}},
			moved:   1, twice: 1,
		},
		{
			// Sent first, answered last: the slow answer is the latest
			// the client saw, so it counts after the fast one.
			name:    "arrival order, not sending order",
			clients: 1,
			recs:    []record{ok(0, 0, ms, "b2"), ok(0, 10*ms, 100*ms, "b3"), ok(0, 20*ms, ms, "b1")},
			want:    [][]string{{"b2", "b1", "b3"}},
			moved:   1, twice: 1,
		},
		{
			name:    "answers at the same time keep sending order",
			clients: 1,
			recs:    []record{ok(0, 0, ms, "b2"), ok(0, 25*ms, 5*ms, "b1"), ok(0, 20*ms, 10*ms, "b2")},
			want:    [][]string{{"b2", "b1"}},
			moved:   1,
		},
		{
			name:    "probes and unknown clients are ignored",
			clients: 1,
			recs:    []record{ok(-1, 0, ms, "b9"), ok(0, ms, ms, "b1"), ok(3, 2*ms, ms, "b8")},
			want:    [][]string{{"b1"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := servedBy(tt.recs, tt.clients)
			if !slices.EqualFunc(got, tt.want, slices.Equal) {
				t.Errorf("servedBy = %q, want %q", got, tt.want)
			}
			moved, twice, returned := countMoves(got, "b2")
			if moved != tt.moved || twice != tt.twice || returned != tt.returned {
				t.Errorf("countMoves = %d moved, %d twice, %d returned; want %d, %d, %d",
					moved, twice, returned, tt.moved, tt.twice, tt.returned)
			}
		})
	}
}

func TestServedByLeavesInputAlone(t *testing.T) {
	recs := []record{ok(0, 10*ms, ms, "b2"), ok(0, 0, ms, "b1")}
	want := slices.Clone(recs)
	servedBy(recs, 1)
	if !slices.Equal(recs, want) {
		t.Errorf("servedBy reordered its input: %v", recs)
	}
}

func TestWholeAfter(t *testing.T) {
	recoverAt := 1000 * ms
	tests := []struct {
		name string
		recs []record
		want time.Duration
	}{
		{name: "never served again", recs: []record{ok(0, 1200*ms, ms, "b1")}, want: -1},
		{name: "no records", want: -1},
		{
			name: "first request sent after recovery that it served",
			recs: []record{ok(-1, 1500*ms, ms, "b2"), ok(-1, 1300*ms, ms, "b2"), ok(-1, 1100*ms, ms, "b1")},
			want: 300 * ms,
		},
		{
			// A hung backend answers, on SIGCONT, what it was sent
			// before: that is not the pool taking it back.
			name: "answers to requests sent before recovery do not count",
			recs: []record{ok(0, 900*ms, 200*ms, "b2"), ok(-1, 1400*ms, ms, "b2")},
			want: 400 * ms,
		},
		{name: "failures do not count", recs: []record{{client: -1, start: 1100 * ms, backend: "b2", fail: "conn"}}, want: -1},
		{name: "served at the instant of recovery", recs: []record{ok(-1, recoverAt, ms, "b2")}, want: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := wholeAfter(tt.recs, "b2", recoverAt); got != tt.want {
				t.Errorf("wholeAfter = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestLatenciesSortsTheirInput(t *testing.T) {
	var recs []record
	for _, lat := range []time.Duration{9, 3, 7, 1, 5} {
		recs = append(recs, ok(0, 0, lat, "b1"))
	}
	recs = append(recs, failed(0, "GET", 0, harness.KindConnection)) // latency 5ms: failures count
	p50, p99 := latencies(recs)
	if p50 != 5 || p99 != 5*ms {
		t.Errorf("latencies = %v, %v; want 5ns, 5ms", p50, p99)
	}
}

func TestCountFailures(t *testing.T) {
	recs := []record{
		ok(0, 0, ms, "b1"),
		failed(0, "GET", 0, harness.KindConnection),
		failed(1, "POST", 0, harness.KindConnection),
		failed(1, "GET", 0, "HTTP 502"),
		failed(2, "POST", 0, "timeout"),
	}
	var res Result
	countFailures(&res, recs)
	if res.Requests != 5 || res.Failed != 4 || res.FailedGET != 2 {
		t.Errorf("requests %d, failed %d, failed GET %d; want 5, 4, 2", res.Requests, res.Failed, res.FailedGET)
	}
	want := map[string]int{harness.KindConnection: 2, "HTTP 502": 1, "timeout": 1}
	if !maps.Equal(res.Failures, want) {
		t.Errorf("Failures = %v, want %v", res.Failures, want)
	}
}

func TestTable(t *testing.T) {
	rs := []Result{
		{Fault: FaultKill, Victim: "b2", Requests: 6000, Moved: 17, NewClients: 30, NewOnVictim: 10,
			WholeAfter: 1250 * ms, P50: 1200 * time.Microsecond, P99: 15 * ms},
		{Fault: FaultHang, Victim: "b2", Requests: 6000, Failed: 30, FailedGET: 30, Moved: 16, MovedTwice: 2, Returned: 1,
			NewClients: 30, NewOnVictim: 9, WholeAfter: -1, P50: ms, P99: 2 * time.Second},
		{Fault: FaultKill, Victim: "b2", Requests: 6000, Moved: 17, NewClients: 30, NewOnVictim: 10,
			WholeAfter: 1250 * ms, P50: 1200 * time.Microsecond, P99: 15 * ms, Reloads: 20, Reloaded: 20},
	}
	got := strings.Split(strings.TrimSpace(Table(rs...)), "\n")
	want := []string{
		"| proxy | fault | requests | failed | clients moved | moved twice (flapped back) | new clients on b2 after | failed GET | back on b2 | pool whole after | p50 | p99 |",
		"|---|---|---|---|---|---|---|---|---|---|---|---|",
		"| affinity | kill | 6000 | 0 (0.0%) | 17 | 0 | 10/30 | 0 | 0 | 1.25 s | 1.2 ms | 15.0 ms |",
		"| affinity | hang | 6000 | 30 (0.5%) | 16 | 2 | 9/30 | 30 | 1 | never | 1.0 ms | 2000.0 ms |",
		"| affinity | kill + 20 reloads | 6000 | 0 (0.0%) | 17 | 0 | 10/30 | 0 | 0 | 1.25 s | 1.2 ms | 15.0 ms |",
	}
	if !slices.Equal(got, want) {
		t.Errorf("Table =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if s := rs[0].String(); s != Table(rs[0]) {
		t.Errorf("String = %q, want the one-row table", s)
	}
	if empty := Table(); !strings.HasPrefix(empty, "| proxy |") || strings.Count(empty, "\n") != 2 {
		t.Errorf("Table() = %q, want the header alone", empty)
	}
}
