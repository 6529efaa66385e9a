// Package backends assembles the identity sources `kubegate authz` serves with, from
// its flags: the membership and personal-access-token source (the local directory or
// GitLab), optionally OIDC ID tokens, and the cache in front of the remote ones.
//
// The command only wires: Options.AddFlags registers the flags, Build makes the
// long-lived parts once (clients, caches, metrics), and Sources hands out the
// Authenticator and MembershipResolver for each configuration snapshot — with the
// directory file loaded for that snapshot when the directory is the source, so a
// reloaded directory takes effect at once.
//
// Only remote sources are cached (GitLab's answers, OIDC verification): the directory
// answers from memory faster than a cache lookup, and a changed directory file should
// apply immediately.
//
// Browser sessions (identity/session, with --session-key-file) come first in the
// chain and are never cached: a cached success would keep a logged-out session
// working for the cache's TTL. Their user lookup is the one OIDC's lookup mode uses:
// the directory of the snapshot, or GitLab.
package backends

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"
	gitlabapi "gitlab.com/gitlab-org/api/client-go"

	"kubegate.dev/kubegate/identity"
	"kubegate.dev/kubegate/identity/cache"
	"kubegate.dev/kubegate/identity/directory"
	"kubegate.dev/kubegate/identity/gitlab"
	"kubegate.dev/kubegate/identity/oidc"
	"kubegate.dev/kubegate/identity/session"
)

// Source names for --identity-source.
const (
	SourceDirectory = "directory"
	SourceGitLab    = "gitlab"
)

// Options are the identity flags of `kubegate authz`.
type Options struct {
	Source string // SourceDirectory or SourceGitLab

	GitLabURL       string
	GitLabTokenFile string
	// GitLabCAFile is a PEM bundle GitLab's serving certificate is verified
	// against instead of the system's roots (a GitLab behind a private CA).
	GitLabCAFile string
	// GitLabInsecureHTTPForTests allows an http:// --gitlab-url, which sends the
	// service token and users' tokens in clear text: for a local test GitLab only.
	GitLabInsecureHTTPForTests bool
	GitLabPATCheck             string
	GitLabTimeout              time.Duration
	GitLabRateLimit            float64
	// GitLabTokenRateLimit and GitLabTokenChecksInFlight are the unauthenticated
	// budget: checks of tokens not known to be GitLab's.
	GitLabTokenRateLimit      float64
	GitLabTokenChecksInFlight int

	OIDCIssuer         string // empty: OIDC ID tokens are not accepted
	OIDCClientID       string
	OIDCUsernameClaims []string
	OIDCUserID         string
	OIDCClockSkew      time.Duration

	CacheTTL        time.Duration
	CacheFailureTTL time.Duration
	CacheSize       int
	CacheBytes      int64

	// SessionKeyFile holds the browser session keys; empty: no browser sessions
	// (session cookies stay "not accepted").
	SessionKeyFile     string
	SessionIdleTimeout time.Duration
	SessionMaxAge      time.Duration
}

// DefaultOptions returns the flags' defaults.
func DefaultOptions() Options {
	return Options{
		Source:                    SourceDirectory,
		GitLabPATCheck:            string(gitlab.PATCheckAdmin),
		GitLabTimeout:             gitlab.DefaultTimeout,
		GitLabRateLimit:           gitlab.DefaultRateLimit,
		GitLabTokenRateLimit:      gitlab.DefaultTokenRateLimit,
		GitLabTokenChecksInFlight: gitlab.DefaultTokenChecksInFlight,
		OIDCUsernameClaims:        append([]string(nil), oidc.DefaultUsernameClaims...),
		OIDCUserID:                string(oidc.UserIDFromLookup),
		OIDCClockSkew:             oidc.DefaultClockSkew,
		CacheTTL:                  cache.DefaultTTL,
		CacheFailureTTL:           cache.DefaultFailureTTL,
		CacheSize:                 cache.DefaultMaxEntries,
		CacheBytes:                cache.DefaultMaxBytes,
		SessionIdleTimeout:        session.DefaultIdleTimeout,
		SessionMaxAge:             session.DefaultMaxAge,
	}
}

