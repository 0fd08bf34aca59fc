package experiment

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"slices"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/affinityproxy/affinity/balancer"
	"github.com/affinityproxy/affinity/internal/harness"
)

// Session stores of the demo app, as `affinity backend --session-store`
// names them.
const (
	StoreMemory      = "memory"
	StoreRedis       = "redis"
	StoreCachedRedis = "cached-redis"
	StoreToken       = "token"
)

// Stores lists the session stores a spec may name.
var Stores = []string{StoreMemory, StoreRedis, StoreCachedRedis, StoreToken}

// needsRedis reports whether backends with the store entry talk to Redis:
// to keep their sessions there, or a token store's denylist.
func needsRedis(store string) bool {
	c, _ := parseChoice(store, ofStore)
	return c.name == StoreRedis || c.name == StoreCachedRedis || c.opts["denylist"] != ""
}

// Spec describes an experiment: every cell of Balancers × Stores runs the
// same users, load and faults against a fresh set of processes.
type Spec struct {
	Name  string
	Title string
	// Claims are the numbers of the claims in CLAIMS.md the run measures;
	// the report writes a finding for each one it knows.
	Claims []int

	Backends int // backends at the start, named b1..bN
	Users    int
	Rate     float64       // arrivals per second, over all users
	Duration time.Duration // load per cell
	Seed     uint64
	// MinItems and MaxItems bound the items added per workflow.
	MinItems, MaxItems int
	Churn              float64
	// Logout has each user log out after a checkout; then, with Churn 1,
	// a new user takes its place.
	Logout bool
	// Replay has a user who logged out replay the session cookie it held,
	// as a thief who copied it would, before it logs in again. It needs
	// Logout.
	Replay bool
	// Skew, above 0, makes a few users send most requests: user i gets
	// each arrival with a chance in proportion to 1/i^Skew (Zipf's law).
	// 0 gives every user the same share.
	Skew float64
	// Work is the time each backend spends per request (--work), so that
	// the store's cost is seen against a realistic handler, not against 0.
	Work time.Duration
	// CheckoutWork is the time a checkout takes on the backends between
	// reading the cart and placing the order (--checkout-work): a request
	// repeated elsewhere meanwhile can order the cart a second time.
	CheckoutWork time.Duration
	// ResponseTimeout is the proxy's timeouts.response_header: how long it
	// waits for a backend's answer before it fails the attempt, and
	// retries it where its policy allows. 0 means the users' own request
	// timeout (2 s), so that the proxy gives up when they do.
	ResponseTimeout time.Duration
	// DrainIdle and DrainTimeout are how a deploy fault with mode=drain
	// waits for each backend, as ctl drain --wait's --idle and --timeout;
	// 0 takes 500 ms and 5 s.
	DrainIdle, DrainTimeout time.Duration

	// Balancers and Stores name the matrix. An entry may carry options
	// after the name, which make a variant of it: "consistent-hash
	// load_factor=1.25".
	Balancers []string
	Stores    []string
	// Variants, when set, are a third dimension of the matrix: each entry
	// holds options of the whole cell, its proxy and its users, such as
	// "retry=all client=nokey" or "mode=drain" (see options).
	Variants []string
	Faults   harness.Schedule

	// Quick is the short version of the run that --quick selects.
	Quick Quick
}

// Quick shortens a Spec: a shorter load, with the faults at the same
// fractions of it, fewer users so that each still gets through its
// workflows, and a smaller matrix. Zero fields keep the full value.
type Quick struct {
	Duration  time.Duration
	Users     int
	Balancers []string
	Stores    []string
	Variants  []string
}

// Limits that keep a run bounded in time and memory.
const (
	maxBackends    = 32
	maxUsers       = 100_000
	maxArrivals    = 500_000 // per cell: at most ~60 MiB of samples
	maxDuration    = 30 * time.Minute
	maxItems       = 100
	requestTimeout = 2 * time.Second
)

