package demoapp

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"time"

	"go.uber.org/zap"
)

// Headers of the shop's requests and responses; see the package comment.
const (
	HeaderUser           = "X-User"
	HeaderStep           = "X-Step"
	HeaderIdempotencyKey = "Idempotency-Key"
	HeaderStoreOps       = "X-Store-Ops"
	HeaderCache          = "X-Cache"
	// HeaderReplayed is set to "true" on a checkout answered from the
	// outcome of an earlier one with the same Idempotency-Key.
	HeaderReplayed = "Idempotent-Replayed"
)

// Error codes: the "error" field of a failed shop response.
const (
	CodeSessionLost      = "session_lost"      // 409: no such session, or another user's
	CodeSessionStale     = "session_stale"     // 409: the cart is not what the client built
	CodeStoreUnavailable = "store_unavailable" // 503: the session store failed
	CodeBadRequest       = "bad_request"       // 400: a header or the item is missing or malformed
	CodeMethodNotAllowed = "method_not_allowed"
)

// maxFieldLen bounds a user id and an item, so that no single request can
// grow a session, or a token, by more than a line.
const maxFieldLen = 128

// shopError is a shop request's failure, as the client sees it.
type shopError struct {
	status int
	code   string
	detail string // for bad requests: what was wrong
	cause  error  // for store failures: the store's error, for the log
}

var (
	errLost  = &shopError{status: http.StatusConflict, code: CodeSessionLost}
	errStale = &shopError{status: http.StatusConflict, code: CodeSessionStale}
)

func storeFailure(err error) *shopError {
	return &shopError{status: http.StatusServiceUnavailable, code: CodeStoreUnavailable, cause: err}
}

func badRequest(detail string) *shopError {
	return &shopError{status: http.StatusBadRequest, code: CodeBadRequest, detail: detail}
}

// Bodies of the shop's responses.
type (
	loginReply struct {
		User    string `json:"user"`
		Backend string `json:"backend"`
	}
	countReply struct {
		Items int `json:"items"`
	}
	cartReply struct {
		Items []string `json:"items"`
	}
	orderReply struct {
		Order string `json:"order"`
		Items int    `json:"items"`
	}
	errorReply struct {
		Error  string `json:"error"`
		Detail string `json:"detail,omitempty"`
	}
)

// shopOp serves one shop operation and returns the body of its response, or
// its failure. It may set headers, cookies above all, but never writes.
type shopOp func(w http.ResponseWriter, r *http.Request) (any, *shopError)

// routeShop registers the shop's operations. A known path with another
// method gets 405 rather than the counter page, which would hide a client's
// mistake behind a 200.
func (a *app) routeShop() {
	for _, rt := range []struct {
		method, path string
		op           shopOp
	}{
		{http.MethodPost, "/login", a.login},
		{http.MethodPost, "/cart/items", a.addItem},
		{http.MethodGet, "/cart", a.cart},
		{http.MethodPost, "/checkout", a.checkout},
	} {
		a.mux.Handle(rt.method+" "+rt.path, a.serveShop(rt.op))
		a.mux.HandleFunc(rt.path, func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Allow", rt.method)
			writeJSON(w, http.StatusMethodNotAllowed, errorReply{Error: CodeMethodNotAllowed})
		})
	}
}

// serveShop runs op with the store's costs recorded, and answers with its
// outcome. Every response, failures included, carries what the request cost
// the store, so that a client can account for every round trip.
func (a *app) serveShop(op shopOp) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, u := withUsage(r.Context())
		body, fail := op(w, r.WithContext(ctx))
		status, code := http.StatusOK, ""
		if fail != nil {
			status, code = fail.status, fail.code
			body = errorReply{Error: fail.code, Detail: fail.detail}
		}
		a.metrics.record(u, code)
		a.noteStore(u, fail)
		h := w.Header()
		h.Set(HeaderStoreOps, strconv.Itoa(u.ops))
		if u.cache != "" {
			h.Set(HeaderCache, u.cache)
		}
		writeJSON(w, status, body)
	})
}

// noteStore logs when the store starts failing and when it works again: a
// line per change, not one per failed request.
func (a *app) noteStore(u *usage, fail *shopError) {
	switch {
	case fail != nil && fail.code == CodeStoreUnavailable:
		if a.storeFailing.CompareAndSwap(false, true) {
			a.log.Warn("session store unavailable", zap.String("backend", a.name), zap.Error(fail.cause))
		}
	case u.ops > 0:
		if a.storeFailing.CompareAndSwap(true, false) {
			a.log.Info("session store available again", zap.String("backend", a.name))
		}
	}
}

// login starts a fresh, empty session for the user, whatever session the
// client held before.
func (a *app) login(w http.ResponseWriter, r *http.Request) (any, *shopError) {
	user, fail := userOf(r)
	if fail != nil {
		return nil, fail
	}
	handle, err := a.store.New(r.Context(), user)
	if err != nil {
		return nil, storeFailure(err)
	}
	a.setHandle(w, handle)
	return loginReply{User: user, Backend: a.name}, nil
}

// addItem adds the form or query value item to the cart.
func (a *app) addItem(w http.ResponseWriter, r *http.Request) (any, *shopError) {
	r.Body = http.MaxBytesReader(w, r.Body, 1<<16)
	item := r.FormValue("item")
	if item == "" || len(item) > maxFieldLen {
		return nil, badRequest("item: want a sku of 1 to 128 bytes")
	}
	v, fail := a.open(r)
	if fail != nil {
		return nil, fail
	}
	if fail := v.checkStep(); fail != nil {
		return nil, fail
	}
	if len(v.sess.Items) == 0 {
		v.sess.Cart = rand.Text() // a new cart begins
	}
	v.sess.Items = append(v.sess.Items, item)
	if fail := a.save(w, r, v); fail != nil {
		return nil, fail
	}
	return countReply{Items: len(v.sess.Items)}, nil
}

