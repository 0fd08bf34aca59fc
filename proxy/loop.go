package proxy

import (
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"strings"
)

// Loop guard.
//
// Every forwarded request carries a Via entry (RFC 9110, 7.6.3) naming
// this proxy by a random token of its own. A request that comes back with
// it went through this proxy already: a backend's address leads back to
// the proxy (a name or NAT address of its own, another proxy that forwards
// here), and forwarding it again would loop until file descriptors or
// memory run out. It is answered 508 Loop Detected instead, at the first
// return. The token is random, not the host name, so that backends learn
// nothing of the proxy's host, and a client cannot end its own requests
// with a 508 unless it has seen what a backend was sent.

// newVia returns a Via entry with a fresh token.
func newVia() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return "1.1 affinity-" + hex.EncodeToString(b[:])
}

// looped reports whether r went through this proxy before.
func (s *Server) looped(r *http.Request) bool {
	for _, v := range r.Header["Via"] {
		if strings.Contains(v, s.via) {
			return true
		}
	}
	return false
}