// ErrBadSpec is wrapped by every error about a spec.
var ErrBadSpec = errors.New("bad experiment spec")

// Check reports what is wrong with s, or nil.
func (s *Spec) Check() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w %q: "+format, append([]any{ErrBadSpec, s.Name}, args...)...))
	}
	if s.Name == "" {
		bad("name is empty")
	}
	if s.Backends < 1 || s.Backends > maxBackends {
		bad("backends %d: want 1 to %d", s.Backends, maxBackends)
	}
	if s.Users < 1 || s.Users > maxUsers {
		bad("users %d: want 1 to %d", s.Users, maxUsers)
	}
	if s.Duration <= 0 || s.Duration > maxDuration {
		bad("duration %v: want above 0 and at most %v", s.Duration, maxDuration)
	}
	if !(s.Rate > 0) || s.Rate*s.Duration.Seconds() > maxArrivals {
		bad("rate %v: want above 0 and at most %d arrivals per cell (rate × duration)", s.Rate, maxArrivals)
	}
	if s.MinItems < 1 || s.MinItems > s.MaxItems || s.MaxItems > maxItems {
		bad("items %d-%d: want 1 <= min <= max <= %d", s.MinItems, s.MaxItems, maxItems)
	}
	if !(s.Churn >= 0 && s.Churn <= 1) {
		bad("churn %v: want 0 to 1", s.Churn)
	}
	if !(s.Skew >= 0 && s.Skew <= 5) {
		bad("skew %v: want 0 to 5", s.Skew)
	}
	if s.Replay && !s.Logout {
		bad("replay needs logout: only a user who logged out has a cookie to replay")
	}
	if s.Work < 0 || s.Work > time.Second {
		bad("work %v: want 0 to 1s", s.Work)
	}
	if s.CheckoutWork < 0 || s.CheckoutWork > time.Second {
		bad("checkout_work %v: want 0 to 1s", s.CheckoutWork)
	}
	if s.ResponseTimeout < 0 || s.ResponseTimeout > time.Minute {
		bad("response_timeout %v: want 0 to 1m", s.ResponseTimeout)
	}
	if s.DrainIdle < 0 || s.DrainTimeout < 0 || (s.DrainTimeout > 0 && s.DrainTimeout <= s.drainIdle()) {
		bad("drain idle %v, timeout %v: want a timeout above the idle window", s.DrainIdle, s.DrainTimeout)
	}
	if len(s.Balancers) == 0 || len(s.Stores) == 0 {
		bad("balancers and stores must name at least one each")
	}
	for _, b := range s.Balancers {
		c, err := parseChoice(b, ofBalancer)
		switch {
		case err != nil:
			bad("balancer %v", err)
		case !balancer.Known(c.name):
			bad("unknown balancer %q (known: %v)", c.name, balancer.Names())
		}
	}
	for _, st := range s.Stores {
		c, err := parseChoice(st, ofStore)
		switch {
		case err != nil:
			bad("store %v", err)
		case !slices.Contains(Stores, c.name):
			bad("unknown store %q (known: %v)", c.name, Stores)
		}
	}
	for _, v := range s.Variants {
		if _, err := parseChoice(v, ofRun); err != nil {
			bad("variant %v", err)
		}
	}
	if _, err := harness.NewSchedule(s.Faults, s.Backends, s.Duration); err != nil {
		errs = append(errs, fmt.Errorf("%w %q: %w", ErrBadSpec, s.Name, err))
	}
	return errors.Join(errs...)
}

