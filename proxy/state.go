package proxy

import (
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/affinityproxy/affinity/config"
)

// adminState is a backend's administrative state (config.State), which an
// operator sets apart from its health: in the config, or at run time
// through the admin API.
type adminState struct {
	state config.State
	// configured is the backends[].state of the configuration in use,
	// which a reload compares with its own to decide whether a state set
	// at run time holds.
	configured config.State
	// setBy names who set state at run time: the address of the API
	// client; empty while state is the configuration's.
	setBy string
	since time.Time // when the backend entered state
}

// newAdminState is the state of a backend configured with st, as of now.
func newAdminState(st config.State) adminState {
	if st == "" {
		st = config.StateReady
	}
	return adminState{state: st, configured: st, since: time.Now()}
}

// source tells where the state comes from: "config", or "api" for a state
// set at run time.
func (a adminState) source() string {
	if a.setBy != "" {
		return "api"
	}
	return "config"
}

// setState sets the administrative state of pool/backend to st at run time
// (pool.setState), in the configuration in service, and returns the pool
// and the backend's view. It holds reloadMu, so that no reload replaces
// that configuration meanwhile: a write lands before a reload, which
// carries it over, or on the configuration the reload put in service, and
// once it returns the state is in effect.
func (s *Server) setState(pool, backend string, st config.State, client string) (*pool, backendView, error) {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	p := s.state.Load().pool(pool)
	if p == nil {
		return nil, backendView{}, fmt.Errorf("%w %q", errUnknownPool, pool)
	}
	v, err := p.setState(backend, st, client)
	return p, v, err
}

// setState sets the administrative state of backend id to st at run time,
// on behalf of client (an address, for the log), and rebuilds the snapshot:
// the next request sees it. It returns the backend's view.
func (p *pool) setState(id string, st config.State, client string) (backendView, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	i := p.indexOf(id)
	if i < 0 {
		return backendView{}, fmt.Errorf("pool %q: %w %q", p.name, errUnknownBackend, id)
	}
	m := &p.members[i]
	was := m.state
	m.state, m.setBy = st, client
	if was != st {
		m.since = time.Now()
	}
	n := p.rebuildLocked()
	p.log.Info("backend state set", zap.String("pool", p.name), zap.String("backend", id),
		zap.String("state", string(st)), zap.String("was", string(was)), zap.String("client", client),
		zap.Int("available", n))
	if n == 0 {
		p.log.Warn("pool has no available backend", zap.String("pool", p.name))
	}
	return p.viewLocked(i), nil
}

// takeOverState carries the administrative state of a backend from prev,
// its member in the configuration a reload replaces, to m, and logs the
// outcome when the two configurations or the run time disagree. A state set
// at run time holds while the configured state stays what it was; a
// reload that changes the configured state wins over it.
func (p *pool) takeOverState(id string, m *adminState, prev adminState) {
	log := func(msg string, fields ...zap.Field) {
		p.log.Info(msg, append([]zap.Field{zap.String("pool", p.name), zap.String("backend", id),
			zap.String("state", string(m.state))}, fields...)...)
	}
	switch {
	case prev.setBy != "" && prev.configured == m.configured:
		m.state, m.setBy, m.since = prev.state, prev.setBy, prev.since
		if m.state != m.configured {
			log("backend state set at run time kept over the reload", zap.String("configured", string(m.configured)))
		}
		return
	case prev.setBy != "":
		log("backend state changed by the reload, replacing the one set at run time",
			zap.String("was", string(prev.state)), zap.String("configured_was", string(prev.configured)))
	case prev.state != m.state:
		log("backend state changed by the reload", zap.String("was", string(prev.state)))
	}
	if prev.state == m.state {
		m.since = prev.since
	}
}
