// Package config reads affinity's YAML configuration into checked, defaulted
// values. Every problem in a file is reported at once, each with the file,
// line and column of the node at fault; loading never panics, whatever the
// input.
package config

import (
	"net/netip"
	"net/url"
	"time"

	"github.com/affinityproxy/affinity/balancer"
)

// Config is a loaded, validated configuration with every default applied.
type Config struct {
	// File is the path the config was loaded from, for messages.
	File string
	// Hash is the hex SHA-256 of the bytes the config was parsed from,
	// naming the version of the file in use (logs, metrics); empty for a
	// Config built in code.
	Hash string

	Listen   string   // listen: address of the proxy listener (required)
	Admin    Admin    // admin: the admin listener; the zero value is off
	Log      Log      // log:
	Timeouts Timeouts // timeouts:
	Routes   []Route  // routes: first match wins
	// Pools in the order the file names them.
	Pools []*Pool
	// Server bounds what clients may send and how long they may hold a
	// connection (server:).
	Server Server
	// TrustedProxies are the peers whose X-Forwarded-For, -Proto, -Host
	// and Forwarded headers are believed and extended rather than
	// replaced (trusted_proxies: CIDRs or addresses; default none). A
	// bare address is a /32 or /128 prefix.
	TrustedProxies []netip.Prefix
	// TLS makes the listener terminate TLS, and serve HTTP/2 as well as
	// HTTP/1.1 (tls:); nil serves plain HTTP.
	TLS *TLS
	// ShutdownTimeout bounds how long a stopping proxy lets requests in
	// flight finish (shutdown_timeout; default 30s).
	ShutdownTimeout time.Duration
	// DrainTimeout bounds how long requests, upgraded connections and
	// streamed responses may stay open to a backend that is draining, in
	// maintenance or removed, counted from when it left the ready state
	// or from when they opened, whichever is later; then they are closed
	// (drain_timeout; default 2m; 0: no limit).
	DrainTimeout time.Duration

	// Warnings are what Load found unusual but not wrong, such as a config
	// that would hold gigabytes in its balancers' tables; each has
	// Warning set. serve logs them, validate prints them.
	Warnings ErrorList

	// at is where Check reports a problem with a key's value: by path
	// (listen, tls.cert, pools.NAME.tls.ca, ...); nil for a Config built in
	// code.
	at map[string]pos
}

// Pool returns the pool named name, or nil.
func (c *Config) Pool(name string) *Pool {
	for _, p := range c.Pools {
		if p.Name == name {
			return p
		}
	}
	return nil
}

// Admin configures the admin listener, which serves metrics, a status page
// and health endpoints apart from the proxied traffic. The file may give it
// as an address alone (admin: 127.0.0.1:9090) or as a mapping.
type Admin struct {
	Listen string // listen: host:port; empty: no admin listener
	// Pprof serves Go's profiler under /debug/pprof/; default false, as
	// profiles reveal the program's internals and cost CPU while taken.
	Pprof bool
	// Token, or the content of TokenFile, is the bearer token that writes
	// to the admin API must carry (token, token_file; at most one). Without
	// either, writes are accepted from anyone on a loopback admin
	// listener, and refused on one reachable from other hosts.
	Token     string
	TokenFile string
}

// Log configures logging.
type Log struct {
	Level  string // debug | info | warn | error; default info
	Format string // console | json; default console
	Access bool   // one line per request; default false
	// AccessSample is the fraction of successful requests the access log
	// keeps, in (0, 1]; default 1. Answers of 5xx, and responses cut
	// off, are always logged.
	AccessSample float64
}

// Timeouts bound the proxy's conversations with backends.
type Timeouts struct {
	Connect        time.Duration // dial timeout; default 2s
	ResponseHeader time.Duration // wait for response headers; default 30s
	// ResponseBody bounds the silence between two reads of a response
	// body, not the whole body (response_body; default 60s; 0: none).
	ResponseBody time.Duration
	IdleConn     time.Duration // idle keep-alive connection lifetime; default 90s
}

