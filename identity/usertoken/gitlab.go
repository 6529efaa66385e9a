package usertoken

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	gl "gitlab.com/gitlab-org/api/client-go"

	"kubegate.dev/kubegate/identity/tokencache"
)

// ScopeK8sProxy is the only scope get-token asks for, and the only one GitLab lets a
// user give a token created through POST /user/personal_access_tokens.
const ScopeK8sProxy = "k8s_proxy"

// Defaults for GitLabConfig.
const (
	DefaultExpiryDuration = 24 * time.Hour
	MinExpiryDuration     = 24 * time.Hour
	DefaultTimeout        = 30 * time.Second
)

// GitLabConfig configures the GitLab source.
type GitLabConfig struct {
	// URL is GitLab's base URL, e.g. https://gitlab.example.com.
	URL string
	// InsecureHTTPForTests allows an http:// URL, which sends the user's own GitLab
	// token in clear text: for a GitLab stand-in in tests only.
	InsecureHTTPForTests bool
	// Token is the user's own GitLab token (api scope), used to create the k8s_proxy
	// tokens; see ResolveGitLabToken.
	Token string
	// ExpiryDuration: the created token expires at 00:00 UTC of the date reached
	// after it (see ExpiryDate). At least MinExpiryDuration; zero means the default.
	ExpiryDuration time.Duration
	// CheckRevoked asks GitLab whether a cached token still works before reusing it.
	CheckRevoked bool
	// Cache keeps created tokens between invocations; nil creates one every time.
	Cache *tokencache.Cache
	// Timeout bounds each GitLab call; zero means DefaultTimeout.
	Timeout time.Duration
	// HTTPClient supplies the transport (custom TLS, tests); nil means a default.
	HTTPClient *http.Client
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Warnf receives warnings that do not stop get-token (a token that was created
	// but could not be cached). nil drops them.
	Warnf func(format string, args ...any)
}

// GitLab creates k8s_proxy personal access tokens for the user, and answers the
// questions update-kubeconfig asks before writing a kubeconfig.
type GitLab struct {
	cfg    GitLabConfig
	url    string
	client *gl.Client
}

// NewGitLab checks the configuration and builds the client; it does not contact GitLab.
func NewGitLab(cfg GitLabConfig) (*GitLab, error) {
	base, err := NormalizeGitLabURL(cfg.URL)
	if err != nil {
		return nil, err
	}
	if err := RequireHTTPS(base, cfg.InsecureHTTPForTests); err != nil {
		return nil, err
	}
	if cfg.Token == "" {
		return nil, ErrNoGitLabToken
	}
	if cfg.ExpiryDuration == 0 {
		cfg.ExpiryDuration = DefaultExpiryDuration
	}
	if cfg.ExpiryDuration < MinExpiryDuration {
		return nil, fmt.Errorf("--token-expiry-duration %s is too short: GitLab tokens end at a day boundary, so it must be at least %s", cfg.ExpiryDuration, MinExpiryDuration)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Warnf == nil {
		cfg.Warnf = func(string, ...any) {}
	}
	hc := &http.Client{Timeout: cfg.Timeout}
	if cfg.HTTPClient != nil && cfg.HTTPClient.Transport != nil {
		hc.Transport = cfg.HTTPClient.Transport
	}
	// GitLab's API does not redirect; following one could send the user's token elsewhere.
	hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	client, err := gl.NewClient(cfg.Token,
		gl.WithBaseURL(base),
		gl.WithHTTPClient(hc),
		// No retries: a retried POST could create a second token, and a person is
		// waiting for kubectl; an error that says what happened serves them better.
		gl.WithoutRetries(),
		gl.WithUserAgent("kubegate"),
	)
	if err != nil {
		return nil, fmt.Errorf("--gitlab-url %q: %w", cfg.URL, err)
	}
	return &GitLab{cfg: cfg, url: base, client: client}, nil
}

// NormalizeGitLabURL accepts GitLab's base URL with or without a trailing / or
// /api/v4 and returns it without either.
func NormalizeGitLabURL(raw string) (string, error) {
	u, err := url.Parse(strings.TrimSpace(raw))
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("--gitlab-url %q must be GitLab's address, such as https://gitlab.example.com", raw)
	}
	u.Path = strings.TrimSuffix(strings.TrimSuffix(u.Path, "/"), "/api/v4")
	u.Path = strings.TrimSuffix(u.Path, "/")
	u.RawPath = ""
	return u.String(), nil
}

// RequireHTTPS refuses a plain-http GitLab URL (normalized) unless insecure, the
// --gitlab-insecure-http-for-tests flag, allows it: the user's GitLab token (api
// scope) would travel in clear text.
func RequireHTTPS(base string, insecure bool) error {
	if strings.HasPrefix(base, "http:") && !insecure {
		return fmt.Errorf("--gitlab-url %s is plain http: your GitLab token would be sent unencrypted; use https:// (only a test GitLab may be reached over http, with --gitlab-insecure-http-for-tests)", base)
	}
	return nil
}

// URL is the normalized GitLab base URL.
func (g *GitLab) URL() string { return g.url }

// cacheKey identifies the user's tokens: one GitLab, one user token. A digest of the
// user's token (not the token) separates users sharing a machine account, and gives a
// replaced GitLab token a fresh entry. The token created is not tied to an agent:
// pat:<agent-id>:<token> names the agent, so one cached token serves every agent.
func (g *GitLab) cacheKey() string {
	sum := sha256.Sum256([]byte(g.cfg.Token))
	return "gitlab\x00" + g.url + "\x00" + hex.EncodeToString(sum[:])
}

// Token returns a cached token that is valid for more than the ExecCredential buffer
// (and, with CheckRevoked, that GitLab still accepts), or creates a new one.
func (g *GitLab) Token(ctx context.Context) (Token, error) {
	if g.cfg.Cache == nil {
		e, err := g.create(ctx)
		if err != nil {
			return Token{}, err
		}
		return Token{Secret: e.Token, ExpiresAt: e.ExpiresAt}, nil
	}
	var check tokencache.Check
	if g.cfg.CheckRevoked {
		check = g.stillValid
	}
	e, _, err := g.cfg.Cache.Get(ctx, g.cacheKey(), check, g.create)
	if err != nil {
		if e.Token == "" {
			return Token{}, err
		}
		g.cfg.Warnf("%v", err)
	}
	return Token{Secret: e.Token, ExpiresAt: e.ExpiresAt}, nil
}

// create makes a k8s_proxy personal access token for the user:
// POST /user/personal_access_tokens
// (https://docs.gitlab.com/api/user_tokens/#create-a-personal-access-token), which
// GitLab restricts to the k8s_proxy scope. glab's `cluster agent get-token` creates its
// tokens the same way.
func (g *GitLab) create(ctx context.Context) (tokencache.Entry, error) {
	ctx, cancel := context.WithTimeout(ctx, g.cfg.Timeout)
	defer cancel()
	now := g.cfg.Now()
	day := ExpiryDate(now, g.cfg.ExpiryDuration, ExpiryBuffer)
	suffix := make([]byte, 6)
	if _, err := rand.Read(suffix); err != nil {
		return tokencache.Entry{}, err
	}
	name := "kubegate-k8s-proxy-" + hex.EncodeToString(suffix)
	pat, resp, err := g.client.Users.CreatePersonalAccessTokenForCurrentUser(&gl.CreatePersonalAccessTokenForCurrentUserOptions{
		Name:        gl.Ptr(name),
		Description: gl.Ptr("Created by kubegate get-token for kubectl; expires on its own."),
		Scopes:      gl.Ptr([]string{ScopeK8sProxy}),
		ExpiresAt:   gl.Ptr(gl.ISOTime(day)),
	}, gl.WithContext(ctx))
	if err != nil {
		return tokencache.Entry{}, g.explain(ctx, "create a k8s_proxy token (POST /user/personal_access_tokens)", resp, err, createHints)
	}
	if pat == nil || pat.Token == "" || pat.ExpiresAt == nil {
		return tokencache.Entry{}, fmt.Errorf("GitLab at %s answered POST /user/personal_access_tokens without the token or its expiry date; kubegate cannot use that answer", g.url)
	}
	if !slices.Equal(pat.Scopes, []string{ScopeK8sProxy}) {
		return tokencache.Entry{}, fmt.Errorf("GitLab at %s created token %q with scopes %v instead of only %s; kubegate will not hand it to kubectl: revoke it in GitLab (User settings > Access tokens)", g.url, pat.Name, pat.Scopes, ScopeK8sProxy)
	}
	// GitLab ends the token's life at 00:00 UTC on its expires_at date.
	return tokencache.Entry{
		Token:     pat.Token,
		ExpiresAt: time.Time(*pat.ExpiresAt).UTC(),
		ID:        pat.ID,
		Name:      pat.Name,
		CreatedAt: now.UTC(),
	}, nil
}

// stillValid asks GitLab, with the user's own GitLab token, about the cached token
// by its id: GET /personal_access_tokens/:id
// (https://docs.gitlab.com/api/personal_access_tokens/, "get a single personal access
// token"; a user may read their own tokens). A revoked, inactive or vanished (404)
// token is replaced. Asking with the user's token rather than the cached k8s_proxy one
// does not depend on which API calls GitLab allows a k8s_proxy token.
func (g *GitLab) stillValid(ctx context.Context, e tokencache.Entry) (bool, error) {
	if e.ID <= 0 {
		return false, nil // no id to ask about: make a new token
	}
	ctx, cancel := context.WithTimeout(ctx, g.cfg.Timeout)
	defer cancel()
	pat, resp, err := g.client.PersonalAccessTokens.GetSinglePersonalAccessTokenByID(e.ID, gl.WithContext(ctx))
	if err != nil {
		if resp != nil && resp.StatusCode == http.StatusNotFound {
			return false, nil
		}
		return false, g.explain(ctx, "check the cached token (--check-revoked, GET /personal_access_tokens/:id)", resp, err, nil)
	}
	return pat != nil && !pat.Revoked && pat.Active, nil
}

// CurrentUser returns the username the user's GitLab token belongs to (GET /user), so
// that update-kubeconfig can find out early whether GitLab is reachable and accepts
// the token.
func (g *GitLab) CurrentUser(ctx context.Context) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, g.cfg.Timeout)
	defer cancel()
	u, resp, err := g.client.Users.CurrentUser(gl.WithContext(ctx))
	if err != nil {
		return "", g.explain(ctx, "identify you (GET /user)", resp, err, nil)
	}
	return u.Username, nil
}

