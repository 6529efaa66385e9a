package session

import (
	"context"
	"errors"
	"sync"
	"time"
)

// Revocations records logouts. A session whose id is revoked is refused until the
// revocation's until (its absolute expiry; after it the cookie is refused anyway).
type Revocations interface {
	Revoke(ctx context.Context, id string, until time.Time) error
	// Revoked reports whether id is revoked. An error fails closed (503).
	Revoked(ctx context.Context, id string) (bool, error)
}

// Forgetful is a Revocations store that knows logouts only from some moment on
// (Memory: since it was created, or since it was last emptied because it was
// full). The Manager refuses sessions issued before that moment: their logout may
// have been forgotten, and a logged-out session must never open again.
type Forgetful interface {
	RememberedSince() time.Time
}

// DefaultMemoryEntries bounds a Memory store: 100,000 live logouts, a few MiB.
const DefaultMemoryEntries = 100_000

// sweepEvery is the least time between two sweeps of expired entries.
const sweepEvery = time.Minute

// Memory is a Revocations store in this process's memory: for ONE replica only (a
// logout on one replica is unknown to the others), and forgotten on restart, which
// is why it refuses every session issued before it was created (Forgetful): a
// restart logs everyone out.
//
// It is bounded: an entry is dropped when its until passes (swept at most once a
// minute, and whenever the store is full); if it is still full after that, it
// forgets every entry and moves RememberedSince to now — every session issued
// before is refused (everyone logs in again) rather than one logged-out session
// reopening. Filling it takes that many logouts of valid sessions within MaxAge.
type Memory struct {
	now func() time.Time
	max int

	mu        sync.Mutex
	since     time.Time
	entries   map[string]time.Time
	lastSweep time.Time
}

// NewMemory makes a Memory store holding at most DefaultMemoryEntries. now is the
// clock (nil: time.Now).
func NewMemory(now func() time.Time) *Memory { return NewMemoryBounded(now, DefaultMemoryEntries) }

// NewMemoryBounded makes a Memory store holding at most max entries.
func NewMemoryBounded(now func() time.Time, max int) *Memory {
	if now == nil {
		now = time.Now
	}
	if max <= 0 {
		max = DefaultMemoryEntries
	}
	t := now()
	return &Memory{now: now, max: max, since: t.Truncate(time.Millisecond), entries: map[string]time.Time{}, lastSweep: t}
}

// Revoke records id as logged out until until.
func (m *Memory) Revoke(_ context.Context, id string, until time.Time) error {
	if id == "" {
		return errors.New("no session id to revoke")
	}
	now := m.now()
	if !until.After(now) {
		return nil // expired already: the cookie is refused without us
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if now.Sub(m.lastSweep) >= sweepEvery || len(m.entries) >= m.max {
		m.sweep(now)
	}
	if len(m.entries) >= m.max {
		// Full of live logouts: forget them all, and every session issued before
		// now with them. The horizon moves before the entries go (see
		// Manager.checkRevoked for why the order matters); both happen under mu.
		m.since = now.Truncate(time.Millisecond).Add(time.Millisecond)
		m.entries = map[string]time.Time{}
		return nil // this session was issued before the new horizon: refused too
	}
	if prev, ok := m.entries[id]; !ok || until.After(prev) {
		m.entries[id] = until
	}
	return nil
}

func (m *Memory) sweep(now time.Time) {
	for id, until := range m.entries {
		if !until.After(now) {
			delete(m.entries, id)
		}
	}
	m.lastSweep = now
}

// Revoked reports whether id is logged out.
func (m *Memory) Revoked(_ context.Context, id string) (bool, error) {
	now := m.now()
	m.mu.Lock()
	until, ok := m.entries[id]
	m.mu.Unlock()
	return ok && until.After(now), nil
}

// RememberedSince is when the store's memory begins: sessions issued before it are
// refused.
func (m *Memory) RememberedSince() time.Time {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.since
}

// Len is the number of entries held (expired ones not yet swept included).
func (m *Memory) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.entries)
}