// Route sends matching requests to a pool.
type Route struct {
	Match Match
	Pool  string
}

// Match selects requests. An empty field matches everything.
type Match struct {
	// Host is an exact host name (compared without port, case-insensitive)
	// or "*.suffix", which matches any name ending in ".suffix".
	Host string
	// Path is a prefix of the request path.
	Path string
}

// Pool is a group of interchangeable backends behind one balancer.
type Pool struct {
	Name     string
	Balancer Balancer
	// Backends are the configured backends; none when Discover is set.
	Backends []Backend
	// Discover takes the backends from DNS instead; nil: Backends.
	Discover *Discover
	// SlowStart is how long a backend that joins, or comes back from down,
	// ejected or maint, takes to reach its full share of new clients,
	// from a tenth of it (slow_start; default 0: at once).
	SlowStart   time.Duration
	HealthCheck *HealthCheck // nil: no active checks
	Passive     *Passive     // nil: no passive ejection
	Retries     Retries
	// DisableKeepAlives gives each request a backend connection of its
	// own, closed after its response (keepalive: false; default: kept
	// for the next requests): for a backend that sends bytes no request
	// asked for, at the cost of a connect per request.
	DisableKeepAlives bool
	// Queue is where requests wait for a backend below its MaxConns.
	Queue Queue
	// TLS verifies the pool's https:// backends; nil: the system's roots
	// and the name in each backend's URL.
	TLS *BackendTLS
}

// Balancer names the policy of a pool and carries its options.
type Balancer struct {
	Type    string // a name registered in package balancer; default round-robin
	Options balancer.Options
}

// Backend is one upstream server.
type Backend struct {
	URL    *url.URL
	Name   string // stable id; derived from the URL when not configured
	Weight int    // 1..1000; default 1
	// State is the backend's administrative state at start and after a
	// reload that changes it; default ready. A state set at run time
	// holds over reloads that leave this one as it was.
	State State
	// MaxConns bounds the requests in flight to the backend at once
	// (max_conns); past it requests wait in the pool's Queue. 0: no bound.
	MaxConns int
}

// Queue bounds the requests that wait for a pool's backends when those
// their clients may use are at max_conns.
type Queue struct {
	// Max is how many requests may wait at once over the whole pool;
	// past it a request is answered 503 at once. 0: none waits.
	Max int
	// Timeout is how long a request waits before it is answered 503.
	Timeout time.Duration
}

// Discover makes a pool follow the records of a DNS name: each address (or
// SRV target) is a backend, named after it, and one that leaves DNS drains.
type Discover struct {
	// DNS is the name looked up (dns), e.g. app.default.svc.cluster.local,
	// or _http._tcp.app.service.consul for SRV.
	DNS string
	// Type is DiscoverA (A and AAAA records), DiscoverAAAA, or DiscoverSRV
	// (target, port and weight from each record) (type; default A).
	Type string
	// Port is the backends' port for A and AAAA (port; required there); 0
	// with SRV, whose records carry it.
	Port int
	// Scheme is http or https (scheme; default http).
	Scheme string
	// Interval is the time between lookups, at least MinDiscoverInterval
	// (interval; default 10s). Records' TTLs do not shorten it.
	Interval time.Duration
	// Resolver is the ip:port of the DNS server asked (resolver); empty:
	// the system's, from /etc/resolv.conf.
	Resolver string
	// DrainTimeout bounds how long a backend that left DNS keeps its
	// pinned clients before it is removed, if it is not idle before
	// (drain_timeout; default 5m; 0: removed at once).
	DrainTimeout time.Duration
	// MaxConns is every discovered backend's max_conns (max_conns;
	// default 0: no limit), as backends[].max_conns.
	MaxConns int
}

// The record types a pool can discover its backends by.
const (
	DiscoverA    = "A"    // A and AAAA records of the name, on Discover.Port
	DiscoverAAAA = "AAAA" // AAAA records only
	DiscoverSRV  = "SRV"  // SRV records: target, port and weight
)

