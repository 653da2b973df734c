package gateway

import (
	"sync"
	"time"
)

// Signal is what the gateway makes of alerts with one fingerprint: the first
// alert inside a dedup window opens a signal, repeats inside the window
// increment its count.
type Signal struct {
	Fingerprint  string    `json:"fingerprint"`
	Count        int       `json:"count"`
	Deduplicated bool      `json:"deduplicated"`
	FirstSeen    time.Time `json:"firstSeen"`
	LastSeen     time.Time `json:"lastSeen"`
}

// Dedup tracks open signals by fingerprint. The window is measured from a
// signal's first alert, so a signal that keeps firing is reopened once per
// window rather than counted forever.
//
// Next and Commit are separate so the caller can record a repeat only after
// its audit event was stored: an alert datastorage never saw must not count.
type Dedup struct {
	mu        sync.Mutex
	window    time.Duration
	open      map[string]Signal
	lastSweep time.Time
}

// NewDedup returns a Dedup with the given window.
func NewDedup(window time.Duration) *Dedup {
	return &Dedup{window: window, open: make(map[string]Signal)}
}

// Next returns the signal an alert with fingerprint fp seen at now would
// produce, without recording it.
func (d *Dedup) Next(fp string, now time.Time) Signal {
	d.mu.Lock()
	defer d.mu.Unlock()
	if s, ok := d.open[fp]; ok && now.Sub(s.FirstSeen) < d.window {
		s.Count++
		s.Deduplicated = true
		s.LastSeen = now
		return s
	}
	return Signal{Fingerprint: fp, Count: 1, FirstSeen: now, LastSeen: now}
}

// Commit records s (from Next) as the current state of its fingerprint.
func (d *Dedup) Commit(s Signal) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.open[s.Fingerprint] = s
	// Forget expired signals at most once per window so memory stays bounded
	// by the alerts of about two windows, at O(1) amortised cost.
	if s.LastSeen.Sub(d.lastSweep) >= d.window {
		for fp, o := range d.open {
			if s.LastSeen.Sub(o.FirstSeen) >= d.window {
				delete(d.open, fp)
			}
		}
		d.lastSweep = s.LastSeen
	}
}

// Len returns the number of signals tracked (open or not yet swept).
func (d *Dedup) Len() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.open)
}
