package session

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Defaults of EtcdConfig.
const (
	DefaultEtcdPrefix = "/kubegate/sessions/revoked/"
	DefaultSyncBound  = 5 * time.Second
	// maxEtcdValue bounds a revocation's value (its expiry in Unix milliseconds).
	maxEtcdValue = 32
	// RevocationGrace keeps a revocation in etcd this long past the session's
	// absolute expiry: a replica whose clock is behind still refuses the session
	// until its own clock says it expired (clocks within this of each other).
	RevocationGrace = 5 * time.Minute
)

// EtcdConfig configures an Etcd revocation store.
type EtcdConfig struct {
	Endpoints []string
	// Prefix is the key prefix revocations are kept under (DefaultEtcdPrefix); it
	// ends with "/".
	Prefix string
	// TLS, when set, is used to reach etcd (see EtcdTLS).
	TLS *tls.Config
	// SyncBound is how long the local copy may go without the watch being confirmed
	// current before Revoked fails closed (DefaultSyncBound).
	SyncBound time.Duration
	// Timeout bounds one Revoke and one list (default SyncBound).
	Timeout time.Duration
	// Grace keeps a revocation past the session's expiry (RevocationGrace).
	Grace time.Duration
	// Log receives the store's state changes; nil discards them.
	Log *slog.Logger
}

// EtcdTLS builds the TLS configuration for etcd from PEM files; all empty: nil (plain).
func EtcdTLS(caFile, certFile, keyFile string) (*tls.Config, error) {
	if caFile == "" && certFile == "" && keyFile == "" {
		return nil, nil
	}
	if (certFile == "") != (keyFile == "") {
		return nil, errors.New("an etcd client certificate needs both its certificate and its key file")
	}
	info := transport.TLSInfo{TrustedCAFile: caFile, CertFile: certFile, KeyFile: keyFile}
	cfg, err := info.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("etcd TLS: %w", err)
	}
	return cfg, nil
}

// Etcd is a Revocations store in etcd, shared by every replica: a logout on one is
// refused on all within the sync bound (typically milliseconds).
//
// Revoke puts <prefix><id> with a lease of the session's remaining lifetime (plus
// RevocationGrace for clock differences between replicas), so etcd deletes it when
// the session would have expired anyway: the store holds only live logouts. Each replica keeps a local copy: Run lists the prefix, then watches
// it from the listed revision (asking for progress notifications every third of
// the sync bound). Revoked answers from the copy, and fails closed — an error, a 503
// — while the watch has not been confirmed current (an event or a progress
// notification) within the sync bound: a replica cut off from etcd stops accepting
// sessions rather than accepting a logged-out one. A watch that stalls past the
// bound, fails or is compacted is dropped, and the next one lists the prefix first.
type Etcd struct {
	cfg    EtcdConfig
	client *clientv3.Client
	log    *slog.Logger

	mu        sync.Mutex
	entries   map[string]time.Time // id → until
	confirmed time.Time            // when the copy was last confirmed current; zero: never
	lists     int                  // lists of the prefix so far (each (re)connect lists once)
}

// NewEtcd makes the store and its client; it does not wait for etcd (Run does).
func NewEtcd(cfg EtcdConfig) (*Etcd, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("the etcd session store needs endpoints (--session-etcd-endpoints=https://etcd-0:2379,…)")
	}
	for _, ep := range cfg.Endpoints {
		if strings.HasPrefix(ep, "https://") && cfg.TLS == nil {
			cfg.TLS = &tls.Config{MinVersion: tls.VersionTLS12} // system roots
		}
	}
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultEtcdPrefix
	}
	if !strings.HasSuffix(cfg.Prefix, "/") {
		cfg.Prefix += "/"
	}
	if cfg.SyncBound <= 0 {
		cfg.SyncBound = DefaultSyncBound
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = cfg.SyncBound
	}
	if cfg.Grace <= 0 {
		cfg.Grace = RevocationGrace
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	client, err := clientv3.New(clientv3.Config{
		Endpoints:   cfg.Endpoints,
		TLS:         cfg.TLS,
		DialTimeout: cfg.Timeout,
		// Keepalives notice a dead connection within about the sync bound.
		DialKeepAliveTime:    cfg.SyncBound,
		DialKeepAliveTimeout: cfg.SyncBound,
		Logger:               zap.NewNop(), // what matters is logged by Run
	})
	if err != nil {
		return nil, fmt.Errorf("the etcd session store: %w", err)
	}
	return &Etcd{cfg: cfg, client: client, log: log, entries: map[string]time.Time{}}, nil
}

