package demoapp

import (
	"context"
	"fmt"

	lru "github.com/hashicorp/golang-lru/v2"
)

// MemoryStore keeps sessions in this process only: the stateful design that
// sticky routing exists for. A session is never loaded from anywhere, so it
// never pays Options.Work; it is lost when the process stops, when it is
// evicted, and for any request routed to another backend.
type MemoryStore struct {
	sessions *lru.Cache[string, Session]
}

// NewMemoryStore returns a store holding at most size sessions, forgetting
// the least recently used beyond that; size 0 or less means
// DefaultMaxSessions.
func NewMemoryStore(size int) *MemoryStore {
	if size <= 0 {
		size = DefaultMaxSessions
	}
	// lru.New fails only for a size below 1, ruled out above.
	sessions, _ := lru.New[string, Session](size)
	return &MemoryStore{sessions: sessions}
}

// Cookie returns SessionCookie.
func (*MemoryStore) Cookie() string { return SessionCookie }

// New stores an empty session of user under a fresh id.
func (m *MemoryStore) New(_ context.Context, user string) (string, error) {
	id := newSessionID()
	m.sessions.Add(id, Session{User: user, Version: 1})
	return id, nil
}

// Load returns a copy of the session id names.
func (m *MemoryStore) Load(_ context.Context, id string) (Session, error) {
	s, ok := m.sessions.Get(id)
	if !ok {
		return Session{}, fmt.Errorf("memory store: session %q: %w", id, ErrNoSession)
	}
	return s.clone(), nil
}

// Save stores a copy of s under id with the next version.
func (m *MemoryStore) Save(_ context.Context, id string, s Session) (string, error) {
	s = s.clone()
	s.Version++
	m.sessions.Add(id, s)
	return id, nil
}

// Revoke forgets the session id names.
func (m *MemoryStore) Revoke(_ context.Context, id string) error {
	m.sessions.Remove(id)
	return nil
}

// Held reports the sessions in memory.
func (m *MemoryStore) Held() int { return m.sessions.Len() }

// Close does nothing: the store holds no connections.
func (*MemoryStore) Close() error { return nil }
