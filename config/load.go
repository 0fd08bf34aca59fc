package config

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/affinityproxy/affinity/balancer"
	"gopkg.in/yaml.v3"
)

// MaxFileSize is the largest config file Load and Parse accept, in bytes.
// Real configs are a few kilobytes; the bound keeps a wrong path (a log, a
// disk image) from being read whole and parsed.
const MaxFileSize = 4 << 20

// Load reads and parses the config file at path. A file that cannot be read
// gives a wrapped I/O error (errors.Is(err, fs.ErrNotExist) works); a file
// that is not a valid config gives an ErrorList holding every problem.
//
// Only a regular file is read (a symlink to one is followed): a FIFO or a
// device would block the reader until someone writes to it, or never end.
func Load(path string) (*Config, error) {
	data, err := readRegular(path, MaxFileSize)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Parse(path, data)
}

// readRegular reads the regular file at path (a symlink to one is
// followed), up to limit bytes and one more: enough for the caller to know
// that the file is too big.
func readRegular(path string, limit int64) ([]byte, error) {
	// O_NONBLOCK: opening a FIFO blocks until a writer opens it, which
	// may be never; it is refused once open. A regular file ignores it.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, &fs.PathError{Op: "read", Path: path, Err: notRegular(fi.Mode())}
	}
	return io.ReadAll(io.LimitReader(f, limit+1))
}

// ReadSmallFile reads a file the config names beside itself: a
// certificate, a key, a CA bundle, a token or a password. Like the config
// file, only a regular file is read, so that /dev/zero or a FIFO named by
// mistake is refused at once instead of read without end or waited on for
// ever; and one larger than maxSecretFile is refused, not read whole.
func ReadSmallFile(path string) ([]byte, error) {
	data, err := readRegular(path, maxSecretFile)
	if err != nil {
		return nil, err
	}
	if len(data) > maxSecretFile {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, maxSecretFile)
	}
	return data, nil
}

// notRegular says what a file that is not a regular one is instead.
func notRegular(m fs.FileMode) error {
	kind := "a special file"
	switch {
	case m.IsDir():
		kind = "a directory"
	case m&fs.ModeNamedPipe != 0:
		kind = "a FIFO"
	case m&fs.ModeSocket != 0:
		kind = "a socket"
	case m&fs.ModeDevice != 0:
		kind = "a device"
	}
	return fmt.Errorf("not a regular file (%s)", kind)
}

// Parse parses a config from data; file names it in messages. On any problem
// it returns a nil Config and an ErrorList with every problem found, sorted
// by position.
func Parse(file string, data []byte) (*Config, error) {
	return parse(file, data, balancer.New)
}

func parse(file string, data []byte, newPolicy func(string, balancer.Options) (balancer.Policy, error)) (*Config, error) {
	d := &decoder{file: file, newPolicy: newPolicy}
	c := d.document(data)
	if len(d.errs) > 0 {
		d.errs.sort()
		return nil, d.errs
	}
	sum := sha256.Sum256(data)
	c.Hash = hex.EncodeToString(sum[:])
	c.at = d.at
	c.Warnings = d.warnings(c)
	return c, nil
}

