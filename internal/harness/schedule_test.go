package harness

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeClock is a Clock whose SleepUntil moves time forward at once, so that
// schedules run in no real time and land exactly on their due times.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) SleepUntil(ctx context.Context, t time.Time) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if t.After(c.now) {
		c.now = t
	}
	return nil
}

// advance moves the clock by d, as a slow operation would.
func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func TestParseFault(t *testing.T) {
	tests := []struct {
		in   string
		want Fault
		ok   bool
	}{
		{"2s kill b2", Fault{2 * time.Second, Kill, "b2"}, true},
		{"  1.5s   hang   b1 ", Fault{1500 * time.Millisecond, Hang, "b1"}, true},
		{"4s add", Fault{4 * time.Second, Add, ""}, true},
		{"300ms store-down", Fault{300 * time.Millisecond, StoreDown, ""}, true},
		{"2s remove b3", Fault{2 * time.Second, Remove, "b3"}, true},
		{"", Fault{}, false},
		{"2s", Fault{}, false},
		{"2 kill b2", Fault{}, false},                          // no unit
		{"2s explode b2", Fault{}, false},                      // unknown action
		{"2s kill", Fault{}, false},                            // kill needs a backend
		{"2s add b4", Fault{2 * time.Second, Add, "b4"}, true}, // NewSchedule checks the name
		{"2s store-up b1", Fault{}, false},                     // store takes no backend
		{"2s kill b2 now", Fault{}, false},                     // too many fields
		{"1s reload", Fault{time.Second, Reload, ""}, true},
		{"1s reload b1", Fault{}, false},                       // reload takes no backend
		{"-1s kill b2", Fault{-time.Second, Kill, "b2"}, true}, // parsed; NewSchedule rejects it
	}
	for _, tt := range tests {
		got, err := ParseFault(tt.in)
		if (err == nil) != tt.ok {
			t.Errorf("ParseFault(%q) error = %v, want ok=%v", tt.in, err, tt.ok)
			continue
		}
		if err != nil {
			if !errors.Is(err, ErrBadFault) {
				t.Errorf("ParseFault(%q) error %v does not wrap ErrBadFault", tt.in, err)
			}
			continue
		}
		if got != tt.want {
			t.Errorf("ParseFault(%q) = %+v, want %+v", tt.in, got, tt.want)
		}
		if back, err := ParseFault(got.String()); err != nil || back != got {
			t.Errorf("ParseFault(%q.String()=%q) = %+v, %v: does not round-trip", tt.in, got.String(), back, err)
		}
	}
}

func faults(t *testing.T, specs ...string) []Fault {
	t.Helper()
	out := make([]Fault, len(specs))
	for i, s := range specs {
		f, err := ParseFault(s)
		if err != nil {
			t.Fatal(err)
		}
		out[i] = f
	}
	return out
}

