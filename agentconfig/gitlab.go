package agentconfig

// The GitLab source: an agent's .gitlab/agents/<name>/config.yaml read from its
// config project through GitLab's repository files API
// (https://docs.gitlab.com/api/repository_files/), the way KAS reads it.
//
// Re-reads are conditional, as that page documents: "In addition to the GET
// method, you can also use HEAD to get just file metadata" — a HEAD of the same URL
// answers with the file's X-Gitlab-Blob-Id (git's blob id, which changes exactly
// when the content does) and no body. Every interval (and on a webhook call,
// Refresh) the source sends the HEAD; only when the blob id differs from the one in
// service does it GET the file (JSON, content base64-encoded, with content_sha256,
// which is checked). The API has no ETag/If-None-Match contract for this endpoint,
// so the blob id is the validator.
//
// ref "HEAD" is the project's default branch ("Use HEAD to automatically use the
// default branch", same page).

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	gl "gitlab.com/gitlab-org/api/client-go"

	"kubegate.dev/kubegate/gateway"
)

// Defaults of GitLabConfig's zero fields.
const (
	// DefaultGitLabInterval is how often the file is checked for a change: the
	// gateway configuration's default.
	DefaultGitLabInterval = gateway.DefaultGitLabInterval
	// DefaultGitLabTimeout bounds one read (the HEAD, and the GET when there is one).
	DefaultGitLabTimeout = 10 * time.Second
	// DefaultMaxConfigSize bounds the file. GitLab's answer is the content
	// base64-encoded in JSON, 4/3 of it, and the identity source's transport refuses
	// answers over 1 MiB; an agent configuration with 500 projects and 500 groups is
	// well under 100 KiB.
	DefaultMaxConfigSize = 512 << 10
	// MaxRetryAfter caps how long a 429's Retry-After holds the next read back.
	MaxRetryAfter = time.Hour
)

// Results of one read: the values of the fetches metric's result label.
const (
	ResultChanged      = "changed"      // a new version was delivered
	ResultUnchanged    = "unchanged"    // the HEAD showed the blob in service
	ResultNotFound     = "not_found"    // 404: no such project, ref or file (or the token cannot see the project)
	ResultUnauthorized = "unauthorized" // 401: GitLab refuses kubegate's service token
	ResultForbidden    = "forbidden"    // 403: the token lacks a scope (read_api, read_repository)
	ResultRateLimited  = "rate_limited" // 429, Retry-After honoured
	ResultServerError  = "server_error" // 5xx
	ResultStatus       = "bad_status"   // any other answer that is not 200
	ResultTimeout      = "timeout"      // no answer within the timeout
	ResultUnreachable  = "unreachable"  // no connection, TLS failure
	ResultTooLarge     = "too_large"    // the file exceeds the bound
	ResultMalformed    = "malformed"    // an answer that is not what the API documents
)

// ConfigPath is where GitLab keeps an agent's configuration in its config project.
func ConfigPath(agentName string) string { return ".gitlab/agents/" + agentName + "/config.yaml" }

// GitLabConfig configures one agent's GitLab source.
type GitLabConfig struct {
	// Client reaches GitLab with kubegate's service token: the identity source's
	// (backends.Backends.AgentConfigClient), never a second construction.
	Client *gl.Client
	// AgentID labels the metrics and names the agent in errors.
	AgentID int64
	// AgentName is the <name> of .gitlab/agents/<name>/config.yaml.
	AgentName string
	// ProjectID is the agent's config project.
	ProjectID int64
	// Ref is the branch, tag or commit; "" is the project's default branch.
	Ref string
	// Interval between checks; zero is DefaultGitLabInterval.
	Interval time.Duration
	// Timeout bounds one read; zero is DefaultGitLabTimeout.
	Timeout time.Duration
	// MaxSize bounds the file in bytes; zero is DefaultMaxConfigSize.
	MaxSize int64
	// Metrics are shared by all agents' sources; nil keeps them unregistered.
	Metrics *GitLabMetrics
	// Log receives one line per change and per failure; nil discards.
	Log *slog.Logger
	// Now is the clock of the last-good-read metric; nil is time.Now.
	Now func() time.Time
}