// document parses data as one YAML document and decodes it.
func (d *decoder) document(data []byte) *Config {
	if len(data) > MaxFileSize {
		d.errs = append(d.errs, &Error{File: d.file, Msg: fmt.Sprintf("file is larger than the %d MiB limit", MaxFileSize>>20)})
		return nil
	}
	// The parser skips a byte order mark; dropping it here keeps the
	// columns of checkText in step with the parser's.
	data = bytes.TrimPrefix(data, []byte("\uFEFF"))
	if e := checkText(data); e != nil {
		e.File = d.file
		d.errs = append(d.errs, e)
		return nil
	}
	data = acceptYAML12(data)
	dec := yaml.NewDecoder(bytes.NewReader(data))
	// The config is the first document with anything in it. Empty ones
	// before or after it are ignored (tools that join YAML files often
	// begin or end each with "---"); a second one with anything in it is
	// refused.
	var doc yaml.Node
	found := false
	for {
		var next yaml.Node
		err := dec.Decode(&next)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			d.syntax(data, err)
			if !found {
				return nil
			}
			break
		}
		if len(next.Content) == 1 && isEmpty(next.Content[0]) {
			continue
		}
		if !found {
			doc, found = next, true
			continue
		}
		d.errorf(&next, "a config is one YAML document; found a second one")
		break
	}
	if !found {
		d.errs = append(d.errs, &Error{File: d.file, Line: 1, Col: 1, Msg: "file is empty; a config needs at least listen and pools"})
		return nil
	}
	if len(doc.Content) != 1 || isNull(doc.Content[0]) {
		d.errorf(&doc, "file is empty; a config needs at least listen and pools")
		return nil
	}
	return d.config(doc.Content[0])
}

// isEmpty reports whether n is a node written as nothing at all (not even
// null or ~).
func isEmpty(n *yaml.Node) bool {
	return isNull(n) && n.Value == "" && n.Anchor == ""
}

// yaml12 matches a %YAML 1.2 directive on its own line.
var yaml12 = regexp.MustCompile(`^%YAML[ \t]+1\.2(?:[ \t]+(?:#.*)?)?$`)

// acceptYAML12 turns a %YAML 1.2 directive before the document into a
// comment of the same length, so that positions stay; yaml.v3 refuses the
// directive. A config reads the same in both versions but for what the
// decoder refuses anyway (integers with a leading zero), or reads as YAML
// 1.2 does (yes and no are not booleans).
func acceptYAML12(data []byte) []byte {
	for off := 0; off < len(data); {
		end := off + bytes.IndexAny(data[off:], "\r\n")
		if end < off {
			end = len(data)
		}
		line := data[off:end]
		switch {
		case yaml12.Match(line):
			out := slices.Clone(data)
			out[off] = '#'
			return out
		case len(bytes.TrimSpace(line)) > 0 && line[0] != '#' && line[0] != '%':
			return data // the directives, if any, are behind
		}
		off = end + 1
	}
	return data
}

// config decodes the top level.
func (d *decoder) config(top *yaml.Node) *Config {
	s := d.section(top, top, "", "admin", "drain_timeout", "listen", "log", "pools", "routes", "server", "shutdown_timeout", "timeouts", "tls", "trusted_proxies")
	if s == nil {
		return nil
	}
	c := &Config{File: d.file, Log: DefaultLog(), Timeouts: DefaultTimeouts(), ShutdownTimeout: DefaultShutdownTimeout,
		DrainTimeout: DefaultDrainTimeout}
	d.require(s, "listen", "pools")
	if v, n := d.str(s, "listen"); n != nil {
		if err := checkAddress(v); err != nil {
			d.errorf(n, "listen: %v", err)
		}
		c.Listen = v
		d.mark("listen", n)
	}
	d.admin(s, c)
	if l := d.sub(s, "log", "access", "access_sample", "format", "level"); l != nil {
		if v, n := d.oneOf(l, "level", "debug", "info", "warn", "error"); n != nil {
			c.Log.Level = v
		}
		if v, n := d.oneOf(l, "format", "console", "json"); n != nil {
			c.Log.Format = v
		}
		if v, n := d.boolean(l, "access"); n != nil {
			c.Log.Access = v
		}
		if v, n := d.number(l, "access_sample"); n != nil {
			if v <= 0 || v > 1 {
				d.errorf(n, "log.access_sample: must be above 0 and at most 1 (log.access: false logs none), got %v", v)
			} else {
				c.Log.AccessSample = v
			}
		}
	}
	if t := d.sub(s, "timeouts", "connect", "idle_conn", "response_body", "response_header"); t != nil {
		if v, n := d.duration(t, "connect", false); n != nil {
			c.Timeouts.Connect = v
		}
		if v, n := d.duration(t, "response_header", false); n != nil {
			c.Timeouts.ResponseHeader = v
		}
		if v, n := d.duration(t, "response_body", true); n != nil {
			c.Timeouts.ResponseBody = v
		}
		if v, n := d.duration(t, "idle_conn", false); n != nil {
			c.Timeouts.IdleConn = v
		}
	}
	if v, n := d.duration(s, "shutdown_timeout", false); n != nil {
		c.ShutdownTimeout = v
	}
	if v, n := d.duration(s, "drain_timeout", true); n != nil {
		c.DrainTimeout = v
	}
	d.listener(s, c)
	names := d.pools(s, c)
	d.routes(s, c, names)
	return c
}

