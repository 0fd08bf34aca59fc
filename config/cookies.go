package config

import (
	"fmt"
	"strings"
)

// cookieUse is a cookie a pool's balancer reads: the proxy's own sticky
// cookie (own), or the application's (learn.cookie, a hash key
// cookie:NAME).
type cookieUse struct {
	pool, name   string
	own          bool
	path, domain string // of the proxy's own cookie
	at           string // the path of the key that names it, for the warning's position
}

// cookieWarnings warns of two pools whose requests may come from one host
// (by their routes) where one's sticky cookie is the other's too: the same
// cookie a browser keeps for both (same name, path and domain), which each
// pool reads as its own or as garbage, placing the client anew and setting
// the cookie again, so that clients of both move on every switch between
// them; or the application's cookie of the other, which the proxy's would
// overwrite.
func (d *decoder) cookieWarnings(c *Config) ErrorList {
	var uses []cookieUse
	for _, p := range c.Pools {
		o, path := p.Balancer.Options, "pools."+p.Name+".balancer."
		switch p.Balancer.Type {
		case "cookie":
			at := path + "cookie.name"
			if _, ok := d.at[at]; !ok {
				at = "pools." + p.Name
			}
			uses = append(uses, cookieUse{p.Name, o.Cookie.Name, true, o.Cookie.Path, o.Cookie.Domain, at})
		case "learn":
			uses = append(uses, cookieUse{pool: p.Name, name: o.Learn.Cookie, at: path + "learn.cookie"})
		case "consistent-hash":
			if name, ok := strings.CutPrefix(o.Hash.Key, "cookie:"); ok {
				uses = append(uses, cookieUse{pool: p.Name, name: name, at: path + "hash.key"})
			}
		}
	}
	var warns ErrorList
	for i, a := range uses {
		for _, b := range uses[:i] {
			// A domain of their own makes the browser send both
			// cookies to every host under it, whatever the routes.
			sameDomain := a.own && b.own && a.domain != "" && a.domain == b.domain
			if a.pool == b.pool || a.name != b.name || !a.own && !b.own || !sameDomain && !sharesHost(c.Routes, a.pool, b.pool) {
				continue
			}
			var msg string
			switch {
			case a.own && b.own && (a.path != b.path || a.domain != b.domain):
				// Two cookies a browser keeps apart; it sends the
				// one of the longer path first, which the pool of
				// that path reads.
				continue
			case a.own && b.own:
				msg = fmt.Sprintf("pool %q's sticky cookie %s is pool %q's too, on the same host and path: "+
					"each pool would take the other's for its own or place the client anew, and browsers keep only the last set; "+
					"give each pool a name of its own (by default, %s and the pool's name)", a.pool, a.name, b.pool, DefaultCookiePrefix)
			default:
				own, app := a, b
				if !a.own {
					own, app = b, a
				}
				msg = fmt.Sprintf("pool %q's sticky cookie %s is the application's cookie of pool %q, on the same host: "+
					"the proxy's would overwrite the application's; give the sticky cookie another name", own.pool, own.name, app.pool)
			}
			p := d.at[a.at]
			warns = append(warns, &Error{File: c.File, Line: p.line, Col: p.col, Warning: true, Msg: a.at + ": " + msg})
		}
	}
	return warns
}

// sharesHost reports whether some request could be routed to pool a and
// another from the same host to pool b: a browser sends both the cookies
// of that host.
func sharesHost(routes []Route, a, b string) bool {
	for _, ra := range routes {
		if ra.Pool != a {
			continue
		}
		for _, rb := range routes {
			if rb.Pool == b && hostsOverlap(ra.Match.Host, rb.Match.Host) {
				return true
			}
		}
	}
	return false
}

// hostsOverlap reports whether some host name matches both route host
// patterns: each is empty (any host), a name, or *.suffix.
func hostsOverlap(a, b string) bool {
	switch {
	case a == "" || b == "" || a == b:
		return true
	case strings.HasPrefix(a, "*.") && strings.HasSuffix(b, a[1:]):
		return true
	case strings.HasPrefix(b, "*.") && strings.HasSuffix(a, b[1:]):
		return true
	}
	return false
}
