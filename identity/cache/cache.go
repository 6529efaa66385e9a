// Package cache puts a bounded, expiring cache in front of identity sources
// (access.md §5). Two decorators wrap the identity package's interfaces:
//
//   - Authenticator caches Authenticate's answers per (agent, access type, SHA-256 of
//     the credential, CSRF token). Acceptances and "not mine" live for TTL,
//     rejections (401) for FailureTTL, in a store of their own so that a flood of
//     made-up credentials cannot evict accepted users; "source unavailable" and
//     "busy" (503) are never cached, so the next request asks the source again.
//   - Memberships caches MembershipResolver's answers per (user id, username, listed
//     projects and groups) for TTL; errors are never cached.
//
// Concurrent lookups of one key are coalesced into a single call of the wrapped
// source (singleflight). The raw credential is never a key and never kept: only its
// SHA-256 is. Hits and misses are counted in Prometheus counters.
package cache

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"time"
	"unsafe"

	"github.com/maypok86/otter/v2"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/singleflight"

	"kubegate.dev/kubegate/identity"
)

// Defaults, as access.md §5 sets them.
const (
	DefaultTTL         = 30 * time.Second
	DefaultFailureTTL  = 5 * time.Second
	DefaultMaxEntries  = 10000
	DefaultLoadTimeout = 30 * time.Second
	// DefaultMaxBytes bounds each cache's memory. With DefaultMaxEntries, an entry
	// counts as at least 6.4 KiB, so the entry count stays at most 10,000; a
	// membership answer of 50 listed entries with long paths weighs about 5 KiB.
	DefaultMaxBytes = 64 << 20
	// MinMaxBytes is the smallest byte bound accepted: below it a real-size
	// membership answer would evict others on every request.
	MinMaxBytes = 1 << 20
)

// entryOverhead is what one cached entry costs besides its value's own strings and
// slices: the 32-byte key (held twice, by otter's node and its hash table), the
// entry struct, otter's node (links, expiry, frequency) and the table slot. It is
// an estimate rounded up; the weigher only has to be proportional and not low.
const entryOverhead = 160

// Options configures a cache. The zero TTLs disable caching (coalescing still
// applies); DefaultOptions gives access.md's defaults.
type Options struct {
	// TTL is how long an accepted credential or a membership answer is reused.
	TTL time.Duration
	// FailureTTL is how long a rejected credential stays rejected without asking the
	// source again.
	FailureTTL time.Duration
	// MaxEntries bounds the number of entries (per cache); least valuable entries are
	// evicted first. Zero means DefaultMaxEntries.
	MaxEntries int
	// MaxBytes bounds the memory of the cache's entries (per cache), estimated
	// from each entry's strings and slices plus a fixed overhead. Both bounds hold:
	// each entry weighs at least MaxBytes/MaxEntries, so the count cannot pass
	// MaxEntries either. Zero means DefaultMaxBytes.
	MaxBytes int64
	// LoadTimeout bounds one call of the wrapped source, which runs detached from any
	// single caller (it is shared by all callers of the key). Zero means
	// DefaultLoadTimeout. Sources have their own, usually shorter, timeouts.
	LoadTimeout time.Duration
	// Registerer receives the cache's metrics; nil registers nothing (the counters
	// still count). The global registry is never used implicitly.
	Registerer prometheus.Registerer
	// Now is the clock deciding expiry; nil means time.Now. Tests move it.
	Now func() time.Time
}

// DefaultOptions returns access.md §5's defaults: 30 s for successes, 5 s for failures.
func DefaultOptions() Options {
	return Options{TTL: DefaultTTL, FailureTTL: DefaultFailureTTL, MaxEntries: DefaultMaxEntries, MaxBytes: DefaultMaxBytes}
}

