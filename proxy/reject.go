package proxy

import (
	"net/http"

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
//     forward as the target "admin";
//   - an :authority (or Host) that is no host: Request.Write would send an
//     empty Host header, after routing and X-Forwarded-Host had used it;
//   - a method that is not a token, or a trailer whose name is not one,
//     which http.Transport refuses before sending anything, and the proxy
//     would otherwise answer 502 and charge to the backend;
//   - an Upgrade naming a protocol in anything but printable ASCII, which
//     ReverseProxy refuses through the ErrorHandler that answers for the
//     backend.
//
// net/http's HTTP/1 server already refuses most of these itself; the
// checks cost little enough to make for both protocols alike.
func rejection(r *http.Request) int {
	if r.Method == http.MethodConnect {
		return http.StatusNotImplemented
	}
	if !httpguts.ValidHeaderFieldName(r.Method) || !validTarget(r.RequestURI) || r.URL.Opaque != "" ||
		!httpguts.ValidHostHeader(r.Host) {
		return http.StatusBadRequest
	}
	if up, ok := r.Header["Upgrade"]; ok && !printableASCII(up) {
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

// printableASCII reports whether every value holds only printable ASCII
// (ReverseProxy's test of an upgrade: no tab, unlike a header value).
func printableASCII(values []string) bool {
	for _, v := range values {
		for i := 0; i < len(v); i++ {
			if v[i] < ' ' || v[i] > '~' {
				return false
			}
		}
	}
	return true
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

// upgrading reports whether r asks to switch protocols, after removing an
// upgrade to h2c, which leaves a plain request. ReverseProxy forwards the
// Upgrade header of any protocol; a backend serving h2c would switch, and
// read the client's next requests from the tunnel, unseen by the proxy.
// Other upgrades (WebSocket) stay: after its 101 a backend speaks that
// protocol, not HTTP requests for the proxy to route.
func upgrading(r *http.Request) bool {
	up, ok := r.Header["Upgrade"]
	if !ok {
		return false
	}
	if httpguts.HeaderValuesContainsToken(up, "h2c") {
		delete(r.Header, "Upgrade")
		delete(r.Header, "Http2-Settings")
		return false
	}
	return true
}