func TestNewScheduleOrdersAndChecksState(t *testing.T) {
	tests := []struct {
		name   string
		faults []string
		want   []string // the order after sorting; nil: an error
	}{
		{"sorted by time", []string{"4s restart b2", "2s kill b2"}, []string{"2s kill b2", "4s restart b2"}},
		{"equal times keep their order", []string{"1s hang b1", "1s kill b1"}, []string{"1s hang b1", "1s kill b1"}},
		{"add names the next backend", []string{"1s add", "2s kill b4", "3s add"}, []string{"1s add b4", "2s kill b4", "3s add b5"}},
		{"add with the right name", []string{"1s add b4"}, []string{"1s add b4"}},
		{"add with a wrong name", []string{"1s add b7"}, nil},
		{"store down then up", []string{"2s store-up", "1s store-down"}, []string{"1s store-down", "2s store-up"}},
		{"hang resume", []string{"1s hang b3", "2s resume b3"}, []string{"1s hang b3", "2s resume b3"}},
		{"remove a hung one", []string{"1s hang b3", "2s remove b3"}, []string{"1s hang b3", "2s remove b3"}},
		{"restart a running backend", []string{"1s restart b1"}, nil},
		{"kill twice", []string{"1s kill b1", "2s kill b1"}, nil},
		{"resume a running one", []string{"1s resume b2"}, nil},
		{"unknown backend", []string{"1s kill b4"}, nil},
		{"kill before it is added", []string{"1s kill b4", "2s add"}, nil},
		{"store up while up", []string{"1s store-up"}, nil},
		{"after the end", []string{"10s kill b1"}, nil},
		{"before the start", []string{"-1s kill b1"}, nil},
		{"restart a removed one", []string{"1s remove b1", "2s restart b1"}, []string{"1s remove b1", "2s restart b1"}},
		{"deploy with every backend running", []string{"1s kill b1", "2s restart b1", "3s deploy"}, []string{"1s kill b1", "2s restart b1", "3s deploy"}},
		{"deploy with a backend down", []string{"1s kill b1", "3s deploy"}, nil},
		{"reloads in any state", []string{"1s kill b1", "2s reload", "3s reload"}, []string{"1s kill b1", "2s reload", "3s reload"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := NewSchedule(faults(t, tt.faults...), 3, 10*time.Second)
			if tt.want == nil {
				if !errors.Is(err, ErrBadFault) {
					t.Fatalf("NewSchedule = %v, %v; want an ErrBadFault", s, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := make([]string, len(s))
			for i, f := range s {
				got[i] = f.String()
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("order = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestScheduleRunAppliesEachFaultAtItsTime(t *testing.T) {
	s, err := NewSchedule(faults(t, "3s restart b2", "1s kill b2", "5s add"), 3, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c := newFakeClock()
	start := c.Now()
	var at []time.Duration
	var order []Action
	applied := s.Run(context.Background(), c, start, func(_ context.Context, f Fault) error {
		at = append(at, c.Now().Sub(start))
		order = append(order, f.Action)
		if f.Action == Restart {
			c.advance(700 * time.Millisecond) // a restart takes time
			return errors.New("port taken")
		}
		return nil
	}, nil)
	if want := []Action{Kill, Restart, Add}; !slices.Equal(order, want) {
		t.Fatalf("applied %v, want %v", order, want)
	}
	if want := []time.Duration{time.Second, 3 * time.Second, 5 * time.Second}; !slices.Equal(at, want) {
		t.Errorf("applied at %v, want %v", at, want)
	}
	if len(applied) != 3 {
		t.Fatalf("recorded %d faults, want 3", len(applied))
	}
	r := applied[1]
	if r.Start != 3*time.Second || r.End != 3700*time.Millisecond || r.Err != "port taken" || r.Settled != -1 {
		t.Errorf("restart recorded as %+v, want start 3s, end 3.7s, error recorded, never settled", r)
	}
	if applied[2].Err != "" || applied[2].Start != 5*time.Second || applied[2].Settled != 5*time.Second {
		t.Errorf("the fault after a failed one: %+v, want applied at 5s without error, settled at once", applied[2])
	}
}

func TestScheduleRunWaitsForEachFaultToSettle(t *testing.T) {
	s, err := NewSchedule(faults(t, "1s kill b2", "1.2s hang b1", "3s restart b2"), 3, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c := newFakeClock()
	start := c.Now()
	applied := s.Run(context.Background(), c, start, func(context.Context, Fault) error {
		c.advance(50 * time.Millisecond)
		return nil
	}, func(_ context.Context, f Fault) error {
		if f.Action == Hang {
			return errors.New("not seen") // the proxy never noticed
		}
		c.advance(400 * time.Millisecond) // the health checks take their time
		return nil
	})
	want := []Applied{
		{Fault: s[0], Start: time.Second, End: 1050 * time.Millisecond, Settled: 1450 * time.Millisecond},
		// Due at 1.2 s, it waited for the kill to settle.
		{Fault: s[1], Start: 1450 * time.Millisecond, End: 1500 * time.Millisecond, Settled: -1},
		{Fault: s[2], Start: 3 * time.Second, End: 3050 * time.Millisecond, Settled: 3450 * time.Millisecond},
	}
	if !slices.Equal(applied, want) {
		t.Errorf("applied\n%+v\nwant\n%+v", applied, want)
	}
	if got := applied[0].Since(); got != 1450*time.Millisecond {
		t.Errorf("Since of a settled fault = %v, want its settle time", got)
	}
	if got := applied[1].Since(); got != 1500*time.Millisecond {
		t.Errorf("Since of an unsettled fault = %v, want its end", got)
	}
	if f, ok := First(applied, func(a Action) bool { return a == Restart }); !ok || f.Start != 3*time.Second {
		t.Errorf("First restart = %+v, %v", f, ok)
	}
	failed := slices.Clone(applied)
	failed[0].Err = "boom"
	if _, ok := First(failed, func(a Action) bool { return a == Kill }); ok {
		t.Error("First returned a fault that failed")
	}
}

func TestAppliedJSON(t *testing.T) {
	a := Applied{Fault: Fault{At: time.Second, Action: Kill, Target: "b2"}, Start: time.Second, End: 1100 * time.Millisecond, Settled: -1}
	data, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"fault":"1s kill b2","action":"kill","target":"b2","at_s":1,"start_s":1,"end_s":1.1,"settled_s":null}`
	if string(data) != want {
		t.Errorf("JSON %s, want %s", data, want)
	}
	a.Settled = 1500 * time.Millisecond
	if data, _ := json.Marshal(a); !strings.Contains(string(data), `"settled_s":1.5`) {
		t.Errorf("JSON %s, want settled_s 1.5", data)
	}
}

func TestScheduleRunLateFaultsApplyAtOnce(t *testing.T) {
	s, err := NewSchedule(faults(t, "1s kill b1", "2s kill b2"), 3, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c := newFakeClock()
	start := c.Now()
	applied := s.Run(context.Background(), c, start, func(context.Context, Fault) error {
		c.advance(5 * time.Second) // the first fault overruns the second's time
		return nil
	}, nil)
	if applied[1].Start != 6*time.Second {
		t.Errorf("late fault started at %v, want at once when the first ended (6s)", applied[1].Start)
	}
}

func TestScheduleRunStopsWithContext(t *testing.T) {
	s, err := NewSchedule(faults(t, "1s kill b1", "2s kill b2"), 3, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := newFakeClock()
	applied := s.Run(ctx, c, c.Now(), func(context.Context, Fault) error {
		cancel()
		return nil
	}, nil)
	if len(applied) != 1 {
		t.Errorf("applied %d faults after cancel, want 1", len(applied))
	}
}

func TestScheduleScaled(t *testing.T) {
	s := Schedule{{At: 2 * time.Second, Action: Kill, Target: "b2"}, {At: 4 * time.Second, Action: Restart, Target: "b2"}}
	got := s.Scaled(2*time.Second, 6*time.Second)
	if got[0].At != 667*time.Millisecond || got[1].At != 1333*time.Millisecond {
		t.Errorf("scaled to %v, %v; want 667ms, 1.333s", got[0].At, got[1].At)
	}
	if s[0].At != 2*time.Second {
		t.Error("scaled changed the original schedule")
	}
}
