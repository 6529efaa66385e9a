package agentconfig

// The requests below are shaped as GitLab's webhook documentation describes a push
// event (https://docs.gitlab.com/user/project/integrations/webhook_events/#push-events):
// POST, X-Gitlab-Event: Push Hook, X-Gitlab-Token: <secret>, a JSON body with
// object_kind "push" and project_id.

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

const webhookSecret = "s3cret-webhook-token-0123456789"

// counting is a Refresher that counts its refreshes, so that a refused call can be
// shown to have triggered nothing.
type counting struct {
	project int64
	n       atomic.Int32
}

func (c *counting) ProjectID() int64 { return c.project }
func (c *counting) Refresh()         { c.n.Add(1) }

func pushBody(project int64) string {
	return fmt.Sprintf(`{"object_kind":"push","event_name":"push","ref":"refs/heads/main","project_id":%d,"project":{"id":%d},"commits":[],"total_commits_count":1}`, project, project)
}

func TestWebhook(t *testing.T) {
	type call struct {
		method string
		header map[string][]string
		body   string
	}
	push := func(token string, project int64) call {
		h := map[string][]string{HeaderGitLabEvent: {EventPush}}
		if token != "" {
			h[HeaderGitLabToken] = []string{token}
		}
		return call{http.MethodPost, h, pushBody(project)}
	}
	for _, tc := range []struct {
		name       string
		call       call
		wantStatus int
		wantResult string
		wantA      int32 // refreshes of the two agents of project 1
		wantB      int32 // and of the agent of project 2
	}{
		{"push to a config project refreshes its agents only", push(webhookSecret, 1), 200, "refresh", 1, 0},
		{"push to another config project", push(webhookSecret, 2), 200, "refresh", 0, 1},
		{"no token", push("", 1), 401, "unauthorized", 0, 0},
		{"wrong token", push("s3cret-webhook-token-0123456780", 1), 401, "unauthorized", 0, 0},
		{"token prefix", push(webhookSecret[:10], 1), 401, "unauthorized", 0, 0},
		{"token with a suffix", push(webhookSecret+"x", 1), 401, "unauthorized", 0, 0},
		{"two tokens, one right", call{http.MethodPost, map[string][]string{HeaderGitLabEvent: {EventPush},
			HeaderGitLabToken: {"wrong", webhookSecret}}, pushBody(1)}, 401, "unauthorized", 0, 0},
		{"token in the query instead", call{http.MethodPost, map[string][]string{HeaderGitLabEvent: {EventPush}}, pushBody(1)}, 401, "unauthorized", 0, 0},
		{"GET", call{http.MethodGet, map[string][]string{HeaderGitLabToken: {webhookSecret}}, ""}, 405, "bad_request", 0, 0},
		{"another event", call{http.MethodPost, map[string][]string{HeaderGitLabEvent: {"Tag Push Hook"}, HeaderGitLabToken: {webhookSecret}}, pushBody(1)}, 200, "ignored", 0, 0},
		{"push to a project of no agent", push(webhookSecret, 99), 200, "ignored", 0, 0},
		{"system hook push", call{http.MethodPost, map[string][]string{HeaderGitLabEvent: {EventSystem}, HeaderGitLabToken: {webhookSecret}},
			`{"event_name":"push","project_id":2,"ref":"refs/heads/main"}`}, 200, "refresh", 0, 1},
		{"system hook, another event", call{http.MethodPost, map[string][]string{HeaderGitLabEvent: {EventSystem}, HeaderGitLabToken: {webhookSecret}},
			`{"event_name":"project_create","project_id":2}`}, 200, "ignored", 0, 0},
		{"system hook push, wrong token", call{http.MethodPost, map[string][]string{HeaderGitLabEvent: {EventSystem}, HeaderGitLabToken: {"nope"}},
			`{"event_name":"push","project_id":2}`}, 401, "unauthorized", 0, 0},
		{"body not JSON", call{http.MethodPost, map[string][]string{HeaderGitLabEvent: {EventPush}, HeaderGitLabToken: {webhookSecret}}, `{"object_kind":`}, 400, "bad_request", 0, 0},
		{"body not a push", call{http.MethodPost, map[string][]string{HeaderGitLabEvent: {EventPush}, HeaderGitLabToken: {webhookSecret}}, `{"object_kind":"merge_request","project_id":1}`}, 400, "bad_request", 0, 0},
		{"body too large", call{http.MethodPost, map[string][]string{HeaderGitLabEvent: {EventPush}, HeaderGitLabToken: {webhookSecret}},
			`{"object_kind":"push","project_id":1,"x":"` + strings.Repeat("a", MaxWebhookBody) + `"}`}, 413, "bad_request", 0, 0},
		{"wrong token and a large body", call{http.MethodPost, map[string][]string{HeaderGitLabEvent: {EventPush}, HeaderGitLabToken: {"wrong"}},
			strings.Repeat("a", 2*MaxWebhookBody)}, 401, "unauthorized", 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a1, a2, b := &counting{project: 1}, &counting{project: 1}, &counting{project: 2}
			m := NewGitLabMetrics()
			h, err := NewWebhook(webhookSecret, []Refresher{a1, a2, b}, m, nil)
			if err != nil {
				t.Fatal(err)
			}
			target := "/"
			if tc.name == "token in the query instead" {
				target = "/?token=" + webhookSecret
			}
			req := httptest.NewRequest(tc.call.method, target, strings.NewReader(tc.call.body))
			for k, vs := range tc.call.header {
				for _, v := range vs {
					req.Header.Add(k, v)
				}
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != tc.wantStatus {
				t.Errorf("status %d (%s), want %d", rec.Code, strings.TrimSpace(rec.Body.String()), tc.wantStatus)
			}
			if a1.n.Load() != tc.wantA || a2.n.Load() != tc.wantA || b.n.Load() != tc.wantB {
				t.Errorf("refreshes: project 1 %d and %d, project 2 %d; want %d, %d", a1.n.Load(), a2.n.Load(), b.n.Load(), tc.wantA, tc.wantB)
			}
			if got := testutil.ToFloat64(m.webhooks.WithLabelValues(tc.wantResult)); got != 1 {
				t.Errorf("webhook result %s counted %v times, want 1", tc.wantResult, got)
			}
			if strings.Contains(rec.Body.String(), webhookSecret) {
				t.Error("the answer repeats the secret")
			}
		})
	}
}

