package harness

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Action is what a fault does to the system under test.
type Action string

// The fault actions. Backends are named b1..bN in start order; add names the
// next one bN+1.
const (
	Kill      Action = "kill"       // SIGKILL a backend: a crash
	Restart   Action = "restart"    // start a killed or removed backend again, same name and port; a removed one goes back in the config
	Hang      Action = "hang"       // SIGSTOP a backend: it accepts connections but never answers
	Resume    Action = "resume"     // SIGCONT a hung backend
	Add       Action = "add"        // start a new backend and put it in the proxy's config
	Remove    Action = "remove"     // take a backend out of the config, then stop it gracefully
	Reload    Action = "reload"     // rewrite the proxy's config, the same backends in it, and have it reload
	StoreDown Action = "store-down" // stop the session store (Redis)
	StoreUp   Action = "store-up"   // start it again, on the same address
	// Deploy takes every backend out in turn, stops it, starts it again
	// and puts it back: a rolling deploy. How it takes one out is the
	// runner's (package experiment: the cell's mode, remove or drain).
	Deploy Action = "deploy"
)

// Actions lists every Action, in the order help text shows them.
var Actions = []Action{Kill, Restart, Hang, Resume, Add, Remove, Reload, StoreDown, StoreUp, Deploy}

// targeted reports whether a names a backend.
func (a Action) targeted() bool {
	switch a {
	case Kill, Restart, Hang, Resume, Remove:
		return true
	}
	return false
}

// ChangesMembership reports whether a changes which backends can serve: the
// faults that users-moved is measured across.
func (a Action) ChangesMembership() bool {
	switch a {
	case Kill, Add, Remove:
		return true
	}
	return false
}

// Fault is one scripted event of a run: Action at offset At from the start of
// the load, on backend Target (empty for add, reload and the store actions).
type Fault struct {
	At     time.Duration
	Action Action
	Target string
}

// String writes f in the form ParseFault reads: "2s kill b2".
func (f Fault) String() string {
	s := f.At.String() + " " + string(f.Action)
	if f.Target != "" {
		s += " " + f.Target
	}
	return s
}

// ErrBadFault is wrapped by every error about a fault or a schedule.
var ErrBadFault = errors.New("bad fault")

// ParseFault reads "AT ACTION [TARGET]", such as "2s kill b2", "4s add" or
// "3.5s store-down". AT is a Go duration from the start of the load. An add
// may name the backend it starts, which must then be the next one.
func ParseFault(s string) (Fault, error) {
	fields := strings.Fields(s)
	if len(fields) < 2 || len(fields) > 3 {
		return Fault{}, fmt.Errorf("%w %q: want \"AT ACTION [BACKEND]\", such as \"2s kill b2\"", ErrBadFault, s)
	}
	at, err := time.ParseDuration(fields[0])
	if err != nil {
		return Fault{}, fmt.Errorf("%w %q: time: %w", ErrBadFault, s, err)
	}
	f := Fault{At: at, Action: Action(fields[1])}
	if !slices.Contains(Actions, f.Action) {
		return Fault{}, fmt.Errorf("%w %q: unknown action %q (known: %v)", ErrBadFault, s, fields[1], Actions)
	}
	if len(fields) == 3 {
		f.Target = fields[2]
	}
	switch {
	case f.Action.targeted() && f.Target == "":
		return Fault{}, fmt.Errorf("%w %q: %s needs a backend, such as b2", ErrBadFault, s, f.Action)
	case !f.Action.targeted() && f.Action != Add && f.Target != "":
		return Fault{}, fmt.Errorf("%w %q: %s takes no backend", ErrBadFault, s, f.Action)
	}
	return f, nil
}

// Schedule is a checked list of faults in the order they happen.
type Schedule []Fault

// NewSchedule sorts faults by time (keeping the given order for equal times)
// and checks them against a run that starts with backends b1..bN and lasts
// duration: every fault falls inside the run, and each is possible in
// the state the earlier ones leave (only a killed backend restarts, only a
// running one hangs, and so on). Each add gets the name of the backend it
// starts as its Target.
func NewSchedule(faults []Fault, backends int, duration time.Duration) (Schedule, error) {
	s := slices.Clone(faults)
	slices.SortStableFunc(s, func(a, b Fault) int { return cmp.Compare(a.At, b.At) })
	state := make(map[string]State, backends+len(s))
	for i := 1; i <= backends; i++ {
		state[BackendName(i)] = Running
	}
	n, storeUp := backends, true
	for i, f := range s {
		if f.At < 0 || f.At >= duration {
			return nil, fmt.Errorf("%w %q: time outside the run (0 to %v)", ErrBadFault, f, duration)
		}
		var from []State
		var to State
		switch f.Action {
		case Kill:
			from, to = []State{Running, Hung}, Killed
		case Restart:
			from, to = []State{Killed, Removed}, Running
		case Hang:
			from, to = []State{Running}, Hung
		case Resume:
			from, to = []State{Hung}, Running
		case Remove:
			from, to = []State{Running, Hung}, Removed
		case Add:
			n++
			if f.Target != "" && f.Target != BackendName(n) {
				return nil, fmt.Errorf("%w %q: the backend added then is %s", ErrBadFault, f, BackendName(n))
			}
			s[i].Target = BackendName(n)
			state[BackendName(n)] = Running
			continue
		case Reload:
			continue
		case Deploy:
			for name, st := range state {
				if st != Running {
					return nil, fmt.Errorf("%w %q: %s is %s at that time; a deploy needs every backend running", ErrBadFault, f, name, st)
				}
			}
			continue
		case StoreDown, StoreUp:
			if storeUp != (f.Action == StoreDown) {
				return nil, fmt.Errorf("%w %q: the store is already %s", ErrBadFault, f, strings.TrimPrefix(string(f.Action), "store-"))
			}
			storeUp = !storeUp
			continue
		default:
			return nil, fmt.Errorf("%w %q: unknown action", ErrBadFault, f)
		}
		got, ok := state[f.Target]
		if !ok {
			return nil, fmt.Errorf("%w %q: no backend %s (the cell has b1..b%d)", ErrBadFault, f, f.Target, n)
		}
		if !slices.Contains(from, got) {
			return nil, fmt.Errorf("%w %q: %s is %s at that time", ErrBadFault, f, f.Target, got)
		}
		state[f.Target] = to
	}
	return s, nil
}

