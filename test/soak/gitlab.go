package soak

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"sigs.k8s.io/yaml"

	"kubegate.dev/kubegate/identity/gitlab/gitlabtest"
)

// The GitLab phase: kubegate authz switches from the directory file to GitLab's REST
// API (identity/gitlab), served by the in-test GitLab double (gitlabtest, which
// follows GitLab's API documentation) holding the same users, groups, projects,
// memberships and tokens as the directory — so the expected-outcome model does not
// change — and the GitLab source then fails in four ways, each in its own window.
// The source and the directory cannot both serve one authz process, so this phase
// comes after the directory faults, once.

// GitLab flags of the phase: a GitLab lookup is bounded by gitlabTimeout, below
// Envoy's 5 s ext_authz timeout (a member's lookup is 1,000 calls, 8 at a time:
// on a busy 2-core machine that takes a second or two); answers are cached for
// gitlabCacheTTL, so a member asks GitLab again within each fault window.
const (
	gitlabTimeout  = 4 * time.Second
	gitlabCacheTTL = 5 * time.Second
	serviceToken   = "glpat-soak-kubegate-service"
)

// GitLabFaults are the faults of the GitLab phase, in order (gitlab-switch first).
var GitLabFaults = []string{"gitlab-switch", "gitlab-slow", "gitlab-5xx", "gitlab-429", "gitlab-gone"}

// gitlabSource is the GitLab double behind a listener of the harness's own on a
// fixed loopback port, so that "gone" (connection refused) can end and the same
// URL serve again.
type gitlabSource struct {
	double    *gitlabtest.Server
	addr      string
	tokenFile string

	mu  sync.Mutex
	srv *http.Server
}

// startGitLab fills a GitLab double from the directory and the generated tokens.
func (r *run) startGitLab() (*gitlabSource, error) {
	var d struct {
		Users []struct {
			ID       int64  `json:"id"`
			Username string `json:"username"`
		} `json:"users"`
		Groups []struct {
			ID   int64  `json:"id"`
			Path string `json:"path"`
		} `json:"groups"`
		Projects []struct {
			ID   int64  `json:"id"`
			Path string `json:"path"`
		} `json:"projects"`
		Memberships []struct {
			User, Group, Project, Role string
		} `json:"memberships"`
	}
	if err := yaml.Unmarshal(r.files.dirOrig, &d); err != nil {
		return nil, err
	}
	g := gitlabtest.New(time.Now())
	ids := map[string]int64{}
	for i, u := range d.Users {
		ids[u.Username] = u.ID
		g.AddUser(gitlabtest.User{ID: u.ID, Username: u.Username})
		g.AddToken(r.data.Tokens[u.Username], gitlabtest.Token{ID: 2 * u.ID, UserID: u.ID, Name: "good", Scopes: []string{"k8s_proxy"}})
		// The directory's bad token of the i-th user (realsize.Generate): revoked,
		// expired or without the k8s_proxy scope, in turn.
		bad := gitlabtest.Token{ID: 2*u.ID + 1, UserID: u.ID, Name: "bad", Scopes: []string{"k8s_proxy"}}
		switch i % 3 {
		case 0:
			bad.Revoked = true
		case 1:
			bad.ExpiresAt = "2025-01-01"
		default:
			bad.Scopes = []string{"read_api"}
		}
		g.AddToken(r.data.BadTokens[i], bad)
	}
	const serviceUser = 1 << 40
	g.AddUser(gitlabtest.User{ID: serviceUser, Username: "kubegate-service", Admin: true})
	g.AddToken(serviceToken, gitlabtest.Token{ID: serviceUser, UserID: serviceUser, Name: "kubegate", Scopes: []string{"api"}})
	for _, gr := range d.Groups {
		g.AddGroup(gr.ID, gr.Path)
	}
	for _, p := range d.Projects {
		g.AddProject(p.ID, p.Path)
	}
	for _, m := range d.Memberships {
		kind, path := "groups", m.Group
		if m.Project != "" {
			kind, path = "projects", m.Project
		}
		g.AddMember(kind, path, ids[m.User], levels[m.Role])
	}
	s := &gitlabSource{double: g, tokenFile: filepath.Join(r.dir, "inputs", "gitlab-token")}
	if err := os.WriteFile(s.tokenFile, []byte(serviceToken), 0o600); err != nil {
		g.Close()
		return nil, err
	}
	if err := s.serve("127.0.0.1:0"); err != nil {
		g.Close()
		return nil, err
	}
	return s, nil
}

