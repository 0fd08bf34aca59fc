package proxy

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"go.uber.org/zap"

	"github.com/affinityproxy/affinity/config"
)

// The runtime API, on the admin listener:
//
//	GET /api/v1/pools                                     every pool and backend
//	GET /api/v1/pools/{pool}/backends/{backend}           one backend
//	PUT /api/v1/pools/{pool}/backends/{backend}/state     {"state": "drain"}: set its state
//
// Backends are described as in /status. Every answer is JSON, errors too:
// {"error": "..."}. Reads are as open as the status page; writes need the
// admin token when one is configured, and are refused on an admin listener
// reachable from other hosts when none is (see authorize). Every write is
// logged with the client's address.

// maxStateBody bounds the body of a state write: {"state": "maint"} needs
// a few bytes.
const maxStateBody = 1 << 10

// route registers the API's handlers on mux.
func (a *admin) routeAPI(mux *http.ServeMux) {
	mux.HandleFunc("/api/v1/pools", a.servePools)
	mux.HandleFunc("/api/v1/pools/{pool}/backends/{backend}", a.serveBackend)
	mux.HandleFunc("/api/v1/pools/{pool}/backends/{backend}/state", a.serveState)
	mux.HandleFunc("/api/", func(w http.ResponseWriter, _ *http.Request) {
		writeJSONError(w, http.StatusNotFound, "no such endpoint")
	})
}

func (a *admin) servePools(w http.ResponseWriter, r *http.Request) {
	if !allow(w, r, http.MethodGet) {
		return
	}
	writeJSON(w, http.StatusOK, struct {
		Pools []poolStatus `json:"pools"`
	}{a.pools()})
}

func (a *admin) serveBackend(w http.ResponseWriter, r *http.Request) {
	if !allow(w, r, http.MethodGet) {
		return
	}
	pool, backend := r.PathValue("pool"), r.PathValue("backend")
	// Only the pool asked for: counting a learn table's sessions walks
	// it, and ctl --wait asks every second.
	for _, ps := range a.poolsNamed(func(name string) bool { return name == pool }) {
		// A backend a reload removed may share its name with the one
		// that replaced it, which comes first.
		for _, bs := range append(ps.Backends, ps.Removed...) {
			if bs.Name == backend {
				writeJSON(w, http.StatusOK, bs)
				return
			}
		}
		writeJSONError(w, http.StatusNotFound, fmt.Sprintf("pool %q has no backend %q", pool, backend))
		return
	}
	writeJSONError(w, http.StatusNotFound, fmt.Sprintf("no pool %q", pool))
}

// serveState sets a backend's state at run time.
func (a *admin) serveState(w http.ResponseWriter, r *http.Request) {
	if !allow(w, r, http.MethodPut) {
		return
	}
	pool, backend := r.PathValue("pool"), r.PathValue("backend")
	refuse := func(status int, msg string) {
		a.log.Warn("admin API write refused", zap.String("client", r.RemoteAddr), zap.String("pool", pool),
			zap.String("backend", backend), zap.Int("status", status), zap.String("reason", msg))
		writeJSONError(w, status, msg)
	}
	if status, msg := a.authorize(r); status != 0 {
		if status == http.StatusUnauthorized {
			w.Header().Set("WWW-Authenticate", `Bearer realm="affinity"`)
		}
		refuse(status, msg)
		return
	}
	st, err := readState(w, r)
	if err != nil {
		refuse(http.StatusBadRequest, err.Error())
		return
	}
	p, v, err := a.s.setState(pool, backend, st, r.RemoteAddr)
	switch {
	case errors.Is(err, errUnknownPool):
		refuse(http.StatusNotFound, fmt.Sprintf("no pool %q", pool))
		return
	case err != nil:
		refuse(http.StatusNotFound, fmt.Sprintf("pool %q has no backend %q", pool, backend))
		return
	}
	writeJSON(w, http.StatusOK, a.backendStatus(v, clock(), p.sessions()))
}