// ErrAgentNotFound is returned by CheckAgent when GitLab does not show the agent.
var ErrAgentNotFound = errors.New("agent not found")

// Agent is what CheckAgent and ListAgents learn about an agent.
type Agent struct {
	ID        int64
	Name      string
	Project   string // the configuration project's full path
	ProjectID int64  // the configuration project's id
	CreatedAt time.Time
}

func agentOf(a *gl.Agent) Agent {
	out := Agent{ID: a.ID, Name: a.Name, Project: a.ConfigProject.PathWithNamespace, ProjectID: a.ConfigProject.ID}
	if a.CreatedAt != nil {
		out.CreatedAt = a.CreatedAt.UTC()
	}
	return out
}

// maxAgentPages bounds ListAgents: 100 agents a page, so 100,000 agents, far more
// than a project has; a GitLab (or something in front of it) that keeps announcing
// another page is refused rather than followed for ever.
const maxAgentPages = 1000

// ListAgents lists a project's agents, every page of
// GET /projects/:id/cluster_agents
// (https://docs.gitlab.com/api/cluster_agents/#list-the-agents-for-a-project, the
// Developer role in that project), as glab cluster agent list does. Pages are
// followed as https://docs.gitlab.com/api/rest/#pagination documents: X-Next-Page,
// or the Link header's rel="next" when a proxy dropped the X- headers; the pages
// asked for must advance. The whole listing is bounded by the timeout.
func (g *GitLab) ListAgents(ctx context.Context, project string) ([]Agent, error) {
	ctx, cancel := context.WithTimeout(ctx, g.cfg.Timeout)
	defer cancel()
	opt := &gl.ListAgentsOptions{ListOptions: gl.ListOptions{Page: 1, PerPage: 100}}
	var out []Agent
	for range maxAgentPages {
		agents, resp, err := g.client.ClusterAgents.ListAgents(project, opt, gl.WithContext(ctx))
		if err != nil {
			if resp != nil && resp.StatusCode == http.StatusNotFound {
				return nil, &statusError{status: http.StatusNotFound, err: fmt.Errorf("GitLab at %s shows no project %s (or you are not a Developer or higher there, which listing its agents needs): check --project", g.url, project)}
			}
			return nil, g.explain(ctx, "list the agents of project "+project+" (GET /projects/:id/cluster_agents)", resp, err, nil)
		}
		for _, a := range agents {
			out = append(out, agentOf(a))
		}
		next := resp.NextPage
		if next == 0 && resp.NextLink != "" {
			if u, err := url.Parse(resp.NextLink); err == nil {
				next, _ = strconv.ParseInt(u.Query().Get("page"), 10, 64)
			}
		}
		switch {
		case next == 0:
			return out, nil
		case next <= opt.Page:
			return nil, fmt.Errorf("GitLab at %s answered page %d of the agents of %s with a next page %d: the listing does not advance, so it was stopped", g.url, opt.Page, project, next)
		}
		opt.Page = next
	}
	return nil, fmt.Errorf("GitLab at %s kept announcing more pages of the agents of %s after %d pages: the listing was stopped", g.url, project, maxAgentPages)
}