// Shortened returns the --quick version of s: Quick's duration, balancers
// and stores where set, and every fault at the same fraction of the run.
func (s Spec) Shortened() Spec {
	q := s
	if s.Quick.Duration > 0 {
		q.Duration = s.Quick.Duration
		q.Faults = s.Faults.Scaled(q.Duration, s.Duration)
	}
	if s.Quick.Users > 0 {
		q.Users = s.Quick.Users
	}
	if len(s.Quick.Balancers) > 0 {
		q.Balancers = s.Quick.Balancers
	}
	if len(s.Quick.Stores) > 0 {
		q.Stores = s.Quick.Stores
	}
	if len(s.Quick.Variants) > 0 {
		q.Variants = s.Quick.Variants
	}
	q.Quick = Quick{}
	return q
}

// Cells returns the number of cells of the matrix.
func (s *Spec) Cells() int { return len(s.Balancers) * len(s.Stores) * max(1, len(s.Variants)) }

// Defaults of a deploy's drain.
const (
	defaultDrainIdle    = 500 * time.Millisecond
	defaultDrainTimeout = 5 * time.Second
)

// drainIdle and drainTimeout are the drain's settings, defaults for zero.
func (s *Spec) drainIdle() time.Duration    { return cmp.Or(s.DrainIdle, defaultDrainIdle) }
func (s *Spec) drainTimeout() time.Duration { return cmp.Or(s.DrainTimeout, defaultDrainTimeout) }

// responseTimeout is the proxy's wait for an answer, the users' own for 0.
func (s *Spec) responseTimeout() time.Duration { return cmp.Or(s.ResponseTimeout, requestTimeout) }

// specFile is the YAML form of a Spec.
type specFile struct {
	Preset          string        `yaml:"preset"`
	Name            string        `yaml:"name"`
	Title           string        `yaml:"title"`
	Claims          []int         `yaml:"claims"`
	Backends        int           `yaml:"backends"`
	Users           int           `yaml:"users"`
	Rate            float64       `yaml:"rate"`
	Duration        time.Duration `yaml:"duration"`
	Seed            uint64        `yaml:"seed"`
	Items           []int         `yaml:"items"` // [min, max]
	Churn           float64       `yaml:"churn"`
	Skew            float64       `yaml:"skew"`
	Logout          bool          `yaml:"logout"`
	Replay          bool          `yaml:"replay"`
	Work            time.Duration `yaml:"work"`
	CheckoutWork    time.Duration `yaml:"checkout_work"`
	ResponseTimeout time.Duration `yaml:"response_timeout"`
	Drain           struct {
		Idle    time.Duration `yaml:"idle"`
		Timeout time.Duration `yaml:"timeout"`
	} `yaml:"drain"`
	Balancers []string `yaml:"balancers"`
	Stores    []string `yaml:"stores"`
	Variants  []string `yaml:"variants"`
	Faults    []string `yaml:"faults"`
	Quick     struct {
		Duration  time.Duration `yaml:"duration"`
		Users     int           `yaml:"users"`
		Balancers []string      `yaml:"balancers"`
		Stores    []string      `yaml:"stores"`
		Variants  []string      `yaml:"variants"`
	} `yaml:"quick"`
}

// maxSpecBytes bounds a spec file; a real one is a few hundred bytes.
const maxSpecBytes = 1 << 20

