package experiment

import (
	"hash/fnv"
	"net/http"
	"sync/atomic"

	"github.com/affinityproxy/affinity/balancer"
)

// ModuloHash is the name of the naive hash baseline of claim 8.
//
// It is registered here, not in package balancer, because it exists only to
// be measured against consistent hashing: no one should choose it. The
// affinity binary links this package for `affinity experiment`, and the proxy
// it starts as a child process is that same binary, so `serve` and
// `validate` accept the name too; docs/configuration.md does not list it.
const ModuloHash = "modulo-hash"

func init() {
	balancer.Register(ModuloHash, func(balancer.Options) (balancer.Policy, error) {
		return &moduloPolicy{}, nil
	})
}

// moduloPolicy sends a request to backend hash(X-User) mod n of the n
// available backends, in config order: what a hand-rolled sharding does, and
// why adding one server moves most users.
type moduloPolicy struct {
	next atomic.Uint64 // rotation for requests without X-User
}

// Build captures the available backends.
func (p *moduloPolicy) Build(s balancer.Set) balancer.Picker {
	return moduloPicker{backends: s.Available, next: &p.next}
}

type moduloPicker struct {
	backends []*balancer.Backend
	next     *atomic.Uint64
}

// Pick hashes X-User; a request without it goes to the next backend in turn.
func (p moduloPicker) Pick(r *http.Request) (balancer.Pick, error) {
	n := uint64(len(p.backends))
	if n == 0 {
		return balancer.Pick{}, balancer.ErrNoBackend
	}
	key := r.Header.Get(headerUser)
	if key == "" {
		return balancer.Pick{Backend: p.backends[(p.next.Add(1)-1)%n]}, nil
	}
	h := fnv.New64a()
	_, _ = h.Write([]byte(key))
	return balancer.Pick{Backend: p.backends[h.Sum64()%n], Sticky: balancer.StickyKept}, nil
}
