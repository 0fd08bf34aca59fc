package proxy

import (
	"slices"
	"time"

	"github.com/affinityproxy/affinity/balancer"
)

// Slow start.
//
// A backend that starts taking new clients after serving nobody (it joined
// the pool, or came back from down, ejected or maint) warms up over the
// pool's slow_start: its share of new clients grows from a tenth of its
// weight to all of it, in the balancer's steps (balancer.Set.Warming). A
// backend that drained and is ready again served its pinned clients all
// along, and takes its full weight at once. The pool rebuilds its snapshot
// at each step, on a timer of its own.

// warmFloor is the fraction of its weight a warming backend starts at.
const warmFloor = 0.1

// warmLocked records which backends start serving, and returns the
// fraction of its weight each warming backend of avail takes as of now,
// nil when none warms; it schedules the rebuild of the next step. p.mu
// must be held.
func (p *pool) warmLocked(avail, draining []*balancer.Backend, now time.Time) map[*balancer.Backend]float64 {
	var warming map[*balancer.Backend]float64
	next := time.Duration(0)
	for i, b := range p.backends {
		m := &p.members[i]
		takes := slices.Contains(avail, b)
		switch {
		case !takes:
			m.warm = time.Time{}
		case !m.served && p.slowStart > 0:
			m.warm = now
		}
		m.served = takes || slices.Contains(draining, b)
		if m.warm.IsZero() {
			continue
		}
		f, step := warmth(now.Sub(m.warm), p.slowStart)
		if f >= 1 {
			m.warm = time.Time{}
			continue
		}
		if warming == nil {
			warming = map[*balancer.Backend]float64{}
		}
		warming[b] = f
		if next == 0 || step < next {
			next = step
		}
	}
	if p.ramp != nil {
		p.ramp.Stop()
		p.ramp = nil
	}
	if next > 0 && !p.stopped {
		p.ramp = time.AfterFunc(next, func() {
			p.mu.Lock()
			defer p.mu.Unlock()
			if !p.stopped {
				p.rebuildLocked()
			}
		})
	}
	return warming
}

// warmth returns the fraction of its weight a backend takes after
// warming for elapsed out of window, rounded down to a step, and the time
// until the next step.
func warmth(elapsed, window time.Duration) (float64, time.Duration) {
	if elapsed >= window {
		return 1, 0
	}
	exact := warmFloor + (1-warmFloor)*float64(elapsed)/float64(window)
	// The epsilon keeps a point on a step, which floating point may put
	// a hair below it, on that step.
	step := int(exact*balancer.WarmSteps+1e-9) + 1
	// When the line reaches the next step.
	at := time.Duration((float64(step)/balancer.WarmSteps - warmFloor) / (1 - warmFloor) * float64(window))
	return float64(step-1) / balancer.WarmSteps, max(at-elapsed, time.Millisecond)
}

// warmingOf returns the fraction of its weight m takes new clients by as
// of now while it warms, 0 when it takes all of it. p.mu must be held.
func (p *pool) warmingOf(m *member, now time.Time) float64 {
	if m.warm.IsZero() {
		return 0
	}
	if f, _ := warmth(now.Sub(m.warm), p.slowStart); f < 1 {
		return f
	}
	return 0
}
