package agentconfig

// The webhook GitLab calls on a push to a config project, so that a changed agent
// configuration is read at once instead of at the next interval. GitLab's webhook
// documentation (https://docs.gitlab.com/user/project/integrations/webhooks/ and
// .../webhook_events/#push-events): a POST with a JSON body, the event named in
// X-Gitlab-Event ("Push Hook" for pushes to branches; "Tag Push Hook" for tags), the
// webhook's secret token, when one is set, in X-Gitlab-Token; a push event's body
// carries "object_kind": "push" and "project_id". GitLab expects a quick 2xx answer
// and treats other answers as failures (repeated ones disable the webhook), so
// events that do not concern kubegate are answered 200 and ignored.
//
// An administrator can instead send every project's pushes with one system hook
// (https://docs.gitlab.com/administration/system_hooks/, "Push events": X-Gitlab-Event
// "System Hook", the body's event_name "push" and project_id); those are accepted
// too, with the same token check.
//
// The webhook only makes the sources check sooner: what they read is still the
// file in the project, through the API with kubegate's own token, so a forged push
// event at worst costs a HEAD request per agent of the project it names. The token
// check keeps even that for GitLab.

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"

	"kubegate.dev/kubegate/internal/httpserve"
)

// Webhook header and event names (GitLab's webhook documentation).
const (
	HeaderGitLabEvent = "X-Gitlab-Event"
	HeaderGitLabToken = "X-Gitlab-Token"
	EventPush         = "Push Hook"
	EventSystem       = "System Hook"
)

// MaxWebhookBody bounds a webhook's body. A push event lists at most 20 commits
// (GitLab's documentation: "commits ... limited to 20"), each with its message and
// changed paths; 1 MiB leaves room for long messages.
const MaxWebhookBody = 1 << 20

// ReadWebhookSecret reads the webhook's secret token from a file (one token,
// surrounding whitespace ignored).
func ReadWebhookSecret(file string) (string, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("--gitlab-webhook-secret-file: %w", err)
	}
	s := strings.TrimSpace(string(data))
	if len(s) < 16 || strings.ContainsAny(s, " \t\r\n") {
		return "", fmt.Errorf("--gitlab-webhook-secret-file %s must hold one secret token of at least 16 characters (the webhook's Secret token in GitLab)", file)
	}
	return s, nil
}

// Refresher is a source a webhook can hurry: *GitLab.
type Refresher interface {
	ProjectID() int64
	Refresh()
}

// Webhook is the http.Handler GitLab's push events are sent to.
type Webhook struct {
	secret  [sha256.Size]byte
	targets map[int64][]Refresher
	metrics *GitLabMetrics
	log     *slog.Logger
}

// NewWebhook makes the handler: push events for a project refresh every source
// whose ProjectID it is. metrics may be nil (unregistered), log too (discarded).
func NewWebhook(secret string, sources []Refresher, metrics *GitLabMetrics, log *slog.Logger) (*Webhook, error) {
	if secret == "" {
		return nil, errors.New("the GitLab webhook needs a secret token: an unauthenticated webhook would let anyone make kubegate poll GitLab")
	}
	if metrics == nil {
		metrics = NewGitLabMetrics()
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	w := &Webhook{secret: sha256.Sum256([]byte(secret)), targets: map[int64][]Refresher{}, metrics: metrics, log: log}
	for _, s := range sources {
		w.targets[s.ProjectID()] = append(w.targets[s.ProjectID()], s)
	}
	return w, nil
}

// pushEvent is the part of a push event's body the webhook reads.
type pushEvent struct {
	ObjectKind string `json:"object_kind"`
	EventName  string `json:"event_name"`
	ProjectID  int64  `json:"project_id"`
}

func (h *Webhook) answer(w http.ResponseWriter, status int, result, msg string) {
	h.metrics.webhooks.WithLabelValues(result).Inc()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(status)
	_, _ = io.WriteString(w, msg+"\n")
}

func (h *Webhook) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		h.answer(w, http.StatusMethodNotAllowed, "bad_request", "GitLab webhooks are POST requests")
		return
	}
	// The token first: nothing else is looked at for a caller that is not GitLab.
	// Comparing fixed-size digests keeps the comparison's time independent of where
	// (and whether the length) differs.
	tokens := r.Header.Values(HeaderGitLabToken)
	got := sha256.Sum256([]byte(strings.Join(tokens, ",")))
	if len(tokens) != 1 || subtle.ConstantTimeCompare(got[:], h.secret[:]) != 1 {
		h.log.Warn("GitLab webhook refused: wrong or missing "+HeaderGitLabToken, "remote", r.RemoteAddr)
		h.answer(w, http.StatusUnauthorized, "unauthorized", "wrong or missing "+HeaderGitLabToken+": set the webhook's Secret token in GitLab to the content of --gitlab-webhook-secret-file")
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxWebhookBody))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			h.answer(w, http.StatusRequestEntityTooLarge, "bad_request", fmt.Sprintf("the body is larger than %d bytes", MaxWebhookBody))
			return
		}
		h.answer(w, http.StatusBadRequest, "bad_request", "the body could not be read")
		return
	}
	event := r.Header.Get(HeaderGitLabEvent)
	if event != EventPush && event != EventSystem {
		h.answer(w, http.StatusOK, "ignored", "ignored: only Push Hook (and System Hook push) events concern kubegate")
		return
	}
	var ev pushEvent
	if err := json.Unmarshal(body, &ev); err != nil {
		h.answer(w, http.StatusBadRequest, "bad_request", "the body is not a GitLab event (JSON)")
		return
	}
	switch {
	case event == EventSystem && ev.EventName != "push":
		h.answer(w, http.StatusOK, "ignored", "ignored: a system hook event other than push")
		return
	case event == EventPush && ev.ObjectKind != "push", ev.ProjectID <= 0:
		h.answer(w, http.StatusBadRequest, "bad_request", "not a push event: the body needs object_kind (system hooks: event_name) push and a project_id")
		return
	}
	targets := h.targets[ev.ProjectID]
	if len(targets) == 0 {
		h.answer(w, http.StatusOK, "ignored", fmt.Sprintf("ignored: project %d is no agent's config project here", ev.ProjectID))
		return
	}
	for _, t := range targets {
		t.Refresh()
	}
	h.log.Info("GitLab push to a config project: re-reading its agents' configurations", "project", ev.ProjectID, "agents", len(targets))
	h.answer(w, http.StatusOK, "refresh", fmt.Sprintf("re-reading %d agent configuration(s) of project %d", len(targets), ev.ProjectID))
}

// ServeWebhook serves h on addr until ctx ends, then shuts down gracefully. The
// server bounds headers, bodies and slow clients; it speaks plain HTTP, so put it
// behind TLS (or on a network only GitLab reaches): the secret token travels in a
// header.
func ServeWebhook(ctx context.Context, addr string, h http.Handler) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("--gitlab-webhook-listen %s: %w", addr, err)
	}
	return ServeWebhookOn(ctx, ln, h)
}

// ServeWebhookOn is ServeWebhook on a listener (tests listen on :0).
func ServeWebhookOn(ctx context.Context, ln net.Listener, h http.Handler) error {
	return httpserve.Serve(ctx, ln, h)
}
