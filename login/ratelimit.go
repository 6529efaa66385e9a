package login

import (
	"container/list"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Limits bound password login attempts: a token bucket per username (a guesser
// working on one account) and one per client (a guesser trying many accounts),
// each attempt taking a token from both. An exhausted bucket answers 429 with
// Retry-After.
type Limits struct {
	PerUser   rate.Limit // tokens per second; default one every 12 s (5 a minute)
	UserBurst int        // default 5
	PerClient rate.Limit // default one every 2 s (30 a minute)
	// ClientBurst defaults to 20.
	ClientBurst int
	// MaxTracked bounds each map of buckets (default 10,000): at the bound the
	// least recently used bucket is dropped, so a flood of made-up usernames
	// costs bounded memory. A dropped bucket was idle longest, which for a
	// bucket refilling in a minute means full anyway.
	MaxTracked int
}

func (l Limits) withDefaults() Limits {
	if l.PerUser <= 0 {
		l.PerUser = rate.Every(12 * time.Second)
	}
	if l.UserBurst <= 0 {
		l.UserBurst = 5
	}
	if l.PerClient <= 0 {
		l.PerClient = rate.Every(2 * time.Second)
	}
	if l.ClientBurst <= 0 {
		l.ClientBurst = 20
	}
	if l.MaxTracked <= 0 {
		l.MaxTracked = 10_000
	}
	return l
}

// limiter is a bounded, least-recently-used map of token buckets.
type limiter struct {
	every rate.Limit
	burst int
	max   int

	mu    sync.Mutex
	byKey map[string]*list.Element // of *bucket
	lru   *list.List               // front: most recently used
}

type bucket struct {
	key string
	lim *rate.Limiter
}

func newLimiter(every rate.Limit, burst, max int) *limiter {
	return &limiter{every: every, burst: burst, max: max, byKey: map[string]*list.Element{}, lru: list.New()}
}

// take takes a token for key at now; when there is none it returns how long
// until there is.
func (l *limiter) take(key string, now time.Time) (ok bool, retryAfter time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	el := l.byKey[key]
	if el == nil {
		if l.lru.Len() >= l.max {
			oldest := l.lru.Back()
			l.lru.Remove(oldest)
			delete(l.byKey, oldest.Value.(*bucket).key)
		}
		el = l.lru.PushFront(&bucket{key: key, lim: rate.NewLimiter(l.every, l.burst)})
		l.byKey[key] = el
	} else {
		l.lru.MoveToFront(el)
	}
	lim := el.Value.(*bucket).lim
	res := lim.ReserveN(now, 1)
	if d := res.DelayFrom(now); d > 0 {
		res.CancelAt(now)
		return false, d
	}
	return true, 0
}

// len is the number of buckets kept.
func (l *limiter) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lru.Len()
}
