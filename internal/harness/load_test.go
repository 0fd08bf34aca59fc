package harness

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestArrivals(t *testing.T) {
	tests := []struct {
		rate float64
		d    time.Duration
		want int
	}{
		{100, 10 * time.Second, 1000},
		{300, 20 * time.Second, 6000},
		{400, 1800 * time.Millisecond, 720},
		{3, time.Second, 3}, // slots at 0, 1/3, 2/3
		{0.5, 3 * time.Second, 2},
		{1000, 0, 0},
		{0, time.Second, 0},
	}
	for _, tt := range tests {
		l := Load{Users: 1, Rate: tt.rate, Duration: tt.d}
		if got := l.Arrivals(); got != tt.want {
			t.Errorf("rate %v over %v: %d arrivals, want %d", tt.rate, tt.d, got, tt.want)
		}
	}
}

// record collects the arrivals a Run sends.
type record struct {
	mu  sync.Mutex
	got []Arrival
}

func (r *record) send(_ context.Context, a Arrival) {
	r.mu.Lock()
	r.got = append(r.got, a)
	r.mu.Unlock()
}

func (r *record) sorted() []Arrival {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := slices.Clone(r.got)
	slices.SortFunc(s, func(a, b Arrival) int { return a.K - b.K })
	return s
}

func TestRunSendsEverySlotOnTime(t *testing.T) {
	c := newFakeClock()
	start := c.Now()
	l := Load{Users: 4, Rate: 3, Duration: 2 * time.Second, Overlap: true}
	var r record
	sent, skipped := l.Run(context.Background(), c, start, r.send)
	got := r.sorted()
	if sent != 6 || skipped != 0 || len(got) != 6 {
		t.Fatalf("sent %d, skipped %d, recorded %d; want 6, 0, 6", sent, skipped, len(got))
	}
	for k, a := range got {
		if want := start.Add(time.Duration(float64(k) * float64(time.Second) / 3)); a.K != k || !a.Due.Equal(want) {
			t.Errorf("arrival %d: %+v, want due %v", k, a, want.Sub(start))
		}
	}
}

func TestRunSendsLateSlotsInsteadOfDroppingThem(t *testing.T) {
	c := newFakeClock()
	start := c.Now()
	// The generator is held up from 0.25 s to 0.7 s.
	sc := &stallClock{fakeClock: c, at: start.Add(250 * time.Millisecond), stall: 450 * time.Millisecond}
	l := Load{Users: 10, Rate: 10, Duration: time.Second, Overlap: true}
	n, _ := l.Run(context.Background(), sc, start, func(context.Context, Arrival) {})
	if n != 10 {
		t.Fatalf("%d arrivals after a stall, want all 10", n)
	}
	// Slots 3 to 6 (due 0.3 to 0.6 s) go out at 0.7 s, at once, and slot
	// 7 on time.
	want := []time.Duration{0, 100, 200, 700, 700, 700, 700, 700, 800, 900}
	for i := range want {
		want[i] *= time.Millisecond
	}
	if !slices.Equal(sc.dealt, want) {
		t.Errorf("dealt at %v, want %v", sc.dealt, want)
	}
}

// stallClock is a fake clock whose first sleep past at costs the sleeper
// an extra stall, as a generator descheduled for that long. It records when
// each sleep returned, since the start of the fake clock: when Run dealt
// each arrival.
type stallClock struct {
	*fakeClock
	at    time.Time
	stall time.Duration
	done  bool
	dealt []time.Duration
}

func (s *stallClock) SleepUntil(ctx context.Context, t time.Time) error {
	if err := s.fakeClock.SleepUntil(ctx, t); err != nil {
		return err
	}
	if !s.done && t.After(s.at) {
		s.done = true
		s.advance(s.at.Add(s.stall).Sub(s.Now()))
	}
	s.dealt = append(s.dealt, s.Now().Sub(newFakeClock().Now()))
	return nil
}

func TestRunStopsWithContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	c := newFakeClock()
	var n atomic.Int64
	l := Load{Users: 5, Rate: 100, Duration: time.Minute, Overlap: true}
	sent, _ := l.Run(ctx, cancelAfter(c, 10, cancel), c.Now(), func(context.Context, Arrival) { n.Add(1) })
	if sent != 10 || n.Load() != 10 {
		t.Errorf("sent %d (%d calls), want 10: stopped by cancel", sent, n.Load())
	}
}

