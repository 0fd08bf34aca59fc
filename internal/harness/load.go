package harness

import (
	"context"
	"errors"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Load is an open-loop load: Rate arrivals per second, whether or not
// earlier ones were answered, for Duration, dealt to Users virtual users.
// A stalled server then shows as failures and latency, not as fewer
// requests sent.
type Load struct {
	Users    int
	Rate     float64
	Duration time.Duration
	// Seed deals the arrivals: the same seed deals the same users the same
	// arrivals in every run.
	Seed uint64
	// Skew, above 0, deals each arrival to user i with a chance in
	// proportion to 1/(i+1)^Skew (Zipf's law), so that a few users send
	// most requests. At 0 the arrivals are dealt in rounds that visit every
	// user once, in an order shuffled afresh for each round.
	Skew float64
	// Periodic deals the rounds in user order instead, arrival k to user
	// k mod Users, so that each user's arrivals come exactly Users/Rate
	// apart, as a client polling on a timer: no two of a user's requests
	// start close together unless the answers are slow.
	Periodic bool
	// Overlap sends an arrival while its user's previous request is still
	// in flight, as a browser with several tabs would. Without it the
	// arrival is skipped and counted, so that a slow server meets one
	// request per user instead of a pile-up.
	Overlap bool
}

// Arrival is one slot of a Load: the K-th arrival, due at Due, for User.
type Arrival struct {
	K, User int
	Due     time.Time
}

// Arrivals returns how many arrivals l has: slot k is due at k/Rate from
// the start, for every k/Rate before Duration.
func (l Load) Arrivals() int {
	if !(l.Rate > 0) || l.Duration <= 0 {
		return 0
	}
	n := int(l.Rate * l.Duration.Seconds())
	// The float product may land a slot either side of the end; the
	// offsets pace computes decide.
	for n > 0 && l.offset(n-1) >= l.Duration {
		n--
	}
	for l.offset(n) < l.Duration {
		n++
	}
	return n
}

// offset is when slot k is due, from the start.
func (l Load) offset(k int) time.Duration {
	return time.Duration(float64(k) * float64(time.Second) / l.Rate)
}

// Run plays l from start: for each arrival it calls send in a goroutine of
// its own, and returns once every arrival is dealt and every send has
// returned, with the number of arrivals sent and skipped (a busy user's,
// without Overlap). A slot already due is sent at once, however late, so
// that a stall of the generator shows as latency (measured from the due
// time) instead of as fewer requests. Run stops dealing early only when
// ctx ends.
func (l Load) Run(ctx context.Context, c Clock, start time.Time, send func(context.Context, Arrival)) (sent, skipped int) {
	if l.Users < 1 {
		return 0, 0
	}
	busy := make([]atomic.Bool, l.Users)
	deal := l.dealer()
	var wg sync.WaitGroup
	n := l.Arrivals()
	for k := range n {
		due := start.Add(l.offset(k))
		if c.SleepUntil(ctx, due) != nil {
			break
		}
		a := Arrival{K: k, User: deal(k), Due: due}
		if !l.Overlap && !busy[a.User].CompareAndSwap(false, true) {
			skipped++
			continue
		}
		sent++
		wg.Go(func() {
			if !l.Overlap {
				defer busy[a.User].Store(false)
			}
			send(ctx, a)
		})
	}
	wg.Wait()
	return sent, skipped
}

// dealer returns the function that names the user of arrival k. Calls come
// with k increasing, from one goroutine.
func (l Load) dealer() func(k int) int {
	if l.Skew > 0 {
		// Cumulative weights: user i takes the interval of width
		// 1/(i+1)^Skew. The stream id's top bits keep this stream apart
		// from the rounds' and from the users' own streams.
		cum := make([]float64, l.Users)
		total := 0.0
		for i := range cum {
			total += math.Pow(float64(i+1), -l.Skew)
			cum[i] = total
		}
		rng := rand.New(rand.NewPCG(l.Seed, 3<<62))
		return func(int) int {
			i, _ := slices.BinarySearch(cum, rng.Float64()*total)
			return min(i, l.Users-1)
		}
	}
	if l.Periodic {
		return func(k int) int { return k % l.Users }
	}
	// A fixed order would keep the same users in lockstep with a
	// round-robin balancer (with as many users as a multiple of the
	// backends, a user would hit the same backend every time); a shuffled
	// one does not, and the same seed still deals the same way.
	round, perm := -1, []int(nil)
	return func(k int) int {
		if r := k / l.Users; r != round {
			round = r
			perm = rand.New(rand.NewPCG(l.Seed, uint64(r)|1<<63)).Perm(l.Users)
		}
		return perm[k%l.Users]
	}
}

// NewTransport returns a transport for a load's clients to share: up to
// idle kept-alive connections, so that a steady load reuses them instead of
// churning through ports, and no proxy from the environment.
func NewTransport(idle int) *http.Transport {
	return &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
		MaxIdleConns:        idle,
		MaxIdleConnsPerHost: idle,
		IdleConnTimeout:     30 * time.Second,
		DisableCompression:  true,
	}
}

// NewClient returns a client over tr with a fresh cookie jar, as a new
// browser: it keeps what the proxy and the app set and sends it back. It
// follows no redirect (a load counts what it is answered) and gives up on
// a request after timeout (0: never).
func NewClient(tr http.RoundTripper, timeout time.Duration) *http.Client {
	// cookiejar.New fails only on options it is not given.
	jar, _ := cookiejar.New(nil)
	return &http.Client{
		Transport:     tr,
		Jar:           jar,
		Timeout:       timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// CookieHeader returns the Cookie header a client with jar sends to u: its
// cookies' name=value pairs joined by "; ", as net/http writes them.
func CookieHeader(jar http.CookieJar, u *url.URL) string {
	if jar == nil {
		return ""
	}
	cs := jar.Cookies(u)
	parts := make([]string, len(cs))
	for i, c := range cs {
		parts[i] = c.Name + "=" + c.Value
	}
	return strings.Join(parts, "; ")
}

// Kinds of a request that got no complete response.
const (
	KindTimeout    = "timeout"
	KindConnection = "connection"
)

// TransportKind names a request's error: KindTimeout for the client's
// deadline, KindConnection for the rest (refused, reset, closed early).
func TransportKind(err error) string {
	var ue *url.Error
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) ||
		(errors.As(err, &ue) && ue.Timeout()) || (errors.As(err, &ne) && ne.Timeout()) {
		return KindTimeout
	}
	return KindConnection
}

// Percentile returns the p-th percentile (0 < p <= 100) of sorted by the
// nearest-rank method: the smallest value with at least p% of the values at
// or below it. It is 0 for no values.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	return sorted[min(max(rank, 1), len(sorted))-1]
}
