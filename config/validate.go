package config

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/affinityproxy/affinity/balancer"
	"gopkg.in/yaml.v3"
)

// decoder walks the node tree of one file, checks every value against the
// schema where it stands, and collects every problem with its position.
type decoder struct {
	file string
	// newPolicy makes a balancer policy, to learn whether its factory
	// accepts the options. Parse passes balancer.New.
	newPolicy func(string, balancer.Options) (balancer.Policy, error)
	errs      ErrorList
	// at is where the keys whose values Check reads stand, by path.
	at map[string]pos
}

// pos is a position in a config file.
type pos struct{ line, col int }

// mark records where the value of the key at path stands, for Check.
func (d *decoder) mark(path string, n *yaml.Node) {
	if d.at == nil {
		d.at = map[string]pos{}
	}
	d.at[path] = pos{n.Line, n.Column}
}

// errorf records a problem at n's position.
func (d *decoder) errorf(n *yaml.Node, format string, args ...any) {
	d.errs = append(d.errs, &Error{File: d.file, Line: n.Line, Col: n.Column, Msg: fmt.Sprintf(format, args...)})
}

// join appends key to a dotted path; the top level has the empty path.
func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// where names a path in a sentence.
func where(path string) string {
	if path == "" {
		return "top level"
	}
	return path
}

// prefix starts a message about path.
func prefix(path string) string {
	if path == "" {
		return ""
	}
	return path + ": "
}

// pair is one entry of a mapping.
type pair struct{ key, val *yaml.Node }

// pairs returns the entries of a mapping, reporting a node that is not a
// mapping, keys that are not plain scalars, and duplicate keys (all but the
// first occurrence are dropped).
func (d *decoder) pairs(n *yaml.Node, path string) ([]pair, bool) {
	if n.Kind != yaml.MappingNode {
		d.errorf(n, "%s: expected a mapping, got %s", where(path), describe(n))
		return nil, false
	}
	first := make(map[string]*yaml.Node, len(n.Content)/2)
	out := make([]pair, 0, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		switch {
		case k.Kind == yaml.AliasNode:
			d.errorf(k, "%sYAML aliases are not supported; write the key out", prefix(path))
			continue
		case k.Kind != yaml.ScalarNode:
			d.errorf(k, "%skeys must be plain strings, got %s", prefix(path), describe(k))
			continue
		case k.ShortTag() == "!!merge":
			d.errorf(k, "%sYAML merge keys (<<) are not supported; write the keys out", prefix(path))
			continue
		}
		if f, dup := first[k.Value]; dup {
			d.errorf(k, "duplicate key %q in %s (first at line %d)", k.Value, where(path), f.Line)
			continue
		}
		first[k.Value] = k
		out = append(out, pair{k, v})
	}
	return out, true
}

// section is a mapping whose keys were checked against the schema.
type section struct {
	path string
	// at is where a missing key is reported: the section's key in its
	// parent, or the mapping itself.
	at   *yaml.Node
	keys map[string]*yaml.Node // key nodes of known keys
	vals map[string]*yaml.Node // their values as written
}

// section checks that n is a mapping holding only known keys (which must be
// sorted, as they are listed in messages). It returns nil when n is not a
// mapping.
func (d *decoder) section(n, at *yaml.Node, path string, known ...string) *section {
	ps, ok := d.pairs(n, path)
	if !ok {
		return nil
	}
	s := &section{path: path, at: at, keys: map[string]*yaml.Node{}, vals: map[string]*yaml.Node{}}
	for _, p := range ps {
		if !slices.Contains(known, p.key.Value) {
			d.errorf(p.key, "unknown key %q in %s (known: %s)", p.key.Value, where(path), strings.Join(known, ", "))
			continue
		}
		s.keys[p.key.Value] = p.key
		s.vals[p.key.Value] = p.val
	}
	return s
}