// cancelClock is a fake clock that cancels after n sleeps.
type cancelClock struct {
	*fakeClock
	n      int
	cancel func()
}

func cancelAfter(c *fakeClock, n int, cancel func()) *cancelClock {
	return &cancelClock{fakeClock: c, n: n, cancel: cancel}
}

func (c *cancelClock) SleepUntil(ctx context.Context, t time.Time) error {
	if c.n == 0 {
		c.cancel()
	}
	c.n--
	return c.fakeClock.SleepUntil(ctx, t)
}

func TestRunSkipsArrivalsOfBusyUsers(t *testing.T) {
	c := newFakeClock()
	block := make(chan struct{})
	var started atomic.Int64
	l := Load{Users: 2, Rate: 100, Duration: 100 * time.Millisecond} // 10 arrivals, 5 per user
	type counts struct{ sent, skipped int }
	done := make(chan counts)
	go func() {
		sent, skipped := l.Run(context.Background(), c, c.Now(), func(context.Context, Arrival) {
			started.Add(1)
			<-block
		})
		done <- counts{sent, skipped}
	}()
	// The fake clock deals every arrival at once; each user's first
	// request holds it busy for the other four.
	deadline := time.Now().Add(5 * time.Second)
	for started.Load() < 2 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	close(block)
	if got := <-done; got != (counts{2, 8}) {
		t.Errorf("sent, skipped = %v, want 2, 8", got)
	}
}

func TestOverlapSendsBusyUsersArrivals(t *testing.T) {
	c := newFakeClock()
	block := make(chan struct{})
	var started atomic.Int64
	l := Load{Users: 2, Rate: 100, Duration: 100 * time.Millisecond, Overlap: true}
	go func() {
		for started.Load() < 10 {
			time.Sleep(time.Millisecond)
		}
		close(block)
	}()
	sent, skipped := l.Run(context.Background(), c, c.Now(), func(context.Context, Arrival) {
		started.Add(1)
		<-block
	})
	if sent != 10 || skipped != 0 {
		t.Errorf("sent, skipped = %d, %d; want 10, 0: every arrival in flight at once", sent, skipped)
	}
}

func TestDealerGivesEveryUserOneArrivalPerRound(t *testing.T) {
	deal := func(seed uint64) []int {
		d := Load{Users: 5, Seed: seed}.dealer()
		out := make([]int, 20)
		for k := range out {
			out[k] = d(k)
		}
		return out
	}
	a := deal(1)
	for r := range 4 {
		seen := map[int]bool{}
		for _, u := range a[r*5 : r*5+5] {
			seen[u] = true
		}
		if len(seen) != 5 {
			t.Errorf("round %d dealt %v: want each of 5 users once", r, a[r*5:r*5+5])
		}
	}
	if fmt.Sprint(a[:5]) == fmt.Sprint(a[5:10]) && fmt.Sprint(a[5:10]) == fmt.Sprint(a[10:15]) {
		t.Errorf("rounds are not reshuffled: %v", a)
	}
	if fmt.Sprint(a) != fmt.Sprint(deal(1)) {
		t.Error("the same seed dealt differently")
	}
}

func TestPeriodicDealsInUserOrder(t *testing.T) {
	d := Load{Users: 3, Seed: 9, Periodic: true}.dealer()
	var got []int
	for k := range 7 {
		got = append(got, d(k))
	}
	if fmt.Sprint(got) != "[0 1 2 0 1 2 0]" {
		t.Errorf("dealt %v, want each user every third arrival", got)
	}
}