// serve listens on addr (the same address again after gone) and serves the double.
func (s *gitlabSource) serve(addr string) error {
	var l net.Listener
	var err error
	for range 50 { // the old listener's port may take a moment to be free again
		if l, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("serving the GitLab double on %s: %w", addr, err)
	}
	s.mu.Lock()
	s.addr = l.Addr().String()
	s.srv = &http.Server{Handler: s.double.Config.Handler, ReadHeaderTimeout: 10 * time.Second}
	srv := s.srv
	s.mu.Unlock()
	go func() { _ = srv.Serve(l) }()
	return nil
}

// gone closes the listener and every connection: GitLab is unreachable.
func (s *gitlabSource) gone() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv != nil {
		_ = s.srv.Close()
		s.srv = nil
	}
}

func (s *gitlabSource) Close() {
	s.gone()
	s.double.Close()
}

// authzArgs are the flags that make kubegate authz use this GitLab.
func (s *gitlabSource) authzArgs() []string {
	return []string{"--identity-source", "gitlab", "--gitlab-url", "http://" + s.addr, "--gitlab-insecure-http-for-tests",
		"--gitlab-token-file", s.tokenFile, "--gitlab-timeout", gitlabTimeout.String(),
		// Every lookup of the soak comes from one authz: GitLab's own limits are what
		// the 429 fault plays, not kubegate's.
		"--gitlab-rate-limit", "-1", "--gitlab-token-rate-limit", "-1",
		"--cache-ttl", gitlabCacheTTL.String(), "--cache-failure-ttl", gitlabCacheTTL.String()}
}

var errNoGitLab = errors.New("soak: a GitLab fault before gitlab-switch")

func init() {
	hold := func(r *run) time.Duration { return max(2*r.cfg.Step, gitlabCacheTTL) }
	faultsByName["gitlab-switch"] = fault{"gitlab-switch", false, func(ctx context.Context, r *run) (string, error) {
		g := r.gitlab
		if g == nil {
			return "", errors.New("soak: gitlab-switch without a GitLab double (Config.GitLab off)")
		}
		if r.gitlabPhase.Load() {
			return "already on the GitLab source", nil
		}
		r.st.Authz.Kill()
		r.st.Authz.Args = append(r.st.Authz.Args, g.authzArgs()...)
		r.gitlabPhase.Store(true)
		d, err := restartKilled(ctx, r.st.Authz)
		return strings.Replace(d, "killed (SIGKILL)", "killed and restarted with --identity-source gitlab", 1) + " (GitLab double at " + g.addr + ")", err
	}}
	faultsByName["gitlab-slow"] = fault{"gitlab-slow", false, func(ctx context.Context, r *run) (string, error) {
		if !r.gitlabPhase.Load() {
			return "", errNoGitLab
		}
		r.gitlab.double.SetLatency(gitlabTimeout + time.Second)
		sleep(ctx, hold(r))
		r.gitlab.double.SetLatency(0)
		return fmt.Sprintf("every GitLab answer delayed %s, past --gitlab-timeout %s, for %s", gitlabTimeout+time.Second, gitlabTimeout, hold(r)), nil
	}}
	faultsByName["gitlab-5xx"] = fault{"gitlab-5xx", false, func(ctx context.Context, r *run) (string, error) {
		if !r.gitlabPhase.Load() {
			return "", errNoGitLab
		}
		r.gitlab.double.SetFault(func(w http.ResponseWriter, _ *http.Request) bool {
			http.Error(w, `{"message":"502 Bad Gateway"}`, http.StatusBadGateway)
			return true
		})
		sleep(ctx, hold(r))
		r.gitlab.double.SetFault(nil)
		return fmt.Sprintf("GitLab answered 502 to everything for %s", hold(r)), nil
	}}
	faultsByName["gitlab-429"] = fault{"gitlab-429", false, func(ctx context.Context, r *run) (string, error) {
		if !r.gitlabPhase.Load() {
			return "", errNoGitLab
		}
		// GitLab's rate limiting answers 429 with Retry-After
		// (https://docs.gitlab.com/security/rate_limits/).
		r.gitlab.double.SetFault(func(w http.ResponseWriter, _ *http.Request) bool {
			w.Header().Set("Retry-After", "1")
			http.Error(w, `{"message":"Retry later"}`, http.StatusTooManyRequests)
			return true
		})
		sleep(ctx, hold(r))
		r.gitlab.double.SetFault(nil)
		return fmt.Sprintf("GitLab answered 429 (Retry-After: 1) to everything for %s", hold(r)), nil
	}}
	faultsByName["gitlab-gone"] = fault{"gitlab-gone", false, func(ctx context.Context, r *run) (string, error) {
		if !r.gitlabPhase.Load() {
			return "", errNoGitLab
		}
		addr := r.gitlab.addr
		r.gitlab.gone()
		sleep(ctx, hold(r))
		return fmt.Sprintf("GitLab unreachable (connection refused) for %s", hold(r)), r.gitlab.serve(addr)
	}}
}
