package proxy

import (
	"errors"
	"fmt"
	"syscall"

	"go.uber.org/zap"
)

// errLocalResource marks a backend request that failed for want of a
// resource of the proxy's own host, not for anything the backend did.
var errLocalResource = errors.New("proxy out of a local resource")

// localResource reports whether err is the proxy's host running out of
// something a new connection needs: descriptors of the process (EMFILE)
// or of the system (ENFILE), or socket buffers (ENOBUFS). Such a failure
// says nothing of the backend: every other would fail alike. Blamed on
// it, one flood of clients took every healthy backend down by its checks
// and kept them down after the flood had passed.
func localResource(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) || errors.Is(err, syscall.ENOBUFS)
}

// localFailure records a backend request or health check of p that failed
// with err for want of a local resource; the first of a run of them is
// logged. It returns err marked with errLocalResource.
func (p *pool) localFailure(err error, check bool) error {
	if check {
		p.localChecks.Add(1)
	} else {
		p.localRequests.Add(1)
	}
	if p.starved.CompareAndSwap(false, true) {
		p.log.Warn("out of a local resource: backend requests and checks fail, and no backend is blamed",
			zap.String("pool", p.name), zap.Error(err))
	}
	return fmt.Errorf("%w: %w", errLocalResource, err)
}

// connected ends a run of local failures of p, after a backend request or
// check got its connection. On the common path it is one atomic load of a
// value nobody writes.
func (p *pool) connected() {
	if p.starved.Load() && p.starved.CompareAndSwap(true, false) {
		p.log.Info("local resources available again", zap.String("pool", p.name))
	}
}