// AddFlags registers the identity flags on fs, with o's current values as defaults
// (start from DefaultOptions). It does not register --directory: the command owns
// the directory file, which it loads and watches with the rest of its configuration.
func (o *Options) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.Source, "identity-source", o.Source,
		"where users, personal access tokens and memberships come from: directory (the --directory file) or gitlab (GitLab's REST API)")
	fs.StringVar(&o.GitLabURL, "gitlab-url", o.GitLabURL,
		"GitLab's base URL, e.g. https://gitlab.example.com (with --identity-source=gitlab)")
	fs.BoolVar(&o.GitLabInsecureHTTPForTests, "gitlab-insecure-http-for-tests", o.GitLabInsecureHTTPForTests,
		"INSECURE: allow an http:// --gitlab-url, sending kubegate's service token and users' tokens unencrypted; only for a GitLab stand-in on loopback in tests")
	fs.StringVar(&o.GitLabTokenFile, "gitlab-token-file", o.GitLabTokenFile,
		"file holding kubegate's GitLab service token (read_api; an administrator's token with --gitlab-pat-check=admin)")
	fs.StringVar(&o.GitLabCAFile, "gitlab-ca-file", o.GitLabCAFile,
		"PEM file of the CA(s) GitLab's certificate is verified against, instead of the system's roots (a GitLab with a private CA)")
	fs.StringVar(&o.GitLabPATCheck, "gitlab-pat-check", o.GitLabPATCheck,
		"how personal access tokens are checked: admin (POST /admin/token with an administrator service token; self-managed GitLab 17.8+) or self (the user's token asks GET /personal_access_tokens/self; GitLab.com)")
	fs.DurationVar(&o.GitLabTimeout, "gitlab-timeout", o.GitLabTimeout,
		"bound on one identity lookup against GitLab, retries and rate-limit waits included; keep it below Envoy's ext_authz timeout")
	fs.Float64Var(&o.GitLabRateLimit, "gitlab-rate-limit", o.GitLabRateLimit,
		"most requests per second kubegate sends to GitLab for users GitLab has accepted: their memberships, user and path lookups, and re-checks of tokens accepted within the hour (a negative value removes the limit)")
	fs.Float64Var(&o.GitLabTokenRateLimit, "gitlab-token-rate-limit", o.GitLabTokenRateLimit,
		"most requests per second kubegate sends to GitLab to check tokens it has not seen accepted (unauthenticated traffic; kept apart so a flood of made-up tokens cannot use up --gitlab-rate-limit; a negative value removes the limit)")
	fs.IntVar(&o.GitLabTokenChecksInFlight, "gitlab-token-checks-in-flight", o.GitLabTokenChecksInFlight,
		"most such token checks waiting on GitLab at once; beyond it a request gets an immediate 503 asking to retry")
	fs.StringVar(&o.OIDCIssuer, "oidc-issuer", o.OIDCIssuer,
		"accept OIDC ID tokens from this issuer (its URL exactly as in the tokens' iss); empty: no OIDC")
	fs.StringVar(&o.OIDCClientID, "oidc-client-id", o.OIDCClientID,
		"the audience ID tokens must name (the OAuth client id kubectl's token was issued to)")
	fs.StringSliceVar(&o.OIDCUsernameClaims, "oidc-username-claim", o.OIDCUsernameClaims,
		"ID token claims tried in order for the username (repeat or comma-separate)")
	fs.StringVar(&o.OIDCUserID, "oidc-user-id", o.OIDCUserID,
		"where the numeric user id comes from: lookup (find the username in the identity source) or sub (the token's sub is the GitLab user id: GitLab is the issuer)")
	fs.DurationVar(&o.OIDCClockSkew, "oidc-clock-skew", o.OIDCClockSkew,
		"leeway for ID tokens' exp, nbf and iat")
	fs.DurationVar(&o.CacheTTL, "cache-ttl", o.CacheTTL,
		"how long a successful GitLab or OIDC authentication and a GitLab membership answer are reused (0 disables); a revoked token keeps working at most this long")
	fs.DurationVar(&o.CacheFailureTTL, "cache-failure-ttl", o.CacheFailureTTL,
		"how long a rejected credential stays rejected without asking again (0 disables); an unavailable source is never cached")
	fs.IntVar(&o.CacheSize, "cache-size", o.CacheSize,
		"most entries in each identity cache (authentication, memberships)")
	fs.Int64Var(&o.CacheBytes, "cache-bytes", o.CacheBytes,
		"memory bound, in bytes, of each identity cache (authentication, memberships; at least 1 MiB); entries are weighed by what they hold, so large membership answers are evicted first rather than letting the cache grow with them")
	fs.StringVar(&o.SessionKeyFile, "session-key-file", o.SessionKeyFile,
		"file of the keys browser session cookies are sealed with: one per line, base64 of 32 random bytes (head -c 32 /dev/urandom | base64), the first seals, the others still open (rotation); '#' comments; re-read when it changes. Empty: no browser sessions (session cookies are refused)")
	fs.DurationVar(&o.SessionIdleTimeout, "session-idle-timeout", o.SessionIdleTimeout,
		"a browser session without activity ends after this long")
	fs.DurationVar(&o.SessionMaxAge, "session-max-age", o.SessionMaxAge,
		"a browser session ends this long after login however active it is (at most 168h)")
}

