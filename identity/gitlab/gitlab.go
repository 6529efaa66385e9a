// Package gitlab is kubegate's identity source backed by GitLab's REST API (v4): it
// checks personal access tokens (access.md §2) and reads a user's effective, inherited
// access to the projects and groups an agent lists (access.md §3).
//
// Every outgoing call goes through gitlab.com/gitlab-org/api/client-go with a
// per-operation timeout, a client-side rate limit and retries only where they are
// safe.
//
// Unauthenticated traffic cannot starve authenticated users (issue 10, item 5): a
// token nobody has shown to be GitLab's costs a call from its own budget
// (Config.TokenRateLimit), with at most Config.TokenChecksInFlight such checks at
// once (beyond that: an immediate 503 "busy, retry"), and only after it passed a
// shape check that refuses what GitLab can never issue (shape.go). Everything asked
// on behalf of a user GitLab has accepted — the token's user, memberships, paths,
// OIDC user lookups, and the re-check of a token GitLab accepted within the last
// hour — uses the other budget (Config.RateLimit). How GitLab's answers map to kubegate's:
//
//   - GitLab refuses the user's credential (401/403/404, and 400/422 for something that
//     is not a personal access token): a rejection, 401 "Unauthorized".
//   - GitLab is unreachable, times out, answers 429 or 5xx, answers malformed JSON, or
//     refuses kubegate's own service token: identity.SourceUnavailable, a 503 whose
//     message says the identity source is unavailable.
//
// Nothing this package returns contains a token: errors name endpoints and status
// codes, never request headers or bodies.
package gitlab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/hashicorp/go-retryablehttp"
	"github.com/prometheus/client_golang/prometheus"
	gl "gitlab.com/gitlab-org/api/client-go"
	"golang.org/x/sync/singleflight"
	"golang.org/x/time/rate"

	"kubegate.dev/kubegate/identity"
)

// ScopeK8sProxy is the scope a personal access token needs, as in GitLab.
const ScopeK8sProxy = "k8s_proxy"

// sourceName names GitLab in "identity source unavailable" messages.
const sourceName = "GitLab"

// PATCheck selects how a personal access token is verified.
type PATCheck string

const (
	// PATCheckAdmin asks the token information API (POST /api/v4/admin/token) with the
	// service token, which must be an administrator's (self-managed GitLab 17.8+).
	PATCheckAdmin PATCheck = "admin"
	// PATCheckSelf sends the user's own token to GET /api/v4/personal_access_tokens/self,
	// which any token may call about itself (GitLab.com, no administrator needed).
	PATCheckSelf PATCheck = "self"
)

// Defaults for Config's zero fields.
const (
	DefaultTimeout   = 5 * time.Second
	DefaultRateLimit = 20 // requests per second, for authenticated users
	// DefaultTokenRateLimit is the budget for checking tokens not known to be
	// GitLab's, requests per second.
	DefaultTokenRateLimit = 10
	// DefaultTokenChecksInFlight bounds the concurrent checks of such tokens.
	DefaultTokenChecksInFlight = 16
	DefaultRetries             = 1
	DefaultPathCacheTTL        = 5 * time.Minute
	DefaultConcurrency         = 8
)

// maxBody bounds every GitLab answer. The largest one kubegate reads is a short list of
// users; a bigger answer is a misbehaving server and is treated as malformed.
const maxBody = 1 << 20

