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

// choice is an entry of Spec.Balancers or Spec.Stores: a name and the
// options that make a variant of it, written "consistent-hash
// load_factor=1.25".
type choice struct {
	name string
	opts Variant
}

// option is an option an entry may carry: who takes it, and its check.
type option struct {
	balancer bool   // an option of a balancer entry, else of a store entry
	of       string // the one name that takes it
	check    func(v string) error
}

// options are the options entries may carry, by key.
var options = map[string]option{
	// A bound on each backend's requests in flight, as a multiple of the
	// pool's average: the proxy's hash.load_factor.
	"load_factor": {balancer: true, of: "consistent-hash", check: func(v string) error {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || !(f > 1 && f <= 100) {
			return fmt.Errorf("want a number above 1")
		}
		return nil
	}},
	// A denylist of logged-out sessions, checked on every request: the
	// backends' --token-denylist, in the cell's Redis.
	"denylist": {balancer: false, of: StoreToken, check: func(v string) error {
		if v != "redis" {
			return fmt.Errorf("want redis")
		}
		return nil
	}},
}

// parseChoice reads an entry: a name, then options key=value, space
// apart. It checks the options against the name; the name itself is the
// caller's to check.
func parseChoice(entry string, balancer bool) (choice, error) {
	fields := strings.Fields(entry)
	if len(fields) == 0 {
		return choice{}, fmt.Errorf("empty entry")
	}
	c := choice{name: fields[0]}
	for _, f := range fields[1:] {
		k, v, ok := strings.Cut(f, "=")
		o, known := options[k]
		switch {
		case !ok || v == "":
			return choice{}, fmt.Errorf("%q: option %q: want key=value", entry, f)
		case !known || o.balancer != balancer:
			return choice{}, fmt.Errorf("%q: unknown option %q", entry, k)
		case o.of != c.name:
			return choice{}, fmt.Errorf("%q: %s applies to %s only", entry, k, o.of)
		}
		if err := o.check(v); err != nil {
			return choice{}, fmt.Errorf("%q: %s: %w", entry, k, err)
		}
		if c.opts == nil {
			c.opts = Variant{}
		}
		c.opts[k] = v
	}
	return c, nil
}

// String writes c as an entry, options sorted: the form cells are known by.
func (c choice) String() string {
	s := c.name
	for _, k := range slices.Sorted(maps.Keys(c.opts)) {
		s += " " + k + "=" + c.opts[k]
	}
	return s
}

// variantOf merges the options of a cell's balancer and store, or nil when
// neither has any.
func variantOf(bal, store choice) Variant {
	if len(bal.opts)+len(store.opts) == 0 {
		return nil
	}
	v := Variant{}
	maps.Copy(v, bal.opts)
	maps.Copy(v, store.opts)
	return v
}

// entry writes name with the options of v that belong to entries of its
// kind (balancer or store).
func entry(name string, v Variant, balancer bool) string {
	c := choice{name: name}
	for k, val := range v {
		if options[k].balancer == balancer {
			if c.opts == nil {
				c.opts = Variant{}
			}
			c.opts[k] = val
		}
	}
	return c.String()
}

// BalancerEntry is the cell's balancer with its options, as the spec names
// it: "consistent-hash load_factor=1.25".
func (c *CellResult) BalancerEntry() string { return entry(c.Balancer, c.Variant, true) }

// StoreEntry is the cell's store with its options, as the spec names it.
func (c *CellResult) StoreEntry() string { return entry(c.Store, c.Variant, false) }