// admin decodes the admin listener: an address, or a mapping of listen and
// pprof. c.Listen must be decoded already.
func (d *decoder) admin(top *section, c *Config) {
	n := d.val(top, "admin")
	if n == nil {
		return
	}
	path, addr := "admin", n
	if n.Kind == yaml.MappingNode {
		s := d.section(n, top.keys["admin"], "admin", "listen", "pprof", "token", "token_file")
		d.require(s, "listen")
		if v, bn := d.boolean(s, "pprof"); bn != nil {
			c.Admin.Pprof = v
		}
		d.adminToken(s, &c.Admin)
		if _, addr = d.str(s, "listen"); addr == nil {
			return
		}
		path = "admin.listen"
	} else if !d.scalar(n, path, "an address or a mapping of listen, pprof, token and token_file", "!!str", "!!int", "!!float", "!!timestamp") {
		// The tags are those str accepts, so that both forms of the
		// address are read alike.
		return
	}
	if err := checkAddress(addr.Value); err != nil {
		d.errorf(addr, "%s: %v", path, err)
	} else if addr.Value == c.Listen {
		d.errorf(addr, "%s: must differ from listen", path)
	}
	c.Admin.Listen = addr.Value
	d.mark(path, addr)
}

// adminToken decodes the admin API's token, or the file holding it.
func (d *decoder) adminToken(s *section, a *Admin) {
	tok, tn := d.str(s, "token")
	if tn != nil {
		if err := checkToken(tok); err != nil {
			d.errorf(tn, "admin.token: %v", err)
		}
		a.Token = tok
	}
	if v, fn := d.str(s, "token_file"); fn != nil {
		switch {
		case tn != nil:
			d.errorf(fn, "admin.token_file: set token or token_file, not both")
		case v == "":
			d.errorf(fn, "admin.token_file: must name a file")
		}
		a.TokenFile = v
		d.mark("admin.token_file", fn)
	}
}

// pools decodes the pools and returns the names of all of them, including
// those with errors, so that routes to them are not reported as well.
func (d *decoder) pools(s *section, c *Config) []string {
	n := d.val(s, "pools")
	if n == nil {
		return nil
	}
	d.mark("pools", s.keys["pools"])
	ps, ok := d.pairs(n, "pools")
	if !ok {
		return nil
	}
	if len(ps) == 0 {
		d.errorf(n, "pools: at least one pool is required")
	}
	var names []string
	for _, p := range ps {
		name := p.key.Value
		names = append(names, name)
		if !isPoolName(name) {
			d.errorf(p.key, "pools: invalid pool name %q; use letters, digits, '_', '.' and '-'", name)
			continue
		}
		if pool := d.pool(name, p.key, p.val); pool != nil {
			c.Pools = append(c.Pools, pool)
		}
	}
	return names
}

func isPoolName(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range []byte(s) {
		if !isAlnum(c) && c != '_' && c != '.' && c != '-' {
			return false
		}
	}
	return true
}

