package proxy

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"

	"go.uber.org/zap"
)

// DNS rebinding.
//
// A listener reachable from this host only is still reachable from the web
// pages that a browser on this host shows: a page whose own name its
// author then points at 127.0.0.1 is, to the browser, of the same origin
// as the admin listener, and may read it and send it writes, which need
// no token there. Such a request carries the page's name in its Host. On
// a loopback listener, the admin server answers only requests whose Host
// names it as a client on this host does: an IP address, localhost (or a
// name under .localhost, which browsers resolve to loopback themselves),
// or the host of admin.listen. A listener reachable from other hosts
// makes no such check: its writes need the token, which a page does not
// have, and its reads are open to whoever reaches it anyway.

// hostOf returns the host of a Host header, as net/url finds it (without
// its port or brackets), without a final dot, in lower case.
func hostOf(hostport string) string {
	u := url.URL{Host: hostport}
	return strings.ToLower(strings.TrimSuffix(u.Hostname(), "."))
}

// hostAllowed reports whether a request with Host hostport names the
// admin listener as a page rebinding its own name cannot: no Host at all
// (no browser sends that), an IP address, localhost or a name under
// .localhost, or the host of admin.listen.
func (a *admin) hostAllowed(hostport string) bool {
	if hostport == "" {
		return true
	}
	h := hostOf(hostport)
	if h == "localhost" || strings.HasSuffix(h, ".localhost") {
		return true
	}
	if _, err := netip.ParseAddr(h); err == nil {
		return true
	}
	return a.host != "" && h == a.host
}

// guardHost serves next the requests that a loopback admin listener may
// answer (hostAllowed), and refuses the others with 403.
func (a *admin) guardHost(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, unix := r.Context().Value(http.LocalAddrContextKey).(*net.UnixAddr)
		if unix || a.exposed.Load() || a.hostAllowed(r.Host) {
			next.ServeHTTP(w, r)
			return
		}
		msg := fmt.Sprintf("Host %q is not this admin listener's: name it by its address, localhost or the host of admin.listen", r.Host)
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			a.log.Warn("admin API write refused", zap.String("client", r.RemoteAddr), zap.String("path", r.URL.Path),
				zap.Int("status", http.StatusForbidden), zap.String("reason", msg))
		}
		if strings.HasPrefix(r.URL.Path, "/api/") {
			writeJSONError(w, http.StatusForbidden, msg)
			return
		}
		writeText(w, http.StatusForbidden, msg+"\n")
	})
}
