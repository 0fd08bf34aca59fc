package proxy

import "net/http"

// finalOnly is the ResponseWriter of a request that came as HTTP/1.0, a
// client that may be sent no 1xx response (RFC 9110, 15.2): it drops the
// interim responses ReverseProxy relays from a backend (a 103 Early Hints,
// a 100 Continue to an Expect the client sent), which net/http would write
// to it as they come.
type finalOnly struct{ http.ResponseWriter }

func (w finalOnly) WriteHeader(code int) {
	if code >= 100 && code <= 199 && code != http.StatusSwitchingProtocols {
		return
	}
	w.ResponseWriter.WriteHeader(code)
}

// Unwrap returns the wrapped writer, for http.ResponseController.
func (w finalOnly) Unwrap() http.ResponseWriter { return w.ResponseWriter }
