package proxy

import (
	"math"
	"net/http"
	"net/netip"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// Everything routing, forwarding headers, logging and stickiness do
// assumes that one client request is one backend request, written as
// HTTP/1.1 to the backend. rejection finds, before anything is routed or
// picked, the requests that would break that: net/http parses them, over
// HTTP/1 or HTTP/2, but forwarding would open a tunnel the proxy cannot
// see into, write a request line a backend may split another way, or make
// the transport refuse the request, which would then be charged to a
// backend.

// rejection returns the status serve answers r with instead of forwarding
// it, or 0 to forward it.
//
// CONNECT asks for a tunnel: over HTTP/2, forwarded, it became a
// "CONNECT / HTTP/1.1" without framing followed by the stream's bytes,
// which a backend reads as requests of their own. The proxy tunnels
// nothing, so it answers 501 as to a method it does not implement, over
// HTTP/1 and HTTP/2, extended CONNECT (RFC 8441) included.
//
// The rest is answered 400, the client's fault, and is what net/http's
// HTTP/2 server lets through but HTTP/1.1 cannot carry:
//   - a request target with a byte that would split the request line or
//     change what it means (validTarget), or in absolute form with an
//     opaque part ("x:admin"), which nothing routes on and Rewrite would
//     forward as the target "admin"; and the asterisk form for any method
//     but OPTIONS (net/http answers OPTIONS * itself), which would go out
//     as "/%2A": "PRI *", the HTTP/2 preface sent to an HTTP/1 listener,
//     is one;
//   - an :authority (or Host) that is not one host and an optional port
//     (validHost): the proxy routes on its host, and a backend may read
//     another (the last of a list, as apps read X-Forwarded-Host);
//   - a content-length that is not one decimal number: Go's HTTP/2 server
//     takes it as 0, and the body would be dropped, the request forwarded
//     without it (HTTP/1's refuses it already);
//   - a method that is not a token, or a trailer whose name is not one,
//     which http.Transport refuses before sending anything, and the proxy
//     would otherwise answer 502 and charge to the backend;
//   - an Upgrade that is not a list of protocols (validUpgrade), which
//     ReverseProxy may refuse through the ErrorHandler that answers for
//     the backend, or a backend read as a protocol it was not named.
//
// net/http's HTTP/1 server already refuses many of these itself; the
// checks cost little enough to make for both protocols alike.
func rejection(r *http.Request) int {
	if r.Method == http.MethodConnect {
		return http.StatusNotImplemented
	}
	if !httpguts.ValidHeaderFieldName(r.Method) || !validTarget(r.RequestURI) || r.URL.Opaque != "" ||
		(r.RequestURI == "*" && r.Method != http.MethodOptions) || !validHost(r.Host) {
		return http.StatusBadRequest
	}
	if cl, ok := r.Header["Content-Length"]; ok && !validContentLength(cl, r.ContentLength) {
		return http.StatusBadRequest
	}
	if up, ok := r.Header["Upgrade"]; ok && !validUpgrade(up) {
		return http.StatusBadRequest
	}
	for name := range r.Trailer {
		if !httpguts.ValidHeaderFieldName(name) {
			return http.StatusBadRequest
		}
	}
	return 0
}

// validTarget reports whether a request target as the client sent it may
// be forwarded. Refused are the bytes that would split an HTTP/1 request
// line differently from one backend to the next (controls, space), the
// fragment mark (a target has no fragment; backends cut it off or not),
// and bytes beyond ASCII, which have no one reading: what HAProxy refuses
// by default. Printable ASCII that RFC 3986 leaves out of a URI ("{", "|",
// a quote) passes as it came, as HAProxy and nginx pass it: browsers send
// it raw in queries, and it splits nothing.
func validTarget(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c == '#' || c >= 0x7f {
			return false
		}
	}
	return true
}

// validHost reports whether h, a Host header or an :authority, names one
// host and at most a port: a name of letters, digits, '-', '_' and '.' (an
// IPv4 address is one), or an IPv6 address in brackets, without a zone;
// then, after a colon, a port of at most 65535, or nothing (RFC 3986
// allows an empty port). That is stricter than the URI grammar, whose
// names may hold sub-delimiters (',', ';', '=') and percent-encoding: a
// route names no such host, and backends read such a Host in different
// ways. An absent Host (HTTP/1.0, or HTTP/2 without :authority) is valid.
func validHost(h string) bool {
	host, port, hasPort := h, "", false
	if strings.HasPrefix(h, "[") {
		end := strings.IndexByte(h, ']')
		if end < 0 {
			return false
		}
		a, err := netip.ParseAddr(h[1:end])
		if err != nil || !a.Is6() || a.Zone() != "" {
			return false
		}
		host = ""
		switch rest := h[end+1:]; {
		case rest == "":
		case rest[0] == ':':
			port, hasPort = rest[1:], true
		default:
			return false
		}
	} else if i := strings.IndexByte(h, ':'); i >= 0 {
		host, port, hasPort = h[:i], h[i+1:], true
		if host == "" {
			return false
		}
	}
	for i := 0; i < len(host); i++ {
		if c := host[i]; !isNameByte(c) && c != '.' {
			return false
		}
	}
	if !hasPort || port == "" {
		return true
	}
	if len(port) > len("65535") {
		return false
	}
	n := 0
	for i := 0; i < len(port); i++ {
		c := port[i]
		if c < '0' || c > '9' {
			return false
		}
		n = n*10 + int(c-'0')
	}
	return n <= 65535
}

// isNameByte reports whether c may be part of a host name's label.
func isNameByte(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_'
}

// validContentLength reports whether the Content-Length values of a
// request are one decimal number (repeated, as RFC 9110 lets a recipient
// merge identical values), the length n net/http took for the body.
func validContentLength(values []string, n int64) bool {
	for _, v := range values {
		if v != values[0] {
			return false
		}
	}
	v := values[0]
	if v == "" || len(v) > len("9223372036854775807") {
		return false
	}
	var m uint64
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c < '0' || c > '9' {
			return false
		}
		m = m*10 + uint64(c-'0')
	}
	return m <= math.MaxInt64 && int64(m) == n
}

// validUpgrade reports whether the Upgrade values of a request are each a
// list of protocols, as RFC 9110 (7.8) writes them: a token, and a token
// for the version after a slash, separated by commas with spaces around
// them; empty elements are allowed, a tab is not (ReverseProxy refuses any
// byte but printable ASCII). Anything else ("h2c;", a quoted name, names
// separated by a space, which is also how net/http joins a folded line) is
// refused rather than guessed at: backends split such a value their own
// ways, and one may switch to a protocol the proxy did not see named.
func validUpgrade(values []string) bool {
	for _, v := range values {
		for elem := range strings.SplitSeq(v, ",") {
			elem = strings.Trim(elem, " ")
			if elem == "" {
				continue
			}
			name, version, versioned := strings.Cut(elem, "/")
			if !isToken(name) || versioned && !isToken(version) {
				return false
			}
		}
	}
	return true
}

// isToken reports whether s is a token of RFC 9110 (5.6.2).
func isToken(s string) bool {
	return s != "" && httpguts.ValidHeaderFieldName(s)
}

// reject answers r with status, and closes an HTTP/1 connection after it:
// the client sends what the proxy will not forward, and may have sent more
// of it behind (the bytes of a tunnel it took for granted).
func (s *Server) reject(w http.ResponseWriter, r *http.Request, status int) {
	s.stats.rejected.Add(1)
	if r.ProtoMajor == 1 {
		w.Header().Set("Connection", "close")
	}
	writeError(w, status)
}
