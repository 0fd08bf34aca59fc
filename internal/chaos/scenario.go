// Package chaos is affinity's failover harness: it starts real `affinity
// backend` processes and an `affinity serve` in front of them, drives the
// proxy with an open-loop load of clients that keep cookies, kills or hangs
// one backend in the middle of it and brings it back, optionally rewriting
// the proxy's config file meanwhile for it to reload, and reports what the
// clients saw: failed requests, clients moved off their backend (and back),
// and how long the pool took to be whole again.
//
// Everything listens on 127.0.0.1, every loop is bounded in count and time,
// and every process a run starts is killed and waited for before Run
// returns, whatever happened.
package chaos

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/affinityproxy/affinity/internal/harness"
)

// Fault is what happens to the victim backend at Scenario.FaultAt.
type Fault string

const (
	// FaultKill is kill -9 of the backend; recovery starts a new process
	// on the same port, with no sessions.
	FaultKill Fault = "kill"
	// FaultHang is SIGSTOP: connections are still accepted by the kernel
	// but never answered. Recovery is SIGCONT; the sessions survive.
	FaultHang Fault = "hang"
)

// Scenario describes a run. Zero fields take the values of the issue's
// scenario: 3 backends, 50 clients at 300 req/s for 20 s, the fault at 5 s
// and recovery at 12 s, health checks every 500 ms (fall 2, rise 2).
type Scenario struct {
	// Binary is the affinity executable to run, for both the backends and
	// the proxy. Required.
	Binary string
	// Dir receives the generated config and one log file per process, to
	// read after a surprising run. Empty: a temporary directory, removed
	// when Run returns.
	Dir string

	Fault     Fault         // default FaultKill
	Backends  int           // at least 2: the victim and somewhere to go; default 3
	Clients   int           // virtual users, each with its own cookie jar; default 50
	Rate      int           // requests per second, sent whether or not answers come; default 300
	Duration  time.Duration // of the load; default 20s
	FaultAt   time.Duration // since the load began; default 5s
	RecoverAt time.Duration // since the load began; default 12s
	// PostEvery makes every PostEvery-th request of each client a POST with
	// a small body, to see what the proxy does with requests it may not
	// replay. 0: GET only, like the peers' harness.
	PostEvery int
	// ClientTimeout bounds each request of the load; default 5s.
	ClientTimeout time.Duration

	// The proxy's health checks of its backends.
	HealthInterval time.Duration // default 500ms
	HealthTimeout  time.Duration // default 400ms; must be below HealthInterval
	Rise           int           // default 2
	Fall           int           // default 2

	// The proxy's passive ejection: consecutive failed requests that eject
	// a backend, and for how long.
	PassiveFailures int           // default 2
	PassiveEject    time.Duration // default 1s

	ConnectTimeout        time.Duration // the proxy's dial timeout; default 500ms
	ResponseHeaderTimeout time.Duration // the proxy's wait for headers; default 2s

	// Reloads rewrites the proxy's config file this many times during the
	// load, evenly spread, as an editor saves (a new file renamed over the
	// old), alternating between the generated config and one that gives
	// the first backend weight 2. The proxy watches the file and reloads
	// each; the next waits until it has. 0: none.
	Reloads int
}

// minReloadGap is the least time between two rewrites of the config: the
// proxy reloads a file once it has been quiet for 200 ms, so rewrites
// closer than that would be one reload.
const minReloadGap = 500 * time.Millisecond

// maxRequests bounds a run's load, so that a typo cannot start a flood.
const maxRequests = 1_000_000

// withDefaults returns sc with every zero field set to its default.
func (sc Scenario) withDefaults() Scenario {
	def := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	defInt := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	if sc.Fault == "" {
		sc.Fault = FaultKill
	}
	defInt(&sc.Backends, 3)
	defInt(&sc.Clients, 50)
	defInt(&sc.Rate, 300)
	def(&sc.Duration, 20*time.Second)
	def(&sc.FaultAt, 5*time.Second)
	def(&sc.RecoverAt, 12*time.Second)
	def(&sc.ClientTimeout, 5*time.Second)
	def(&sc.HealthInterval, 500*time.Millisecond)
	def(&sc.HealthTimeout, 400*time.Millisecond)
	defInt(&sc.Rise, 2)
	defInt(&sc.Fall, 2)
	defInt(&sc.PassiveFailures, 2)
	def(&sc.PassiveEject, time.Second)
	def(&sc.ConnectTimeout, 500*time.Millisecond)
	def(&sc.ResponseHeaderTimeout, 2*time.Second)
	return sc
}

// errScenario is wrapped by every complaint about a Scenario.
var errScenario = errors.New("chaos: invalid scenario")

