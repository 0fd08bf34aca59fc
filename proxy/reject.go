package proxy

import (
	"net/http"

	"golang.org/x/net/http/httpguts"
)

// Everything routing, forwarding headers, logging and stickiness do
// assumes that one client request is one backend request, written as
// HTTP/1.1 to the backend. rejection finds, before anything is routed or
// picked, the requests that would break that: net/http parses them, over
// HTTP/1 or HTTP/2, but forwarding would either open a tunnel the proxy
// cannot see into, or make the HTTP/1 client refuse the request (which
// must then not be charged to a backend).

// rejection returns the status serve answers r with instead of forwarding
// it, or 0 to forward it.
//
// CONNECT asks for a tunnel: over HTTP/2, forwarded, it became a
// "CONNECT / HTTP/1.1" without framing followed by the stream's bytes,
// which a backend reads as requests of their own. The proxy tunnels
// nothing, so it answers 501 as to a method it does not implement, over
// HTTP/1 and HTTP/2, extended CONNECT (RFC 8441) included.
//
// An Upgrade naming a protocol in anything but printable ASCII is refused
// by ReverseProxy itself, through the ErrorHandler that answers for the
// backend; it is the client's request that is wrong: 400.
func rejection(r *http.Request) int {
	if r.Method == http.MethodConnect {
		return http.StatusNotImplemented
	}
	if up, ok := r.Header["Upgrade"]; ok && !printableASCII(up) {
		return http.StatusBadRequest
	}
	return 0
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
