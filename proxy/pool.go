package proxy

import (
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"

	"go.uber.org/zap"

	"github.com/affinityproxy/affinity/balancer"
	"github.com/affinityproxy/affinity/config"
)

var (
	errUnknownPool    = errors.New("unknown pool")
	errDuplicatePool  = errors.New("duplicate pool")
	errBadBackend     = errors.New("invalid backend")
	errUnknownBackend = errors.New("unknown backend")
)

// pool is a config.Pool made live: its backends, the policy that picks among
// them, and the current Picker. Requests only load the Picker; health
// changes rebuild it under mu and swap it in, so picks never wait.
type pool struct {
	name     string
	kind     string // balancer type, for logs
	policy   balancer.Policy
	group    *balancer.Group
	backends []*balancer.Backend // every configured backend, config order
	log      *zap.Logger

	picker atomic.Pointer[balancer.Picker]
	// exhausted is set while picks fail, so that running out of backends
	// is logged once per episode rather than once per refused request.
	exhausted atomic.Bool

	mu   sync.Mutex // serialises Build, which a Policy needs
	down []bool     // parallel to backends; guarded by mu
}

// newPool creates the backends of pc and builds a first Picker with all of
// them available.
func newPool(pc *config.Pool, log *zap.Logger) (*pool, error) {
	policy, err := balancer.New(pc.Balancer.Type, pc.Balancer.Options)
	if err != nil {
		return nil, fmt.Errorf("pool %q: %w", pc.Name, err)
	}
	p := &pool{
		name:     pc.Name,
		kind:     pc.Balancer.Type,
		policy:   policy,
		group:    new(balancer.Group),
		backends: make([]*balancer.Backend, 0, len(pc.Backends)),
		down:     make([]bool, len(pc.Backends)),
		log:      log,
	}
	seen := make(map[string]bool, len(pc.Backends))
	for i, cb := range pc.Backends {
		if cb.URL == nil || (cb.URL.Scheme != "http" && cb.URL.Scheme != "https") || cb.URL.Host == "" {
			return nil, fmt.Errorf("pool %q: backend %d: %w: want an http:// or https:// URL with a host", pc.Name, i+1, errBadBackend)
		}
		id := cb.Name
		if id == "" {
			id = cb.URL.Host
		}
		if seen[id] {
			return nil, fmt.Errorf("pool %q: backend %q: %w: the id is used twice", pc.Name, id, errBadBackend)
		}
		seen[id] = true
		p.backends = append(p.backends, balancer.NewBackend(id, cb.URL, cb.Weight, p.group))
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rebuildLocked()
	return p, nil
}

// pick asks the current Picker for a backend.
func (p *pool) pick(r *http.Request) (balancer.Pick, error) {
	return (*p.picker.Load()).Pick(r)
}

// setAvailable marks the backend with the given id as able to take new
// requests or not, and rebuilds the Picker when that changes anything.
// Health checks call it; it is safe for concurrent use and never blocks a
// request.
func (p *pool) setAvailable(id string, up bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	i := p.indexLocked(id)
	if i < 0 {
		return fmt.Errorf("pool %q: %w %q", p.name, errUnknownBackend, id)
	}
	if p.down[i] == !up {
		return nil
	}
	p.down[i] = !up
	n := p.rebuildLocked()
	state := "up"
	if !up {
		state = "down"
	}
	p.log.Info("backend "+state, zap.String("pool", p.name), zap.String("backend", id),
		zap.Int("available", n), zap.Int("backends", len(p.backends)))
	if n == 0 {
		p.log.Warn("pool has no available backend", zap.String("pool", p.name))
	}
	return nil
}

func (p *pool) indexLocked(id string) int {
	for i, b := range p.backends {
		if b.ID == id {
			return i
		}
	}
	return -1
}

// rebuildLocked builds and publishes a Picker over the backends not marked
// down, returning how many those are.
func (p *pool) rebuildLocked() int {
	avail := make([]*balancer.Backend, 0, len(p.backends))
	for i, b := range p.backends {
		if !p.down[i] {
			avail = append(avail, b)
		}
	}
	pk := p.policy.Build(balancer.Set{All: p.backends, Available: avail, Group: p.group})
	p.picker.Store(&pk)
	return len(avail)
}

// refused records a failed pick. The first of a run of them is logged; the
// client gets a 503 each time.
func (p *pool) refused(err error) {
	if p.exhausted.CompareAndSwap(false, true) {
		p.log.Warn("no backend available, answering 503", zap.String("pool", p.name), zap.Error(err))
	}
}

// served records a successful pick, ending a run of failed ones. On the
// common path it is one atomic load of a value nobody writes.
func (p *pool) served() {
	if p.exhausted.Load() && p.exhausted.CompareAndSwap(true, false) {
		p.log.Info("backend available again", zap.String("pool", p.name))
	}
}