func (o Options) validate() (Options, error) {
	if o.TTL < 0 || o.FailureTTL < 0 {
		return o, errors.New("cache: TTLs must not be negative (0 disables caching)")
	}
	if o.MaxEntries < 0 {
		return o, errors.New("cache: the size must not be negative")
	}
	if o.MaxEntries == 0 {
		o.MaxEntries = DefaultMaxEntries
	}
	if o.MaxBytes < 0 {
		return o, errors.New("cache: the byte bound must not be negative")
	}
	if o.MaxBytes == 0 {
		o.MaxBytes = DefaultMaxBytes
	}
	if o.MaxBytes < MinMaxBytes {
		return o, fmt.Errorf("cache: the byte bound %d is below the minimum of %d (1 MiB)", o.MaxBytes, MinMaxBytes)
	}
	if o.LoadTimeout <= 0 {
		o.LoadTimeout = DefaultLoadTimeout
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o, nil
}

// metrics are one cache's counters. Each cache registers its own collectors with a
// constant "cache" label, so an authentication and a membership cache can share a
// registry.
type metrics struct {
	hits, misses prometheus.Counter
	loads        *prometheus.CounterVec
	collectors   []prometheus.Collector
}

func newMetrics(name string, reg prometheus.Registerer, size func() float64) (*metrics, error) {
	labels := prometheus.Labels{"cache": name}
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name:        "kubegate_identity_cache_requests_total",
		Help:        "Identity cache lookups by result: hit (answered from the cache) or miss (the source was asked, or a concurrent identical lookup was joined).",
		ConstLabels: labels,
	}, []string{"result"})
	loads := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name:        "kubegate_identity_cache_loads_total",
		Help:        "Calls of the wrapped identity source, by outcome (accepted, not_mine, rejected, unavailable for authentication; ok, error for memberships).",
		ConstLabels: labels,
	}, []string{"outcome"})
	entries := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name:        "kubegate_identity_cache_entries",
		Help:        "Approximate number of entries in the identity cache.",
		ConstLabels: labels,
	}, size)
	m := &metrics{
		hits:       requests.WithLabelValues("hit"),
		misses:     requests.WithLabelValues("miss"),
		loads:      loads,
		collectors: []prometheus.Collector{requests, loads, entries},
	}
	if reg != nil {
		for i, c := range m.collectors {
			if err := reg.Register(c); err != nil {
				for _, done := range m.collectors[:i] {
					reg.Unregister(done)
				}
				return nil, fmt.Errorf("cache: registering the %s cache's metrics: %w", name, err)
			}
		}
	}
	return m, nil
}

// entry is a cached answer with its own deadline: otter evicts by size and reclaims
// expired entries, and the deadline, read against Options.Now, decides validity.
type entry[V any] struct {
	value   V
	expires time.Time
}

// store is the bounded map shared by both decorators, keyed by a SHA-256 digest.
type store[V any] struct {
	c   *otter.Cache[[sha256.Size]byte, entry[V]]
	now func() time.Time
}

// newStore makes a store bounded by o.MaxBytes, weighing each entry by size(value)
// plus entryOverhead and at least MaxBytes/MaxEntries (which bounds the count).
func newStore[V any](o Options, size func(V) int) (*store[V], error) {
	floor := max(o.MaxBytes/int64(o.MaxEntries), 1)
	c, err := otter.New(&otter.Options[[sha256.Size]byte, entry[V]]{
		MaximumWeight: uint64(o.MaxBytes),
		Weigher: func(_ [sha256.Size]byte, e entry[V]) uint32 {
			w := max(int64(size(e.value))+entryOverhead, floor)
			return uint32(min(w, int64(^uint32(0))))
		},
		// Reclaim memory at the entry's own deadline. Validity is decided on read
		// against the same clock, so this only frees space.
		ExpiryCalculator: otter.ExpiryWritingFunc(func(e otter.Entry[[sha256.Size]byte, entry[V]]) time.Duration {
			return max(e.Value.expires.Sub(o.Now()), time.Second)
		}),
	})
	if err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	return &store[V]{c: c, now: o.Now}, nil
}

func (s *store[V]) get(k [sha256.Size]byte) (V, bool) {
	e, ok := s.c.GetIfPresent(k)
	if !ok || !s.now().Before(e.expires) {
		var zero V
		return zero, false
	}
	return e.value, true
}

func (s *store[V]) put(k [sha256.Size]byte, v V, ttl time.Duration) {
	if ttl <= 0 {
		return
	}
	s.c.Set(k, entry[V]{value: v, expires: s.now().Add(ttl)})
}

func (s *store[V]) size() float64 { return float64(s.c.EstimatedSize()) }

func (s *store[V]) close() { s.c.StopAllGoroutines() }

// coalesce runs load once for all concurrent callers of key and waits for it or for
// ctx, whichever comes first. load runs on a context detached from the first
// caller's cancellation (others still want the answer) but bounded by timeout, so a
// caller that gives up leaves no goroutine behind for longer than that.
func coalesce[V any](ctx context.Context, g *singleflight.Group, key [sha256.Size]byte, timeout time.Duration, load func(context.Context) V) (V, error) {
	ch := g.DoChan(string(key[:]), func() (any, error) {
		lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
		defer cancel()
		return load(lctx), nil
	})
	select {
	case <-ctx.Done():
		var zero V
		return zero, ctx.Err()
	case r := <-ch:
		return r.Val.(V), nil
	}
}