// State is where a backend stands at some point of a run.
type State string

// The states of a backend. A killed or hung backend is still in the
// proxy's config (it failed; nobody took it out); a removed one is not.
const (
	Running State = "running"
	Killed  State = "killed"
	Hung    State = "hung"
	Removed State = "removed"
)

// BackendName is the name of the i-th backend of a run, counting from 1.
func BackendName(i int) string { return "b" + strconv.Itoa(i) }

// Clock tells time and waits; tests inject a fake one so that pacing and
// fault timing are checked without sleeping.
type Clock interface {
	Now() time.Time
	// SleepUntil returns at t, or earlier with ctx's error once ctx ends.
	SleepUntil(ctx context.Context, t time.Time) error
}

// WallClock is the real Clock.
type WallClock struct{}

// Now returns time.Now().
func (WallClock) Now() time.Time { return time.Now() }

// SleepUntil waits until t on a timer.
func (WallClock) SleepUntil(ctx context.Context, t time.Time) error {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err()
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Applied records a fault as it happened, as offsets from the start of the
// load: when applying it began and ended, and when the proxy was seen
// routing by it (Settled: a killed backend out of rotation, a restarted one
// back in), or -1 when that was not seen before the end. Err is the
// error of a fault that could not be applied.
type Applied struct {
	Fault
	Start, End, Settled time.Duration
	Err                 string
}

// MarshalJSON writes an applied fault for results.json, times in seconds;
// settled_s is null when the proxy was not seen routing by the fault.
func (a Applied) MarshalJSON() ([]byte, error) {
	var settled *float64
	if a.Settled >= 0 {
		s := a.Settled.Seconds()
		settled = &s
	}
	return json.Marshal(struct {
		Fault   string   `json:"fault"`
		Action  Action   `json:"action"`
		Target  string   `json:"target,omitempty"`
		At      float64  `json:"at_s"`
		Start   float64  `json:"start_s"`
		End     float64  `json:"end_s"`
		Settled *float64 `json:"settled_s"`
		Err     string   `json:"error,omitempty"`
	}{a.Fault.String(), a.Action, a.Target, a.At.Seconds(), a.Start.Seconds(), a.End.Seconds(), settled, a.Err})
}

// Since returns when the fault's effect held from: when the proxy was seen
// routing by it, or, when that was not seen, when applying it ended.
func (a Applied) Since() time.Duration {
	if a.Settled >= 0 {
		return a.Settled
	}
	return a.End
}

// Run applies the faults of s in order, each at start+At (late ones at once),
// and returns what happened. After each fault applied without error,
// settle (when not nil) waits until the system shows its effect; the next
// fault waits for it. Run stops early when ctx ends. A fault that fails is
// recorded and does not stop the ones after it: a report with one failed
// fault says so, instead of ending the run.
func (s Schedule) Run(ctx context.Context, c Clock, start time.Time, apply, settle func(context.Context, Fault) error) []Applied {
	out := make([]Applied, 0, len(s))
	for _, f := range s {
		if err := c.SleepUntil(ctx, start.Add(f.At)); err != nil {
			break
		}
		a := Applied{Fault: f, Start: c.Now().Sub(start), Settled: -1}
		err := apply(ctx, f)
		a.End = c.Now().Sub(start)
		switch {
		case err != nil:
			a.Err = err.Error()
		case settle == nil:
			a.Settled = a.End
		case settle(ctx, f) == nil:
			a.Settled = c.Now().Sub(start)
		}
		out = append(out, a)
	}
	return out
}

// First returns the first fault of applied made without error whose action
// matches.
func First(applied []Applied, match func(Action) bool) (Applied, bool) {
	i := slices.IndexFunc(applied, func(a Applied) bool { return a.Err == "" && match(a.Action) })
	if i < 0 {
		return Applied{}, false
	}
	return applied[i], true
}

// Scaled returns s with every time multiplied by num/den, rounded to the
// millisecond: the same story told over a shorter run.
func (s Schedule) Scaled(num, den time.Duration) Schedule {
	out := slices.Clone(s)
	for i := range out {
		out[i].At = (time.Duration(float64(out[i].At) * float64(num) / float64(den))).Round(time.Millisecond)
	}
	return out
}