// Config configures the GitLab backend.
type Config struct {
	// URL is GitLab's base URL, e.g. https://gitlab.example.com (/api/v4 is added).
	URL string
	// Token is kubegate's service token: it resolves paths, reads memberships and users
	// and, with PATCheckAdmin, identifies users' tokens.
	Token string
	// PATCheck selects the token check; empty means PATCheckAdmin.
	PATCheck PATCheck
	// Timeout bounds one Authenticate or Memberships call as a whole, retries and rate
	// limit waits included.
	Timeout time.Duration
	// RateLimit caps requests per second to GitLab made for users GitLab has
	// accepted: the token's user, memberships, path lookups, OIDC user lookups and
	// re-checks of known tokens (burst: one second's worth); negative means no
	// limit, zero means DefaultRateLimit.
	RateLimit float64
	// TokenRateLimit caps requests per second that check a token not known to be
	// GitLab's (the unauthenticated budget; burst: one second's worth); negative
	// means no limit, zero means DefaultTokenRateLimit.
	TokenRateLimit float64
	// TokenChecksInFlight bounds the concurrent checks of such tokens; a check
	// beyond it fails at once with a 503 that says to retry. Zero means
	// DefaultTokenChecksInFlight.
	TokenChecksInFlight int
	// Registerer receives the token check counter; nil registers nothing.
	Registerer prometheus.Registerer
	// Retries is how often a safe request is retried after a connection failure or a
	// 502/503/504; negative means never, zero means DefaultRetries.
	Retries int
	// PathCacheTTL is how long a project or group path stays resolved to its numeric id.
	PathCacheTTL time.Duration
	// Concurrency bounds the parallel membership calls of one Memberships call.
	Concurrency int
	// HTTPClient, when set, supplies the transport (custom TLS, tests). Its Timeout is
	// replaced by Timeout.
	HTTPClient *http.Client
	// Now is the clock for token expiry; nil means time.Now.
	Now func() time.Time
}

// Backend answers identity questions from GitLab. It implements identity.Authenticator
// (personal access tokens only) and identity.MembershipResolver, and finds users by
// username for the OIDC backend. It is safe for concurrent use.
type Backend struct {
	client      *gl.Client // the authenticated users' budget
	tokens      *gl.Client // the unauthenticated token checks' budget
	inFlight    chan struct{}
	known       *knownTokens
	checks      *prometheus.CounterVec
	check       PATCheck
	timeout     time.Duration
	concurrency int
	now         func() time.Time
	paths       *pathCache
	resolving   singleflight.Group
}

var (
	_ identity.Authenticator      = (*Backend)(nil)
	_ identity.MembershipResolver = (*Backend)(nil)
)

// complete validates cfg and fills in the defaults of its zero fields.
func (cfg Config) complete() (Config, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return cfg, fmt.Errorf("gitlab: URL %q must be an absolute http(s) URL such as https://gitlab.example.com", cfg.URL)
	}
	if strings.TrimSpace(cfg.Token) == "" {
		return cfg, errors.New("gitlab: the service token is empty: put a GitLab token (read_api; an administrator's for --gitlab-pat-check=admin) in the token file")
	}
	switch cfg.PATCheck {
	case "":
		cfg.PATCheck = PATCheckAdmin
	case PATCheckAdmin, PATCheckSelf:
	default:
		return cfg, fmt.Errorf("gitlab: PAT check %q must be %q (token information API, administrator service token) or %q (the user's token asks about itself)", cfg.PATCheck, PATCheckAdmin, PATCheckSelf)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.RateLimit == 0 {
		cfg.RateLimit = DefaultRateLimit
	}
	if cfg.TokenRateLimit == 0 {
		cfg.TokenRateLimit = DefaultTokenRateLimit
	}
	if cfg.TokenChecksInFlight <= 0 {
		cfg.TokenChecksInFlight = DefaultTokenChecksInFlight
	}
	if cfg.Retries == 0 {
		cfg.Retries = DefaultRetries
	}
	if cfg.Retries < 0 {
		cfg.Retries = 0
	}
	if cfg.PathCacheTTL <= 0 {
		cfg.PathCacheTTL = DefaultPathCacheTTL
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = DefaultConcurrency
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return cfg, nil
}

// NewAPIClient builds a GitLab client the way New builds its own: the same URL and
// token checks, answers bounded in size, no redirects followed, cfg.Timeout as the
// bound on one exchange, the same safe retries; with a request budget of its own
// (cfg.RateLimit, burst one second's worth; negative: none). kubegate authz reads
// agent configurations from the config projects (agentconfig.GitLab) with it, so
// that the identity source's settings are the one way kubegate reaches GitLab.
func NewAPIClient(cfg Config) (*gl.Client, error) {
	cfg, err := cfg.complete()
	if err != nil {
		return nil, err
	}
	return newClient(cfg, httpClient(cfg), cfg.RateLimit)
}

// New validates cfg and builds the backend. It does not contact GitLab.
func New(cfg Config) (*Backend, error) {
	cfg, err := cfg.complete()
	if err != nil {
		return nil, err
	}
	hc := httpClient(cfg)
	client, err := newClient(cfg, hc, cfg.RateLimit)
	if err != nil {
		return nil, err
	}
	tokens, err := newClient(cfg, hc, cfg.TokenRateLimit)
	if err != nil {
		return nil, err
	}
	checks := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kubegate_gitlab_token_checks_total",
		Help: "Personal access tokens presented to the GitLab backend, by what happened: refused_shape (never sent: GitLab cannot have issued it), refused_busy (never sent: too many token checks in flight), sent_unknown (checked from the unauthenticated budget), sent_known (a token GitLab accepted recently, checked from the users' budget).",
	}, []string{"result"})
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(checks); err != nil {
			return nil, fmt.Errorf("gitlab: registering metrics: %w", err)
		}
	}
	return &Backend{
		client:      client,
		tokens:      tokens,
		inFlight:    make(chan struct{}, cfg.TokenChecksInFlight),
		known:       newKnownTokens(cfg.Now),
		checks:      checks,
		check:       cfg.PATCheck,
		timeout:     cfg.Timeout,
		concurrency: cfg.Concurrency,
		now:         cfg.Now,
		paths:       newPathCache(cfg.PathCacheTTL, cfg.Now),
	}, nil
}

