package experiment

import (
	"encoding/json"
	"net/http"
	"strconv"

	"github.com/affinityproxy/affinity/internal/harness"
)

// Shop paths and headers of the demo app's contract.
const (
	pathLogin    = "/login"
	pathItems    = "/cart/items"
	pathCart     = "/cart"
	pathCheckout = "/checkout"
	pathLogout   = "/logout"

	// sessionCookie carries the shop's session id (memory, redis and
	// cached-redis stores): what the learn balancer learns.
	sessionCookie = "SHOP_SESSION"

	headerUser     = "X-User"
	headerStep     = "X-Step"
	headerBackend  = "X-Backend"
	headerStoreOps = "X-Store-Ops"
	headerCache    = "X-Cache"

	headerIdempotencyKey = "Idempotency-Key"
)

// Error kinds of a sample; the shop's own kinds come from its JSON body.
const (
	kindSessionLost  = "session_lost"
	kindSessionStale = "session_stale"
	kindConnection   = harness.KindConnection
)

// errorKind names a failed response: the shop's "error" field when its body
// has one, else the status.
func errorKind(status int, body []byte) string {
	var e struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(body, &e) == nil && e.Error != "" && len(e.Error) <= 64 {
		return e.Error
	}
	return "http_" + strconv.Itoa(status)
}

// requestBytes approximates the size of req on the wire in HTTP/1.1: request
// line, Host, headers, the Cookie header its client adds and body. It is
// what a client pays per request, and what a token store makes grow with
// the cart.
func requestBytes(req *http.Request, cookie string) int {
	n := len(req.Method) + 1 + len(req.URL.RequestURI()) + len(" HTTP/1.1\r\n")
	n += len("Host: \r\n") + len(req.URL.Host)
	n += headerBytes(req.Header)
	if cookie != "" {
		n += len("Cookie: \r\n") + len(cookie)
	}
	if req.Method == http.MethodPost {
		n += len("Content-Length: 0\r\n")
	}
	return n + 2
}

// responseBytes approximates the size of resp on the wire: status line,
// headers and a body of the given length.
func responseBytes(resp *http.Response, body int) int {
	return len("HTTP/1.1 200 OK\r\n") + headerBytes(resp.Header) + 2 + body
}

func headerBytes(h http.Header) int {
	n := 0
	for k, vs := range h {
		for _, v := range vs {
			n += len(k) + len(": \r\n") + len(v)
		}
	}
	return n
}
