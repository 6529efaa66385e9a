package agentconfig

// The GitLab these tests read from is gitlabtest's stand-in, whose repository files
// API follows https://docs.gitlab.com/api/repository_files/ (see its repository.go):
// a real GitLab cannot run here. The client is the identity source's
// (gitlab.NewAPIClient), as kubegate authz builds it.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	gl "gitlab.com/gitlab-org/api/client-go"

	"kubegate.dev/kubegate/gateway"
	"kubegate.dev/kubegate/identity/gitlab"
	"kubegate.dev/kubegate/identity/gitlab/gitlabtest"
)

const (
	serviceToken = "glpat-kubegate-service-000000"
	project      = "group-1/project-1" // id 1 in the sandbox
	projectID    = 1
	agentName    = "prod"
	agentID      = 7
)

var (
	configV1 = []byte("user_access:\n  access_as: {agent: {}}\n  projects:\n  - id: group-1/project-1\n")
	configV2 = []byte("user_access:\n  access_as: {user: {}}\n  groups:\n  - id: group-2\n")
	headCall = "HEAD /api/v4/projects/{id}/repository/files/{file}"
	getCall  = "GET /api/v4/projects/{id}/repository/files/{file}"
)

func newServer(t *testing.T) *gitlabtest.Server {
	t.Helper()
	s := gitlabtest.New(time.Date(2025, 7, 1, 12, 0, 0, 0, time.UTC))
	t.Cleanup(s.Close)
	s.Sandbox()
	s.AddUser(gitlabtest.User{ID: 101, Username: "kubegate-bot"})
	s.AddToken(serviceToken, gitlabtest.Token{ID: 1001, UserID: 101, Name: "kubegate", Scopes: []string{"read_api"}})
	s.AddMember("groups", "group-1", 101, 20) // Reporter: may read the repository
	return s
}

func newClient(t *testing.T, url string, timeout time.Duration) *gl.Client {
	t.Helper()
	c, err := gitlab.NewAPIClient(gitlab.Config{URL: url, Token: serviceToken, Timeout: timeout, Retries: -1, RateLimit: -1})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// running is a GitLab source running in the background, with what it delivered.
type running struct {
	src     *GitLab
	metrics *GitLabMetrics
	mu      sync.Mutex
	changes []Version
	errs    []error
}

func (r *running) snapshot() ([]Version, []error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Version(nil), r.changes...), append([]error(nil), r.errs...)
}

func (r *running) fetches(result string) float64 {
	return testutil.ToFloat64(r.metrics.fetches.WithLabelValues(fmt.Sprint(agentID), result))
}

func (r *running) stale() float64 {
	return testutil.ToFloat64(r.metrics.stale.WithLabelValues(fmt.Sprint(agentID)))
}

func (r *running) lastGood() float64 {
	return testutil.ToFloat64(r.metrics.lastGood.WithLabelValues(fmt.Sprint(agentID)))
}

