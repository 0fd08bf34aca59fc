// Package demoapp is the small web application behind `affinity backend`: a
// stand-in for a stateful service, so that what sticky routing keeps or loses
// can be seen from a browser or curl, and measured by `affinity experiment`.
//
// # Counter
//
// Every path not listed below answers with the backend's name, a session id
// and a per-client counter kept in this process's memory behind the
// DEMO_SESSION cookie. When a client reaches a backend that does not hold its
// session (it was moved, or the backend restarted), it gets a new session id
// and the count starts again at 1: a lost session is visible in the body and
// headers.
//
// # Shop
//
// The shop is a cart whose session lives where Options.Store says: in this
// process (MemoryStore), in Redis (RedisStore), in Redis behind a versioned
// near-cache (CachedRedisStore), or in a signed token the client holds
// (TokenStore), optionally with a denylist of revoked sessions in Redis.
// The experiments compare them; the HTTP contract they rely on
// is this, and must not change without them.
//
// Every shop response is JSON and carries X-Backend (the backend's name),
// X-Store-Ops (the round trips to the store the request made, not counting
// the handshake of a new pooled connection: always 0 for memory and token)
// and, for a cached-redis store when the request looked a session up,
// X-Cache: hit or miss.
//
//	POST /login       X-User: U
//	    200 {"user":U,"backend":NAME}. Starts a fresh, empty session for U and
//	    sets its handle: cookie SHOP_SESSION=<random id> (HttpOnly, Path=/) for
//	    memory, redis and cached-redis; SHOP_TOKEN=<JWT HS256 holding user,
//	    items, version, exp> for token.
//	POST /cart/items  X-User: U, X-Step: k, form or query item=<sku>
//	    200 {"items":k+1}. k is the number of items the client added before
//	    this one. The token store sets a new SHOP_TOKEN holding the new cart.
//	GET /cart         X-User: U, X-Step: k
//	    200 {"items":[...]}
//	POST /checkout    X-User: U, X-Step: k, optional Idempotency-Key
//	    200 {"order":ID,"items":k}; the cart is emptied, the session kept. A
//	    retry with the same Idempotency-Key returns the same order (with
//	    Idempotent-Replayed: true) instead of making a second one, even
//	    when the first attempt still runs on another backend. A checkout
//	    takes Options.CheckoutWork between reading the cart and placing
//	    the order, and once begun it finishes even if its client left.
//	    Orders keeps the first order of each cart (in Redis when the store
//	    uses one, so that every backend sees it): a second order of one
//	    cart, from a checkout repeated without a key that read the cart
//	    before the first placed its order, is placed and counted as a
//	    duplicate.
//
// The server detects lost and stale sessions itself. A shop request other
// than /login whose handle is missing, unknown to the store, forged or
// expired, or belongs to another user is answered 409
// {"error":"session_lost"}; one whose cart does not hold X-Step items, 409
// {"error":"session_stale"}. When the store fails (Redis down) the answer is
// 503 {"error":"store_unavailable"}, within a few RedisTimeout. A missing or
// malformed header or item is 400 {"error":"bad_request"}; another method on
// a shop path, 405.
//
// # Logout
//
//	POST /logout      204. Forgets the client's counter session, revokes its
//	                  shop session in the store (memory, redis and
//	                  cached-redis delete it; a token store with a denylist
//	                  lists it in Redis; a token store without one cannot,
//	                  and the token stays valid until it expires), and
//	                  expires the DEMO_SESSION cookie and the shop's session
//	                  cookie (an empty value, Max-Age=0 and Expires=Thu, 01
//	                  Jan 1970 00:00:00 GMT), as applications
//	                  commonly log out. 503 {"error":"store_unavailable"},
//	                  cookies kept, when the store fails to revoke. Another
//	                  method is answered 405.
//
// # Operations
//
//	GET /metrics      Prometheus text: demoapp_sessions (sessions held in this
//	                  process: memory store sessions or near-cache entries),
//	                  demoapp_requests_total, demoapp_store_ops_total,
//	                  demoapp_store_loads_total, demoapp_cache_hits_total,
//	                  demoapp_cache_misses_total, demoapp_orders_total,
//	                  demoapp_duplicate_orders_total,
//	                  demoapp_session_errors_total{kind="lost|stale|store"},
//	                  process_resident_memory_bytes.
//	/healthz          200 ok, or 503 down between /_down and /_up.
//	/_down, /_up      (any method) make /healthz fail or pass again; the
//	                  shop and the counter keep serving.
//
// Every response of every path carries X-Backend.
package demoapp
