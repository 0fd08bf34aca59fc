package proxy

import (
	"fmt"
	"strings"

	"github.com/affinityproxy/affinity/config"
)

// route is a config.Route with its host pattern normalised once at build
// time, so that matching compares strings and allocates nothing.
type route struct {
	host   string // exact host, lower case, without port or trailing dot; "" matches any
	suffix string // ".example.com" for "*.example.com"; "" when host is exact or empty
	path   string // path prefix; "" matches any
	pool   *pool
}

// router holds the routes in config order; the first match wins. A linear
// scan of a few precomputed strings beats a map here: a map keyed by host
// would need the request's host lower-cased, which allocates.
type router struct {
	routes []route
}

// newRouter resolves each route's pool by name among pools.
func newRouter(routes []config.Route, pools map[string]*pool) (router, error) {
	rt := router{routes: make([]route, 0, len(routes))}
	for i, cr := range routes {
		p, ok := pools[cr.Pool]
		if !ok {
			return router{}, fmt.Errorf("route %d: %w %q", i+1, errUnknownPool, cr.Pool)
		}
		r := route{path: cr.Match.Path, pool: p}
		h := strings.ToLower(hostOnly(cr.Match.Host))
		if rest, ok := strings.CutPrefix(h, "*."); ok {
			r.suffix = "." + rest
		} else {
			r.host = h
		}
		rt.routes = append(rt.routes, r)
	}
	return rt, nil
}

// match returns the pool of the first route matching host (a Host header,
// port allowed) and path, or nil.
func (rt *router) match(host, path string) *pool {
	host = hostOnly(host)
	for i := range rt.routes {
		r := &rt.routes[i]
		if r.matchHost(host) && strings.HasPrefix(path, r.path) {
			return r.pool
		}
	}
	return nil
}

func (r *route) matchHost(host string) bool {
	switch {
	case r.suffix != "":
		// The suffix starts with a dot, so "example.com" itself does not
		// match "*.example.com", and neither does "badexample.com".
		n := len(host) - len(r.suffix)
		return n > 0 && strings.EqualFold(host[n:], r.suffix)
	case r.host != "":
		return strings.EqualFold(host, r.host)
	}
	return true
}

// hostOnly strips the port, the brackets of an IPv6 literal and a trailing
// dot from a Host header, returning a substring of it.
func hostOnly(h string) string {
	if strings.HasPrefix(h, "[") {
		if end := strings.IndexByte(h, ']'); end > 0 {
			return h[1:end]
		}
		return h
	}
	// More than one colon without brackets is a bare IPv6 address, which
	// has no port to strip.
	if i := strings.IndexByte(h, ':'); i >= 0 && strings.LastIndexByte(h, ':') == i {
		h = h[:i]
	}
	return strings.TrimSuffix(h, ".")
}
