// Package datastorage is the audit store: it keeps audit events, up to a fixed
// number, in memory or in Redis, and serves them over HTTP.
package datastorage

import (
	"context"
	"errors"
	"sync"
	"time"
)

// Event is one audit event. The gateway sends one per alert it accepts.
type Event struct {
	ID          int64     `json:"id"`
	Fingerprint string    `json:"fingerprint"`
	AlertName   string    `json:"alertname"`
	Status      string    `json:"status"`
	Count       int       `json:"count"`
	ReceivedAt  time.Time `json:"receivedAt"`
	StoredAt    time.Time `json:"storedAt"`
}

// ErrFull means the store holds its maximum number of events.
var ErrFull = errors.New("store full")

// Store keeps audit events, at most Max of them: a full store refuses new
// events rather than evicting old ones, so an audit trail never silently loses
// entries. Implementations are safe for concurrent use.
type Store interface {
	// Add stores e with the next ID and StoredAt now, and returns the stored
	// event; ErrFull when the store is full.
	Add(ctx context.Context, e Event, now time.Time) (Event, error)
	// ByFingerprint returns the events for fp in the order they were stored,
	// never nil.
	ByFingerprint(ctx context.Context, fp string) ([]Event, error)
	// Len returns the number of stored events. An error means the store does
	// not answer: the service is not ready.
	Len(ctx context.Context) (int, error)
	// Max is the number of events the store holds at most.
	Max() int
	// Kind names the store in logs and /readyz: "memory" or "redis".
	Kind() string
}

// MemoryStore is the in-memory Store: the events live as long as the process.
type MemoryStore struct {
	mu     sync.Mutex
	max    int
	nextID int64
	events []Event
	byFP   map[string][]int // fingerprint -> indexes into events
}

// NewMemoryStore returns a store that holds at most maxEvents events.
func NewMemoryStore(maxEvents int) *MemoryStore {
	return &MemoryStore{max: maxEvents, byFP: make(map[string][]int)}
}

// Add implements Store.
func (s *MemoryStore) Add(_ context.Context, e Event, now time.Time) (Event, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.events) >= s.max {
		return Event{}, ErrFull
	}
	s.nextID++
	e.ID = s.nextID
	e.StoredAt = now
	s.byFP[e.Fingerprint] = append(s.byFP[e.Fingerprint], len(s.events))
	s.events = append(s.events, e)
	return e, nil
}

// ByFingerprint implements Store.
func (s *MemoryStore) ByFingerprint(_ context.Context, fp string) ([]Event, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Event, 0, len(s.byFP[fp]))
	for _, i := range s.byFP[fp] {
		out = append(out, s.events[i])
	}
	return out, nil
}

// Len implements Store; it never fails.
func (s *MemoryStore) Len(context.Context) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.events), nil
}

// Max implements Store.
func (s *MemoryStore) Max() int { return s.max }

// Kind implements Store.
func (s *MemoryStore) Kind() string { return "memory" }