// HealthCheck configures active health checks of a pool's backends.
type HealthCheck struct {
	Path      string        // default /healthz
	Interval  time.Duration // default 5s
	Timeout   time.Duration // default 2s; must be below Interval
	Rise      int           // consecutive successes to come back; default 2
	Fall      int           // consecutive failures to go down; default 3
	StatusMin int           // expect_status range, inclusive; default 200-399
	StatusMax int
	Body      string // expect_body: substring the body must contain; empty: any
	Host      string // Host header sent with checks; empty: the backend's
}

// Passive configures ejection of backends by the outcome of real traffic.
type Passive struct {
	Failures int           // consecutive failures that eject; default 3
	Eject    time.Duration // first ejection time; default 10s, doubled on repeats
	MaxEject time.Duration // cap on the doubled time; default 5m
	OnStatus []int         // response statuses that count as failures, besides connection errors
}

// Retries configures failover of failed requests to another backend.
type Retries struct {
	Count   int   // further attempts after the first; default 2
	MaxBody int64 // largest request body buffered to be replayable; default 64 KiB
}

// Server bounds the client side of the proxy. Config.Load fills in every
// default; in a Config built in code a zero ReadHeaderTimeout, IdleTimeout
// or MaxHeaderBytes takes its default too.
type Server struct {
	// ReadHeaderTimeout bounds how long a client may take to send a
	// request's headers, so that connections trickling bytes cannot pile
	// up (read_header_timeout; default 10s).
	ReadHeaderTimeout time.Duration
	// ReadTimeout bounds the reading of a whole request, body included
	// (read_timeout; default 0: none, as uploads may be slow).
	ReadTimeout time.Duration
	// SendTimeout closes a client connection on which a write made no
	// progress for this long: the client stopped reading, and its
	// window and the socket's buffer are full (send_timeout; default
	// 60s; 0: none). It bounds each write, not a whole response, so that
	// large downloads to a reading client are never cut.
	SendTimeout time.Duration
	// MinBodyRate is the least rate, in bytes per second, at which a
	// client must send a request body while the proxy waits for it,
	// averaged over the time it waited; a body slower than that is
	// answered 408 (min_body_rate; default 240; 0: none).
	MinBodyRate int
	// MinBodyRateGrace is how long the proxy waits for a body before
	// MinBodyRate applies (min_body_rate_grace; default 5s).
	MinBodyRateGrace time.Duration
	// IdleTimeout closes keep-alive connections idle this long
	// (idle_timeout; default 2m).
	IdleTimeout time.Duration
	// ParkAfter is how long a plain HTTP keep-alive connection is idle
	// before its goroutine and buffers are released until the client sends
	// again, on Linux (park_after; default 10s; 0, as in a Config built in
	// code: never).
	ParkAfter time.Duration
	// MaxHeaderBytes caps the size of a request's header block
	// (max_header_bytes; default 64 KiB).
	MaxHeaderBytes int
	// MaxBody caps a request body in bytes; a larger one is answered 413
	// (max_body; default 100 MiB; 0: no limit).
	MaxBody int64
	// MaxConns caps the client connections open at once; past it the
	// proxy accepts no more until one closes (max_conns; default 0:
	// derived from the limit on open files, leaving room for a backend
	// connection each and for the proxy's other files).
	MaxConns int
}

// TLS is the listener's certificate (PEM files; relative paths are taken
// from the working directory).
type TLS struct {
	Cert string // cert: certificate chain, leaf first
	Key  string // key: its private key
}

// BackendTLS configures how the proxy verifies a pool's https backends.
type BackendTLS struct {
	// CA is a PEM file of the certificates that sign the backends' (ca;
	// default: the system's roots).
	CA string
	// ServerName is the name the backends' certificates must hold
	// (server_name; default: the host of each backend's URL).
	ServerName string
	// InsecureSkipVerify accepts any certificate: for tests only, as it
	// lets anyone on the path read and change the traffic
	// (insecure_skip_verify; default false).
	InsecureSkipVerify bool
}
