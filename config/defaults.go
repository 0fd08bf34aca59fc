package config

import (
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/affinityproxy/affinity/balancer"
)

// Defaults of every optional key. The loader starts each section from the
// functions below and overwrites what the file sets, so this file is the only
// place a default lives.
const (
	DefaultLogLevel  = "info"    // log.level
	DefaultLogFormat = "console" // log.format
	DefaultLogAccess = false     // log.access
	// log.access_sample: every request is logged.
	DefaultLogAccessSample = 1.0

	DefaultConnectTimeout        = 2 * time.Second  // timeouts.connect
	DefaultResponseHeaderTimeout = 30 * time.Second // timeouts.response_header
	// timeouts.response_body: nginx's proxy_read_timeout, which bounds the
	// same silence.
	DefaultResponseBodyTimeout = 60 * time.Second
	DefaultIdleConnTimeout     = 90 * time.Second // timeouts.idle_conn

	DefaultShutdownTimeout = 30 * time.Second // shutdown_timeout
	// drain_timeout: below `affinity ctl drain --wait`'s default timeout of
	// 5m, so that a deploy waiting with the defaults sees the connections
	// that never end closed, rather than timing out.
	DefaultDrainTimeout = 2 * time.Minute

	DefaultReadHeaderTimeout = 10 * time.Second // server.read_header_timeout
	DefaultReadTimeout       = 0                // server.read_timeout: none, as uploads may be slow
	DefaultIdleTimeout       = 2 * time.Minute  // server.idle_timeout
	// server.send_timeout: nginx's send_timeout, between two writes. A
	// client reading at all, however slowly, empties its window long
	// before.
	DefaultSendTimeout = 60 * time.Second
	// server.min_body_rate, in bytes per second, and its grace: Kestrel's
	// MinRequestBodyDataRate. Only the time the proxy waits for the
	// client counts, not the time a backend takes to read, so a client
	// on any working link (a 2G phone sends kilobytes a second) is far
	// above it.
	DefaultMinBodyRate      = 240
	DefaultMinBodyRateGrace = 5 * time.Second
	DefaultParkAfter        = 10 * time.Second // server.park_after
	DefaultMaxHeaderBytes   = 64 << 10         // server.max_header_bytes
	DefaultMaxBody          = 100 << 20        // server.max_body, in bytes; 0 is no limit
	// trusted_proxies defaults to none: every client's forwarding headers
	// are replaced. tls defaults to off, and a pool's tls to the system's
	// roots and the name in each backend's URL.

	DefaultBalancerType = "round-robin" // pools.*.balancer.type

	// balancer.cookie.name defaults to DefaultCookiePrefix and the pool's
	// name (AFFINITY_web): pools behind one host are each sent the
	// others' cookies, and one name for all would make each read the
	// others' as its own, or place the client anew and overwrite them.
	DefaultCookiePrefix   = "AFFINITY_"
	DefaultCookiePath     = "/"                  // balancer.cookie.path
	DefaultCookieDomain   = ""                   // balancer.cookie.domain: the request's host
	DefaultCookieMaxAge   = 0                    // balancer.cookie.max_age: a session cookie
	DefaultCookieSecure   = false                // balancer.cookie.secure
	DefaultCookieHTTPOnly = true                 // balancer.cookie.http_only
	DefaultCookieSameSite = http.SameSiteLaxMode // balancer.cookie.same_site: lax
	DefaultCookieSecret   = ""                   // balancer.cookie.secret: unsigned

	// balancer.hash.key has no default: a consistent-hash pool must say
	// what it hashes.
	DefaultHashVirtualNodes = 160 // balancer.hash.virtual_nodes
	DefaultHashLoadFactor   = 0.0 // balancer.hash.load_factor: no bound

	// balancer.learn.cookie has no default: a learn pool must name its
	// application's session cookie; redis.addrs neither.
	DefaultLearnMaxEntries = 100_000                   // balancer.learn.max_entries
	DefaultLearnTTL        = 30 * time.Minute          // balancer.learn.ttl: a servlet session's default
	DefaultLearnStore      = balancer.LearnStoreMemory // balancer.learn.store
	DefaultRedisTimeout    = 50 * time.Millisecond     // balancer.learn.redis.timeout

	// A backend without a name is named after its URL's host:port, with the
	// scheme's port made explicit (http://app → app:80), so that the name
	// stays the same when backends are reordered or the config replicated.
	DefaultWeight = 1 // pools.*.backends[].weight
	// pools.*.backends[].state
	DefaultState = StateReady

	// A health_check section, even an empty one, turns active checks on
	// with these values; without it there are none.
	DefaultHealthPath      = "/healthz"      // health_check.path
	DefaultHealthInterval  = 5 * time.Second // health_check.interval
	DefaultHealthTimeout   = 2 * time.Second // health_check.timeout
	DefaultHealthRise      = 2               // health_check.rise
	DefaultHealthFall      = 3               // health_check.fall
	DefaultHealthStatusMin = 200             // health_check.expect_status: 200-399
	DefaultHealthStatusMax = 399

	// A passive section, even an empty one, turns ejection on with these
	// values; on_status defaults to none, so only connection errors count.
	DefaultPassiveFailures = 3                // passive.failures
	DefaultPassiveEject    = 10 * time.Second // passive.eject
	DefaultPassiveMaxEject = 5 * time.Minute  // passive.max_eject

	// A pool's discover section has no default name; port is required for
	// A and AAAA records, and resolver defaults to the system's.
	DefaultDiscoverType         = DiscoverA        // discover.type
	DefaultDiscoverScheme       = "http"           // discover.scheme
	DefaultDiscoverInterval     = 10 * time.Second // discover.interval
	DefaultDiscoverDrainTimeout = 5 * time.Minute  // discover.drain_timeout
	DefaultSlowStart            = 0                // pools.*.slow_start: none

	DefaultQueueMax     = 100             // pools.*.queue.max
	DefaultQueueTimeout = 5 * time.Second // pools.*.queue.timeout

	DefaultRetryCount   = 2        // pools.*.retries
	DefaultRetryMaxBody = 64 << 10 // pools.*.retry_max_body, in bytes
)