// newClient builds a GitLab client with its own rate limit (requests per second,
// burst one second's worth; negative: none) over the shared HTTP client.
func newClient(cfg Config, hc *http.Client, limit float64) (*gl.Client, error) {
	limiter := rate.NewLimiter(rate.Inf, 0)
	if limit > 0 {
		limiter = rate.NewLimiter(rate.Limit(limit), max(1, int(limit)))
	}
	client, err := gl.NewClient(cfg.Token,
		gl.WithBaseURL(cfg.URL),
		gl.WithHTTPClient(hc),
		// A custom limiter also stops client-go from re-tuning itself from GitLab's
		// RateLimit-* headers: the operator's setting is what holds.
		gl.WithCustomLimiter(limiter),
		gl.WithCustomRetry(retryPolicy),
		gl.WithCustomRetryMax(cfg.Retries),
		gl.WithCustomRetryWaitMinMax(50*time.Millisecond, 250*time.Millisecond),
		gl.WithCustomBackoff(retryablehttp.LinearJitterBackoff),
		gl.WithUserAgent("kubegate"),
	)
	if err != nil {
		return nil, fmt.Errorf("gitlab: %w", err)
	}
	return client, nil
}

// httpClient builds the HTTP client: the caller's transport (or a pooled default) with
// the answer size bounded, and the operation timeout as a last-resort bound on a
// single exchange.
func httpClient(cfg Config) *http.Client {
	var base http.RoundTripper
	if cfg.HTTPClient != nil && cfg.HTTPClient.Transport != nil {
		base = cfg.HTTPClient.Transport
	} else {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.MaxIdleConnsPerHost = 32
		t.ResponseHeaderTimeout = cfg.Timeout
		base = t
	}
	return &http.Client{
		Transport: limitedBody{base},
		Timeout:   cfg.Timeout,
		// GitLab's API does not redirect; following one could send the service token
		// elsewhere.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// limitedBody makes every response body fail once it exceeds maxBody, so a huge or
// endless answer ends as a decoding error instead of filling memory.
type limitedBody struct{ next http.RoundTripper }

func (l limitedBody) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := l.next.RoundTrip(r)
	if err != nil {
		return nil, err
	}
	resp.Body = &capped{ReadCloser: resp.Body, left: maxBody}
	return resp, nil
}

type capped struct {
	io.ReadCloser
	left int64
}

var errTooLarge = fmt.Errorf("GitLab's answer is larger than %d bytes", maxBody)

func (c *capped) Read(p []byte) (int, error) {
	if c.left <= 0 {
		return 0, errTooLarge
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.ReadCloser.Read(p)
	c.left -= int64(n)
	return n, err
}

// retryPolicy retries only what cannot have changed anything and may succeed on a
// second try: a connection that was never established (the request did not reach
// GitLab), and a 502/503/504 from GitLab or a proxy in front of it. Every kubegate
// call is a read (POST /admin/token only looks a token up), so resending is safe; a
// timeout is not retried (the operation's deadline is spent), nor is a 429 (retrying
// would add to the load that caused it).
func retryPolicy(ctx context.Context, resp *http.Response, err error) (bool, error) {
	if ctx.Err() != nil {
		return false, ctx.Err()
	}
	if err != nil {
		var op *net.OpError
		return errors.As(err, &op) && op.Op == "dial", nil
	}
	switch resp.StatusCode {
	case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return true, nil
	}
	return false, nil
}

// answer is the outcome of one GitLab call: the HTTP status when GitLab answered, or
// the failure that kept it from answering usefully.
type answer struct {
	endpoint string // e.g. "GET /users/:id", for error messages (no ids, no tokens)
	status   int    // 0 when no HTTP answer was received
	err      error  // transport failure or malformed body; nil for any HTTP status
}

// ok reports a 2xx answer with a well-formed body.
func (a answer) ok() bool { return a.err == nil && a.status >= 200 && a.status < 300 }

// unavailable describes why the answer cannot be used, as a 503.
func (a answer) unavailable() *identity.Error {
	switch {
	case a.err != nil:
		return identity.SourceUnavailable(sourceName, fmt.Errorf("%s: %w", a.endpoint, a.err))
	case a.status == http.StatusUnauthorized || a.status == http.StatusForbidden:
		return identity.SourceUnavailable(sourceName, fmt.Errorf("%s: GitLab refused kubegate's service token (%d): check the token file, its scopes and, for --gitlab-pat-check=admin, that it is an administrator's", a.endpoint, a.status))
	default:
		return identity.SourceUnavailable(sourceName, fmt.Errorf("%s: GitLab answered %d", a.endpoint, a.status))
	}
}

// call performs one request and decodes a 2xx JSON answer into v. The error in the
// returned answer never includes GitLab's body or the request: either could carry a
// token.
func (b *Backend) call(ctx context.Context, endpoint, method, path string, body, v any, opts ...gl.RequestOptionFunc) answer {
	return callOn(ctx, b.client, endpoint, method, path, body, v, opts...)
}

// callOn is call on a given client, i.e. from that client's rate budget.
func callOn(ctx context.Context, c *gl.Client, endpoint, method, path string, body, v any, opts ...gl.RequestOptionFunc) answer {
	a := answer{endpoint: endpoint}
	req, err := c.NewRequest(method, path, body, append(opts, gl.WithContext(ctx)))
	if err != nil {
		a.err = fmt.Errorf("building the request: %w", err)
		return a
	}
	resp, err := c.Do(req, v)
	if resp != nil {
		a.status = resp.StatusCode
	}
	switch {
	case err == nil:
	case a.status == 0:
		a.err = transportError(ctx, err)
	case a.status >= 200 && a.status < 300:
		// Do decodes only 2xx bodies, so this is a malformed (or oversized) answer.
		a.err = fmt.Errorf("GitLab's answer is not the JSON its API documents: %w", decodeError(err))
	}
	return a
}

// transportError reduces a client failure to its cause without the URL's query (none
// of ours carries a secret, but the habit costs nothing).
func transportError(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("no answer within the timeout (--gitlab-timeout): %w", ctx.Err())
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// decodeError keeps a JSON error's kind and offset; encoding/json errors never quote
// more than one character of the input.
func decodeError(err error) error {
	if errors.Is(err, errTooLarge) {
		return errTooLarge
	}
	return err
}
