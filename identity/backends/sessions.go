package backends

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/spf13/pflag"

	"kubegate.dev/kubegate/identity/session"
)

// Values of --session-store.
const (
	SessionStoreMemory = "memory"
	SessionStoreEtcd   = "etcd"
)

func (o *Options) addSessionStoreFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.SessionStore, "session-store", o.SessionStore,
		"where browser logouts are kept: memory (this process only: for ONE replica; a restart logs everyone out) or etcd (shared by every replica: a logout is refused on all within --session-sync-bound)")
	fs.StringSliceVar(&o.SessionEtcd, "session-etcd-endpoints", o.SessionEtcd,
		"etcd client URLs for --session-store=etcd, e.g. https://etcd-0:2379,https://etcd-1:2379")
	fs.StringVar(&o.SessionEtcdPrefix, "session-etcd-prefix", o.SessionEtcdPrefix,
		"etcd key prefix the logouts are kept under (each with a lease until the session would have expired)")
	fs.StringVar(&o.SessionEtcdCAFile, "session-etcd-ca-file", o.SessionEtcdCAFile,
		"PEM file of the CA(s) etcd's serving certificate is verified against (default: the system's roots for https:// endpoints)")
	fs.StringVar(&o.SessionEtcdCert, "session-etcd-cert-file", o.SessionEtcdCert,
		"PEM client certificate kubegate presents to etcd (with --session-etcd-key-file)")
	fs.StringVar(&o.SessionEtcdKey, "session-etcd-key-file", o.SessionEtcdKey,
		"PEM private key of --session-etcd-cert-file")
	fs.DurationVar(&o.SessionSyncBound, "session-sync-bound", o.SessionSyncBound,
		"with --session-store=etcd: the longest a replica answers from its copy of the logouts without its watch on etcd being confirmed current; past it browser sessions get 503 (fail closed). A logout is refused on every replica within this bound (typically within milliseconds)")
}

// validateSessions checks the --session-* flags.
func (o *Options) validateSessions() []error {
	var errs []error
	if o.SessionIdleTimeout <= 0 || o.SessionMaxAge <= 0 {
		errs = append(errs, errors.New("--session-idle-timeout and --session-max-age must both be positive"))
	} else if o.SessionIdleTimeout > o.SessionMaxAge {
		errs = append(errs, fmt.Errorf("--session-idle-timeout (%s) must not be longer than --session-max-age (%s)", o.SessionIdleTimeout, o.SessionMaxAge))
	}
	if o.SessionMaxAge > session.MaxMaxAge {
		errs = append(errs, fmt.Errorf("--session-max-age (%s) must be at most 168h (7 days): a copied cookie works until then", o.SessionMaxAge))
	}
	etcdFlags := len(o.SessionEtcd) > 0 || o.SessionEtcdCAFile != "" || o.SessionEtcdCert != "" || o.SessionEtcdKey != ""
	switch o.SessionStore {
	case SessionStoreMemory:
		if etcdFlags {
			errs = append(errs, errors.New("--session-etcd-* flags need --session-store=etcd"))
		}
	case SessionStoreEtcd:
		if o.SessionKeyFile == "" {
			errs = append(errs, errors.New("--session-store=etcd needs --session-key-file (without it there are no browser sessions to keep logouts of)"))
		}
		if len(o.SessionEtcd) == 0 {
			errs = append(errs, errors.New("--session-store=etcd needs --session-etcd-endpoints, e.g. https://etcd-0:2379"))
		}
		for _, ep := range o.SessionEtcd {
			if !strings.HasPrefix(ep, "http://") && !strings.HasPrefix(ep, "https://") {
				errs = append(errs, fmt.Errorf("--session-etcd-endpoints: %q is not an http:// or https:// URL", ep))
			}
		}
		if (o.SessionEtcdCert == "") != (o.SessionEtcdKey == "") {
			errs = append(errs, errors.New("--session-etcd-cert-file and --session-etcd-key-file go together"))
		}
		if !strings.HasPrefix(o.SessionEtcdPrefix, "/") {
			errs = append(errs, fmt.Errorf("--session-etcd-prefix %q must start with /", o.SessionEtcdPrefix))
		}
	default:
		errs = append(errs, fmt.Errorf("--session-store=%q: use memory or etcd", o.SessionStore))
	}
	if o.SessionSyncBound < 100*time.Millisecond || o.SessionSyncBound > time.Minute {
		errs = append(errs, fmt.Errorf("--session-sync-bound (%s) must be between 100ms and 1m: it is how long a logout may still be accepted on another replica", o.SessionSyncBound))
	}
	return errs
}

// buildSessions makes the session Manager when --session-key-file is set.
func (b *Backends) buildSessions(_ context.Context, o Options, log *slog.Logger) error {
	if o.SessionKeyFile == "" {
		log.Info("browser sessions off (no --session-key-file): session cookies are refused")
		return nil
	}
	slogger := log.With("component", "session")
	var revs session.Revocations
	if o.SessionStore == SessionStoreEtcd {
		tlsConfig, err := session.EtcdTLS(o.SessionEtcdCAFile, o.SessionEtcdCert, o.SessionEtcdKey)
		if err != nil {
			return fmt.Errorf("--session-etcd-ca-file/--session-etcd-cert-file/--session-etcd-key-file: %w", err)
		}
		store, err := session.NewEtcd(session.EtcdConfig{Endpoints: o.SessionEtcd, Prefix: o.SessionEtcdPrefix, TLS: tlsConfig,
			SyncBound: o.SessionSyncBound, Log: slogger})
		if err != nil {
			return err
		}
		b.closers = append(b.closers, func() { _ = store.Close() })
		b.runners = append(b.runners, store.Run)
		revs = store
		log.Info("browser session logouts are kept in etcd, shared by the replicas", "endpoints", strings.Join(o.SessionEtcd, ","),
			"prefix", o.SessionEtcdPrefix, "sync_bound", o.SessionSyncBound.String())
	} else {
		log.Warn("browser session logouts are kept in this process's memory (--session-store=memory: one replica only): a restart logs everyone out, and a logout on one replica is not seen by another; use --session-store=etcd with several replicas")
	}
	m, err := session.New(session.Config{KeyFile: o.SessionKeyFile, IdleTimeout: o.SessionIdleTimeout, MaxAge: o.SessionMaxAge,
		Revocations: revs, Log: slogger})
	if err != nil {
		return fmt.Errorf("--session-key-file: %w", err)
	}
	b.Sessions = m
	b.runners = append(b.runners, m.Run)
	return nil
}

// Run runs the identity parts that work in the background — the session key file
// watch (key rotation) and, with --session-store=etcd, the watch keeping this
// replica's copy of the logouts current — until ctx ends. Until that watch has read
// etcd, session cookies get 503. It returns nil at once when there is
// nothing to run, and the first error of any part (the others are stopped then).
func (b *Backends) Run(ctx context.Context) error {
	if len(b.runners) == 0 {
		return nil
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make([]error, len(b.runners))
	var wg sync.WaitGroup
	for i, run := range b.runners {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if errs[i] = run(ctx); errs[i] != nil {
				cancel()
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}