// digest builds a cache key: length-prefixed fields in one buffer, hashed once, so
// that no two different field lists can produce the same byte stream.
type digest struct{ b []byte }

func newDigest(size int) *digest { return &digest{b: make([]byte, 0, size)} }

func (d *digest) str(s string) *digest {
	d.b = binary.BigEndian.AppendUint64(d.b, uint64(len(s)))
	d.b = append(d.b, s...)
	return d
}

func (d *digest) int(i int64) *digest {
	d.b = binary.BigEndian.AppendUint64(d.b, uint64(i))
	return d
}

func (d *digest) sum() [sha256.Size]byte { return sha256.Sum256(d.b) }

// Authenticator is the caching decorator for an identity.Authenticator.
type Authenticator struct {
	inner identity.Authenticator
	opts  Options
	store *store[authAnswer] // acceptances and "not mine"
	// rejected holds rejections apart, in a store of its own size: a flood of
	// made-up credentials, each rejected once, then competes only with itself and
	// cannot evict the identities of users who were accepted.
	rejected *store[authAnswer]
	flights  singleflight.Group
	m        *metrics
}

// authAnswer is a cacheable Authenticate outcome: accepted, not mine, or rejected.
type authAnswer struct {
	id  identity.Identity
	ok  bool
	err *identity.Error // a rejection; never "unavailable" once stored
}

// NewAuthenticator wraps inner. Call Close when done with it.
func NewAuthenticator(inner identity.Authenticator, opts Options) (*Authenticator, error) {
	opts, err := opts.validate()
	if err != nil {
		return nil, err
	}
	s, err := newStore(opts, authAnswer.size)
	if err != nil {
		return nil, err
	}
	r, err := newStore(opts, authAnswer.size)
	if err != nil {
		s.close()
		return nil, err
	}
	m, err := newMetrics("authentication", opts.Registerer, func() float64 { return s.size() + r.size() })
	if err != nil {
		s.close()
		r.close()
		return nil, err
	}
	return &Authenticator{inner: inner, opts: opts, store: s, rejected: r, m: m}, nil
}

// credentialKey is the cache key of access.md §5: agent, access type, the credential's
// SHA-256 and the CSRF token. The credential itself is hashed before it is mixed in,
// so the key is a hash of a hash and the raw secret goes nowhere but into SHA-256.
func credentialKey(c identity.Credential) [sha256.Size]byte {
	secret := sha256.Sum256([]byte(c.Secret))
	return newDigest(128 + len(c.CSRF)).str("authn").int(c.AgentID).str(string(c.Type)).str(string(secret[:])).str(c.CSRF).sum()
}

// Authenticate answers from the cache or asks the wrapped authenticator once for all
// concurrent identical requests.
func (a *Authenticator) Authenticate(ctx context.Context, cred identity.Credential) (*identity.Identity, bool, error) {
	key := credentialKey(cred)
	if ans, ok := a.store.get(key); ok {
		a.m.hits.Inc()
		return ans.result()
	}
	if ans, ok := a.rejected.get(key); ok {
		a.m.hits.Inc()
		return ans.result()
	}
	a.m.misses.Inc()
	ans, err := coalesce(ctx, &a.flights, key, a.opts.LoadTimeout, func(lctx context.Context) authAnswer {
		id, ok, err := a.inner.Authenticate(lctx, cred)
		ans := authAnswer{ok: ok}
		if id != nil {
			ans.id = *id
		}
		switch {
		case err != nil:
			ans.ok = false
			ans.err = identity.AsError(err)
			if ans.err.Unavailable() {
				a.m.loads.WithLabelValues("unavailable").Inc()
				return ans // never cached: the next request asks the source again
			}
			a.m.loads.WithLabelValues("rejected").Inc()
			a.rejected.put(key, ans, a.opts.FailureTTL)
		case ok && id != nil:
			a.m.loads.WithLabelValues("accepted").Inc()
			ttl := a.opts.TTL
			if !id.Expiry.IsZero() {
				// Never serve an identity past its credential's expiry (an ID token's
				// exp is often minutes away, well inside the TTL).
				ttl = min(ttl, id.Expiry.Sub(a.store.now()))
			}
			a.store.put(key, ans, ttl)
		case ok:
			// Accepted without an identity breaks the interface's contract: deny.
			ans.ok = false
			ans.err = identity.SourceUnavailable("identity backend", errors.New("an authenticator accepted a credential without returning an identity"))
			a.m.loads.WithLabelValues("unavailable").Inc()
		default:
			a.m.loads.WithLabelValues("not_mine").Inc()
			a.store.put(key, ans, a.opts.TTL)
		}
		return ans
	})
	if err != nil {
		return nil, false, identity.SourceUnavailable("identity backend", fmt.Errorf("gave up waiting: %w", err))
	}
	return ans.result()
}