// val returns the value of key, or nil when it is absent or null: a key
// written without a value means the same as no key. An alias is reported
// and treated as absent, so that an alias bomb is never expanded.
func (d *decoder) val(s *section, key string) *yaml.Node {
	n := s.vals[key]
	switch {
	case n == nil || isNull(n):
		return nil
	case n.Kind == yaml.AliasNode:
		d.errorf(n, "%s: YAML aliases are not supported; write the value out", join(s.path, key))
		return nil
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// require reports each key that is absent or null.
func (d *decoder) require(s *section, keys ...string) {
	for _, k := range keys {
		switch n := s.vals[k]; {
		case n == nil:
			d.errorf(s.at, "%smissing required key %q", prefix(s.path), k)
		case isNull(n):
			d.errorf(n, "%s: must not be empty", join(s.path, k))
		}
	}
}

// sub returns the section under key, or nil when it is absent, null or not a
// mapping.
func (d *decoder) sub(s *section, key string, known ...string) *section {
	n := d.val(s, key)
	if n == nil {
		return nil
	}
	return d.section(n, s.keys[key], join(s.path, key), known...)
}

// list returns the items of the list under key, or nil when it is absent or
// not a list. Aliased items are reported and left out.
func (d *decoder) list(s *section, key string) []*yaml.Node {
	n := d.val(s, key)
	if n == nil {
		return nil
	}
	path := join(s.path, key)
	if n.Kind != yaml.SequenceNode {
		d.errorf(n, "%s: expected a list, got %s", path, describe(n))
		return nil
	}
	items := make([]*yaml.Node, 0, len(n.Content))
	for i, it := range n.Content {
		if it.Kind == yaml.AliasNode {
			d.errorf(it, "%s[%d]: YAML aliases are not supported; write the value out", path, i)
			continue
		}
		items = append(items, it)
	}
	return items
}

// scalar reports n unless it is a scalar with one of tags.
func (d *decoder) scalar(n *yaml.Node, path, want string, tags ...string) bool {
	if n.Kind == yaml.ScalarNode && slices.Contains(tags, n.ShortTag()) {
		return true
	}
	d.errorf(n, "%s: expected %s, got %s", path, want, describe(n))
	return false
}

// str reads a string. Numbers are taken as written (port: 8080, status:
// 200), but true and false are not, as they are rarely meant as text.
// The node is nil when the key is absent or its value is wrong.
func (d *decoder) str(s *section, key string) (string, *yaml.Node) {
	n := d.val(s, key)
	if n == nil || !d.scalar(n, join(s.path, key), "a string", "!!str", "!!int", "!!float", "!!timestamp") {
		return "", nil
	}
	return n.Value, n
}

// oneOf reads a string that must be one of choices.
func (d *decoder) oneOf(s *section, key string, choices ...string) (string, *yaml.Node) {
	v, n := d.str(s, key)
	if n == nil {
		return "", nil
	}
	if !slices.Contains(choices, v) {
		d.errorf(n, "%s: must be one of %s; got %q", join(s.path, key), strings.Join(choices, ", "), v)
		return "", nil
	}
	return v, n
}

// integer reads an integer within lo..hi.
func (d *decoder) integer(s *section, key string, lo, hi int64) (int64, *yaml.Node) {
	n := d.val(s, key)
	if n == nil {
		return 0, nil
	}
	return d.intNode(n, join(s.path, key), lo, hi)
}

// intNode reads an integer node within lo..hi; math.MaxInt64 as hi means no
// upper bound.
func (d *decoder) intNode(n *yaml.Node, path string, lo, hi int64) (int64, *yaml.Node) {
	if d.leadingZero(n, path) || !d.scalar(n, path, "an integer", "!!int") {
		return 0, nil
	}
	var v int64
	if err := n.Decode(&v); err != nil {
		d.errorf(n, "%s: %s is not an integer in range", path, describe(n))
		return 0, nil
	}
	if v < lo || v > hi {
		if hi == math.MaxInt64 {
			d.errorf(n, "%s: must be at least %d, got %d", path, lo, v)
		} else {
			d.errorf(n, "%s: must be between %d and %d, got %d", path, lo, hi, v)
		}
		return 0, nil
	}
	return v, n
}

// leadingZeroNumber is a plain number written with a leading zero.
var leadingZeroNumber = regexp.MustCompile(`^[-+]?0[0-9_]`)

// leadingZero reports a plain number that YAML 1.1 and YAML 1.2 read
// differently, as no reading of it is safe to guess: one written with a
// leading zero, such as 010, which YAML 1.1, and yaml.v3, read as octal (8)
// and YAML 1.2 as decimal (10) (and 08 as a float); 0o10, octal in YAML 1.2
// and a string in YAML 1.1; and 0b11 or 1_000, binary and digits grouped in
// YAML 1.1, strings in YAML 1.2.
func (d *decoder) leadingZero(n *yaml.Node, path string) bool {
	if n.Kind != yaml.ScalarNode || n.Style != 0 {
		return false
	}
	v := strings.TrimLeft(n.Value, "+-")
	number := n.ShortTag() == "!!int" || n.ShortTag() == "!!float"
	switch {
	case leadingZeroNumber.MatchString(n.Value):
		d.errorf(n, "%s: %s has a leading zero, which YAML 1.1 reads as octal and YAML 1.2 as decimal; write the number without it", path, n.Value)
	case number && (strings.HasPrefix(v, "0o") || strings.HasPrefix(v, "0O")):
		d.errorf(n, "%s: %s is octal in YAML 1.2 and a string in YAML 1.1; write the number in decimal", path, n.Value)
	case number && (strings.HasPrefix(v, "0b") || strings.HasPrefix(v, "0B")):
		d.errorf(n, "%s: %s is binary in YAML 1.1 and a string in YAML 1.2; write the number in decimal", path, n.Value)
	case number && strings.Contains(v, "_"):
		d.errorf(n, "%s: %s groups digits with _, which YAML 1.1 allows and YAML 1.2 reads as a string; write the number without it", path, n.Value)
	default:
		return false
	}
	return true
}

// number reads a finite number, integer or not.
func (d *decoder) number(s *section, key string) (float64, *yaml.Node) {
	n := d.val(s, key)
	path := join(s.path, key)
	if n == nil || d.leadingZero(n, path) || !d.scalar(n, path, "a number", "!!int", "!!float") {
		return 0, nil
	}
	var v float64
	if err := n.Decode(&v); err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
		d.errorf(n, "%s: expected a finite number, got %s", path, describe(n))
		return 0, nil
	}
	return v, n
}

// boolean reads true or false.
func (d *decoder) boolean(s *section, key string) (bool, *yaml.Node) {
	n := d.val(s, key)
	if n == nil || !d.scalar(n, join(s.path, key), "true or false", "!!bool") {
		return false, nil
	}
	var v bool
	if err := n.Decode(&v); err != nil {
		d.errorf(n, "%s: expected true or false, got %s", join(s.path, key), describe(n))
		return false, nil
	}
	return v, n
}

// duration reads a Go duration such as 1m30s: greater than 0, or at least 0
// when zeroOK. A bare 0 is accepted, as Go accepts it.
func (d *decoder) duration(s *section, key string, zeroOK bool) (time.Duration, *yaml.Node) {
	path := join(s.path, key)
	n := d.val(s, key)
	if n == nil || !d.scalar(n, path, "a duration", "!!str", "!!int") {
		return 0, nil
	}
	v, err := time.ParseDuration(n.Value)
	switch {
	case err != nil:
		d.errorf(n, "%s: invalid duration %s; write a number with a unit, e.g. 500ms, 10s, 5m", path, describe(n))
	case v < 0:
		d.errorf(n, "%s: must not be negative, got %s", path, n.Value)
	case v == 0 && !zeroOK:
		d.errorf(n, "%s: must be greater than 0", path)
	default:
		return v, n
	}
	return 0, nil
}

// checkAddress accepts host:port with a numeric port, as net.Listen does; an
// empty host means every interface and port 0 a free port.
func checkAddress(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		var ae *net.AddrError
		if errors.As(err, &ae) {
			return fmt.Errorf("%q is not host:port: %s", addr, ae.Err)
		}
		return fmt.Errorf("%q is not host:port", addr)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("port %q must be a number from 0 to 65535", port)
	}
	return nil
}