// CheckAgent looks an agent up in its configuration project:
// GET /projects/:id/cluster_agents/:agent_id
// (https://docs.gitlab.com/api/cluster_agents/#get-details-about-an-agent), which
// needs the Developer role in that project. GitLab has no API that finds an agent by
// its id alone (glab's update-kubeconfig also needs the project, --repo), so without
// the project the agent cannot be checked before kubectl first uses it.
func (g *GitLab) CheckAgent(ctx context.Context, project string, agentID int64) (Agent, error) {
	ctx, cancel := context.WithTimeout(ctx, g.cfg.Timeout)
	defer cancel()
	a, resp, err := g.client.ClusterAgents.GetAgent(project, agentID, gl.WithContext(ctx))
	if err != nil {
		if resp != nil && resp.StatusCode == http.StatusNotFound {
			return Agent{}, fmt.Errorf("%w: GitLab at %s shows no agent %d in project %s (or you are not a Developer or higher there): check the agent id under Operate > Kubernetes clusters in that project, and --project",
				ErrAgentNotFound, g.url, agentID, project)
		}
		return Agent{}, g.explain(ctx, "look up agent "+fmt.Sprint(agentID)+" in project "+project, resp, err, nil)
	}
	return agentOf(a), nil
}

// createHints say what to do when GitLab refuses to create a token, by status.
var createHints = map[int]string{
	http.StatusForbidden:  "your GitLab token may create tokens only with the api scope: create one with the api scope and use it in GITLAB_TOKEN or --gitlab-token-file",
	http.StatusNotFound:   "this GitLab has no POST /user/personal_access_tokens (it came with gitlab-org/gitlab!131923): upgrade GitLab, or create a token with the k8s_proxy scope by hand and pass it with --token-file",
	http.StatusBadRequest: "if GitLab objects to expires_at, choose a shorter --token-expiry-duration (GitLab limits a token's lifetime)",
}