// Validate checks the options against each other; every problem is reported at once.
func (o *Options) Validate() error {
	var errs []error
	switch o.Source {
	case SourceDirectory:
		if o.GitLabURL != "" || o.GitLabTokenFile != "" || o.GitLabCAFile != "" {
			errs = append(errs, errors.New("--gitlab-url, --gitlab-token-file and --gitlab-ca-file need --identity-source=gitlab (the directory is the source now)"))
		}
	case SourceGitLab:
		if o.GitLabURL == "" {
			errs = append(errs, errors.New("--identity-source=gitlab needs --gitlab-url, e.g. https://gitlab.example.com"))
		} else if u, err := url.Parse(o.GitLabURL); err == nil && strings.EqualFold(u.Scheme, "http") && !o.GitLabInsecureHTTPForTests {
			errs = append(errs, fmt.Errorf("--gitlab-url %q is plain http: kubegate would send its GitLab service token and every user's token unencrypted; use https:// (only a test GitLab may be reached over http, with --gitlab-insecure-http-for-tests)", o.GitLabURL))
		}
		if o.GitLabTokenFile == "" {
			errs = append(errs, errors.New("--identity-source=gitlab needs --gitlab-token-file: a file holding kubegate's GitLab service token"))
		}
	default:
		errs = append(errs, fmt.Errorf("--identity-source=%q: use directory or gitlab", o.Source))
	}
	switch gitlab.PATCheck(o.GitLabPATCheck) {
	case gitlab.PATCheckAdmin, gitlab.PATCheckSelf:
	default:
		errs = append(errs, fmt.Errorf("--gitlab-pat-check=%q: use admin or self", o.GitLabPATCheck))
	}
	if o.GitLabTimeout <= 0 {
		errs = append(errs, errors.New("--gitlab-timeout must be positive"))
	}
	if o.GitLabRateLimit == 0 || o.GitLabTokenRateLimit == 0 {
		errs = append(errs, errors.New("--gitlab-rate-limit and --gitlab-token-rate-limit must not be 0 (a negative value removes a limit)"))
	}
	if o.GitLabTokenChecksInFlight <= 0 {
		errs = append(errs, errors.New("--gitlab-token-checks-in-flight must be positive"))
	}
	if o.OIDCIssuer != "" {
		if o.OIDCClientID == "" {
			errs = append(errs, errors.New("--oidc-issuer needs --oidc-client-id: the audience ID tokens must name"))
		}
		if len(o.OIDCUsernameClaims) == 0 {
			errs = append(errs, errors.New("--oidc-username-claim needs at least one claim"))
		}
		switch oidc.UserIDMode(o.OIDCUserID) {
		case oidc.UserIDFromSub, oidc.UserIDFromLookup:
		default:
			errs = append(errs, fmt.Errorf("--oidc-user-id=%q: use lookup or sub", o.OIDCUserID))
		}
	} else if o.OIDCClientID != "" {
		errs = append(errs, errors.New("--oidc-client-id needs --oidc-issuer"))
	}
	if o.OIDCClockSkew < 0 || o.OIDCClockSkew > 5*time.Minute {
		errs = append(errs, errors.New("--oidc-clock-skew must be between 0 and 5m"))
	}
	if o.CacheTTL < 0 || o.CacheFailureTTL < 0 {
		errs = append(errs, errors.New("--cache-ttl and --cache-failure-ttl must not be negative (0 disables)"))
	}
	if o.CacheSize <= 0 {
		errs = append(errs, errors.New("--cache-size must be positive"))
	}
	if o.CacheBytes < cache.MinMaxBytes {
		errs = append(errs, fmt.Errorf("--cache-bytes must be at least %d (1 MiB)", cache.MinMaxBytes))
	}
	errs = append(errs, o.validateSessions()...)
	return errors.Join(errs...)
}

