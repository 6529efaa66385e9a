package filewatch

import (
	"sync"
	"time"
)

// DefaultRepeatEvery is how often Repeats lets a repeated warning through when Every
// is zero.
const DefaultRepeatEvery = 30 * time.Second

// Repeats rate-limits one repeated warning, such as "the file is not usable" while a
// file stays broken: the first occurrence is logged, then at most one per Every,
// carrying the number suppressed since the last one logged. Reset (on success)
// makes the next failure log at once. The zero value is ready to use.
type Repeats struct {
	// Every is the least time between two logged warnings; zero means
	// DefaultRepeatEvery.
	Every time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time

	mu         sync.Mutex
	logged     time.Time // zero: nothing logged since the last Reset
	suppressed int
}

// Allow reports whether this occurrence should be logged and, if so, how many were
// suppressed before it (log that number with it).
func (r *Repeats) Allow() (ok bool, suppressed int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now
	if r.Now != nil {
		now = r.Now
	}
	every := r.Every
	if every <= 0 {
		every = DefaultRepeatEvery
	}
	t := now()
	if !r.logged.IsZero() && t.Sub(r.logged) < every {
		r.suppressed++
		return false, 0
	}
	suppressed, r.suppressed = r.suppressed, 0
	r.logged = t
	return true, suppressed
}

// Reset ends a series of failures: the next one is logged at once.
func (r *Repeats) Reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.logged = time.Time{}
	r.suppressed = 0
}