// explain turns a failed GitLab call into a message that says what went wrong and
// what to do. It never includes a token: client-go's errors name the method, URL and
// GitLab's message only.
func (g *GitLab) explain(ctx context.Context, what string, resp *gl.Response, err error, hints map[int]string) error {
	if resp == nil || resp.Response == nil {
		cause := err
		var ue *url.Error
		if errors.As(err, &ue) {
			cause = ue.Err
		}
		if ctx.Err() != nil {
			cause = fmt.Errorf("no answer within %s", g.cfg.Timeout)
		}
		return fmt.Errorf("cannot reach GitLab at %s to %s: %v; check --gitlab-url, your network and proxy settings, then try again", g.url, what, cause)
	}
	status := resp.StatusCode
	detail := ""
	var er *gl.ErrorResponse
	if errors.As(err, &er) && er.Message != "" {
		detail = ": " + er.Message
	}
	hint := hints[status]
	switch {
	case hint != "":
	case status == http.StatusUnauthorized:
		hint = "it does not accept your GitLab token (unknown, expired or revoked): create a new personal access token with the api scope and set GITLAB_TOKEN or --gitlab-token-file"
	case status == http.StatusForbidden:
		hint = "your GitLab token lacks the scope or role this needs (the api scope covers everything kubegate asks)"
	case status == http.StatusTooManyRequests || status >= 500:
		hint = "GitLab is overloaded or failing; try again in a minute"
	default:
		hint = "see GitLab's message"
	}
	return &statusError{status: status, err: fmt.Errorf("GitLab at %s refused to %s (%d %s%s): %s", g.url, what, status, http.StatusText(status), detail, hint)}
}

// statusError is a refusal by GitLab, with its HTTP status.
type statusError struct {
	status int
	err    error
}

func (e *statusError) Error() string { return e.err.Error() }
func (e *statusError) Unwrap() error { return e.err }

// HTTPStatus is the HTTP status GitLab refused with, 0 when err is not such a
// refusal (GitLab unreachable, or no GitLab call at all).
func HTTPStatus(err error) int {
	var se *statusError
	if errors.As(err, &se) {
		return se.status
	}
	return 0
}