// routes decodes the routes, or implies a catch-all route when there are
// none and a single pool; names lists every pool of the file.
func (d *decoder) routes(s *section, c *Config, names []string) {
	if n := s.vals["routes"]; n == nil || isNull(n) {
		switch {
		case len(names) == 1:
			c.Routes = []Route{{Pool: names[0]}}
		case len(names) > 1:
			d.errorf(s.keys["pools"], "routes: required when there are several pools (%s)", strings.Join(names, ", "))
		}
		return
	}
	items := d.list(s, "routes")
	if items == nil {
		return
	}
	if len(items) == 0 {
		d.errorf(s.vals["routes"], "routes: no routes; remove the key to send everything to a single pool")
	}
	// Routes whose match was read without error, to find routes they hide.
	type earlier struct {
		match       Match
		index, line int
	}
	var clean []earlier
	for i, it := range items {
		path := fmt.Sprintf("routes[%d]", i)
		r := d.section(it, it, path, "match", "pool")
		if r == nil {
			continue
		}
		var route Route
		before := len(d.errs)
		if m := d.sub(r, "match", "host", "path"); m != nil {
			if v, n := d.str(m, "host"); n != nil {
				if err := checkHostPattern(v); err != nil {
					d.errorf(n, "%s.host: %v", m.path, err)
				}
				route.Match.Host = strings.ToLower(v)
			}
			if v, n := d.str(m, "path"); n != nil {
				if !strings.HasPrefix(v, "/") {
					d.errorf(n, "%s.path: must start with /, got %q", m.path, v)
				}
				route.Match.Path = v
			}
		}
		if len(d.errs) == before {
			for _, e := range clean {
				if covers(e.match, route.Match) {
					d.errorf(it, "%s: never matches: routes[%d] (line %d) comes first and matches every request it would", path, e.index, e.line)
					break
				}
			}
			clean = append(clean, earlier{route.Match, i, it.Line})
		}
		d.require(r, "pool")
		if v, n := d.str(r, "pool"); n != nil {
			if len(names) > 0 && !slices.Contains(names, v) {
				d.errorf(n, "%s.pool: no pool named %q (pools: %s)", path, v, strings.Join(names, ", "))
			}
			route.Pool = v
		}
		c.Routes = append(c.Routes, route)
	}
}

// covers reports whether every request matched by b is matched by a, making
// a route with b after one with a unreachable.
func covers(a, b Match) bool {
	hostCovered := a.Host == "" || a.Host == b.Host ||
		strings.HasPrefix(a.Host, "*.") && strings.HasSuffix(b.Host, a.Host[1:])
	return hostCovered && strings.HasPrefix(b.Path, a.Path)
}

// pool decodes one pool; key is its name in the pools mapping.
func (d *decoder) pool(name string, key, n *yaml.Node) *Pool {
	path := "pools." + name
	s := d.section(n, key, path, "backends", "balancer", "discover", "health_check", "keepalive", "passive", "queue", "retries", "retry_max_body", "slow_start", "tls")
	if s == nil {
		return nil
	}
	p := &Pool{Name: name, Balancer: DefaultBalancer(name), Retries: DefaultRetries(), SlowStart: DefaultSlowStart,
		Queue: Queue{Max: DefaultQueueMax, Timeout: DefaultQueueTimeout}}
	d.mark(path, key)
	d.membership(s)
	before := len(d.errs)
	d.balancer(s, &p.Balancer)
	if len(d.errs) == before {
		// The factory has the last word on its options; asked only when
		// the section is clean, so that one mistake is not reported twice.
		if _, err := d.newPolicy(p.Balancer.Type, p.Balancer.Options); err != nil {
			at := key
			if k := s.keys["balancer"]; k != nil {
				at = k
			}
			d.errorf(at, "%s.balancer: %v", path, err)
		}
	}
	p.Backends = d.backends(s)
	p.Discover = d.discover(s)
	if v, n := d.duration(s, "slow_start", true); n != nil {
		p.SlowStart = v
	}
	if h := d.sub(s, "health_check", "expect_body", "expect_status", "fall", "host", "interval", "path", "rise", "timeout"); h != nil {
		p.HealthCheck = d.healthCheck(h)
	}
	if ps := d.sub(s, "passive", "eject", "failures", "max_eject", "on_status"); ps != nil {
		p.Passive = d.passive(ps)
	}
	if q := d.sub(s, "queue", "max", "timeout"); q != nil {
		if v, n := d.integer(q, "max", 0, MaxQueue); n != nil {
			p.Queue.Max = int(v)
		}
		if v, n := d.duration(q, "timeout", false); n != nil {
			p.Queue.Timeout = v
		}
	}
	if v, n := d.integer(s, "retries", 0, MaxRetries); n != nil {
		p.Retries.Count = int(v)
	}
	if v, n := d.integer(s, "retry_max_body", 0, math.MaxInt64); n != nil {
		p.Retries.MaxBody = v
	}
	if v, n := d.boolean(s, "keepalive"); n != nil {
		p.DisableKeepAlives = !v
	}
	p.TLS = d.backendTLS(s, p.Backends, p.Discover)
	return p
}