// TestSkewFollowsZipf deals many arrivals with Skew 1 over 4 users and
// checks each user's share against 1/(i+1) over the harmonic number.
func TestSkewFollowsZipf(t *testing.T) {
	l := Load{Users: 4, Seed: 3, Skew: 1}
	d := l.dealer()
	const n = 100_000
	counts := make([]int, l.Users)
	for k := range n {
		counts[d(k)]++
	}
	h := 1 + 1.0/2 + 1.0/3 + 1.0/4
	for i, c := range counts {
		want := n / float64(i+1) / h
		if got := float64(c); got < want*0.97 || got > want*1.03 {
			t.Errorf("user %d got %d arrivals, want about %.0f", i, c, want)
		}
	}
	a, b := l.dealer(), l.dealer()
	for k := range 100 {
		if a(k) != b(k) {
			t.Fatalf("the same seed dealt arrival %d differently", k)
		}
	}
}

func TestNewClientKeepsCookiesAndFollowsNoRedirect(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/set":
			http.SetCookie(w, &http.Cookie{Name: "B", Value: "2"})
			http.SetCookie(w, &http.Cookie{Name: "A", Value: "1"})
		case "/expire":
			http.SetCookie(w, &http.Cookie{Name: "A", Value: "", MaxAge: -1})
		case "/away":
			http.Redirect(w, r, "/elsewhere", http.StatusFound)
		}
		_, _ = w.Write([]byte(r.Header.Get("Cookie")))
	}))
	defer srv.Close()
	tr := NewTransport(4)
	defer tr.CloseIdleConnections()
	c := NewClient(tr, 5*time.Second)
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := c.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = resp.Body.Close() }()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	get("/set")
	u, _ := url.Parse(srv.URL)
	if h := CookieHeader(c.Jar, u); h != "B=2; A=1" && h != "A=1; B=2" {
		t.Errorf("CookieHeader = %q, want both cookies", h)
	}
	if _, sent := get("/echo"); sent != CookieHeader(c.Jar, u) {
		t.Errorf("client sent %q, CookieHeader says %q", sent, CookieHeader(c.Jar, u))
	}
	get("/expire")
	if h := CookieHeader(c.Jar, u); h != "B=2" {
		t.Errorf("after the expiry: %q, want B=2", h)
	}
	if code, _ := get("/away"); code != http.StatusFound {
		t.Errorf("redirect answered %d, want the 302 itself", code)
	}
	if CookieHeader(NewClient(tr, 0).Jar, u) != "" || CookieHeader(nil, u) != "" {
		t.Error("a new client holds cookies")
	}
}

func TestTransportKind(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	defer srv.Close()
	client := srv.Client()
	defer client.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), time.Nanosecond)
	defer cancel()
	<-ctx.Done()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL, nil)
	_, err := client.Do(req)
	if got := TransportKind(err); got != KindTimeout {
		t.Errorf("deadline: %q, want %q", got, KindTimeout)
	}
	req, _ = http.NewRequest(http.MethodGet, "http://127.0.0.1:1/", nil)
	_, err = client.Do(req)
	if got := TransportKind(err); got != KindConnection {
		t.Errorf("refused: %q, want %q", got, KindConnection)
	}
}

func TestPercentile(t *testing.T) {
	ten := []time.Duration{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	hundred := make([]time.Duration, 100)
	for i := range hundred {
		hundred[i] = time.Duration(i + 1)
	}
	tests := []struct {
		name   string
		sorted []time.Duration
		p      float64
		want   time.Duration
	}{
		{"empty", nil, 50, 0},
		{"one value", []time.Duration{7}, 99, 7},
		{"median of ten is the 5th", ten, 50, 5},
		{"p99 of ten is the largest", ten, 99, 10},
		{"p10 of ten is the first", ten, 10, 1},
		{"p11 of ten rounds up to the 2nd", ten, 11, 2},
		{"p99 of a hundred is the 99th", hundred, 99, 99},
		{"p100 is the largest", hundred, 100, 100},
		{"p50 of two is the lower", []time.Duration{1, 9}, 50, 1},
		{"p95 of ten: ceil(9.5) = 10th", ten, 95, 10},
		{"p0 is the smallest", ten, 0, 1},
		{"p99.9 of a hundred is the largest", hundred, 99.9, 100},
	}
	for _, tt := range tests {
		if got := Percentile(tt.sorted, tt.p); got != tt.want {
			t.Errorf("%s: Percentile(%v, %v) = %v, want %v", tt.name, tt.sorted, tt.p, got, tt.want)
		}
	}
}