// cart lists the cart.
func (a *app) cart(_ http.ResponseWriter, r *http.Request) (any, *shopError) {
	v, fail := a.open(r)
	if fail != nil {
		return nil, fail
	}
	if fail := v.checkStep(); fail != nil {
		return nil, fail
	}
	items := v.sess.Items
	if items == nil {
		items = []string{} // [] in JSON, not null
	}
	return cartReply{Items: items}, nil
}

// checkout turns the cart into an order and empties it. A retry of a
// checkout that carries the same Idempotency-Key gets the first outcome
// back, even though the cart is empty by then, and even when the first
// attempt is still running elsewhere: Orders keeps the first order of each
// cart. One without a key is judged like any request: once the first has
// emptied the cart its X-Step no longer matches and it is stale; but when
// both read the cart before either placed its order, the cart is ordered
// twice, and counted as a duplicate.
func (a *app) checkout(w http.ResponseWriter, r *http.Request) (any, *shopError) {
	v, fail := a.open(r)
	if fail != nil {
		return nil, fail
	}
	key := r.Header.Get(HeaderIdempotencyKey)
	if last := v.sess.LastOrder; key != "" && last != nil && last.Key == key {
		w.Header().Set(HeaderReplayed, "true")
		return orderReply{Order: last.ID, Items: last.Items}, nil
	}
	if fail := v.checkStep(); fail != nil {
		return nil, fail
	}
	// From here on the checkout runs to its end whether or not the client
	// waits for it, as a real one that has charged a card must: a client
	// that gave up, or a proxy that timed out, does not undo it.
	r = r.WithContext(context.WithoutCancel(r.Context()))
	if a.checkoutWork > 0 {
		a.pause(r.Context(), a.checkoutWork)
	}
	order := Order{ID: rand.Text(), Key: key, Items: len(v.sess.Items), Cart: v.sess.Cart}
	first, placed, err := a.orders.Place(r.Context(), order)
	if err != nil {
		return nil, storeFailure(err)
	}
	replayed := !placed && key != "" && first.Key == key
	if replayed {
		// The same checkout ran elsewhere and placed the order first.
		order = first
	}
	v.sess.Items, v.sess.Cart = nil, ""
	if key != "" {
		v.sess.LastOrder = &order
	}
	if fail := a.save(w, r, v); fail != nil {
		return nil, fail
	}
	if replayed {
		w.Header().Set(HeaderReplayed, "true")
		return orderReply{Order: order.ID, Items: order.Items}, nil
	}
	if !placed {
		a.metrics.dupOrders.Add(1)
	}
	a.metrics.orders.Add(1)
	return orderReply{Order: order.ID, Items: order.Items}, nil
}

// shopSession is a shop request's session, loaded and checked to be the
// user's.
type shopSession struct {
	handle string
	sess   Session
	step   int // X-Step: the items the client has added since login or checkout
}

// open loads the session of the request's handle and checks that it is the
// user's. It pays Options.Work for each load the store made.
func (a *app) open(r *http.Request) (*shopSession, *shopError) {
	user, fail := userOf(r)
	if fail != nil {
		return nil, fail
	}
	step, err := strconv.Atoi(r.Header.Get(HeaderStep))
	if err != nil || step < 0 {
		return nil, badRequest(HeaderStep + ": want the number of items added so far")
	}
	c, err := r.Cookie(a.store.Cookie())
	if err != nil {
		return nil, errLost
	}
	ctx := r.Context()
	s, err := a.store.Load(ctx, c.Value)
	switch {
	case errors.Is(err, ErrNoSession):
		return nil, errLost
	case err != nil:
		return nil, storeFailure(err)
	}
	if u := usageOf(ctx); u != nil && u.loads > 0 && a.work > 0 {
		a.pause(ctx, time.Duration(u.loads)*a.work)
	}
	if s.User != user {
		return nil, errLost
	}
	return &shopSession{handle: c.Value, sess: s, step: step}, nil
}

// checkStep reports a session whose cart is not what the client built: an
// older copy of it, or one another request changed.
func (v *shopSession) checkStep() *shopError {
	if len(v.sess.Items) != v.step {
		return errStale
	}
	return nil
}

// save stores the visit's session, and hands the client the new handle
// when the store issued one.
func (a *app) save(w http.ResponseWriter, r *http.Request, v *shopSession) *shopError {
	handle, err := a.store.Save(r.Context(), v.handle, v.sess)
	switch {
	case errors.Is(err, ErrNoSession):
		return errLost
	case err != nil:
		return storeFailure(err)
	}
	if handle != v.handle {
		a.setHandle(w, handle)
	}
	return nil
}

// setHandle sets the cookie that carries the session's handle.
func (a *app) setHandle(w http.ResponseWriter, handle string) {
	http.SetCookie(w, &http.Cookie{
		Name:     a.store.Cookie(),
		Value:    handle,
		Path:     "/",
		HttpOnly: true,
		SameSite: http.SameSiteLaxMode,
	})
}

// userOf returns the request's X-User.
func userOf(r *http.Request) (string, *shopError) {
	user := r.Header.Get(HeaderUser)
	if user == "" || len(user) > maxFieldLen {
		return "", badRequest(HeaderUser + ": want a user id of 1 to 128 bytes")
	}
	return user, nil
}

// sleep waits d, or until ctx ends: a client that gave up frees its request.
func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// writeJSON answers with status and v as JSON.
func writeJSON(w http.ResponseWriter, status int, v any) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
