package proxy

import (
	"net/http"
	"net/http/httputil"
	"net/netip"
	"slices"
	"strings"
)

// trustedProxies are the peers whose forwarding headers the proxy believes:
// load balancers or CDNs in front of it, which report the real client in
// X-Forwarded-For. From anyone else those headers are replaced, never
// extended, so that a client cannot make a backend see another address, or
// steer consistent hashing on "ip" by forging one. Empty by default, which
// costs the request path nothing.
type trustedProxies []netip.Prefix

// contains reports whether a is in one of the prefixes. The lists are short
// (a few CIDRs), so a scan beats any index.
func (t trustedProxies) contains(a netip.Addr) bool {
	a = a.Unmap().WithZone("")
	for _, p := range t {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// trusts reports whether the peer at remoteAddr (a Request.RemoteAddr,
// host:port) is a trusted proxy.
func (t trustedProxies) trusts(remoteAddr string) bool {
	if len(t) == 0 {
		return false
	}
	a, ok := parseHop(remoteAddr)
	return ok && t.contains(a)
}

// client returns the address of the client behind a trusted peer: walking
// X-Forwarded-For from the right (the hops nearest to the proxy), the first
// address that is not a trusted proxy. Everything left of it was written by
// the client or by proxies nobody vouches for, so it is ignored. When every
// hop is trusted the leftmost is the client; when a hop is not an address at
// all the walk stops, and the last hop vouched for counts as the client.
// peer is the trusted peer's RemoteAddr, the answer when the header is
// absent. The result is a substring of the header or peer, "host" or
// "host:port", so that nothing is allocated.
func (t trustedProxies) client(h http.Header, peer string) string {
	client := peer
	lines := h["X-Forwarded-For"]
	for i := len(lines) - 1; i >= 0; i-- {
		line := lines[i]
		for line != "" {
			hop := line
			if j := strings.LastIndexByte(line, ','); j >= 0 {
				hop, line = line[j+1:], line[:j]
			} else {
				line = ""
			}
			hop = strings.Trim(hop, " \t")
			if hop == "" {
				// Empty list elements are allowed by the list syntax.
				continue
			}
			a, ok := parseHop(hop)
			if !ok {
				return client
			}
			if !t.contains(a) {
				return hop
			}
			client = hop
		}
	}
	return client
}

// parseHop reads an address as X-Forwarded-For and RemoteAddr write it:
// "192.0.2.1", "2001:db8::1", or either with a port ("192.0.2.1:80",
// "[2001:db8::1]:80"). The form is told by its syntax first, so that no
// parse fails on the way: a failed parse allocates its error, and this runs
// on every request from a trusted peer.
func parseHop(s string) (netip.Addr, bool) {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !isHexDigit(c) && c != '.' && c != ':' && c != '[' && c != ']' && c != '%' {
			return netip.Addr{}, false // "unknown", "_hidden", junk
		}
	}
	if strings.HasPrefix(s, "[") || strings.Count(s, ":") == 1 {
		ap, err := netip.ParseAddrPort(s)
		return ap.Addr(), err == nil
	}
	a, err := netip.ParseAddr(s)
	return a, err == nil
}

func isHexDigit(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// withClient returns a shallow copy of r whose RemoteAddr is the client
// behind the trusted peer, for the pickers that hash the client's address.
func withClient(r *http.Request, client string) *http.Request {
	c := *r
	c.RemoteAddr = client
	return &c
}

// setForwarded sets the outgoing request's forwarding headers. ReverseProxy
// has removed any the client sent; from a trusted peer they are put back
// and extended with the peer, so the backend sees the whole chain and the
// scheme and host the first proxy was asked for. From anyone else the
// proxy states only what it saw itself.
func setForwarded(pr *httputil.ProxyRequest, trusted bool) {
	dropForwardingSpellings(pr.Out.Header)
	if !trusted {
		pr.SetXForwarded()
		return
	}
	in, out := pr.In.Header, pr.Out.Header
	if v := in["X-Forwarded-For"]; len(v) > 0 {
		out["X-Forwarded-For"] = slices.Clone(v)
	}
	pr.SetXForwarded() // appends the peer to the chain
	if v := in["X-Forwarded-Host"]; len(v) > 0 {
		out["X-Forwarded-Host"] = slices.Clone(v)
	}
	if v := in["X-Forwarded-Proto"]; len(v) > 0 {
		out["X-Forwarded-Proto"] = slices.Clone(v)
	}
	if v := in["Forwarded"]; len(v) > 0 {
		out["Forwarded"] = append(slices.Clone(v), forwardedFor(pr.In.RemoteAddr))
	}
}

// forwardedFor is the element of an RFC 7239 Forwarded header naming the
// peer at remoteAddr, which is quoted when it is an IPv6 address.
func forwardedFor(remoteAddr string) string {
	a, ok := parseHop(remoteAddr)
	switch {
	case !ok:
		return "for=unknown"
	case a.Is4() || a.Is4In6():
		return "for=" + a.Unmap().String()
	}
	return `for="[` + a.String() + `]"`
}

// forwardingNames are the headers the proxy sets, whose other spellings
// dropForwardingSpellings drops; Forwarded has no hyphen to misspell.
var forwardingNames = [...]string{"X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"}

// dropForwardingSpellings removes from h every header whose name is one of
// forwardingNames with an underscore for a hyphen (X_Forwarded_For,
// X-Forwarded_For). ReverseProxy drops the proper names a client sends,
// but backends that read names as CGI does (WSGI, Rack, PHP-FPM: "_" and
// "-" alike) would take these for them, and their value, sorted after the
// proxy's, for the nearest hop. nginx drops every name with an underscore
// by default for this reason; dropping only these spellings keeps the other
// headers an app may use. A request whose names have no underscore only
// pays for a length test of each.
func dropForwardingSpellings(h http.Header) {
	for name := range h {
		if len(name) < len("X-Forwarded-For") || len(name) > len("X-Forwarded-Proto") || strings.IndexByte(name, '_') < 0 {
			continue
		}
		for _, f := range forwardingNames {
			if sameNameCGI(name, f) {
				delete(h, name)
				break
			}
		}
	}
}

// sameNameCGI reports whether a and b are one header name as CGI reads
// it: in any case, and '_' and '-' alike.
func sameNameCGI(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		if cgiByte(a[i]) != cgiByte(b[i]) {
			return false
		}
	}
	return true
}

// cgiByte is c of a header name as CGI reads it: lower case, '_' for '-'.
func cgiByte(c byte) byte {
	switch {
	case c == '-':
		return '_'
	case 'A' <= c && c <= 'Z':
		return c + 'a' - 'A'
	}
	return c
}