// Close closes the etcd client.
func (e *Etcd) Close() error { return e.client.Close() }

// Revoke records id as logged out until until, in etcd (with a lease expiring
// then) and in the local copy.
func (e *Etcd) Revoke(ctx context.Context, id string, until time.Time) error {
	if id == "" || strings.Contains(id, "/") {
		return fmt.Errorf("invalid session id for a revocation")
	}
	if time.Until(until) <= 0 {
		return nil // expired already: the cookie is refused without us
	}
	until = until.Add(e.cfg.Grace)
	left := time.Until(until)
	ctx, cancel := context.WithTimeout(ctx, e.cfg.Timeout)
	defer cancel()
	ttl := int64((left + time.Second - 1) / time.Second)
	lease, err := e.client.Grant(ctx, ttl)
	if err != nil {
		return fmt.Errorf("etcd: granting a lease for the revocation: %w", err)
	}
	if _, err := e.client.Put(ctx, e.cfg.Prefix+id, strconv.FormatInt(until.UnixMilli(), 10), clientv3.WithLease(lease.ID)); err != nil {
		return fmt.Errorf("etcd: recording the revocation: %w", err)
	}
	e.mu.Lock()
	e.entries[id] = until
	e.mu.Unlock()
	return nil
}

// Revoked answers from the local copy, or fails when the copy has not been
// confirmed current within the sync bound.
func (e *Etcd) Revoked(_ context.Context, id string) (bool, error) {
	now := time.Now()
	e.mu.Lock()
	confirmed := e.confirmed
	until, ok := e.entries[id]
	e.mu.Unlock()
	if confirmed.IsZero() {
		return false, errors.New("the etcd revocation store has not yet read the revocations (is etcd reachable?)")
	}
	if age := now.Sub(confirmed); age > e.cfg.SyncBound {
		return false, fmt.Errorf("the etcd revocation store was last confirmed current %s ago, longer than the sync bound %s (is etcd reachable?)", age.Round(time.Millisecond), e.cfg.SyncBound)
	}
	return ok && until.After(now), nil
}

// Len is the number of revocations in the local copy.
func (e *Etcd) Len() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.entries)
}

// Run keeps the local copy current until ctx ends: list, then watch; again after
// any failure, with a backoff of up to the sync bound. Each failure is logged (at
// most one line per attempt, an attempt taking up to the timeout plus the backoff).
func (e *Etcd) Run(ctx context.Context) error {
	const firstBackoff = 100 * time.Millisecond
	backoff := firstBackoff
	for ctx.Err() == nil {
		start := time.Now()
		err := e.syncOnce(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if time.Since(start) > e.cfg.SyncBound {
			backoff = firstBackoff // it had been working: retry soon
		}
		e.log.Warn("the etcd revocation store lost its watch; browser sessions get 503 once its copy is older than the sync bound, until etcd answers again",
			"err", err.Error(), "sync_bound", e.cfg.SyncBound.String(), "retry_in", backoff.String())
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		if backoff *= 2; backoff > e.cfg.SyncBound {
			backoff = e.cfg.SyncBound
		}
	}
	return nil
}

func (e *Etcd) isConfirmed() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return !e.confirmed.IsZero() && time.Since(e.confirmed) <= e.cfg.SyncBound
}