// Backends holds the long-lived identity parts. Make it once per process with Build;
// Close it on shutdown.
type Backends struct {
	source     string
	oidcLookup bool                        // OIDC usernames are looked up in the identity source (--oidc-user-id=lookup)
	remote     identity.Authenticator      // cached GitLab and/or OIDC authenticators; nil if none
	configAPI  *gitlabapi.Client           // reads agent configurations from GitLab; nil for the directory
	members    identity.MembershipResolver // cached GitLab memberships; nil for the directory
	dir        atomic.Pointer[directory.Directory]
	closers    []func()

	// Sessions issues and verifies browser sessions; nil without --session-key-file.
	Sessions     *session.Manager
	sessionUsers session.UserLookup // GitLab's lookup; nil with the directory (per snapshot)
	runners      []func(context.Context) error
}

// Build validates o and makes the clients and caches. reg receives the caches'
// metrics. With OIDC configured it tries the issuer's discovery once (bounded by ctx
// and the GitLab timeout) and only warns if that fails: Authenticate retries.
func Build(ctx context.Context, o Options, reg prometheus.Registerer, log *slog.Logger) (*Backends, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	b := &Backends{source: o.Source, oidcLookup: oidc.UserIDMode(o.OIDCUserID) == oidc.UserIDFromLookup}
	copts := cache.Options{TTL: o.CacheTTL, FailureTTL: o.CacheFailureTTL, MaxEntries: o.CacheSize, MaxBytes: o.CacheBytes, Registerer: reg}

	var gl *gitlab.Backend
	var remote identity.Union
	if o.Source == SourceGitLab {
		token, err := readToken(o.GitLabTokenFile)
		if err != nil {
			return nil, err
		}
		hc, err := gitlabHTTPClient(o.GitLabCAFile, o.GitLabTimeout)
		if err != nil {
			return nil, err
		}
		gcfg := gitlab.Config{URL: o.GitLabURL, Token: token, PATCheck: gitlab.PATCheck(o.GitLabPATCheck),
			Timeout: o.GitLabTimeout, RateLimit: o.GitLabRateLimit, TokenRateLimit: o.GitLabTokenRateLimit,
			TokenChecksInFlight: o.GitLabTokenChecksInFlight, HTTPClient: hc}
		// Agent configurations are read with the same settings and transport, from
		// a request budget of their own: polling N config projects must not use up
		// the users' budget, nor users the polling's.
		if b.configAPI, err = gitlab.NewAPIClient(gcfg); err != nil {
			return nil, err
		}
		gcfg.Registerer = reg
		gl, err = gitlab.New(gcfg)
		if err != nil {
			return nil, err
		}
		remote = append(remote, gl)
		if o.GitLabInsecureHTTPForTests && strings.HasPrefix(strings.ToLower(o.GitLabURL), "http:") {
			log.Warn("INSECURE: --gitlab-insecure-http-for-tests: the GitLab service token and users' tokens travel unencrypted to " + o.GitLabURL + "; never use this outside a test")
		}
		log.Info("identity source: GitLab", "url", o.GitLabURL, "pat_check", o.GitLabPATCheck,
			"timeout", o.GitLabTimeout.String(), "rate_limit", o.GitLabRateLimit,
			"token_rate_limit", o.GitLabTokenRateLimit, "token_checks_in_flight", o.GitLabTokenChecksInFlight)
	} else {
		log.Info("identity source: the directory file")
	}

	if o.OIDCIssuer != "" {
		var users oidc.UserLookup
		if o.Source == SourceGitLab {
			users = gl
		} else {
			users = oidc.UserLookupFunc(b.lookupInDirectory)
		}
		oa, err := oidc.New(oidc.Config{Issuer: o.OIDCIssuer, ClientID: o.OIDCClientID, UsernameClaims: o.OIDCUsernameClaims,
			UserID: oidc.UserIDMode(o.OIDCUserID), Users: users, ClockSkew: o.OIDCClockSkew, Timeout: o.GitLabTimeout})
		if err != nil {
			return nil, err
		}
		dctx, cancel := context.WithTimeout(ctx, o.GitLabTimeout)
		if err := oa.Discover(dctx); err != nil {
			log.Warn("the OIDC issuer cannot be discovered yet; ID tokens get 503 until it can", "issuer", o.OIDCIssuer, "error", err.Error())
		}
		cancel()
		remote = append(remote, oa)
		log.Info("OIDC ID tokens accepted", "issuer", o.OIDCIssuer, "client_id", o.OIDCClientID,
			"username_claims", strings.Join(o.OIDCUsernameClaims, ","), "user_id", o.OIDCUserID)
		if oidc.UserIDMode(o.OIDCUserID) == oidc.UserIDFromLookup {
			// The username claim decides whose memberships apply. GitLab as the issuer
			// sets nickname from the username users cannot change at will; many other
			// issuers let users edit nickname or preferred_username.
			log.Warn("OIDC users are matched by the username claim: make sure the issuer does not let users edit it, or use --oidc-user-id=sub with GitLab as the issuer",
				"username_claims", strings.Join(o.OIDCUsernameClaims, ","))
		}
	}

	if len(remote) > 0 {
		ca, err := cache.NewAuthenticator(remote, copts)
		if err != nil {
			return nil, err
		}
		b.closers = append(b.closers, ca.Close)
		b.remote = ca
	}
	if gl != nil {
		cm, err := cache.NewMemberships(gl, copts)
		if err != nil {
			b.Close()
			return nil, err
		}
		b.closers = append(b.closers, cm.Close)
		b.members = cm
		b.sessionUsers = gl
	}
	if err := b.buildSessions(ctx, o, log); err != nil {
		b.Close()
		return nil, err
	}
	return b, nil
}

