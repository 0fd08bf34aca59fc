// Package config reads affinity's YAML configuration into checked, defaulted
// values. Every problem in a file is reported at once, each with the file,
// line and column of the node at fault; loading never panics, whatever the
// input.
package config

import (
	"net/url"
	"time"

	"github.com/affinityproxy/affinity/balancer"
)

// Config is a loaded, validated configuration with every default applied.
type Config struct {
	// File is the path the config was loaded from, for messages.
	File string

	Listen   string   // listen: address of the proxy listener (required)
	Admin    string   // admin: address of the admin listener; empty is off
	Log      Log      // log:
	Timeouts Timeouts // timeouts:
	Routes   []Route  // routes: first match wins
	// Pools in the order the file names them.
	Pools []*Pool
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

// Log configures logging.
type Log struct {
	Level  string // debug | info | warn | error; default info
	Format string // console | json; default console
	Access bool   // one line per request; default false
}

// Timeouts bound the proxy's conversations with backends.
type Timeouts struct {
	Connect        time.Duration // dial timeout; default 2s
	ResponseHeader time.Duration // wait for response headers; default 30s
	IdleConn       time.Duration // idle keep-alive connection lifetime; default 90s
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
	Name        string
	Balancer    Balancer
	Backends    []Backend
	HealthCheck *HealthCheck // nil: no active checks
	Passive     *Passive     // nil: no passive ejection
	Retries     Retries
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
}

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