func TestNewWebhookRefusesNoSecret(t *testing.T) {
	if _, err := NewWebhook("", nil, nil, nil); err == nil {
		t.Fatal("a webhook without a secret was made")
	}
}

func TestReadWebhookSecret(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name, content string
		ok            bool
	}{
		{"one token and a newline", webhookSecret + "\n", true},
		{"empty", "", false},
		{"short", "abc\n", false},
		{"two words", webhookSecret + " " + webhookSecret, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "_"))
			if err := os.WriteFile(f, []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			s, err := ReadWebhookSecret(f)
			if tc.ok != (err == nil) || (tc.ok && s != webhookSecret) {
				t.Fatalf("ReadWebhookSecret = %q, %v", s, err)
			}
		})
	}
	if _, err := ReadWebhookSecret(filepath.Join(dir, "missing")); err == nil || !strings.Contains(err.Error(), "--gitlab-webhook-secret-file") {
		t.Errorf("missing file: %v", err)
	}
}

// TestWebhookEndToEnd: GitLab's push event, sent to the served webhook, makes the
// real GitLab source read the pushed version without waiting for its interval; a
// refused call makes it read nothing.
func TestWebhookEndToEnd(t *testing.T) {
	s := newServer(t)
	s.PushFile(project, "main", ConfigPath(agentName), configV1)
	r := start(t, GitLabConfig{Client: newClient(t, s.URL, 5*time.Second)})
	r.waitFetches(t, ResultChanged, 1)

	h, err := NewWebhook(webhookSecret, []Refresher{r.src}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- ServeWebhookOn(ctx, ln, h) }()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("ServeWebhookOn: %v", err)
		}
	})
	post := func(token string) int {
		req, _ := http.NewRequest(http.MethodPost, "http://"+ln.Addr().String()+"/", bytes.NewBufferString(pushBody(projectID)))
		req.Header.Set(HeaderGitLabEvent, EventPush)
		req.Header.Set(HeaderGitLabToken, token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}

	s.PushFile(project, "main", ConfigPath(agentName), configV2)
	heads := s.Calls(headCall)
	if code := post("wrong-token-wrong-token"); code != 401 {
		t.Fatalf("wrong token: %d", code)
	}
	if code := post(webhookSecret); code != 200 {
		t.Fatalf("right token: %d", code)
	}
	r.waitFetches(t, ResultChanged, 2)
	if changes, _ := r.snapshot(); !bytes.Equal(changes[len(changes)-1].Data, configV2) {
		t.Errorf("the push was not read")
	}
	if got := s.Calls(headCall) - heads; got != 1 {
		t.Errorf("%d HEADs after one refused and one accepted call; want 1", got)
	}
}

// TestGitLabInterval: without webhook calls the file is checked every interval.
func TestGitLabInterval(t *testing.T) {
	s := newServer(t)
	s.PushFile(project, "main", ConfigPath(agentName), configV1)
	r := start(t, GitLabConfig{Client: newClient(t, s.URL, 5*time.Second), Interval: 20 * time.Millisecond})
	r.waitFetches(t, ResultUnchanged, 3)
}