// waitFetches waits until the source has made n reads with that result.
func (r *running) waitFetches(t *testing.T, result string, n float64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for r.fetches(result) < n {
		if time.Now().After(deadline) {
			t.Fatalf("waited for %v %s reads; have %v", n, result, r.fetches(result))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func start(t *testing.T, cfg GitLabConfig) *running {
	t.Helper()
	if cfg.AgentName == "" {
		cfg.AgentName = agentName
	}
	cfg.AgentID, cfg.ProjectID = agentID, projectID
	if cfg.Interval == 0 {
		cfg.Interval = time.Hour // re-reads come from Refresh, so the tests decide when
	}
	cfg.Metrics = NewGitLabMetrics()
	src, err := NewGitLab(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r := &running{src: src, metrics: cfg.Metrics}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- src.Run(ctx, func(v Version) {
			r.mu.Lock()
			r.changes = append(r.changes, v)
			r.mu.Unlock()
		}, func(err error) {
			r.mu.Lock()
			r.errs = append(r.errs, err)
			r.mu.Unlock()
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return r
}

func TestGitLabReadsThenChecksWithHEAD(t *testing.T) {
	s := newServer(t)
	s.PushFile(project, "main", ConfigPath(agentName), configV1)
	r := start(t, GitLabConfig{Client: newClient(t, s.URL, 5*time.Second)})

	r.waitFetches(t, ResultChanged, 1)
	changes, errs := r.snapshot()
	if len(changes) != 1 || !bytes.Equal(changes[0].Data, configV1) || len(errs) != 0 {
		t.Fatalf("first read: changes %v, errors %v", changes, errs)
	}
	if !strings.HasPrefix(changes[0].Name, "gitlab:project/1/.gitlab/agents/prod/config.yaml@") {
		t.Errorf("version name %q does not say where it came from", changes[0].Name)
	}
	if r.stale() != 0 || r.lastGood() == 0 {
		t.Errorf("after a good read: stale %v, last success %v", r.stale(), r.lastGood())
	}

	t.Run("unchanged file costs one HEAD and no GET", func(t *testing.T) {
		// The stand-in counts a HEAD under its GET pattern too.
		gets := func() int { return s.Calls(getCall) - s.Calls(headCall) }
		heads, getsBefore := s.Calls(headCall), gets()
		r.src.Refresh()
		r.waitFetches(t, ResultUnchanged, 1)
		if s.Calls(headCall) != heads+1 || gets() != getsBefore {
			t.Errorf("HEADs %d→%d, GETs %d→%d: want one more HEAD and no GET", heads, s.Calls(headCall), getsBefore, gets())
		}
		if changes, _ := r.snapshot(); len(changes) != 1 {
			t.Errorf("an unchanged file was delivered again: %d versions", len(changes))
		}
	})

	t.Run("a push is read", func(t *testing.T) {
		s.PushFile(project, "main", ConfigPath(agentName), configV2)
		r.src.Refresh()
		r.waitFetches(t, ResultChanged, 2)
		changes, _ := r.snapshot()
		if len(changes) != 2 || !bytes.Equal(changes[1].Data, configV2) {
			t.Fatalf("after the push: %v", changes)
		}
	})

	t.Run("a commit that leaves the file as it is delivers nothing", func(t *testing.T) {
		s.PushFile(project, "main", "README.md", []byte("hello"))
		r.src.Refresh()
		r.waitFetches(t, ResultUnchanged, 2)
		if changes, _ := r.snapshot(); len(changes) != 2 {
			t.Errorf("%d versions delivered; want still 2", len(changes))
		}
	})
}

func TestGitLabRef(t *testing.T) {
	s := newServer(t)
	s.SetDefaultBranch(project, "release")
	s.PushFile(project, "main", ConfigPath(agentName), configV1)
	s.PushFile(project, "release", ConfigPath(agentName), configV2)
	for _, tc := range []struct {
		name, ref string
		want      []byte
	}{
		{"empty ref is the default branch", "", configV2},
		{"a branch", "main", configV1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := start(t, GitLabConfig{Client: newClient(t, s.URL, 5*time.Second), Ref: tc.ref})
			r.waitFetches(t, ResultChanged, 1)
			if changes, _ := r.snapshot(); !bytes.Equal(changes[0].Data, tc.want) {
				t.Errorf("read %q, want %q", changes[0].Data, tc.want)
			}
		})
	}
}

// TestGitLabFailuresKeepTheVersionInService: after a good read, every kind of
// failure is reported and counted, marks the configuration stale, delivers
// nothing, and the next good read clears it without delivering the same version
// again.
func TestGitLabFailuresKeepTheVersionInService(t *testing.T) {
	status := func(code int, header ...string) func(w http.ResponseWriter, r *http.Request) bool {
		return func(w http.ResponseWriter, r *http.Request) bool {
			for i := 0; i+1 < len(header); i += 2 {
				w.Header().Set(header[i], header[i+1])
			}
			w.WriteHeader(code)
			_, _ = w.Write([]byte(`{"message":"injected"}`))
			return true
		}
	}
	onGET := func(f func(w http.ResponseWriter, r *http.Request) bool) func(w http.ResponseWriter, r *http.Request) bool {
		return func(w http.ResponseWriter, r *http.Request) bool { return r.Method == http.MethodGet && f(w, r) }
	}
	for _, tc := range []struct {
		name   string
		result string
		status int
		// break_ makes the next read fail; it returns how to mend it.
		break_  func(s *gitlabtest.Server) (mend func())
		wantMsg string
	}{
		{"file removed", ResultNotFound, 404, func(s *gitlabtest.Server) func() {
			s.RemoveFile(project, "main", ConfigPath(agentName))
			return func() { s.PushFile(project, "main", ConfigPath(agentName), configV1) }
		}, "404"},
		{"service token refused", ResultUnauthorized, 401, func(s *gitlabtest.Server) func() {
			s.SetFault(status(401))
			return func() { s.SetFault(nil) }
		}, "--gitlab-token-file"},
		{"scope missing", ResultForbidden, 403, func(s *gitlabtest.Server) func() {
			s.SetFault(status(403))
			return func() { s.SetFault(nil) }
		}, "read_api"},
		{"rate limited", ResultRateLimited, 429, func(s *gitlabtest.Server) func() {
			s.SetFault(status(429, "Retry-After", "1"))
			return func() { s.SetFault(nil) }
		}, "429"},
		{"server error", ResultServerError, 500, func(s *gitlabtest.Server) func() {
			s.SetFault(status(500))
			return func() { s.SetFault(nil) }
		}, "500"},
		{"unavailable", ResultServerError, 503, func(s *gitlabtest.Server) func() {
			s.SetFault(status(503))
			return func() { s.SetFault(nil) }
		}, "503"},
		{"another status", ResultStatus, 400, func(s *gitlabtest.Server) func() {
			s.SetFault(status(400))
			return func() { s.SetFault(nil) }
		}, "400"},
		{"no answer", ResultTimeout, 0, func(s *gitlabtest.Server) func() {
			s.SetFault(s.Hang)
			return func() { s.SetFault(nil) }
		}, "no answer within the GitLab timeout"},
		{"file too large", ResultTooLarge, 200, func(s *gitlabtest.Server) func() {
			s.PushFile(project, "main", ConfigPath(agentName), bytes.Repeat([]byte("#"), 4097))
			return func() { s.PushFile(project, "main", ConfigPath(agentName), configV1) }
		}, "more than the 4096 allowed"},
		{"GET answer not JSON", ResultMalformed, 200, func(s *gitlabtest.Server) func() {
			s.PushFile(project, "main", ConfigPath(agentName), configV2) // the blob changes, so a GET follows
			s.SetFault(onGET(func(w http.ResponseWriter, _ *http.Request) bool {
				_, _ = w.Write([]byte(`{"content": 12`))
				return true
			}))
			return func() { s.SetFault(nil); s.PushFile(project, "main", ConfigPath(agentName), configV1) }
		}, "not the JSON"},
		{"content does not match content_sha256", ResultMalformed, 200, func(s *gitlabtest.Server) func() {
			s.PushFile(project, "main", ConfigPath(agentName), configV2)
			s.SetFault(onGET(func(w http.ResponseWriter, _ *http.Request) bool {
				w.Header().Set("Content-Type", "application/json")
				_, _ = fmt.Fprintf(w, `{"file_path":".gitlab/agents/prod/config.yaml","encoding":"base64","content":"aGVsbG8=","content_sha256":"%s","blob_id":"x"}`, strings.Repeat("0", 64))
				return true
			}))
			return func() { s.SetFault(nil); s.PushFile(project, "main", ConfigPath(agentName), configV1) }
		}, "content_sha256"},
		{"another file in the answer", ResultMalformed, 200, func(s *gitlabtest.Server) func() {
			s.PushFile(project, "main", ConfigPath(agentName), configV2)
			s.SetFault(onGET(func(w http.ResponseWriter, _ *http.Request) bool {
				w.Header().Set("Content-Type", "application/json")
				_, _ = fmt.Fprint(w, `{"file_path":".gitlab/agents/other/config.yaml","encoding":"base64","content":"aGVsbG8=","blob_id":"x"}`)
				return true
			}))
			return func() { s.SetFault(nil); s.PushFile(project, "main", ConfigPath(agentName), configV1) }
		}, "instead of .gitlab/agents/prod/config.yaml"},
		{"HEAD without blob id", ResultMalformed, 200, func(s *gitlabtest.Server) func() {
			s.SetFault(func(w http.ResponseWriter, r *http.Request) bool {
				w.WriteHeader(200)
				return true
			})
			return func() { s.SetFault(nil) }
		}, "X-Gitlab-Blob-Id"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newServer(t)
			s.PushFile(project, "main", ConfigPath(agentName), configV1)
			r := start(t, GitLabConfig{Client: newClient(t, s.URL, 500*time.Millisecond), MaxSize: 4096})
			r.waitFetches(t, ResultChanged, 1)
			good := r.lastGood()

			mend := tc.break_(s)
			r.src.Refresh()
			r.waitFetches(t, tc.result, 1)
			changes, errs := r.snapshot()
			if len(changes) != 1 || !bytes.Equal(changes[0].Data, configV1) {
				t.Fatalf("a failed read changed the versions delivered: %v", changes)
			}
			if len(errs) != 1 {
				t.Fatalf("errors reported: %v; want one", errs)
			}
			var fe *FetchError
			if !errors.As(errs[0], &fe) || fe.Result != tc.result || fe.Status != tc.status {
				t.Fatalf("error %#v; want a FetchError with result %s, status %d", errs[0], tc.result, tc.status)
			}
			if msg := errs[0].Error(); !strings.Contains(msg, tc.wantMsg) || !strings.Contains(msg, "the configuration in service stays") {
				t.Errorf("message %q should contain %q and say the configuration in service stays", msg, tc.wantMsg)
			}
			if strings.Contains(errs[0].Error(), serviceToken) {
				t.Errorf("the message carries the service token")
			}
			if r.stale() != 1 || r.lastGood() != good {
				t.Errorf("after the failure: stale %v (want 1), last success %v (want %v, unchanged)", r.stale(), r.lastGood(), good)
			}
			if tc.result == ResultRateLimited && fe.RetryAfter != time.Second {
				t.Errorf("Retry-After read as %s, want 1s", fe.RetryAfter)
			}

			mend()
			r.src.Refresh() // after a Retry-After this waits the second out
			deadline := time.Now().Add(10 * time.Second)
			for r.stale() != 0 && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
			if r.stale() != 0 {
				t.Fatalf("still stale after GitLab recovered")
			}
			changes, _ = r.snapshot()
			if last := changes[len(changes)-1]; !bytes.Equal(last.Data, configV1) {
				t.Errorf("after recovery the version in service is %q", last.Data)
			}
		})
	}
}

func TestGitLabUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + ln.Addr().String()
	ln.Close() // nothing listens there now
	r := start(t, GitLabConfig{Client: newClient(t, url, time.Second)})
	r.waitFetches(t, ResultUnreachable, 1)
	_, errs := r.snapshot()
	if len(errs) != 1 || !strings.Contains(errs[0].Error(), "cannot be reached") {
		t.Fatalf("errors %v", errs)
	}
	if r.stale() != 1 {
		t.Errorf("stale %v before any good read; want 1", r.stale())
	}
}

// TestGitLabRetryAfterHoldsRefreshBack: a webhook's Refresh during a 429's
// Retry-After does not reach GitLab before it ends.
func TestGitLabRetryAfterHoldsRefreshBack(t *testing.T) {
	s := newServer(t)
	s.PushFile(project, "main", ConfigPath(agentName), configV1)
	s.SetFault(func(w http.ResponseWriter, r *http.Request) bool {
		w.Header().Set("Retry-After", "3600")
		w.WriteHeader(http.StatusTooManyRequests)
		return true
	})
	r := start(t, GitLabConfig{Client: newClient(t, s.URL, time.Second)})
	r.waitFetches(t, ResultRateLimited, 1)
	before := s.TotalCalls()
	for range 5 {
		r.src.Refresh()
	}
	time.Sleep(200 * time.Millisecond) // the loop would have called by now
	if s.TotalCalls() != before {
		t.Errorf("%d requests reached GitLab during its Retry-After", s.TotalCalls()-before)
	}
}

func TestRetryAfter(t *testing.T) {
	now := time.Date(2025, 7, 1, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		in   string
		want time.Duration
	}{
		{"", 0},
		{"30", 30 * time.Second},
		{"-5", 0},
		{"soon", 0},
		{"999999999", MaxRetryAfter},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second},
		{now.Add(-time.Minute).Format(http.TimeFormat), 0},
	} {
		t.Run(tc.in, func(t *testing.T) {
			if got := retryAfter(tc.in, now); got != tc.want {
				t.Errorf("retryAfter(%q) = %s, want %s", tc.in, got, tc.want)
			}
		})
	}
}

func TestNewGitLabRefuses(t *testing.T) {
	c := newClient(t, "https://gitlab.example.com", time.Second)
	for _, tc := range []struct {
		name string
		cfg  GitLabConfig
		want string
	}{
		{"no client: not the GitLab identity source", GitLabConfig{AgentName: "a", ProjectID: 1}, "--identity-source=gitlab"},
		{"path traversal in the name", GitLabConfig{Client: c, AgentName: "../../secrets", ProjectID: 1}, "not a GitLab agent name"},
		{"slash in the name", GitLabConfig{Client: c, AgentName: "a/b", ProjectID: 1}, "not a GitLab agent name"},
		{"empty name", GitLabConfig{Client: c, ProjectID: 1}, "not a GitLab agent name"},
		{"no project", GitLabConfig{Client: c, AgentName: "a"}, "config project id"},
		{"negative interval", GitLabConfig{Client: c, AgentName: "a", ProjectID: 1, Interval: -time.Second}, "negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewGitLab(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("NewGitLab: %v; want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestGitLabMetricsRegister(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m := NewGitLabMetrics()
	if err := m.Register(reg); err != nil {
		t.Fatal(err)
	}
	if err := m.Register(reg); err == nil {
		t.Error("registering twice succeeded")
	}
}

// TestNewGitLabFor: an agent of the gateway configuration with agent_config.gitlab
// is read from its config project at its ref, every interval.
func TestNewGitLabFor(t *testing.T) {
	s := newServer(t)
	s.SetDefaultBranch(project, "release")
	s.PushFile(project, "main", ConfigPath(agentName), configV1)
	s.PushFile(project, "release", ConfigPath(agentName), configV2)
	c := newClient(t, s.URL, 5*time.Second)
	a := gateway.Agent{ID: agentID, Name: agentName, ConfigProjectID: projectID, AgentConfig: gateway.AgentConfigSource{
		GitLab: &gateway.GitLabSource{Ref: "main", Interval: gateway.Duration{Duration: 20 * time.Millisecond}}}}
	m := NewGitLabMetrics()
	src, err := NewGitLabFor(a, c, m, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan Version, 1)
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, func(v Version) { got <- v }, func(err error) { t.Error(err) }) }()
	if v := <-got; !bytes.Equal(v.Data, configV1) {
		t.Errorf("read %q; want the main branch's", v.Data)
	}
	deadline := time.Now().Add(10 * time.Second)
	for testutil.ToFloat64(m.fetches.WithLabelValues(fmt.Sprint(agentID), ResultUnchanged)) < 2 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := testutil.ToFloat64(m.fetches.WithLabelValues(fmt.Sprint(agentID), ResultUnchanged)); n < 2 {
		t.Errorf("%v re-reads; want the interval's", n)
	}

	a.AgentConfig = gateway.AgentConfigSource{File: "/etc/kubegate/prod.yaml"}
	if _, err := NewGitLabFor(a, c, m, nil); err == nil {
		t.Error("a file source made a GitLab source")
	}
}
