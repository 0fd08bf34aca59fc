// Package gctune sets the garbage collector's GOGC after each collection
// from the heap that collection found live.
//
// A proxy's live heap is small (connections, tables, a few MB) while it
// allocates for every request, so Go's default, GOGC=100, collects each
// time the heap doubles from a few MB: often, and every collection walks
// the stacks and the heap at a cost per cycle, not per byte freed. A
// larger GOGC would cut that, but would also let a heap that is large
// (many connections held open) grow to several times its size. Percent
// takes the middle: the heap may grow by Headroom before the next
// collection, and by no less than its live size (Go's default, so a large
// heap is collected as Go would) and no more than four times it.
package gctune

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
)

const (
	// Headroom is how much the heap may grow between collections while
	// it is small. Over Go's default it costs at most 48 MiB, when
	// 16 MiB are live.
	Headroom = 64 << 20
	// MinPercent is Go's default, for a live heap of Headroom or more.
	MinPercent = 100
	// MaxPercent bounds the growth of a small heap to four times its
	// live size, for a live heap of Headroom/4 or less.
	MaxPercent = 400
)

// Percent returns the GOGC for a heap of which live bytes are live.
func Percent(live uint64) int {
	if live == 0 {
		return MaxPercent
	}
	return int(min(max(Headroom*100/live, MinPercent), MaxPercent))
}

// tuner sets GOGC from a cleanup that runs after each collection: the
// cleanup of a sentinel allocated, unreachable, by the cleanup before it.
type tuner struct {
	mu      sync.Mutex
	stopped bool
	prev    int // GOGC before Start, put back by stop
	percent int // GOGC set last
	live    []metrics.Sample
}

// sentinel has a pointer so that it is not a tiny allocation, whose
// cleanup might not run while another object shares its block.
type sentinel struct{ _ *byte }

// Start tunes GOGC after every collection until the stop it returns is
// called, which puts back the GOGC there was before. Until the first
// collection GOGC is MaxPercent, as for any heap just started.
func Start() (stop func()) {
	t := &tuner{percent: MaxPercent, live: []metrics.Sample{{Name: "/gc/heap/live:bytes"}}}
	t.prev = debug.SetGCPercent(MaxPercent)
	t.arm()
	return t.stop
}

func (t *tuner) arm() {
	runtime.AddCleanup(new(sentinel), (*tuner).collected, t)
}

// collected runs after a collection found the last sentinel unreachable.
func (t *tuner) collected() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return
	}
	metrics.Read(t.live)
	if p := Percent(t.live[0].Value.Uint64()); p != t.percent {
		debug.SetGCPercent(p)
		t.percent = p
	}
	t.arm()
}

func (t *tuner) stop() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.stopped {
		t.stopped = true
		debug.SetGCPercent(t.prev)
	}
}