// optionTypes names the policy each option section of a balancer applies to.
var optionTypes = map[string]string{"cookie": "cookie", "hash": "consistent-hash", "learn": "learn"}

// balancer decodes a pool's balancer section into b, which holds defaults.
func (d *decoder) balancer(pool *section, b *Balancer) {
	s := d.sub(pool, "balancer", "cookie", "hash", "learn", "type")
	if s == nil {
		return
	}
	typeOK := true
	if v, n := d.str(s, "type"); n != nil {
		if balancer.Known(v) {
			b.Type = v
		} else {
			d.errorf(n, "%s.type: unknown balancer %q (known: %s)", s.path, v, strings.Join(balancer.Names(), ", "))
			typeOK = false
		}
	} else if n := s.vals["type"]; n != nil && !isNull(n) {
		typeOK = false // reported by str
	}
	if c := d.sub(s, "cookie", "domain", "http_only", "max_age", "name", "path", "same_site", "secret", "secure"); c != nil {
		d.cookie(c, &b.Options.Cookie)
	}
	if h := d.sub(s, "hash", "key", "load_factor", "virtual_nodes"); h != nil {
		d.hash(h, &b.Options.Hash)
	} else if typeOK && b.Type == optionTypes["hash"] {
		at := s.at
		if k := s.keys["type"]; k != nil {
			at = k
		}
		d.errorf(at, "%s: %s needs hash.key (ip, path, header:NAME, cookie:NAME or query:NAME)", s.path, b.Type)
	}
	d.learnSection(s, b, typeOK)
	if !typeOK {
		return
	}
	for _, opt := range []string{"cookie", "hash", "learn"} {
		if n := s.vals[opt]; n != nil && !isNull(n) && b.Type != optionTypes[opt] {
			d.errorf(s.keys[opt], "%s: %s applies to %s only (type is %s)", s.path, opt, optionTypes[opt], b.Type)
		}
	}
}

// cookie decodes the sticky cookie's options into o, which holds defaults.
func (d *decoder) cookie(s *section, o *balancer.CookieOptions) {
	if v, n := d.str(s, "name"); n != nil {
		if !isToken(v) {
			d.errorf(n, "%s.name: %q is not a valid cookie name (letters, digits and !#$%%&'*+-.^_`|~)", s.path, v)
		}
		o.Name = v
		d.mark(s.path+".name", n)
	}
	if v, n := d.str(s, "path"); n != nil {
		if !strings.HasPrefix(v, "/") || !isAttrValue(v) {
			d.errorf(n, "%s.path: must start with / and hold no spaces, commas or semicolons, got %q", s.path, v)
		}
		o.Path = v
	}
	if v, n := d.str(s, "domain"); n != nil {
		if !isAttrValue(v) {
			d.errorf(n, "%s.domain: %q must hold no spaces, commas or semicolons", s.path, v)
		}
		o.Domain = v
	}
	if v, n := d.duration(s, "max_age", true); n != nil {
		if v%time.Second != 0 {
			d.errorf(n, "%s.max_age: must be whole seconds, got %s", s.path, n.Value)
		}
		o.MaxAge = int(v / time.Second)
	}
	if v, n := d.boolean(s, "secure"); n != nil {
		o.Secure = v
	}
	if v, n := d.boolean(s, "http_only"); n != nil {
		o.HTTPOnly = v
	}
	if v, n := d.oneOf(s, "same_site", "lax", "strict", "none", "default"); n != nil {
		o.SameSite = sameSite[v]
		// Browsers drop a SameSite=None cookie that is not Secure, which
		// would silently break affinity.
		if o.SameSite == http.SameSiteNoneMode && !o.Secure {
			d.errorf(n, "%s.same_site: none requires secure: true", s.path)
		}
	}
	d.cookieSecret(s, o)
}