// checkHostPattern accepts a route's host: an IP address, a DNS name, or
// "*." followed by a DNS name.
func checkHostPattern(h string) error {
	if net.ParseIP(h) != nil {
		return nil
	}
	name := strings.TrimPrefix(h, "*.")
	if name == "" || !isDNSName(name) {
		return fmt.Errorf("%q is not a host name or *.suffix (without port)", h)
	}
	return nil
}

// isDNSName accepts dot-separated labels of letters, digits, '-' and '_'.
func isDNSName(s string) bool {
	for _, label := range strings.Split(s, ".") {
		if label == "" {
			return false
		}
		for _, c := range []byte(label) {
			if !isAlnum(c) && c != '-' && c != '_' {
				return false
			}
		}
	}
	return true
}

func isAlnum(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}

// parseBackendURL accepts http or https URLs that name a server and nothing
// more: the proxy forwards the request's own path and query.
func parseBackendURL(s string) (*url.URL, error) {
	switch {
	case s == "":
		return nil, errors.New("must not be empty")
	case !strings.Contains(s, "://"):
		return nil, fmt.Errorf("%q: missing scheme; write http://%s or https://%s", s, s, s)
	}
	u, err := url.Parse(s)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("invalid URL %q: %w", s, err)
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, fmt.Errorf("%q: scheme must be http or https (write http://HOST:PORT)", s)
	case u.Opaque != "" || u.Hostname() == "":
		return nil, fmt.Errorf("%q: missing host", s)
	case u.User != nil:
		return nil, fmt.Errorf("%q: user info is not allowed", s)
	case u.Path != "" && u.Path != "/":
		return nil, fmt.Errorf("%q: a backend URL has no path (routes match paths; the request's path is forwarded)", s)
	case u.RawQuery != "" || u.ForceQuery:
		return nil, fmt.Errorf("%q: a backend URL has no query", s)
	case u.Fragment != "" || strings.Contains(s, "#"):
		return nil, fmt.Errorf("%q: a backend URL has no fragment", s)
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.ParseUint(p, 10, 16); err != nil || n == 0 {
			return nil, fmt.Errorf("%q: port must be from 1 to 65535", s)
		}
	}
	return u, nil
}