// gitlabHTTPClient is the transport to GitLab: nil (the backend's pooled default,
// system roots) without a CA file, else the same defaults verifying against the
// file's CAs.
func gitlabHTTPClient(caFile string, timeout time.Duration) (*http.Client, error) {
	if caFile == "" {
		return nil, nil
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("--gitlab-ca-file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("--gitlab-ca-file %s holds no PEM certificate: give the CA that signed GitLab's certificate", caFile)
	}
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConnsPerHost = 32
	t.ResponseHeaderTimeout = timeout
	t.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	return &http.Client{Transport: t}, nil
}

// AgentConfigClient returns the GitLab client agent configurations are read with
// (agentconfig.GitLab): the identity source's URL, service token, CA and timeout,
// with a request budget of its own (--gitlab-rate-limit). ok is false unless
// --identity-source=gitlab: agent configurations come from GitLab only when GitLab
// is the identity source.
func (b *Backends) AgentConfigClient() (client *gitlabapi.Client, ok bool) {
	return b.configAPI, b.configAPI != nil
}

// readToken reads the service token file: one token, surrounding whitespace ignored.
func readToken(file string) (string, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("--gitlab-token-file: %w", err)
	}
	tok := strings.TrimSpace(string(data))
	if tok == "" || strings.ContainsAny(tok, " \t\r\n") {
		return "", fmt.Errorf("--gitlab-token-file %s must hold exactly one token", file)
	}
	return tok, nil
}