// readState reads a state write's body, bounded by maxStateBody (see
// decodeState).
func readState(w http.ResponseWriter, r *http.Request) (config.State, error) {
	st, err := decodeState(http.MaxBytesReader(w, r.Body, maxStateBody))
	var tooLarge *http.MaxBytesError
	if errors.As(err, &tooLarge) {
		return "", fmt.Errorf("body larger than %d bytes", maxStateBody)
	}
	return st, err
}

// stateBody is what a state write's body must be.
const stateBody = `{"state": "ready|drain|maint"}`

// decodeState reads a state write's body: one JSON object whose only key
// is "state", spelled so, once, with a state for its value. encoding/json
// alone would take "State" or "STATE" for "state", and the last of two:
// a filter or an audit log in front that reads the body could then see
// another state than the one applied.
func decodeState(rd io.Reader) (config.State, error) {
	dec := json.NewDecoder(rd)
	bad := func(err error) (config.State, error) {
		return "", fmt.Errorf("body: want %s: %w", stateBody, err)
	}
	if tok, err := dec.Token(); err != nil {
		return bad(err)
	} else if tok != json.Delim('{') {
		return bad(errors.New("not an object"))
	}
	var state *string
	for dec.More() {
		key, err := dec.Token()
		if err != nil {
			return bad(err)
		}
		if key != "state" {
			return bad(fmt.Errorf(`unknown key %q, the only one is "state"`, key))
		}
		if state != nil {
			return bad(errors.New(`"state" given twice`))
		}
		v, err := dec.Token()
		if err != nil {
			return bad(err)
		}
		text, ok := v.(string)
		if !ok {
			return bad(errors.New(`"state" is not a string`))
		}
		state = &text
	}
	if _, err := dec.Token(); err != nil {
		return bad(err)
	}
	switch _, err := dec.Token(); {
	case err == nil:
		return "", errors.New("body: want one JSON object, " + stateBody)
	case err != io.EOF:
		return bad(err)
	}
	if state == nil {
		return "", errors.New(`body: no "state"; want ready, drain or maint`)
	}
	return config.ParseState(*state)
}

// authorize decides whether r may write: 0 if it may, or the status and
// message of the refusal. With a token configured, r must carry it as a
// bearer token; without one, writes are open on a listener reachable from
// this host only, and refused on one reachable from others.
func (a *admin) authorize(r *http.Request) (int, string) {
	if a.tokenSum == nil {
		if a.exposed.Load() {
			return http.StatusForbidden, "writes are refused on an admin listener reachable from other hosts without admin.token or admin.token_file"
		}
		return 0, ""
	}
	scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return http.StatusUnauthorized, "this write needs Authorization: Bearer TOKEN"
	}
	// Hashes of equal length, compared in constant time: neither the
	// token's bytes nor its length leak through the time taken.
	sum := sha256.Sum256([]byte(strings.TrimSpace(tok)))
	if subtle.ConstantTimeCompare(sum[:], a.tokenSum) != 1 {
		return http.StatusUnauthorized, "wrong token"
	}
	return 0, ""
}

// allow answers 405 unless r's method is method.
func allow(w http.ResponseWriter, r *http.Request, method string) bool {
	if r.Method == method || (method == http.MethodGet && r.Method == http.MethodHead) {
		return true
	}
	w.Header().Set("Allow", method)
	writeJSONError(w, http.StatusMethodNotAllowed, fmt.Sprintf("%s: want %s", r.Method, method))
	return false
}

// writeJSON answers with status and v as JSON.
func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		status, body = http.StatusInternalServerError, []byte(`{"error": "encoding the answer failed"}`)
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	noStore(h)
	w.WriteHeader(status)
	_, _ = w.Write(append(body, '\n'))
}

// writeJSONError answers with status and {"error": msg}.
func writeJSONError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, struct {
		Error string `json:"error"`
	}{msg})
}