// isToken reports whether s is an HTTP token (RFC 9110), the syntax of
// header and cookie names.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range []byte(s) {
		if !isAlnum(c) && !strings.ContainsRune("!#$%&'*+-.^_`|~", rune(c)) {
			return false
		}
	}
	return true
}

// isAttrValue reports whether s can stand in a Set-Cookie attribute or a
// header: no controls, spaces or separators that would end it early.
func isAttrValue(s string) bool {
	for _, c := range []byte(s) {
		if c <= ' ' || c == 0x7f || c == ';' || c == ',' {
			return false
		}
	}
	return true
}

// checkHashKey accepts what a consistent-hash pool may hash.
func checkHashKey(k string) error {
	const want = "want ip, path, header:NAME, cookie:NAME or query:NAME"
	if k == "ip" || k == "path" {
		return nil
	}
	kind, name, ok := strings.Cut(k, ":")
	if !ok {
		return fmt.Errorf("%q: %s", k, want)
	}
	switch kind {
	case "header", "cookie":
		if !isToken(name) {
			return fmt.Errorf("%q: %s name %q is not a valid token", k, kind, name)
		}
	case "query":
		if name == "" {
			return fmt.Errorf("%q: query parameter name is empty", k)
		}
	default:
		return fmt.Errorf("%q: %s", k, want)
	}
	return nil
}

// parseStatusRange accepts "NNN" or "NNN-NNN" within 100-599.
func parseStatusRange(s string) (lo, hi int, err error) {
	a, b, isRange := strings.Cut(s, "-")
	if !isRange {
		b = a
	}
	lo, errLo := parseStatus(a)
	hi, errHi := parseStatus(b)
	switch {
	case errLo != nil || errHi != nil:
		return 0, 0, fmt.Errorf("want a status like 200 or a range like 200-399, within 100-599; got %q", s)
	case lo > hi:
		return 0, 0, fmt.Errorf("range %q is reversed", s)
	}
	return lo, hi, nil
}

func parseStatus(s string) (int, error) {
	if len(s) != 3 {
		return 0, errors.New("not three digits")
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 100 || n > 599 {
		return 0, errors.New("not a status")
	}
	return n, nil
}
