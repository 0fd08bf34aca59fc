// Package deploy runs deploys of real backends under a load of users that
// come and go, and tells what they cost the users: the runs behind `make
// deploy`, and their short forms in the tests.
//
// A run starts demo backends (`affinity backend`, sessions in memory) and
// the proxy in front of them (internal/harness), and keeps a number of users
// busy: each a new browser with its own cookie jar that logs in to the demo
// shop, adds a few items, looks at its cart, checks out and logs out, with a
// pause between requests, then makes room for the next user. Meanwhile it
// deploys backends one after the other, by one of two methods:
//
//   - drain: `affinity ctl drain POOL BACKEND --wait`, then kill the
//     backend (SIGKILL, so that nothing it still held could be saved);
//     with Restart, start it again and `affinity ctl ready`.
//   - remove: take the backend out of the proxy's config (a reload), then
//     stop it, as a deploy without a drain state has to; with Restart,
//     start it again and put it back in the config.
//
// A user whose session its backend no longer knows (the shop answers 409)
// has lost its session; any other failed request is an error.
//
// Rollout is the deploy itself, apart from the users: `affinity
// experiment`'s rolling-deploy preset runs it under its own load.
package deploy

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/affinityproxy/affinity/internal/harness"
)

// Method is how a run takes a backend out.
type Method string

// The methods of a deploy.
const (
	Drain  Method = "drain"  // ctl drain --wait, then kill
	Remove Method = "remove" // out of the config, then stop
)

// pool is the name of the proxy's pool in a run's config.
const pool = "web"

// Run describes one run. The zero values of the durations are not usable:
// set them all.
type Run struct {
	// Binary is the affinity binary, for the backends, the proxy and ctl.
	Binary string
	// Dir receives the config and the processes' logs.
	Dir string
	// Balancer is the pool's: cookie, or learn on the shop's session
	// cookie.
	Balancer string
	Method   Method
	// Backends is how many backends the pool has, b1..bN; Targets are
	// those deployed, one after the other.
	Backends int
	Targets  []string
	// Restart starts each target again once it is down, and puts it back
	// in service; without it, a target stays down.
	Restart bool
	// Users is how many users are in the shop at any time; each adds
	// Items[0] to Items[1] items, and waits Think[0] to Think[1] before
	// each request but its first.
	Users int
	Items [2]int
	Think [2]time.Duration
	// Idle and Timeout are ctl drain's --idle and --timeout.
	Idle, Timeout time.Duration
	// Before is how long the users shop before the first deploy; After,
	// how long after the last one before new users stop coming.
	Before, After time.Duration
	// Seed makes the users' choices the same from run to run.
	Seed uint64
}

// Result is what a run measured.
type Result struct {
	Run Run `json:"-"`
	// Users counts the users who came; Requests their requests.
	Users    int `json:"users"`
	Requests int `json:"requests"`
	// Errors counts the requests that failed otherwise than by a lost
	// session: no answer, or a status other than the shop's.
	Errors int `json:"errors"`
	// Lost counts the users whose session their backend no longer knew.
	Lost int `json:"sessions_lost"`
	// AtRisk counts the users who had their session on a target when its
	// deploy began, and had not finished, or logged in there after, until
	// it was back: those a deploy may cost.
	AtRisk int `json:"at_risk"`
	// NewOnTarget counts the users who logged in on a target after its
	// drain began (after ctl had set the state): 0 is the drain's promise.
	NewOnTarget int `json:"new_on_target"`
	// Deploys tells each target's deploy.
	Deploys []Step `json:"deploys"`
	// Failures lists the first few errors, for a report.
	Failures []string `json:"failures,omitempty"`
}

// Execute performs r and returns what it measured. It fails when the
// cluster cannot be run as asked, or a drain does not end in r.Timeout.
func (r Run) Execute(ctx context.Context) (Result, error) {
	c := &harness.Cluster{Exe: r.Binary, Dir: r.Dir, Pool: pool, Config: r.config}
	defer func() { _ = c.Close() }()
	if err := c.Start(ctx, r.Backends); err != nil {
		return Result{}, err
	}
	shop := newShop(r, "http://"+c.ProxyAddr())
	defer shop.close()
	start := time.Now()
	loadCtx, stopLoad := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for slot := range r.Users {
		wg.Go(func() { shop.keepBusy(loadCtx, slot) })
	}
	res := Result{Run: r}
	err := r.deploy(ctx, c, shop, start, &res)
	if err == nil {
		err = sleep(ctx, r.After)
	}
	stopLoad()
	wg.Wait()
	shop.tally(&res)
	return res, err
}

// deploy deploys the targets one after the other, after r.Before, telling
// the shop who is at risk and when each target takes no new user.
func (r Run) deploy(ctx context.Context, c *harness.Cluster, shop *shop, start time.Time, res *Result) error {
	if err := sleep(ctx, r.Before); err != nil {
		return err
	}
	ro := Rollout{
		Binary: r.Binary, Pool: pool, Method: r.Method, Targets: r.Targets, Restart: r.Restart,
		Idle: r.Idle, Timeout: r.Timeout,
		Out: shop.atRisk, Closed: shop.closeTo, Back: shop.reopen,
	}
	steps, err := ro.Run(ctx, c, start)
	res.Deploys = steps
	return err
}

// config renders the proxy's config: the pool's balancer, health checks
// that notice a killed backend within a second, and the admin listener
// ctl talks to.
func (r Run) config(p harness.ProxyConfig) string {
	var b strings.Builder
	fmt.Fprintf(&b, "listen: %s\nadmin: %s\nlog: {level: info}\npools:\n  %s:\n", p.Listen, p.Admin, pool)
	switch r.Balancer {
	case "learn":
		fmt.Fprintf(&b, "    balancer: {type: learn, learn: {cookie: %s}}\n", sessionCookie)
	default:
		fmt.Fprintf(&b, "    balancer: {type: %s}\n", r.Balancer)
	}
	b.WriteString("    health_check: {interval: 250ms, timeout: 200ms, fall: 2, rise: 1}\n    backends:\n")
	for _, m := range p.Backends {
		fmt.Fprintf(&b, "      - {url: \"http://%s\", name: %s}\n", m.Addr, m.Name)
	}
	return b.String()
}

// sleep waits d, or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	return harness.WallClock{}.SleepUntil(ctx, time.Now().Add(d))
}

// String names r in a table: balancer, method and targets.
func (r Run) String() string {
	s := r.Balancer + ", " + string(r.Method) + " " + strings.Join(r.Targets, ", ")
	if r.Restart {
		s += " (restarted)"
	}
	return s + ", " + strconv.Itoa(r.Users) + " users at a time"
}
