package proxy

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// Protocol switches (WebSocket and the like): which are forwarded, which
// 101s are relayed, and the connection the relay reads the client from.
// rejection (reject.go) has refused an Upgrade that is not a list of
// protocols before any of this runs.

// upgrading reports whether r asks to switch protocols, as ReverseProxy
// reads it (an Upgrade and "upgrade" in Connection), after removing an
// upgrade to a protocol that carries HTTP requests, which leaves a plain
// request. ReverseProxy forwards the Upgrade header of any protocol; a
// backend serving h2c (or HTTP/2 by any name, or TLS as RFC 2817 has it)
// would switch, and read the client's next requests from the tunnel,
// unseen by the proxy. Other upgrades (WebSocket) stay: after its 101 a
// backend speaks that protocol, not HTTP requests for the proxy to route.
// rejection has made sure the header is a list of protocols.
func upgrading(r *http.Request) bool {
	up, ok := r.Header["Upgrade"]
	if !ok {
		return false
	}
	if carriesHTTP(up) {
		delete(r.Header, "Upgrade")
		delete(r.Header, "Http2-Settings")
		return false
	}
	return len(up) > 0 && up[0] != "" && httpguts.HeaderValuesContainsToken(r.Header["Connection"], "upgrade")
}

// carriesHTTP reports whether a list of protocols names one that carries
// HTTP requests: a name with "h2" in it in any case (h2c, h2, and a
// lenient backend's reading of names around them), HTTP, or TLS.
func carriesHTTP(values []string) bool {
	for _, v := range values {
		for elem := range strings.SplitSeq(v, ",") {
			name, _, _ := strings.Cut(strings.Trim(elem, " "), "/")
			if containsFold(name, "h2") || strings.EqualFold(name, "http") || strings.EqualFold(name, "tls") {
				return true
			}
		}
	}
	return false
}

// containsFold reports whether s holds sub, in ASCII letters of any case.
func containsFold(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if strings.EqualFold(s[i:i+len(sub)], sub) {
			return true
		}
	}
	return false
}

// switchRefusedError is a 101 that ReverseProxy would not relay.
type switchRefusedError struct{ asked, answered string }

func (e *switchRefusedError) Error() string {
	return fmt.Sprintf("backend switched to protocol %q when %q was asked for; not relayed", e.answered, e.asked)
}

// relayedSwitch returns nil for any response but a 101, and for a 101 that
// ReverseProxy relays: one naming, case aside, the very Upgrade value out
// carried, in printable ASCII. Any other 101 it answers through the
// ErrorHandler without closing the response's body, which after a switch
// is the backend's connection, left open for ever (golang/go#80875). So
// relayedSwitch closes it and returns the error the client is answered
// 502 for. Such a 101 is no failure of the backend: a client offering a
// list of protocols (RFC 9110, 7.8) gets one of them chosen, which is
// never the whole list ReverseProxy compares with; and a client choosing
// what it offers could make a lenient backend answer any protocol at all.
func relayedSwitch(out *http.Request, res *http.Response) error {
	if res.StatusCode != http.StatusSwitchingProtocols {
		return nil
	}
	asked, answered := upgradeType(out.Header), upgradeType(res.Header)
	if asked != "" && printableASCII(answered) && strings.EqualFold(asked, answered) {
		return nil
	}
	_ = res.Body.Close()
	return &switchRefusedError{asked: asked, answered: answered}
}

// upgradeType is the protocol a message switches to, as ReverseProxy
// reads it: its Upgrade value, if Connection names "upgrade".
func upgradeType(h http.Header) string {
	if !httpguts.HeaderValuesContainsToken(h["Connection"], "upgrade") {
		return ""
	}
	return h.Get("Upgrade")
}

// printableASCII reports whether s holds only printable ASCII, as
// ReverseProxy requires of a protocol it switches to (no tab, unlike a
// header value).
func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

// switchWriter is the ResponseWriter of an upgrade request, whose Hijack
// returns a connection that reads first what net/http had buffered of the
// client's bytes past the request: ReverseProxy copies the client's side of
// a switch from the hijacked net.Conn alone, and would lose bytes a client
// sent right behind its request, before the 101 (golang/go#80875).
type switchWriter struct{ http.ResponseWriter }

// Unwrap returns the wrapped writer, for http.ResponseController.
func (w switchWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Hijack takes over the connection for the switch, for http.Hijacker.
func (w switchWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, rw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil || rw.Reader.Buffered() == 0 {
		return c, rw, err
	}
	return &bufferedConn{Conn: c, r: rw.Reader}, rw, nil
}

// bufferedConn is a hijacked client connection that reads the bytes
// buffered in r before the connection's own.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader // nil once emptied
}

func (c *bufferedConn) Read(p []byte) (int, error) {
	if c.r != nil {
		if c.r.Buffered() > 0 {
			// Only what is buffered: bufio reads nothing more then.
			return c.r.Read(p)
		}
		c.r = nil
	}
	return c.Conn.Read(p)
}

// errNoCloseWrite stands for a connection that cannot be half-closed.
var errNoCloseWrite = errors.New("connection cannot be half-closed")

// CloseWrite half-closes the connection, which ReverseProxy does when the
// backend has ended its side. Without it ReverseProxy ends the whole relay
// then, as it does here with the error.
func (c *bufferedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errNoCloseWrite
}
