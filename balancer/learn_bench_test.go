package balancer

import (
	"net/http"
	"runtime"
	"strconv"
	"testing"
	"time"
)

// learnBenchEntries is the table size the issue asks to measure at.
const learnBenchEntries = 1_000_000

// fillLearn learns n sessions "s0".."s<n-1>" over the backends of s,
// straight into the table: the cost measured is the table's, not that of
// formatting Set-Cookie headers.
func fillLearn(p *learnPolicy, s Set, n int) {
	buf := make([]byte, 0, 16)
	for i := range n {
		buf = strconv.AppendInt(append(buf[:0], 's'), int64(i), 10)
		p.tab().put(p.tab().key(string(buf)), uint32(i%len(s.All)), 0)
	}
}

// BenchmarkLearnLookup measures picks against a full table of a million
// sessions: known sessions (each pick is a hash, a shard lock and a map
// lookup), unknown ones and requests without the cookie (the rotation), and
// known sessions from every core at once (shard contention).
func BenchmarkLearnLookup(b *testing.B) {
	s := benchPool(100)
	p, _ := newLearn(b, learnOpts(learnBenchEntries, time.Hour))
	pk := p.Build(s)
	fillLearn(p, s, learnBenchEntries)
	// Spread over the table, so that lookups miss the CPU caches as real
	// ones do.
	known := benchRequests(func(i int, r *http.Request) {
		r.Header.Set("Cookie", "_ga=GA1.2.3; JSESSIONID=s"+strconv.Itoa(i*977)+"; lang=en")
	})
	unknown := benchRequests(func(i int, r *http.Request) {
		r.Header.Set("Cookie", "_ga=GA1.2.3; JSESSIONID=x"+strconv.Itoa(i)+"; lang=en")
	})
	none := benchRequests(func(_ int, r *http.Request) { r.Header.Set("Cookie", "_ga=GA1.2.3; lang=en") })
	b.Run("kept/1M", func(b *testing.B) { runPicks(b, pk, known) })
	b.Run("unknown/1M", func(b *testing.B) { runPicks(b, pk, unknown) })
	b.Run("no-cookie/1M", func(b *testing.B) { runPicks(b, pk, none) })
	b.Run("kept-parallel/1M", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				if _, err := pk.Pick(known[i&(len(known)-1)]); err != nil {
					b.Error(err)
					return
				}
				i++
			}
		})
	})
}

// BenchmarkLearn measures picks of known sessions at each pool size, with
// a table of 10,000 sessions: the lookup does not depend on the pool.
func BenchmarkLearn(b *testing.B) {
	const sessions = 10_000
	known := benchRequests(func(i int, r *http.Request) {
		r.Header.Set("Cookie", "_ga=GA1.2.3; JSESSIONID=s"+strconv.Itoa(i*7)+"; lang=en")
	})
	for _, n := range benchSizes {
		s := benchPool(n)
		p, _ := newLearn(b, learnOpts(sessions, time.Hour))
		pk := p.Build(s)
		fillLearn(p, s, sessions)
		b.Run("kept/n="+strconv.Itoa(n), func(b *testing.B) { runPicks(b, pk, known) })
	}
}

// BenchmarkLearnLearn measures what a response costs the proxy: one that
// sets the session cookie among others, and one without Set-Cookie.
func BenchmarkLearnLearn(b *testing.B) {
	s := benchPool(100)
	p, _ := newLearn(b, learnOpts(learnBenchEntries, time.Hour))
	l := p.Build(s).(Learner)
	headers := make([]http.Header, 1024)
	for i := range headers {
		headers[i] = setCookies("theme=dark; Path=/", "JSESSIONID=s"+strconv.Itoa(i)+"; Path=/; HttpOnly; SameSite=Lax")
	}
	r := cookieRequest("_ga=GA1.2.3; lang=en")
	b.Run("set-cookie", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			l.Learn(r, s.All[i%len(s.All)], headers[i&(len(headers)-1)])
			i++
		}
	})
	plain := http.Header{"Content-Type": {"text/html"}}
	b.Run("no-set-cookie", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			l.Learn(r, s.All[0], plain)
		}
	})
}

// BenchmarkLearnMemory reports the heap a table of a million sessions
// takes, per entry, measured from runtime.MemStats around filling it.
func BenchmarkLearnMemory(b *testing.B) {
	s := benchPool(100)
	var perEntry float64
	for b.Loop() {
		before := heapInUse()
		p, err := New("learn", learnOpts(learnBenchEntries, time.Hour))
		if err != nil {
			b.Fatal(err)
		}
		lp := p.(*learnPolicy)
		fillLearn(lp, s, learnBenchEntries)
		after := heapInUse()
		// A little under a million: the shards fill unevenly, and the
		// fullest evicts before the table as a whole is full.
		perEntry = float64(after-before) / float64(lp.Len())
		runtime.KeepAlive(lp)
	}
	b.ReportMetric(perEntry, "bytes/entry")
}

// heapInUse returns the live heap after a full collection.
func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}