// syncOnce lists the prefix and watches it until the watch fails or stalls.
func (e *Etcd) syncOnce(parent context.Context) error {
	ctx, cancel := context.WithCancel(clientv3.WithRequireLeader(parent))
	defer cancel()
	lctx, lcancel := context.WithTimeout(ctx, e.cfg.Timeout)
	resp, err := e.client.Get(lctx, e.cfg.Prefix, clientv3.WithPrefix())
	lcancel()
	if err != nil {
		return fmt.Errorf("listing %s: %w", e.cfg.Prefix, err)
	}
	entries := make(map[string]time.Time, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		if id, until, ok := e.decode(kv); ok {
			entries[id] = until
		}
	}
	e.mu.Lock()
	e.entries = entries
	e.confirmed = time.Now()
	e.lists++
	e.mu.Unlock()
	e.log.Info("the etcd revocation store is current", "revocations", len(entries), "revision", resp.Header.Revision)

	// The watch starts AT the listed revision, not after it: etcd answers a progress
	// request only when every watcher of the stream has a start revision at or
	// below the store's (progressIfSync in go.etcd.io/etcd/server/v3
	// storage/mvcc/watchable_store.go), and a quiet prefix in a quiet etcd never
	// reaches revision+1. Replaying the listed revision's own events is harmless:
	// they are already in the list, and applying them again changes nothing.
	wch := e.client.Watch(ctx, e.cfg.Prefix, clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision), clientv3.WithProgressNotify())
	tick := time.NewTicker(e.cfg.SyncBound / 3)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
			e.sweep()
			if !e.isConfirmed() {
				return fmt.Errorf("the watch on %s was not confirmed current within %s", e.cfg.Prefix, e.cfg.SyncBound)
			}
			rctx, rcancel := context.WithTimeout(ctx, e.cfg.SyncBound/3)
			_ = e.client.RequestProgress(rctx) // the answer comes on wch; no answer is what isConfirmed notices
			rcancel()
		case wr, ok := <-wch:
			if !ok {
				return errors.New("the watch closed")
			}
			if err := wr.Err(); err != nil {
				return fmt.Errorf("the watch failed: %w", err)
			}
			if wr.Canceled {
				return errors.New("the watch was cancelled")
			}
			e.mu.Lock()
			for _, ev := range wr.Events {
				switch ev.Type {
				case mvccpb.PUT:
					if id, until, ok := e.decode(ev.Kv); ok {
						e.entries[id] = until
					}
				case mvccpb.DELETE:
					delete(e.entries, strings.TrimPrefix(string(ev.Kv.Key), e.cfg.Prefix))
				}
			}
			e.confirmed = time.Now()
			e.mu.Unlock()
		}
	}
}

// decode reads one revocation; a key or value that is not one is ignored (and
// logged): it can only come from another writer of the prefix.
func (e *Etcd) decode(kv *mvccpb.KeyValue) (string, time.Time, bool) {
	id := strings.TrimPrefix(string(kv.Key), e.cfg.Prefix)
	if id == "" || strings.Contains(id, "/") || len(kv.Value) > maxEtcdValue {
		e.log.Warn("ignoring a key under the revocation prefix that kubegate did not write", "prefix", e.cfg.Prefix)
		return "", time.Time{}, false
	}
	ms, err := strconv.ParseInt(string(kv.Value), 10, 64)
	if err != nil {
		e.log.Warn("ignoring a revocation whose value is not its expiry", "id", (&Session{ID: id}).ShortID())
		return "", time.Time{}, false
	}
	return id, time.UnixMilli(ms), true
}

// sweep drops expired entries from the local copy (etcd deletes them when their
// lease ends; this covers a delete not yet seen).
func (e *Etcd) sweep() {
	now := time.Now()
	e.mu.Lock()
	defer e.mu.Unlock()
	for id, until := range e.entries {
		if !until.After(now) {
			delete(e.entries, id)
		}
	}
}
