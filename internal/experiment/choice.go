package experiment

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
)

// Variant holds the options that tell apart cells of the same balancer and
// store, as results.json's optional "variant" object: {"load_factor":
// "1.25"} for a consistent-hash cell with bounded loads.
type Variant map[string]string

// choice is an entry of Spec.Balancers, Spec.Stores or Spec.Variants: a
// name and the options that make a variant of it, written "consistent-hash
// load_factor=1.25"; an entry of Variants has options only, "retry=all
// client=nokey".
type choice struct {
	name string
	opts Variant
}

// entryKind says which list of a spec an entry is from.
type entryKind uint8

const (
	ofBalancer entryKind = iota
	ofStore
	ofRun // Spec.Variants: options of the whole cell, its proxy and its users
)

// option is an option an entry may carry: who takes it, and its check.
type option struct {
	kind  entryKind
	of    string // the one name that takes it; "" for the run's
	check func(v string) error
}

// oneOf checks that a value is one of vals.
func oneOf(vals ...string) func(string) error {
	return func(v string) error {
		if !slices.Contains(vals, v) {
			return fmt.Errorf("want %s", strings.Join(vals, " or "))
		}
		return nil
	}
}

// options are the options entries may carry, by key.
var options = map[string]option{
	// A bound on each backend's requests in flight, as a multiple of the
	// pool's average: the proxy's hash.load_factor.
	"load_factor": {kind: ofBalancer, of: "consistent-hash", check: func(v string) error {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || !(f > 1 && f <= 100) {
			return fmt.Errorf("want a number above 1")
		}
		return nil
	}},
	// A denylist of logged-out sessions, checked on every request: the
	// backends' --token-denylist, in the cell's Redis.
	"denylist": {kind: ofStore, of: StoreToken, check: oneOf("redis")},
	// The proxy's retry policy: safe, its own (idempotent methods and
	// requests with an Idempotency-Key), or all, every method (the hidden
	// flag of affinity serve that only the harness sets).
	"retry": {kind: ofRun, check: oneOf(retrySafe, retryAll)},
	// Whether the users send an Idempotency-Key with each checkout (and
	// repeat a failed one with it), or none (and do not repeat one).
	"client": {kind: ofRun, check: oneOf(clientKey, clientNoKey)},
	// How a deploy fault takes each backend out: out of the config, or
	// the drain state and a wait until it is idle.
	"mode": {kind: ofRun, check: oneOf(modeRemove, modeDrain)},
}

// Values of the run's options.
const (
	retrySafe   = "safe"
	retryAll    = "all"
	clientKey   = "key"
	clientNoKey = "nokey"
	modeRemove  = "remove"
	modeDrain   = "drain"
)

// parseChoice reads an entry of the kind k: a name (none for a run's), then
// options key=value, space apart. It checks the options against the name;
// the name itself is the caller's to check.
func parseChoice(entry string, k entryKind) (choice, error) {
	fields := strings.Fields(entry)
	if len(fields) == 0 {
		return choice{}, fmt.Errorf("empty entry")
	}
	var c choice
	if k != ofRun {
		c.name, fields = fields[0], fields[1:]
	}
	for _, f := range fields {
		key, v, ok := strings.Cut(f, "=")
		o, known := options[key]
		switch {
		case !ok || v == "":
			return choice{}, fmt.Errorf("%q: option %q: want key=value", entry, f)
		case !known || o.kind != k:
			return choice{}, fmt.Errorf("%q: unknown option %q", entry, key)
		case o.of != c.name:
			return choice{}, fmt.Errorf("%q: %s applies to %s only", entry, key, o.of)
		}
		if err := o.check(v); err != nil {
			return choice{}, fmt.Errorf("%q: %s: %w", entry, key, err)
		}
		if c.opts == nil {
			c.opts = Variant{}
		}
		c.opts[key] = v
	}
	return c, nil
}

// String writes c as an entry, options sorted: the form cells are known by.
func (c choice) String() string {
	parts := []string{}
	if c.name != "" {
		parts = append(parts, c.name)
	}
	for _, k := range slices.Sorted(maps.Keys(c.opts)) {
		parts = append(parts, k+"="+c.opts[k])
	}
	return strings.Join(parts, " ")
}

// variantOf merges the options of a cell's entries, or nil when none has
// any.
func variantOf(entries ...choice) Variant {
	var v Variant
	for _, e := range entries {
		if len(e.opts) > 0 && v == nil {
			v = Variant{}
		}
		maps.Copy(v, e.opts)
	}
	return v
}

// entry writes name with the options of v that belong to entries of the
// kind k.
func entry(name string, v Variant, k entryKind) string {
	c := choice{name: name}
	for key, val := range v {
		if options[key].kind == k {
			if c.opts == nil {
				c.opts = Variant{}
			}
			c.opts[key] = val
		}
	}
	return c.String()
}

// BalancerEntry is the cell's balancer with its options, as the spec names
// it: "consistent-hash load_factor=1.25".
func (c *CellResult) BalancerEntry() string { return entry(c.Balancer, c.Variant, ofBalancer) }

// StoreEntry is the cell's store with its options, as the spec names it.
func (c *CellResult) StoreEntry() string { return entry(c.Store, c.Variant, ofStore) }

// RunEntry is the cell's entry of Spec.Variants, "retry=all client=nokey";
// empty for a spec without variants.
func (c *CellResult) RunEntry() string { return entry("", c.Variant, ofRun) }

// option returns the value of the run's option key in c, or def when the
// cell has none.
func (c *CellResult) option(key, def string) string {
	if v, ok := c.Variant[key]; ok {
		return v
	}
	return def
}
