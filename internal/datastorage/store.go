// Package datastorage is the audit store: it keeps audit events in memory, up
// to a fixed number, and serves them over HTTP.
package datastorage

import (
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

// Store is an in-memory, size-bounded event store, safe for concurrent use.
// A full store refuses new events rather than evicting old ones, so an
// audit trail never silently loses entries.
type Store struct {
	mu     sync.Mutex
	max    int
	nextID int64
	events []Event
	byFP   map[string][]int // fingerprint -> indexes into events
}

// NewStore returns a store that holds at most maxEvents events.
func NewStore(maxEvents int) *Store {
	return &Store{max: maxEvents, byFP: make(map[string][]int)}
}

// Add stores e, assigning its ID and StoredAt, and returns the stored event.
func (s *Store) Add(e Event, now time.Time) (Event, error) {
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

// ByFingerprint returns the events for fp in the order they were stored,
// never nil.
func (s *Store) ByFingerprint(fp string) []Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Event, 0, len(s.byFP[fp]))
	for _, i := range s.byFP[fp] {
		out = append(out, s.events[i])
	}
	return out
}

// Len returns the number of stored events.
func (s *Store) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.events)
}
