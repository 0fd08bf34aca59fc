package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/affinityproxy/affinity/internal/demoapp"
	"github.com/affinityproxy/affinity/internal/logging"
)

// devTokenSecret signs shop tokens when --token-secret is not given, so that
// backends started without it still share sessions. It is public: fine for
// a demo, never for real users, hence the warning.
const devTokenSecret = "affinity-demo-insecure-secret"

// backendFlags are the options of `affinity backend`.
type backendFlags struct {
	listen, name string
	store        storeKindFlag
	redisAddr    string
	tokenSecret  string
	denylist     bool
	work         time.Duration
	checkoutWork time.Duration
	cacheSize    int
}

// newBackendCmd builds `affinity backend`: the demo app, to put behind the
// proxy and see which backend serves a client and whether its session
// survived.
func newBackendCmd() *cobra.Command {
	f := backendFlags{store: "memory"}
	cmd := &cobra.Command{
		Use:   "backend",
		Short: "Run a demo backend",
		Long: "Run a demo web app that answers every path with its name, a session id and a " +
			"per-session request counter (cookie " + demoapp.CookieName + ", kept in memory), " +
			"and /healthz with ok. A client that loses its session sees a new id and count=1.\n\n" +
			"It is also a small shop (POST /login, POST /cart/items, GET /cart, POST /checkout, " +
			"POST /logout, GET /metrics) whose sessions live where --session-store says: in memory, in Redis, " +
			"in Redis behind a near-cache, or in a signed token the client holds (with --token-denylist, " +
			"revocable at logout through a denylist in Redis).",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runBackend(cmd, f)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.listen, "listen", "127.0.0.1:9001", "address to listen on")
	fl.StringVar(&f.name, "name", "", "backend name shown in responses (default: the --listen address)")
	fl.Var(&f.store, "session-store", "where shop sessions live: "+strings.Join(storeKinds, ", "))
	fl.StringVar(&f.redisAddr, "redis-addr", "127.0.0.1:6379", "Redis host:port, for the redis and cached-redis stores")
	fl.StringVar(&f.tokenSecret, "token-secret", "", "HMAC key of the token store; every backend of a pool needs the same (default: a built-in development secret)")
	fl.BoolVar(&f.denylist, "token-denylist", false, "token store: list logged-out sessions in Redis (--redis-addr) and refuse their tokens, checked on every request")
	fl.DurationVar(&f.work, "work", 0, "simulated cost of loading a user's data from the store (redis: every request; cached-redis: near-cache misses)")
	fl.DurationVar(&f.checkoutWork, "checkout-work", 0, "simulated time of a checkout between reading the cart and placing the order (prices, stock, payment); a checkout that began it finishes even if its client leaves")
	fl.IntVar(&f.cacheSize, "cache-size", demoapp.DefaultCacheSize, "sessions kept in the near-cache of the cached-redis store")
	return cmd
}

func runBackend(cmd *cobra.Command, f backendFlags) error {
	log, err := logging.New("info", "console", cmd.ErrOrStderr())
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()
	if f.cacheSize < 1 {
		return fmt.Errorf("backend: --cache-size %d: want at least 1", f.cacheSize)
	}
	if f.work < 0 {
		return fmt.Errorf("backend: --work %v: want 0 or more", f.work)
	}
	if f.checkoutWork < 0 {
		return fmt.Errorf("backend: --checkout-work %v: want 0 or more", f.checkoutWork)
	}
	if f.denylist && f.store != "token" {
		return fmt.Errorf("backend: --token-denylist: applies to --session-store token only, not %s", f.store)
	}
	store, err := openStore(cmd.Context(), f, log)
	if err != nil {
		return fmt.Errorf("backend: %w", err)
	}
	defer func() { _ = store.Close() }()
	orders := openOrders(f)
	defer func() { _ = orders.Close() }()
	// Listening before logging means "listening" is only said once it is
	// true, and a busy port fails the command at once.
	ln, err := net.Listen("tcp", f.listen)
	if err != nil {
		return fmt.Errorf("backend: %w", err)
	}
	if f.name == "" {
		// The bound address, so that port 0 names the real port.
		f.name = ln.Addr().String()
	}
	srv := &http.Server{
		Handler: demoapp.NewWithOptions(f.name, demoapp.Options{
			Store: store, Orders: orders, Work: f.work, CheckoutWork: f.checkoutWork, Log: log,
		}),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          zap.NewStdLog(log),
	}
	log.Info("backend listening", zap.String("name", f.name), zap.Stringer("addr", ln.Addr()),
		zap.String("session_store", string(f.store)), zap.Duration("work", f.work), zap.Duration("checkout_work", f.checkoutWork))
	return runUntilSignal(cmd.Context(), log, func() error { return srv.Serve(ln) }, srv.Shutdown)
}