// lookupInDirectory finds a user in the directory in service, for OIDC.
func (b *Backends) lookupInDirectory(_ context.Context, username string) (identity.User, bool, error) {
	d := b.dir.Load()
	if d == nil {
		return identity.User{}, false, identity.SourceUnavailable("directory", errors.New("no directory loaded"))
	}
	u, ok := d.UserByName(username)
	return u, ok, nil
}

// Sources returns the authenticator and membership resolver for a configuration
// snapshot. dir is the directory loaded for it: required with
// --identity-source=directory, ignored otherwise.
func (b *Backends) Sources(dir *directory.Directory) (identity.Authenticator, identity.MembershipResolver, error) {
	switch b.source {
	case SourceDirectory:
		if dir == nil {
			return nil, nil, errors.New("--identity-source=directory needs the --directory file")
		}
		b.dir.Store(dir)
		var chain identity.Union
		if b.Sessions != nil {
			chain = append(chain, b.Sessions.Authenticator(session.UserLookupFunc(func(_ context.Context, username string) (identity.User, bool, error) {
				u, ok := dir.UserByName(username)
				return u, ok, nil
			})))
		}
		chain = append(chain, dir)
		if b.remote != nil {
			// PATs from the directory; anything it does not handle (OIDC) goes on, its
			// cached identities checked against this directory.
			chain = append(chain, inDirectory{inner: b.remote, dir: dir, lookup: b.oidcLookup})
		}
		if len(chain) == 1 {
			return dir, dir, nil
		}
		return chain, dir, nil
	default:
		if b.Sessions != nil {
			// First and outside the cache: see the package doc.
			return identity.Union{b.Sessions.Authenticator(b.sessionUsers), b.remote}, b.members, nil
		}
		return b.remote, b.members, nil
	}
}

// inDirectory checks an identity from the cached remote authenticators against the
// directory of this snapshot. The cache outlives directory reloads, and a reload
// may renumber users: a cached (id 7, grace) could otherwise fetch the memberships
// of whoever is id 7 now. The username is what the ID token asserts, so with
// --oidc-user-id=lookup the user is resolved again by name; with sub the token
// also asserts the id, and a directory that disagrees is refused.
type inDirectory struct {
	inner  identity.Authenticator
	dir    *directory.Directory
	lookup bool
}

func (a inDirectory) Authenticate(ctx context.Context, cred identity.Credential) (*identity.Identity, bool, error) {
	id, ok, err := a.inner.Authenticate(ctx, cred)
	if err != nil || !ok || id == nil {
		return id, ok, err
	}
	u, found := a.dir.UserByName(id.User.Username)
	switch {
	case !found:
		return nil, false, identity.Rejected(identity.ReasonInactive, fmt.Errorf("user %s is no longer an active user of the directory", id.User.Username))
	case u.ID != id.User.ID && !a.lookup:
		return nil, false, identity.Rejected(identity.ReasonInvalid, fmt.Errorf("the ID token says user %s has id %d; the directory says %d", id.User.Username, id.User.ID, u.ID))
	}
	out := *id
	out.User = u
	return &out, true, nil
}

// NeedsDirectory reports whether snapshots need the --directory file.
func (b *Backends) NeedsDirectory() bool { return b.source == SourceDirectory }

// Close stops the caches' background work.
func (b *Backends) Close() {
	for _, c := range b.closers {
		c()
	}
	b.closers = nil
}