var sameSite = map[string]http.SameSite{
	"lax":     http.SameSiteLaxMode,
	"strict":  http.SameSiteStrictMode,
	"none":    http.SameSiteNoneMode,
	"default": http.SameSiteDefaultMode,
}

// hash decodes consistent hashing's options into o, which holds defaults.
func (d *decoder) hash(s *section, o *balancer.HashOptions) {
	d.require(s, "key")
	if v, n := d.str(s, "key"); n != nil {
		if err := checkHashKey(v); err != nil {
			d.errorf(n, "%s.key: %v", s.path, err)
		}
		o.Key = v
		d.mark(s.path+".key", n)
	}
	if v, n := d.integer(s, "virtual_nodes", 1, MaxVirtualNodes); n != nil {
		o.VirtualNodes = int(v)
	}
	if v, n := d.number(s, "load_factor"); n != nil {
		if v != 0 && v <= 1 {
			d.errorf(n, "%s.load_factor: must be 0 (no bound) or greater than 1, got %s", s.path, n.Value)
		}
		o.LoadFactor = v
	}
}

// backends decodes a pool's backends, reporting duplicate URLs and names at
// the second occurrence.
func (d *decoder) backends(pool *section) []Backend {
	items := d.list(pool, "backends")
	if items == nil {
		return nil
	}
	if len(items) == 0 {
		d.errorf(pool.vals["backends"], "%s.backends: at least one backend is required", pool.path)
	}
	urls := map[string]int{}  // normalized URL → line
	names := map[string]int{} // name → line
	out := make([]Backend, 0, len(items))
	for i, it := range items {
		s := d.section(it, it, fmt.Sprintf("%s.backends[%d]", pool.path, i), "max_conns", "name", "state", "url", "weight")
		if s == nil {
			continue
		}
		b := Backend{Weight: DefaultWeight, State: DefaultState}
		d.require(s, "url")
		urlDup := false
		if v, n := d.str(s, "url"); n != nil {
			d.mark(s.path+".url", n)
			u, err := parseBackendURL(v)
			if err != nil {
				d.errorf(n, "%s.url: %v", s.path, err)
			} else {
				b.URL, b.Name = u, derivedName(u)
				key := u.Scheme + "://" + b.Name
				if line, dup := urls[key]; dup {
					d.errorf(n, "%s.url: duplicate backend URL %q (first at line %d)", s.path, v, line)
					urlDup = true
				} else {
					urls[key] = n.Line
				}
			}
		}
		nameNode := s.vals["url"]
		if v, n := d.str(s, "name"); n != nil {
			if v == "" || utf8.RuneCountInString(v) > 128 || !isAttrValue(v) || strings.ContainsAny(v, `"\`) {
				d.errorf(n, "%s.name: %q must be 1 to 128 characters without spaces, quotes, commas or semicolons", s.path, v)
			}
			b.Name, nameNode = v, n
		}
		if b.Name != "" && !urlDup {
			if line, dup := names[b.Name]; dup {
				if nameNode == s.vals["url"] {
					d.errorf(nameNode, "%s: derived name %q is already used at line %d; set a name", s.path, b.Name, line)
				} else {
					d.errorf(nameNode, "%s.name: duplicate backend name %q (first at line %d)", s.path, b.Name, line)
				}
			} else {
				names[b.Name] = nameNode.Line
			}
		}
		if v, n := d.integer(s, "weight", 1, MaxWeight); n != nil {
			b.Weight = int(v)
		}
		if v, n := d.integer(s, "max_conns", 0, MaxConns); n != nil {
			b.MaxConns = int(v)
		}
		if v, n := d.oneOf(s, "state", string(StateReady), string(StateDrain), string(StateMaint)); n != nil {
			b.State = State(v)
		}
		out = append(out, b)
	}
	return out
}

// healthCheck decodes active health checks, starting from the defaults.
func (d *decoder) healthCheck(s *section) *HealthCheck {
	h := DefaultHealthCheck()
	if v, n := d.str(s, "path"); n != nil {
		if !strings.HasPrefix(v, "/") || !isAttrValue(v) {
			d.errorf(n, "%s.path: must start with / and hold no spaces, got %q", s.path, v)
		}
		h.Path = v
	}
	interval, in := d.duration(s, "interval", false)
	if in != nil {
		h.Interval = interval
	}
	timeout, tn := d.duration(s, "timeout", false)
	if tn != nil {
		h.Timeout = timeout
	}
	if h.Timeout >= h.Interval && (tn != nil || in != nil) {
		at, key := tn, "timeout"
		if at == nil {
			at, key = in, "interval"
		}
		d.errorf(at, "%s.%s: timeout (%s) must be less than interval (%s)", s.path, key, h.Timeout, h.Interval)
	}
	if v, n := d.integer(s, "rise", 1, math.MaxInt64); n != nil {
		h.Rise = int(v)
	}
	if v, n := d.integer(s, "fall", 1, math.MaxInt64); n != nil {
		h.Fall = int(v)
	}
	if v, n := d.str(s, "expect_status"); n != nil {
		lo, hi, err := parseStatusRange(v)
		if err != nil {
			d.errorf(n, "%s.expect_status: %v", s.path, err)
		}
		h.StatusMin, h.StatusMax = lo, hi
	}
	if v, n := d.str(s, "expect_body"); n != nil {
		h.Body = v
	}
	if v, n := d.str(s, "host"); n != nil {
		if !isAttrValue(v) {
			d.errorf(n, "%s.host: %q is not a valid Host header", s.path, v)
		}
		h.Host = v
	}
	return &h
}

// passive decodes passive ejection, starting from the defaults.
func (d *decoder) passive(s *section) *Passive {
	p := DefaultPassive()
	if v, n := d.integer(s, "failures", 1, math.MaxInt64); n != nil {
		p.Failures = int(v)
	}
	eject, en := d.duration(s, "eject", false)
	if en != nil {
		p.Eject = eject
	}
	maxEject, mn := d.duration(s, "max_eject", false)
	if mn != nil {
		p.MaxEject = maxEject
	}
	if p.MaxEject < p.Eject && (mn != nil || en != nil) {
		at, key := mn, "max_eject"
		if at == nil {
			at, key = en, "eject"
		}
		d.errorf(at, "%s.%s: max_eject (%s) must be at least eject (%s)", s.path, key, p.MaxEject, p.Eject)
	}
	seen := map[int64]int{} // status → line
	for i, it := range d.list(s, "on_status") {
		path := fmt.Sprintf("%s.on_status[%d]", s.path, i)
		v, n := d.intNode(it, path, 100, 599)
		if n == nil {
			continue
		}
		if line, dup := seen[v]; dup {
			d.errorf(n, "%s: duplicate status %d (first at line %d)", path, v, line)
			continue
		}
		seen[v] = n.Line
		p.OnStatus = append(p.OnStatus, int(v))
	}
	return &p
}