// openStore opens the session store the flags ask for. A Redis that does
// not answer yet is reported, not fatal: the shop answers store_unavailable
// until it does, which is what a store-down experiment measures.
func openStore(ctx context.Context, f backendFlags, log *zap.Logger) (demoapp.Store, error) {
	// The Redis client would log each failed dial; the app logs when the
	// store fails and when it is back instead, once each.
	redis.SetLogger(silentRedis{})
	var pinger interface{ Ping(context.Context) error }
	var store demoapp.Store
	switch f.store {
	case "memory":
		store = demoapp.NewMemoryStore(0)
	case "redis":
		s := demoapp.NewRedisStore(f.redisAddr)
		store, pinger = s, s
	case "cached-redis":
		s := demoapp.NewCachedRedisStore(f.redisAddr, f.cacheSize)
		store, pinger = s, s
	case "token":
		secret := f.tokenSecret
		if secret == "" {
			log.Warn("token store signs with the built-in development secret; give every backend the same --token-secret")
			secret = devTokenSecret
		}
		if !f.denylist {
			s, err := demoapp.NewTokenStore([]byte(secret))
			if err != nil {
				return nil, err
			}
			store = s
			break
		}
		s, err := demoapp.NewDenylistTokenStore([]byte(secret), f.redisAddr)
		if err != nil {
			return nil, err
		}
		store, pinger = s, s
	default:
		// The flag's Set rules this out; kept so a new kind cannot be half added.
		return nil, fmt.Errorf("session store %q: unknown", f.store)
	}
	if pinger != nil {
		if err := pinger.Ping(ctx); err != nil {
			log.Warn("session store does not answer yet", zap.String("redis_addr", f.redisAddr), zap.Error(err))
		}
	}
	return store, nil
}

// openOrders keeps the shop's orders where its sessions can be seen by
// every backend: in Redis for the stores that use it (the token store with
// a denylist too), so that an order placed twice for one cart is counted
// wherever the second ran; in this process otherwise.
func openOrders(f backendFlags) demoapp.Orders {
	if f.store == "redis" || f.store == "cached-redis" || f.denylist {
		return demoapp.NewRedisOrders(f.redisAddr)
	}
	return demoapp.NewMemoryOrders()
}

// silentRedis drops the Redis client's own log lines.
type silentRedis struct{}

func (silentRedis) Printf(context.Context, string, ...any) {}

// storeKinds are the values of --session-store.
var storeKinds = []string{"memory", "redis", "cached-redis", "token"}

// storeKindFlag is a --session-store value checked while flags are parsed,
// so that an unknown store is a usage error like any other bad flag.
type storeKindFlag string

// String returns the kind set, for help text.
func (f *storeKindFlag) String() string { return string(*f) }

// Set accepts one of storeKinds.
func (f *storeKindFlag) Set(s string) error {
	if slices.Contains(storeKinds, s) {
		*f = storeKindFlag(s)
		return nil
	}
	return fmt.Errorf("%q: want %s", s, strings.Join(storeKinds, ", "))
}

// Type names the flag's kind in help text.
func (*storeKindFlag) Type() string { return "store" }