// GitLab is an agent configuration held in GitLab. Make it with NewGitLab.
type GitLab struct {
	cfg     GitLabConfig
	path    string
	ref     string
	agent   string // the metrics' agent label
	refresh chan struct{}

	mu     sync.Mutex
	blob   string // blob id of the version in service; "" before the first
	commit string
}

var _ Source = (*GitLab)(nil)

// NewGitLab checks cfg and builds the source; it does not contact GitLab.
func NewGitLab(cfg GitLabConfig) (*GitLab, error) {
	var errs []error
	if cfg.Client == nil {
		errs = append(errs, errors.New("agent configurations are read from GitLab only with --identity-source=gitlab: set it (with --gitlab-url and --gitlab-token-file) or give the agent a file source"))
	}
	// GitLab's rule for agent names also keeps the path inside .gitlab/agents/.
	if !gateway.ValidAgentName(cfg.AgentName) {
		errs = append(errs, fmt.Errorf("agent name %q is not a GitLab agent name (lowercase letters, digits and '-', at most 63): it names .gitlab/agents/<name>/config.yaml", cfg.AgentName))
	}
	if cfg.ProjectID <= 0 {
		errs = append(errs, fmt.Errorf("agent %d: the config project id must be a positive number", cfg.AgentID))
	}
	if cfg.Interval < 0 || cfg.Timeout < 0 || cfg.MaxSize < 0 {
		errs = append(errs, errors.New("the interval, timeout and size bound must not be negative"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if cfg.Interval == 0 {
		cfg.Interval = DefaultGitLabInterval
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultGitLabTimeout
	}
	if cfg.MaxSize == 0 {
		cfg.MaxSize = DefaultMaxConfigSize
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewGitLabMetrics()
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	ref := cfg.Ref
	if ref == "" {
		ref = "HEAD"
	}
	g := &GitLab{cfg: cfg, path: ConfigPath(cfg.AgentName), ref: ref,
		agent: strconv.FormatInt(cfg.AgentID, 10), refresh: make(chan struct{}, 1)}
	cfg.Metrics.stale.WithLabelValues(g.agent).Set(1) // nothing read yet
	return g, nil
}

// NewGitLabFor builds the GitLab source of one agent of the gateway configuration
// (its agent_config.gitlab: ref, interval). client is the identity source's
// (backends.Backends.AgentConfigClient); metrics are shared by all agents.
func NewGitLabFor(a gateway.Agent, client *gl.Client, metrics *GitLabMetrics, log *slog.Logger) (*GitLab, error) {
	src := a.AgentConfig.GitLab
	if src == nil {
		return nil, fmt.Errorf("agent %d (%s): its agent_config is not read from GitLab", a.ID, a.Name)
	}
	return NewGitLab(GitLabConfig{Client: client, AgentID: a.ID, AgentName: a.Name, ProjectID: a.ConfigProjectID,
		Ref: src.Ref, Interval: src.Interval.Duration, Metrics: metrics, Log: log})
}

// ProjectID is the config project the source reads from (the webhook matches push
// events on it).
func (g *GitLab) ProjectID() int64 { return g.cfg.ProjectID }

// Refresh asks for a check now (a webhook call). It never blocks; requests that
// arrive while one is pending are one check. A Retry-After still in force defers it.
func (g *GitLab) Refresh() {
	select {
	case g.refresh <- struct{}{}:
	default:
	}
}

// Run implements Source: it checks now, then every interval and on Refresh.
func (g *GitLab) Run(ctx context.Context, onChange func(Version), onError func(error)) error {
	for {
		wait := g.cfg.Interval
		var notBefore time.Time
		if err := g.check(ctx, onChange); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var fe *FetchError
			if errors.As(err, &fe) && fe.RetryAfter > 0 {
				notBefore = time.Now().Add(fe.RetryAfter)
				wait = max(wait, fe.RetryAfter)
			}
			onError(err)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		case <-g.refresh:
			t.Stop()
			if d := time.Until(notBefore); d > 0 {
				// GitLab asked for quiet: the webhook's check waits it out.
				t := time.NewTimer(d)
				select {
				case <-ctx.Done():
					t.Stop()
					return nil
				case <-t.C:
				}
			}
		}
	}
}

// FetchError is a read that failed; the version in service stays.
type FetchError struct {
	AgentID   int64
	ProjectID int64
	Path, Ref string
	// Result is the fetches metric's result label (ResultNotFound, ...).
	Result string
	// Status is GitLab's HTTP status; 0 when there was no answer.
	Status int
	// RetryAfter is a 429's Retry-After (capped at MaxRetryAfter); 0 otherwise.
	RetryAfter time.Duration
	Err        error
}

func (e *FetchError) Error() string {
	return fmt.Sprintf("agent %d: reading %s of project %d at %s from GitLab: %v; the configuration in service stays",
		e.AgentID, e.Path, e.ProjectID, e.Ref, e.Err)
}

func (e *FetchError) Unwrap() error { return e.Err }

// check is one conditional read: HEAD, and GET when the blob changed.
func (g *GitLab) check(ctx context.Context, onChange func(Version)) error {
	ctx, cancel := context.WithTimeout(ctx, g.cfg.Timeout)
	defer cancel()
	v, result, err := g.read(ctx)
	m := g.cfg.Metrics
	m.fetches.WithLabelValues(g.agent, result).Inc()
	if err != nil {
		m.stale.WithLabelValues(g.agent).Set(1)
		g.cfg.Log.Warn("agent configuration not read from GitLab; the one in service stays", "agent", g.cfg.AgentID,
			"project", g.cfg.ProjectID, "path", g.path, "ref", g.ref, "result", result, "error", err.Error())
		return err
	}
	m.lastGood.WithLabelValues(g.agent).Set(float64(g.cfg.Now().UnixNano()) / 1e9)
	m.stale.WithLabelValues(g.agent).Set(0)
	if v != nil {
		g.cfg.Log.Info("agent configuration changed in GitLab", "agent", g.cfg.AgentID, "project", g.cfg.ProjectID,
			"path", g.path, "ref", g.ref, "commit", g.commit, "blob", g.blob)
		onChange(*v)
	}
	return nil
}

// read returns the new version, or nil when the one in service is current.
func (g *GitLab) read(ctx context.Context) (*Version, string, error) {
	ref := g.ref
	meta, resp, err := g.cfg.Client.RepositoryFiles.GetFileMetaData(g.cfg.ProjectID, g.path,
		&gl.GetFileMetaDataOptions{Ref: &ref}, gl.WithContext(ctx))
	if err != nil {
		fe := g.fail(ctx, "HEAD", resp, err)
		return nil, fe.Result, fe
	}
	if meta.BlobID == "" {
		return nil, ResultMalformed, g.failure(ResultMalformed, resp.StatusCode, 0,
			errors.New("GitLab's HEAD answer has no X-Gitlab-Blob-Id: is this GitLab's repository files API?"))
	}
	if meta.Size > g.cfg.MaxSize {
		return nil, ResultTooLarge, g.tooLarge(meta.Size)
	}
	g.mu.Lock()
	same := meta.BlobID == g.blob
	g.mu.Unlock()
	if same {
		return nil, ResultUnchanged, nil
	}
	f, resp, err := g.cfg.Client.RepositoryFiles.GetFile(g.cfg.ProjectID, g.path, &gl.GetFileOptions{Ref: &ref}, gl.WithContext(ctx))
	if err != nil {
		fe := g.fail(ctx, "GET", resp, err)
		return nil, fe.Result, fe
	}
	if f.FilePath != "" && f.FilePath != g.path {
		return nil, ResultMalformed, g.failure(ResultMalformed, resp.StatusCode, 0,
			fmt.Errorf("GitLab answered with the file %q instead of %s", f.FilePath, g.path))
	}
	data, err := decodeContent(f, g.cfg.MaxSize)
	if errors.Is(err, errTooLarge) {
		return nil, ResultTooLarge, g.tooLarge(int64(base64.StdEncoding.DecodedLen(len(f.Content))))
	}
	if err != nil || f.BlobID == "" {
		if err == nil {
			err = errors.New("the answer has no blob_id")
		}
		return nil, ResultMalformed, g.failure(ResultMalformed, resp.StatusCode, 0, fmt.Errorf("GitLab's answer is not the file the API documents: %w", err))
	}
	g.mu.Lock()
	same = f.BlobID == g.blob
	g.blob, g.commit = f.BlobID, f.CommitID
	g.mu.Unlock()
	if same { // changed and changed back between the HEAD and the GET
		return nil, ResultUnchanged, nil
	}
	return &Version{Name: g.versionName(f.CommitID), Data: data}, ResultChanged, nil
}

var errTooLarge = errors.New("too large")

// decodeContent decodes and checks a GET answer's content.
func decodeContent(f *gl.File, maxSize int64) ([]byte, error) {
	if f.Encoding != "base64" {
		return nil, fmt.Errorf("encoding %q, not base64", f.Encoding)
	}
	if int64(base64.StdEncoding.DecodedLen(len(f.Content))) > maxSize+3 {
		return nil, errTooLarge
	}
	data, err := base64.StdEncoding.DecodeString(f.Content)
	if err != nil {
		return nil, fmt.Errorf("content: %w", err)
	}
	if int64(len(data)) > maxSize {
		return nil, errTooLarge
	}
	if f.SHA256 != "" {
		sum := sha256.Sum256(data)
		if hex.EncodeToString(sum[:]) != f.SHA256 {
			return nil, errors.New("the content does not match its content_sha256")
		}
	}
	return data, nil
}

func (g *GitLab) versionName(commit string) string {
	if len(commit) > 12 {
		commit = commit[:12]
	}
	return fmt.Sprintf("gitlab:project/%d/%s@%s", g.cfg.ProjectID, g.path, commit)
}

func (g *GitLab) failure(result string, status int, retryAfter time.Duration, err error) *FetchError {
	return &FetchError{AgentID: g.cfg.AgentID, ProjectID: g.cfg.ProjectID, Path: g.path, Ref: g.ref,
		Result: result, Status: status, RetryAfter: retryAfter, Err: err}
}

func (g *GitLab) tooLarge(size int64) error {
	return g.failure(ResultTooLarge, http.StatusOK, 0, fmt.Errorf("the file has %d bytes, more than the %d allowed: is it the agent configuration?", size, g.cfg.MaxSize))
}

// fail classifies a failed call. Its message names the status and what to do,
// never a header or body (none carries a secret, but GitLab's answers are not
// kubegate's to repeat).
func (g *GitLab) fail(ctx context.Context, method string, resp *gl.Response, err error) *FetchError {
	status := 0
	if resp != nil && resp.Response != nil {
		status = resp.StatusCode
	}
	what := method + " /projects/:id/repository/files/:file_path"
	var timeout net.Error
	switch {
	case status == 0 && ctx.Err() != nil:
		return g.failure(ResultTimeout, 0, 0, fmt.Errorf("%s: no answer within %s", what, g.cfg.Timeout))
	case status == 0 && errors.As(err, &timeout) && timeout.Timeout():
		// The client's own bound on one exchange (--gitlab-timeout).
		return g.failure(ResultTimeout, 0, 0, fmt.Errorf("%s: no answer within the GitLab timeout (--gitlab-timeout)", what))
	case status == 0:
		cause := err
		var ue *url.Error
		if errors.As(err, &ue) {
			cause = ue.Err
		}
		return g.failure(ResultUnreachable, 0, 0, fmt.Errorf("%s: GitLab cannot be reached: %v", what, cause))
	case status == http.StatusOK:
		return g.failure(ResultMalformed, status, 0, fmt.Errorf("%s: GitLab's answer is not the JSON its API documents: %v", what, err))
	case status == http.StatusNotFound:
		return g.failure(ResultNotFound, status, 0, fmt.Errorf("%s: GitLab answered 404: the project, the ref or the file is not there, or kubegate's service token cannot see the project (it needs the Reporter role there, or to be an administrator's)", what))
	case status == http.StatusUnauthorized:
		return g.failure(ResultUnauthorized, status, 0, fmt.Errorf("%s: GitLab refused kubegate's service token (401): check --gitlab-token-file (expired or revoked?)", what))
	case status == http.StatusForbidden:
		return g.failure(ResultForbidden, status, 0, fmt.Errorf("%s: GitLab answered 403: the service token needs the read_api (or read_repository) scope", what))
	case status == http.StatusTooManyRequests:
		d := retryAfter(resp.Header.Get("Retry-After"), g.cfg.Now())
		return g.failure(ResultRateLimited, status, d, fmt.Errorf("%s: GitLab is rate-limiting kubegate (429); the next read waits %s", what, max(d, g.cfg.Interval)))
	case status >= 500:
		return g.failure(ResultServerError, status, 0, fmt.Errorf("%s: GitLab answered %d; it is retried at the next interval", what, status))
	default:
		return g.failure(ResultStatus, status, 0, fmt.Errorf("%s: GitLab answered %d", what, status))
	}
}

// retryAfter reads a Retry-After header: seconds or an HTTP date (RFC 9110
// §10.2.3), capped at MaxRetryAfter; 0 when absent or unreadable.
func retryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	var d time.Duration
	if s, err := strconv.ParseInt(v, 10, 64); err == nil {
		if s < 0 {
			return 0
		}
		d = time.Duration(min(s, int64(MaxRetryAfter/time.Second))) * time.Second
	} else if t, err := http.ParseTime(v); err == nil {
		d = t.Sub(now)
	}
	return min(max(d, 0), MaxRetryAfter)
}

// GitLabMetrics are the GitLab sources' metrics, one set for all agents.
type GitLabMetrics struct {
	fetches  *prometheus.CounterVec
	lastGood *prometheus.GaugeVec
	stale    *prometheus.GaugeVec
	webhooks *prometheus.CounterVec
}

// NewGitLabMetrics makes the metrics, unregistered.
func NewGitLabMetrics() *GitLabMetrics {
	return &GitLabMetrics{
		fetches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kubegate_agent_config_gitlab_fetches_total",
			Help: "Reads of agent configurations from GitLab, by agent id and result: changed, unchanged (the HEAD showed the version in service), or why the read failed (not_found, unauthorized, forbidden, rate_limited, server_error, bad_status, timeout, unreachable, too_large, malformed).",
		}, []string{"agent", "result"}),
		lastGood: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kubegate_agent_config_gitlab_last_success_timestamp_seconds",
			Help: "When each agent's configuration was last read from GitLab successfully (changed or unchanged), as a Unix time.",
		}, []string{"agent"}),
		stale: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kubegate_agent_config_gitlab_stale",
			Help: "1 when the last read of the agent's configuration from GitLab failed (or none succeeded yet): the configuration in service may be out of date; 0 after a successful read.",
		}, []string{"agent"}),
		webhooks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kubegate_agent_config_gitlab_webhooks_total",
			Help: "GitLab webhook calls, by result: refresh (a push to a config project; its agents are re-read), ignored (another event or project), unauthorized (wrong or missing X-Gitlab-Token; nothing read), bad_request.",
		}, []string{"result"}),
	}
}

// Register registers the metrics with reg.
func (m *GitLabMetrics) Register(reg prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{m.fetches, m.lastGood, m.stale, m.webhooks} {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("agentconfig: registering metrics: %w", err)
		}
	}
	return nil
}