// LoadSpec reads a spec from a YAML file such as:
//
//	preset: failover
//	name: failover-long
//	users: 300
//	rate: 500
//	duration: 60s
//	balancers: [cookie, round-robin]
//	stores: [memory, redis]
//	faults: ["20s kill b2", "40s restart b2"]
//	quick: {duration: 5s}
//
// Absent fields take the values of the preset the file names, or of the
// steady preset, so a file says only what it changes. The claims whose
// findings the report writes are the file's `claims: [1, 2]`, else those
// of the preset it names; none without either.
func LoadSpec(path string) (Spec, error) {
	f, err := os.Open(path)
	if err != nil {
		return Spec{}, fmt.Errorf("experiment spec: %w", err)
	}
	defer func() { _ = f.Close() }()
	data, err := io.ReadAll(io.LimitReader(f, maxSpecBytes+1))
	if err != nil {
		return Spec{}, fmt.Errorf("experiment spec %s: %w", path, err)
	}
	if len(data) > maxSpecBytes {
		return Spec{}, fmt.Errorf("%w %s: larger than %d bytes", ErrBadSpec, path, maxSpecBytes)
	}
	s, err := parseSpec(data)
	if err != nil {
		return Spec{}, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}

// parseSpec decodes a spec over the values of the preset it names (steady
// when none) and checks it.
func parseSpec(data []byte) (Spec, error) {
	var head struct {
		Preset string `yaml:"preset"`
	}
	if err := yaml.Unmarshal(data, &head); err != nil {
		return Spec{}, fmt.Errorf("%w: %w", ErrBadSpec, err)
	}
	base := steady.clone()
	var f specFile
	if head.Preset != "" {
		p, err := Preset(head.Preset)
		if err != nil {
			return Spec{}, err
		}
		base = p
		f.Title, f.Claims = p.Title, p.Claims
		for _, ft := range p.Faults {
			f.Faults = append(f.Faults, ft.String())
		}
		f.Quick.Duration, f.Quick.Users, f.Quick.Balancers, f.Quick.Stores = p.Quick.Duration, p.Quick.Users, p.Quick.Balancers, p.Quick.Stores
		f.Quick.Variants = p.Quick.Variants
	}
	f.Name, f.Backends, f.Users, f.Rate, f.Duration = "custom", base.Backends, base.Users, base.Rate, base.Duration
	f.Seed, f.Items, f.Churn, f.Skew, f.Logout, f.Replay = base.Seed, []int{base.MinItems, base.MaxItems}, base.Churn, base.Skew, base.Logout, base.Replay
	f.Work, f.CheckoutWork, f.ResponseTimeout = base.Work, base.CheckoutWork, base.ResponseTimeout
	f.Drain.Idle, f.Drain.Timeout = base.DrainIdle, base.DrainTimeout
	f.Balancers, f.Stores, f.Variants = base.Balancers, base.Stores, base.Variants
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		return Spec{}, fmt.Errorf("%w: %w", ErrBadSpec, err)
	}
	if len(f.Items) != 2 {
		return Spec{}, fmt.Errorf("%w %q: items: want [min, max]", ErrBadSpec, f.Name)
	}
	s := Spec{
		Name: f.Name, Title: f.Title, Claims: f.Claims,
		Backends: f.Backends, Users: f.Users, Rate: f.Rate, Duration: f.Duration, Seed: f.Seed,
		MinItems: f.Items[0], MaxItems: f.Items[1], Churn: f.Churn, Skew: f.Skew, Logout: f.Logout, Replay: f.Replay,
		Work: f.Work, CheckoutWork: f.CheckoutWork, ResponseTimeout: f.ResponseTimeout,
		DrainIdle: f.Drain.Idle, DrainTimeout: f.Drain.Timeout,
		Balancers: f.Balancers, Stores: f.Stores, Variants: f.Variants,
		Quick: Quick{Duration: f.Quick.Duration, Users: f.Quick.Users, Balancers: f.Quick.Balancers, Stores: f.Quick.Stores, Variants: f.Quick.Variants},
	}
	if s.Title == "" {
		s.Title = s.Name
	}
	for _, raw := range f.Faults {
		ft, err := harness.ParseFault(raw)
		if err != nil {
			return Spec{}, fmt.Errorf("%w %q: %w", ErrBadSpec, s.Name, err)
		}
		s.Faults = append(s.Faults, ft)
	}
	if err := s.Check(); err != nil {
		return Spec{}, err
	}
	if sorted, err := harness.NewSchedule(s.Faults, s.Backends, s.Duration); err == nil {
		s.Faults = sorted
	}
	if q := s.Shortened(); !reflect.DeepEqual(s.Quick, Quick{}) {
		if err := q.Check(); err != nil {
			return Spec{}, fmt.Errorf("quick: %w", err)
		}
	}
	return s, nil
}
