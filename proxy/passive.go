package proxy

import (
	"math"
	"slices"
	"time"

	"go.uber.org/zap"

	"github.com/affinityproxy/affinity/balancer"
	"github.com/affinityproxy/affinity/config"
)

// passive is a pool's passive health: real traffic's failures eject a
// backend for a while. The request path only touches the backend's atomic
// failure count; the pool's mutex is taken when a run of failures reaches
// the threshold, and when a backend that had failed answers well again.
type passive struct {
	failures int32         // consecutive failures that eject
	eject    time.Duration // first ejection; doubled on each repeat
	maxEject time.Duration // cap on the doubling
	// onStatus has bit s set when response status s counts as a failure;
	// a bitmap makes the check on every response two loads.
	onStatus [(maxStatus + 63) / 64]uint64
}

// maxStatus bounds the statuses on_status may name (config allows 100-599).
const maxStatus = 600

// newPassive returns c made ready for the request path, or nil when c is.
func newPassive(c *config.Passive) *passive {
	if c == nil {
		return nil
	}
	pv := &passive{
		failures: int32(min(c.Failures, math.MaxInt32)),
		eject:    c.Eject,
		maxEject: c.MaxEject,
	}
	for _, s := range c.OnStatus {
		if s >= 0 && s < maxStatus {
			pv.onStatus[s/64] |= 1 << (s % 64)
		}
	}
	return pv
}

// failStatus reports whether a response with this status counts as a
// failure.
func (pv *passive) failStatus(status int) bool {
	return status >= 0 && status < maxStatus && pv.onStatus[status/64]&(1<<(status%64)) != 0
}

// ejectTime is the length of a backend's ejection after it was ejected
// prior times in a row: eject doubled prior times, at most maxEject.
func ejectTime(eject, maxEject time.Duration, prior int) time.Duration {
	d := eject
	for range prior {
		if d >= maxEject/2 {
			return maxEject
		}
		d *= 2
	}
	return min(d, maxEject)
}

// answered records a response of b for passive health: a failure when its
// status is one of on_status, a success otherwise.
func (p *pool) answered(b *balancer.Backend, status int) {
	pv := p.passive
	if pv == nil {
		return
	}
	if pv.failStatus(status) {
		p.failed(b)
		return
	}
	if b.Succeed() > 0 {
		p.recovered(b)
	}
}

// failed records a failed exchange with b, ejecting b once the run of
// failures is long enough. A backend back from an ejection is on probation
// (see readmit): its next failure ejects it again.
func (p *pool) failed(b *balancer.Backend) {
	pv := p.passive
	if pv == nil {
		return
	}
	if n := b.Fail(); n >= pv.failures {
		p.eject(b, n)
	}
}

// eject takes b out of the available backends for its ejection time, unless
// no other backend would be left: the pool then answers from b rather than
// refuse every request.
func (p *pool) eject(b *balancer.Backend, fails int32) {
	p.mu.Lock()
	defer p.mu.Unlock()
	i := slices.Index(p.backends, b)
	if i < 0 || p.stopped {
		return
	}
	m := &p.members[i]
	if m.ejected {
		return
	}
	others := 0
	for j := range p.members {
		if o := &p.members[j]; j != i && o.takesNew() {
			others++
		}
	}
	if others == 0 {
		if !m.spared {
			m.spared = true
			p.log.Warn("not ejecting the last available backend", zap.String("pool", p.name),
				zap.String("backend", b.ID), zap.Int32("failures", fails))
		}
		return
	}
	d := ejectTime(p.passive.eject, p.passive.maxEject, m.ejections)
	m.ejections++
	m.ejected, m.spared = true, false
	m.timer, m.until = time.AfterFunc(d, func() { p.readmit(i) }), time.Now().Add(d)
	statsOf(b).ejected()
	n := p.rebuildLocked()
	p.log.Info("backend ejected", zap.String("pool", p.name), zap.String("backend", b.ID),
		zap.Int32("failures", fails), zap.Duration("for", d), zap.Int("ejections", m.ejections),
		zap.Int("available", n))
}

// readmit returns backend i to service when its ejection ends, on
// probation: its failure count is set to the threshold, so that its next
// failure ejects it again and its next success reaches recovered, whatever
// requests started before the ejection reported meanwhile.
func (p *pool) readmit(i int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	m := &p.members[i]
	if p.stopped || !m.ejected {
		return
	}
	m.ejected, m.timer = false, nil
	p.backends[i].SetFailures(p.passive.failures)
	n := p.rebuildLocked()
	p.log.Info("backend readmitted", zap.String("pool", p.name), zap.String("backend", p.backends[i].ID),
		zap.Int("ejections", m.ejections), zap.Int("available", n))
}

// recovered records that b answered well after failing: once it is back in
// service, its next ejection is as short as its first. A success while it
// is still ejected comes from a request started before, and proves nothing
// about the backend since.
func (p *pool) recovered(b *balancer.Backend) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if i := slices.Index(p.backends, b); i >= 0 && !p.members[i].ejected {
		p.members[i].ejections, p.members[i].spared = 0, false
	}
}