// size is the bytes an answer holds beyond its struct: the username, and a
// rejection's messages.
func (ans authAnswer) size() int {
	n := int(unsafe.Sizeof(ans)) + len(ans.id.User.Username) + len(ans.id.AccessType)
	if ans.err != nil {
		n += int(unsafe.Sizeof(*ans.err)) + len(ans.err.Public) + len(ans.err.Reason)
		if ans.err.Err != nil {
			n += len(ans.err.Err.Error()) // the cause chain holds at least its text
		}
	}
	return n
}

// result returns a copy: callers must not be able to change what other callers get.
func (ans authAnswer) result() (*identity.Identity, bool, error) {
	switch {
	case ans.err != nil:
		return nil, false, ans.err
	case ans.ok:
		id := ans.id
		return &id, true, nil
	}
	return nil, false, nil
}

// Close stops the cache's background goroutines.
func (a *Authenticator) Close() {
	a.store.close()
	a.rejected.close()
}

// Memberships is the caching decorator for an identity.MembershipResolver.
type Memberships struct {
	inner   identity.MembershipResolver
	opts    Options
	store   *store[[]identity.Membership]
	flights singleflight.Group
	m       *metrics
}

// NewMemberships wraps inner. FailureTTL is not used: errors are never cached. Call
// Close when done with it.
func NewMemberships(inner identity.MembershipResolver, opts Options) (*Memberships, error) {
	opts, err := opts.validate()
	if err != nil {
		return nil, err
	}
	s, err := newStore(opts, membershipsSize)
	if err != nil {
		return nil, err
	}
	m, err := newMetrics("memberships", opts.Registerer, s.size)
	if err != nil {
		s.close()
		return nil, err
	}
	return &Memberships{inner: inner, opts: opts, store: s, m: m}, nil
}

// membershipKey identifies a question: the user and the exact listing (order and
// spelling matter, since the answer echoes both). The listing enters through its
// digest, computed once per configuration (identity.NewListed), so a hit costs the
// same for 5 entries as for 1,000.
func membershipKey(u identity.User, listed identity.Listed) [sha256.Size]byte {
	ld := listed.Digest()
	return newDigest(64 + len(u.Username) + len(ld)).str("members").int(u.ID).str(u.Username).str(string(ld[:])).sum()
}

type membershipAnswer struct {
	ms  []identity.Membership
	err error
}

// Memberships answers from the cache or asks the wrapped resolver once for all
// concurrent identical questions.
func (c *Memberships) Memberships(ctx context.Context, u identity.User, listed identity.Listed) ([]identity.Membership, error) {
	key := membershipKey(u, listed)
	if ms, ok := c.store.get(key); ok {
		c.m.hits.Inc()
		return clone(ms), nil
	}
	c.m.misses.Inc()
	ans, err := coalesce(ctx, &c.flights, key, c.opts.LoadTimeout, func(lctx context.Context) membershipAnswer {
		ms, err := c.inner.Memberships(lctx, u, listed)
		if err != nil {
			c.m.loads.WithLabelValues("error").Inc()
			return membershipAnswer{err: err}
		}
		c.m.loads.WithLabelValues("ok").Inc()
		ms = clone(ms)
		c.store.put(key, ms, c.opts.TTL)
		return membershipAnswer{ms: ms}
	})
	if err != nil {
		return nil, identity.SourceUnavailable("identity backend", fmt.Errorf("gave up waiting: %w", err))
	}
	if ans.err != nil {
		return nil, ans.err
	}
	return clone(ans.ms), nil
}

// membershipsSize is the bytes a membership answer holds: the slice's backing
// array and each entry's path.
func membershipsSize(ms []identity.Membership) int {
	n := int(unsafe.Sizeof(ms)) + cap(ms)*int(unsafe.Sizeof(identity.Membership{}))
	for _, m := range ms {
		n += len(m.Path)
	}
	return n
}

func clone(ms []identity.Membership) []identity.Membership {
	if ms == nil {
		return nil
	}
	return append([]identity.Membership(nil), ms...)
}

// Close stops the cache's background goroutine.
func (c *Memberships) Close() { c.store.close() }