// Limits of numeric keys, inclusive.
const (
	MaxWeight       = 1000                     // pools.*.backends[].weight: 1..MaxWeight
	MaxRetries      = 10                       // pools.*.retries: 0..MaxRetries
	MaxConns        = 1 << 20                  // pools.*.backends[].max_conns: 0..MaxConns
	MaxQueue        = 1 << 20                  // pools.*.queue.max: 0..MaxQueue
	MaxVirtualNodes = 10000                    // balancer.hash.virtual_nodes: 1..MaxVirtualNodes
	MaxLearnEntries = balancer.MaxLearnEntries // balancer.learn.max_entries: 1..MaxLearnEntries
	// discover.interval: at least a second, so that a pool does not turn
	// its resolver into a load test.
	MinDiscoverInterval = time.Second
	// server.max_header_bytes: MinHeaderBytes..MaxHeaderBytes. Below 1 KiB
	// ordinary browsers' requests would not fit; above 16 MiB one client
	// could hold that much memory per connection.
	MinHeaderBytes = 1 << 10
	MaxHeaderBytes = 16 << 20
)

// DefaultLog returns the log section used when the file has none.
func DefaultLog() Log {
	return Log{Level: DefaultLogLevel, Format: DefaultLogFormat, Access: DefaultLogAccess, AccessSample: DefaultLogAccessSample}
}

// DefaultTimeouts returns the timeouts used when the file sets none.
func DefaultTimeouts() Timeouts {
	return Timeouts{
		Connect:        DefaultConnectTimeout,
		ResponseHeader: DefaultResponseHeaderTimeout,
		ResponseBody:   DefaultResponseBodyTimeout,
		IdleConn:       DefaultIdleConnTimeout,
	}
}

// DefaultServer returns the client-side limits used when the file sets
// none.
func DefaultServer() Server {
	return Server{
		ReadHeaderTimeout: DefaultReadHeaderTimeout,
		ReadTimeout:       DefaultReadTimeout,
		IdleTimeout:       DefaultIdleTimeout,
		SendTimeout:       DefaultSendTimeout,
		MinBodyRate:       DefaultMinBodyRate,
		MinBodyRateGrace:  DefaultMinBodyRateGrace,
		ParkAfter:         DefaultParkAfter,
		MaxHeaderBytes:    DefaultMaxHeaderBytes,
		MaxBody:           DefaultMaxBody,
	}
}

// DefaultBalancer returns the balancer of the pool named pool when the file
// names none. Its options hold the defaults of every policy, so that
// switching the type needs no other change.
func DefaultBalancer(pool string) Balancer {
	return Balancer{
		Type: DefaultBalancerType,
		Options: balancer.Options{
			Cookie: balancer.CookieOptions{
				Name:     DefaultCookiePrefix + pool,
				Path:     DefaultCookiePath,
				Domain:   DefaultCookieDomain,
				MaxAge:   DefaultCookieMaxAge,
				Secure:   DefaultCookieSecure,
				HTTPOnly: DefaultCookieHTTPOnly,
				SameSite: DefaultCookieSameSite,
				Secret:   DefaultCookieSecret,
			},
			Hash: balancer.HashOptions{
				VirtualNodes: DefaultHashVirtualNodes,
				LoadFactor:   DefaultHashLoadFactor,
			},
			Learn: balancer.LearnOptions{
				MaxEntries: DefaultLearnMaxEntries,
				TTL:        DefaultLearnTTL,
				Store:      DefaultLearnStore,
				Redis:      balancer.RedisOptions{Timeout: DefaultRedisTimeout},
			},
		},
	}
}

// DefaultHealthCheck returns the checks enabled by an empty health_check
// section.
func DefaultHealthCheck() HealthCheck {
	return HealthCheck{
		Path:      DefaultHealthPath,
		Interval:  DefaultHealthInterval,
		Timeout:   DefaultHealthTimeout,
		Rise:      DefaultHealthRise,
		Fall:      DefaultHealthFall,
		StatusMin: DefaultHealthStatusMin,
		StatusMax: DefaultHealthStatusMax,
	}
}

// DefaultPassive returns the ejection enabled by an empty passive section.
func DefaultPassive() Passive {
	return Passive{
		Failures: DefaultPassiveFailures,
		Eject:    DefaultPassiveEject,
		MaxEject: DefaultPassiveMaxEject,
	}
}

// DefaultDiscover returns a discover section's values before the file's.
func DefaultDiscover() Discover {
	return Discover{
		Type:         DefaultDiscoverType,
		Scheme:       DefaultDiscoverScheme,
		Interval:     DefaultDiscoverInterval,
		DrainTimeout: DefaultDiscoverDrainTimeout,
	}
}

// DefaultRetries returns a pool's retries when the file sets none.
func DefaultRetries() Retries {
	return Retries{Count: DefaultRetryCount, MaxBody: DefaultRetryMaxBody}
}

// derivedName is the name of a backend configured without one: host:port,
// lower-cased, with the scheme's default port written out, so http://App and
// http://app:80 get the same name. u must be an http or https URL with a host.
func derivedName(u *url.URL) string {
	port := u.Port()
	if port == "" {
		port = "80"
		if u.Scheme == "https" {
			port = "443"
		}
	}
	return net.JoinHostPort(strings.ToLower(u.Hostname()), port)
}