// validate reports every field of a defaulted scenario that cannot run.
func (sc Scenario) validate() error {
	var bad []string
	check := func(ok bool, format string, args ...any) {
		if !ok {
			bad = append(bad, fmt.Sprintf(format, args...))
		}
	}
	check(sc.Binary != "", "Binary is empty")
	check(sc.Fault == FaultKill || sc.Fault == FaultHang, "Fault %q: want %q or %q", sc.Fault, FaultKill, FaultHang)
	check(sc.Backends >= 2, "Backends %d: want 2 or more", sc.Backends)
	check(sc.Clients > 0, "Clients %d: want 1 or more", sc.Clients)
	check(sc.Rate > 0, "Rate %d: want 1 or more", sc.Rate)
	check(sc.PostEvery >= 0, "PostEvery %d: want 0 or more", sc.PostEvery)
	check(sc.Reloads >= 0 && (sc.Reloads == 0 || sc.reloadGap() >= minReloadGap),
		"Reloads %d: want 0 or more, at least %v apart over Duration (%v)", sc.Reloads, minReloadGap, sc.Duration)
	check(sc.FaultAt > 0 && sc.FaultAt < sc.RecoverAt && sc.RecoverAt < sc.Duration,
		"want 0 < FaultAt (%v) < RecoverAt (%v) < Duration (%v)", sc.FaultAt, sc.RecoverAt, sc.Duration)
	check(sc.requests() <= maxRequests, "Rate × Duration is %d requests: want at most %d", sc.requests(), maxRequests)
	check(sc.HealthTimeout > 0 && sc.HealthTimeout < sc.HealthInterval,
		"HealthTimeout %v: want above 0 and below HealthInterval (%v)", sc.HealthTimeout, sc.HealthInterval)
	for name, v := range map[string]time.Duration{
		"ClientTimeout": sc.ClientTimeout, "PassiveEject": sc.PassiveEject,
		"ConnectTimeout": sc.ConnectTimeout, "ResponseHeaderTimeout": sc.ResponseHeaderTimeout,
	} {
		check(v > 0, "%s %v: want above 0", name, v)
	}
	for name, v := range map[string]int{"Rise": sc.Rise, "Fall": sc.Fall, "PassiveFailures": sc.PassiveFailures} {
		check(v > 0, "%s %d: want 1 or more", name, v)
	}
	if len(bad) > 0 {
		return fmt.Errorf("%w: %s", errScenario, strings.Join(bad, "; "))
	}
	return nil
}

// requests is how many requests the load sends.
func (sc Scenario) requests() int64 {
	return int64(sc.Rate) * int64(sc.Duration) / int64(time.Second)
}

// reloadGap is the time between two rewrites of the config, which spread
// Reloads evenly over the load, none at its start or end.
func (sc Scenario) reloadGap() time.Duration {
	return sc.Duration / time.Duration(sc.Reloads+1)
}

// period is the time between two requests of the load.
func (sc Scenario) period() time.Duration { return time.Second / time.Duration(sc.Rate) }

// isPost tells whether arrival k of the load, dealt to client, is a POST:
// the load deals each client one arrival per round of Clients, and every
// PostEvery-th round of each client is a POST, staggered across clients so
// that POSTs are spread evenly over time and backends.
func (sc Scenario) isPost(k, client int) bool {
	if sc.PostEvery <= 0 {
		return false
	}
	return (k/sc.Clients+client)%sc.PostEvery == 0
}

// victimIndex is the backend the fault hits, counting from 0: the second,
// as in the peers' harness, so that it is neither the first nor the last in
// rotation.
const victimIndex = 1

// schedule is the scenario's faults: the fault and the recovery of the
// victim, and the Reloads rewrites of the config spread over the load.
func (sc Scenario) schedule() (harness.Schedule, error) {
	victim := harness.BackendName(victimIndex + 1)
	strike, heal := harness.Kill, harness.Restart
	if sc.Fault == FaultHang {
		strike, heal = harness.Hang, harness.Resume
	}
	faults := []harness.Fault{{At: sc.FaultAt, Action: strike, Target: victim}, {At: sc.RecoverAt, Action: heal, Target: victim}}
	for i := 1; i <= sc.Reloads; i++ {
		faults = append(faults, harness.Fault{At: time.Duration(i) * sc.reloadGap(), Action: harness.Reload})
	}
	return harness.NewSchedule(faults, sc.Backends, sc.Duration)
}

// The proxy's affinity cookie and its one pool in the generated config.
const (
	stickyCookie = "AFFINITY"
	poolName     = "web"
)

// configYAML returns the proxy config of sc: listen on p.Listen with the
// admin listener on p.Admin (the harness reads its /status), a cookie pool
// over p.Backends, with active checks, passive ejection and the default
// retries. The first backend has weight 2 in the odd revisions of the
// config, 1 in the others, so that each reload changes something.
func (sc Scenario) configYAML(p harness.ProxyConfig) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Generated by the chaos harness.\nlisten: %s\nadmin: %s\n", p.Listen, p.Admin)
	fmt.Fprintf(&b, "timeouts:\n  connect: %v\n  response_header: %v\n", sc.ConnectTimeout, sc.ResponseHeaderTimeout)
	fmt.Fprintf(&b, "pools:\n  %s:\n    balancer:\n      type: cookie\n      cookie: {name: %s}\n    backends:\n", poolName, stickyCookie)
	for i, m := range p.Backends {
		w := 1
		if i == 0 {
			w = 1 + p.Revision%2
		}
		fmt.Fprintf(&b, "      - {url: \"http://%s\", name: %s, weight: %d}\n", m.Addr, m.Name, w)
	}
	fmt.Fprintf(&b, "    health_check:\n      path: /healthz\n      interval: %v\n      timeout: %v\n      rise: %d\n      fall: %d\n",
		sc.HealthInterval, sc.HealthTimeout, sc.Rise, sc.Fall)
	fmt.Fprintf(&b, "    passive:\n      failures: %d\n      eject: %v\n", sc.PassiveFailures, sc.PassiveEject)
	return b.String()
}
