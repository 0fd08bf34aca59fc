package gctune

import (
	"runtime"
	"runtime/metrics"
	"testing"
	"time"
)

func TestPercent(t *testing.T) {
	const mib = 1 << 20
	tests := []struct {
		live uint64
		want int
	}{
		{0, 400},
		{1 * mib, 400},
		{16 * mib, 400},
		{20 * mib, 320},
		{32 * mib, 200},
		{64 * mib, 100},
		{65 * mib, 100},
		{4 << 30, 100},
	}
	for _, tt := range tests {
		if got := Percent(tt.live); got != tt.want {
			t.Errorf("Percent(%d MiB) = %d, want %d", tt.live/mib, got, tt.want)
		}
	}
}

func gogc() int {
	s := []metrics.Sample{{Name: "/gc/gogc:percent"}}
	metrics.Read(s)
	return int(s[0].Value.Uint64())
}

func liveHeap() uint64 {
	s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// sink keeps what the test holds live reachable.
var sink [][]byte

// TestStart: after collections, GOGC follows the live heap, grown here
// past Headroom/4 so that the percent moves off MaxPercent; stop puts back
// the GOGC from before, and later collections leave it.
func TestStart(t *testing.T) {
	before := gogc()
	stop := Start()
	defer stop()
	if got := gogc(); got != MaxPercent {
		t.Fatalf("GOGC after Start = %d, want %d", got, MaxPercent)
	}
	for range 40 { // 40 MiB live: Percent is 160
		sink = append(sink, make([]byte, 1<<20))
	}
	defer func() { sink = nil }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		runtime.GC()
		want := Percent(liveHeap())
		if want == MaxPercent {
			t.Fatalf("live heap %d B: Percent %d, the test needs a larger heap", liveHeap(), want)
		}
		if got := gogc(); got == want {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("GOGC = %d after collections of a live heap of %d B, want %d", got, liveHeap(), want)
		}
		time.Sleep(10 * time.Millisecond) // the cleanup runs on its own goroutine
	}
	stop()
	if got := gogc(); got != before {
		t.Fatalf("GOGC after stop = %d, want %d as before Start", got, before)
	}
	sink = nil
	for range 3 {
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
	if got := gogc(); got != before {
		t.Errorf("GOGC = %d after collections past stop, want %d", got, before)
	}
}
