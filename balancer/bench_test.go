package balancer

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
)

// benchSizes are the pool sizes every policy is measured at.
var benchSizes = []int{3, 100, 1000}

// benchPool returns n backends with mixed weights, counted in a Group.
func benchPool(n int) Set {
	g := &Group{}
	weights := make([]int, n)
	for i := range weights {
		weights[i] = 1 + i%3
	}
	bs := testBackends(g, weights...)
	return Set{All: bs, Available: bs, Group: g}
}

// benchRequests returns distinct requests, so that lookups do not all hit
// one cache line of the ring.
func benchRequests(f func(i int, r *http.Request)) []*http.Request {
	rs := make([]*http.Request, 1024)
	for i := range rs {
		rs[i] = httptest.NewRequest("GET", "/", nil)
		rs[i].RemoteAddr = fmt.Sprintf("10.0.%d.%d:40000", i/256, i%256)
		f(i, rs[i])
	}
	return rs
}

func runPicks(b *testing.B, p Picker, rs []*http.Request) {
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, err := p.Pick(rs[i&(len(rs)-1)]); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

func BenchmarkRoundRobin(b *testing.B) {
	rs := benchRequests(func(int, *http.Request) {})
	for _, n := range benchSizes {
		p := mustPolicy(b, "round-robin", Options{}).Build(benchPool(n))
		b.Run("n="+strconv.Itoa(n), func(b *testing.B) { runPicks(b, p, rs) })
	}
	// All goroutines share the rotation counter: this shows its cost
	// under contention.
	p := mustPolicy(b, "round-robin", Options{}).Build(benchPool(100))
	b.Run("parallel/n=100", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			r := rs[0]
			for pb.Next() {
				if _, err := p.Pick(r); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

func BenchmarkCookie(b *testing.B) {
	for _, n := range benchSizes {
		s := benchPool(n)
		p := mustPolicy(b, "cookie", cookieOpts()).Build(s)
		kept := benchRequests(func(i int, r *http.Request) {
			tok := hashToken(s.Available[i%n].ID)
			r.Header.Set("Cookie", "_ga=GA1.2.3; theme=dark; aff="+tok+"; lang=en")
		})
		fresh := benchRequests(func(_ int, r *http.Request) {
			r.Header.Set("Cookie", "_ga=GA1.2.3; theme=dark; lang=en")
		})
		b.Run("kept/n="+strconv.Itoa(n), func(b *testing.B) { runPicks(b, p, kept) })
		b.Run("new/n="+strconv.Itoa(n), func(b *testing.B) { runPicks(b, p, fresh) })
	}
}

func BenchmarkHash(b *testing.B) {
	header := benchRequests(func(i int, r *http.Request) { r.Header.Set("X-User", "user-"+strconv.Itoa(i)) })
	bounded := hashOpts("header:X-User")
	bounded.Hash.LoadFactor = 1.25
	tests := []struct {
		name string
		opts Options
		rs   []*http.Request
	}{
		{"header", hashOpts("header:X-User"), header},
		{"header-bounded", bounded, header},
		{"ip", hashOpts("ip"), header},
		{"query", hashOpts("query:user"), benchRequests(func(i int, r *http.Request) {
			r.URL.RawQuery = "page=2&user=u" + strconv.Itoa(i) + "&sort=asc"
		})},
		{"missing-key", hashOpts("header:X-Other"), header},
	}
	for _, tt := range tests {
		for _, n := range benchSizes {
			s := benchPool(n)
			p := mustPolicy(b, "consistent-hash", tt.opts).Build(s)
			// Some requests in flight, as under load, so the bounded walk
			// has work to do.
			for i, bk := range s.Available {
				for range i % 4 {
					bk.Begin()
				}
			}
			b.Run(tt.name+"/n="+strconv.Itoa(n), func(b *testing.B) { runPicks(b, p, tt.rs) })
		}
	}
}

// The request path must not allocate; benchmarks report it, this makes a
// regression fail the tests.
func TestPickDoesNotAllocate(t *testing.T) {
	s := benchPool(100)
	tok := hashToken(s.Available[7].ID)
	bounded := hashOpts("header:X-User")
	bounded.Hash.LoadFactor = 1.25
	keyed := httptest.NewRequest("GET", "/?user=u1", nil)
	keyed.Header.Set("X-User", "alice")
	keyed.Header.Set("Cookie", "a=1; aff="+tok+"; sid=s1")
	bare := httptest.NewRequest("GET", "/", nil)
	tests := []struct {
		name   string
		policy string
		opts   Options
		r      *http.Request
	}{
		{"round-robin", "round-robin", Options{}, bare},
		{"cookie kept", "cookie", cookieOpts(), keyed},
		{"cookie new", "cookie", cookieOpts(), bare},
		{"hash header", "consistent-hash", hashOpts("header:X-User"), keyed},
		{"hash bounded", "consistent-hash", bounded, keyed},
		{"hash ip", "consistent-hash", hashOpts("ip"), keyed},
		{"hash path", "consistent-hash", hashOpts("path"), keyed},
		{"hash cookie", "consistent-hash", hashOpts("cookie:sid"), keyed},
		{"hash query", "consistent-hash", hashOpts("query:user"), keyed},
		{"hash missing key", "consistent-hash", hashOpts("header:X-User"), bare},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := mustPolicy(t, tt.policy, tt.opts).Build(s)
			if n := testing.AllocsPerRun(100, func() { _, _ = p.Pick(tt.r) }); n != 0 {
				t.Errorf("%.1f allocations per pick, want 0", n)
			}
		})
	}
}
