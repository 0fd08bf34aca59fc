package soak

import (
	"context"
	"os"
	"runtime"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/affinityproxy/affinity/internal/testutil"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.Cleanup(func(int) { testutil.RemoveAffinityBinary() }))
}

// The soak's verdict: flat figures after the warm-up are no leak; any
// that keeps growing past its bound is one.
func TestLeaks(t *testing.T) {
	flat := func(at int) Sample {
		return Sample{At: time.Duration(at) * time.Second, RSS: 40 << 20, FDs: 30, Goroutines: 50}
	}
	tests := []struct {
		name  string
		edit  func(i int, s *Sample)
		leaks int
	}{
		{name: "flat", edit: func(int, *Sample) {}},
		{name: "noise within the bounds", edit: func(i int, s *Sample) { s.RSS += int64(i%3) << 20; s.FDs += i % 5 }},
		{name: "descriptors grow", edit: func(i int, s *Sample) { s.FDs += 10 * i }, leaks: 2},
		{name: "goroutines grow", edit: func(i int, s *Sample) { s.Goroutines += 20 * i }, leaks: 4},
		{name: "memory grows", edit: func(i int, s *Sample) { s.RSS += int64(i) * 8 << 20 }, leaks: 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var samples []Sample
			for i := range 10 {
				s := flat(i + 1)
				tt.edit(i, &s)
				samples = append(samples, s)
			}
			if got := leaks(samples, 2*time.Second); len(got) != tt.leaks {
				t.Errorf("leaks %q, want %d", got, tt.leaks)
			}
		})
	}
}

// A short soak against the built binary: 15 s at 100 requests per second
// with a reload every 2 s and a backend killed every 6 s, back 1 s later,
// on a plain HTTP listener, then on a TLS one spoken to over HTTP/1.1 and
// HTTP/2. No request fails and nothing grows past its bound. SOAK=10m
// (make soak) runs the scenario for that long, each way;
// SOAK_BIN names the binary.
func TestSoak(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the harness runs processes on Linux only")
	}
	sc := Scenario{Duration: 15 * time.Second, Rate: 100, SampleEvery: time.Second, ReloadEvery: 2 * time.Second,
		KillEvery: 6 * time.Second, WarmUp: 5 * time.Second}
	if v := os.Getenv("SOAK"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("SOAK=%q: %v", v, err)
		}
		sc = Scenario{Duration: d}
	} else if testing.Short() {
		t.Skip("two soaks of 15 s")
	}
	sc.Binary = os.Getenv("SOAK_BIN")
	if sc.Binary == "" {
		sc.Binary = testutil.AffinityBinary(t)
	}
	for _, tls := range []bool{false, true} {
		name := "http"
		if tls {
			name = "https+h2"
		}
		t.Run(name, func(t *testing.T) {
			sc := sc
			sc.TLS, sc.Dir = tls, t.TempDir()
			res, err := Run(context.Background(), sc)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("\n%s", res.Table())
			if res.Failed != 0 {
				t.Errorf("%d of %d requests failed, want none", res.Failed, res.Requests)
			}
			if tls && res.HTTP2 == 0 {
				t.Errorf("no request over HTTP/2, want half the keep-alive clients'")
			}
			if res.Kills == 0 || res.Reloads == 0 {
				t.Errorf("%d kills and %d reloads, want some of each", res.Kills, res.Reloads)
			}
			for _, l := range res.Leaks {
				t.Error(l)
			}
		})
	}
}
