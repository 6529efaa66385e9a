package gitlabtest

// The user's side of GitLab's REST API, which `kubegate get-token` and `kubegate
// update-kubeconfig` call with the user's own token (GitLab 17.x–18.x documentation):
//
//   - POST /api/v4/user/personal_access_tokens —
//     https://docs.gitlab.com/api/user_tokens/#create-a-personal-access-token
//     Creates a personal access token for the authenticated user. Only the k8s_proxy
//     scope may be asked for (gitlab-org/gitlab!131923 limits it so). name and scopes
//     are required (400 "<param> is missing"); expires_at is a date, and without one
//     the token expires at the end of the current day (the same merge request); a date
//     that is not in the future, or more than 365 days away (GitLab's default maximum
//     lifetime), is a 400. Answers 201 with the token, including its secret "token".
//   - GET /api/v4/user — https://docs.gitlab.com/api/users/ ("get the current user").
//   - GET /api/v4/personal_access_tokens/:id — https://docs.gitlab.com/api/personal_access_tokens/
//     ("get a single personal access token"): a user sees their own tokens, revoked or
//     expired ones included (revoked, active); anyone else's is a 404. (:id "self" is
//     left to the server's self-inform route.)
//   - GET /api/v4/projects/:id/cluster_agents —
//     https://docs.gitlab.com/api/cluster_agents/#list-the-agents-for-a-project
//     The project's agents, by id, same record as below and the same Developer
//     rule; paged as https://docs.gitlab.com/api/rest/#offset-based-pagination says:
//     page (default 1) and per_page (default 20, at most 100), and the headers
//     X-Page, X-Per-Page, X-Next-Page and X-Prev-Page (empty at the ends), X-Total,
//     X-Total-Pages and Link (rel prev, next, first, last). A page past the last is
//     an empty list.
//   - GET /api/v4/projects/:id/cluster_agents/:agent_id —
//     https://docs.gitlab.com/api/cluster_agents/#get-details-about-an-agent
//     Needs the Developer role or higher in the project; GitLab answers 404 both for an
//     unknown agent and for a project the caller may not see.
//
// Scopes of the caller's token follow GitLab's API guard: a write (the POST) needs
// `api`; the reads accept `api` or `read_api` (and `read_user` for GET /user). Any
// other token is a 403 with GitLab's insufficient_scope body. A k8s_proxy token is
// therefore refused by all three, as on a real GitLab.
//
// The server's request hook (SetFault) serves these routes, because New's route table
// is fixed: EnableUserAPI must come after any SetFault call, and a later SetFault
// replaces it.

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

// maxLifetimeDays is GitLab's default maximum lifetime of a personal access token.
const maxLifetimeDays = 365

// UserAPI is the user's side of the stand-in GitLab, enabled by EnableUserAPI. Its
// state is guarded by the server's lock.
type UserAPI struct {
	s       *Server
	mux     *http.ServeMux
	agents  map[agentKey]string // agent name by project id and agent id
	created []string            // secrets of the tokens created, in order
	calls   map[string]int
	nextID  int64
}

type agentKey struct {
	projectID, agentID int64
}

// EnableUserAPI adds the user's side of the API to the server (see the package
// comment above for the endpoints) and returns it for configuration.
func (s *Server) EnableUserAPI() *UserAPI {
	u := &UserAPI{s: s, mux: http.NewServeMux(), agents: map[agentKey]string{}, calls: map[string]int{}, nextID: 1000}
	u.mux.HandleFunc("POST /api/v4/user/personal_access_tokens", u.createToken)
	u.mux.HandleFunc("GET /api/v4/user", u.currentUser)
	u.mux.HandleFunc("GET /api/v4/projects/{id}/cluster_agents/{agent}", u.agent)
	u.mux.HandleFunc("GET /api/v4/projects/{id}/cluster_agents", u.listAgents)
	u.mux.HandleFunc("GET /api/v4/personal_access_tokens/{id}", u.tokenByID)
	s.SetFault(func(w http.ResponseWriter, r *http.Request) bool {
		_, pattern := u.mux.Handler(r)
		if pattern == "" || r.URL.Path == "/api/v4/personal_access_tokens/self" {
			return false
		}
		s.mu.Lock()
		u.calls[pattern]++
		s.mu.Unlock()
		u.mux.ServeHTTP(w, r)
		return true
	})
	return u
}

// SetNow moves the server's clock, which decides token expiry.
func (s *Server) SetNow(now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.now = now
}

// AddAgent registers an agent with a project (which must exist) under an id.
func (u *UserAPI) AddAgent(projectPath string, agentID int64, name string) {
	u.s.mu.Lock()
	defer u.s.mu.Unlock()
	p := u.s.findProject(projectPath)
	if p == nil {
		panic("gitlabtest: project " + projectPath + " missing")
	}
	u.agents[agentKey{p.id, agentID}] = name
}

// Created returns the secrets of the tokens POST /user/personal_access_tokens
// created, oldest first.
func (u *UserAPI) Created() []string {
	u.s.mu.Lock()
	defer u.s.mu.Unlock()
	return slices.Clone(u.created)
}

// Token describes a token the server knows by its secret.
func (u *UserAPI) Token(secret string) (Token, bool) {
	u.s.mu.Lock()
	defer u.s.mu.Unlock()
	t, ok := u.s.tokens[secret]
	if !ok {
		return Token{}, false
	}
	return *t, true
}

// Calls reports how many requests reached one of the user API's route patterns, e.g.
// "POST /api/v4/user/personal_access_tokens".
func (u *UserAPI) Calls(pattern string) int {
	u.s.mu.Lock()
	defer u.s.mu.Unlock()
	return u.calls[pattern]
}

// insufficientScope is GitLab's answer to a token whose scopes do not allow the call.
func insufficientScope(w http.ResponseWriter, scope string) {
	writeJSON(w, http.StatusForbidden, map[string]string{
		"error":             "insufficient_scope",
		"error_description": "The request requires higher privileges than provided by the access token.",
		"scope":             scope,
	})
}

// authorize authenticates the caller and checks its token's scopes against those the
// endpoint accepts; it answers the request itself when that fails. Call with s.mu held.
func (u *UserAPI) authorize(w http.ResponseWriter, r *http.Request, accept ...string) *User {
	user, tok := u.s.caller(r)
	if user == nil {
		message(w, http.StatusUnauthorized, "401 Unauthorized")
		return nil
	}
	for _, sc := range tok.Scopes {
		if slices.Contains(accept, sc) {
			return user
		}
	}
	insufficientScope(w, strings.Join(accept, " "))
	return nil
}

func (u *UserAPI) createToken(w http.ResponseWriter, r *http.Request) {
	u.s.mu.Lock()
	defer u.s.mu.Unlock()
	user := u.authorize(w, r, "api")
	if user == nil {
		return
	}
	var body struct {
		Name        string   `json:"name"`
		Description string   `json:"description"`
		Scopes      []string `json:"scopes"`
		ExpiresAt   string   `json:"expires_at"`
	}
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "the request body is not JSON"})
		return
	}
	switch {
	case body.Name == "":
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "name is missing"})
		return
	case len(body.Scopes) == 0:
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "scopes is missing"})
		return
	case slices.ContainsFunc(body.Scopes, func(s string) bool { return s != "k8s_proxy" }):
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "scopes does not have a valid value"})
		return
	}
	today := time.Date(u.s.now.Year(), u.s.now.Month(), u.s.now.Day(), 0, 0, 0, 0, time.UTC)
	expires := today.AddDate(0, 0, 1) // the end of the current day
	if body.ExpiresAt != "" {
		day, err := time.Parse(time.DateOnly, body.ExpiresAt)
		if err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "expires_at is invalid"})
			return
		}
		if !day.After(today) {
			writeJSON(w, http.StatusBadRequest, map[string]any{"message": map[string][]string{"expires_at": {"must be in the future"}}})
			return
		}
		if limit := today.AddDate(0, 0, maxLifetimeDays); day.After(limit) {
			writeJSON(w, http.StatusBadRequest, map[string]any{"message": map[string][]string{"expires_at": {"must be before " + limit.Format(time.DateOnly)}}})
			return
		}
		expires = day
	}
	raw := make([]byte, 15)
	_, _ = rand.Read(raw)
	secret := "glpat-" + base64.RawURLEncoding.EncodeToString(raw)
	u.nextID++
	t := &Token{ID: u.nextID, UserID: user.ID, Name: body.Name, Scopes: slices.Clone(body.Scopes), ExpiresAt: expires.Format(time.DateOnly)}
	u.s.tokens[secret] = t
	u.created = append(u.created, secret)
	v := u.s.tokenJSON(t)
	v["description"] = body.Description
	v["created_at"] = u.s.now.UTC().Format("2006-01-02T15:04:05.000Z")
	v["token"] = secret
	writeJSON(w, http.StatusCreated, v)
}

func (u *UserAPI) tokenByID(w http.ResponseWriter, r *http.Request) {
	u.s.mu.Lock()
	defer u.s.mu.Unlock()
	user := u.authorize(w, r, "api", "read_api")
	if user == nil {
		return
	}
	id, _ := strconv.ParseInt(r.PathValue("id"), 10, 64)
	for _, t := range u.s.tokens {
		if t.ID == id && (t.UserID == user.ID || user.Admin) {
			writeJSON(w, http.StatusOK, u.s.tokenJSON(t))
			return
		}
	}
	message(w, http.StatusNotFound, "404 Not Found")
}

func (u *UserAPI) currentUser(w http.ResponseWriter, r *http.Request) {
	u.s.mu.Lock()
	defer u.s.mu.Unlock()
	user := u.authorize(w, r, "api", "read_api", "read_user")
	if user == nil {
		return
	}
	writeJSON(w, http.StatusOK, userJSON(user))
}

func (u *UserAPI) agent(w http.ResponseWriter, r *http.Request) {
	u.s.mu.Lock()
	defer u.s.mu.Unlock()
	user := u.authorize(w, r, "api", "read_api")
	if user == nil {
		return
	}
	p := u.s.findProject(r.PathValue("id"))
	if p == nil || u.s.effectiveLevel("projects", p.id, p.ns, user.ID) < 30 {
		message(w, http.StatusNotFound, "404 Project Not Found")
		return
	}
	id, _ := strconv.ParseInt(r.PathValue("agent"), 10, 64)
	name, ok := u.agents[agentKey{p.id, id}]
	if !ok {
		message(w, http.StatusNotFound, "404 Not found")
		return
	}
	writeJSON(w, http.StatusOK, agentJSON(p, id, name))
}

func agentJSON(p *project, id int64, name string) map[string]any {
	return map[string]any{
		"id": id, "name": name, "created_at": "2025-01-02T03:04:05.000Z", "created_by_user_id": 1,
		"config_project": map[string]any{"id": p.id, "path_with_namespace": p.path,
			"path": p.path[strings.LastIndex(p.path, "/")+1:], "name": p.path[strings.LastIndex(p.path, "/")+1:]},
	}
}

func (u *UserAPI) listAgents(w http.ResponseWriter, r *http.Request) {
	u.s.mu.Lock()
	defer u.s.mu.Unlock()
	user := u.authorize(w, r, "api", "read_api")
	if user == nil {
		return
	}
	p := u.s.findProject(r.PathValue("id"))
	if p == nil || u.s.effectiveLevel("projects", p.id, p.ns, user.ID) < 30 {
		message(w, http.StatusNotFound, "404 Project Not Found")
		return
	}
	var ids []int64
	for k := range u.agents {
		if k.projectID == p.id {
			ids = append(ids, k.agentID)
		}
	}
	slices.Sort(ids)
	q := r.URL.Query()
	page, err := strconv.Atoi(q.Get("page"))
	if err != nil || page < 1 {
		page = 1
	}
	perPage, err := strconv.Atoi(q.Get("per_page"))
	if err != nil || perPage < 1 {
		perPage = 20
	}
	perPage = min(perPage, 100)
	pages := max(1, (len(ids)+perPage-1)/perPage)
	out := []map[string]any{}
	for _, id := range ids[min(len(ids), (page-1)*perPage):min(len(ids), page*perPage)] {
		out = append(out, agentJSON(p, id, u.agents[agentKey{p.id, id}]))
	}
	link := func(n int, rel string) string {
		v := *r.URL
		qq := v.Query()
		qq.Set("page", strconv.Itoa(n))
		qq.Set("per_page", strconv.Itoa(perPage))
		v.RawQuery = qq.Encode()
		return fmt.Sprintf("<http://%s%s>; rel=\"%s\"", r.Host, v.RequestURI(), rel)
	}
	h := w.Header()
	h.Set("X-Page", strconv.Itoa(page))
	h.Set("X-Per-Page", strconv.Itoa(perPage))
	h.Set("X-Total", strconv.Itoa(len(ids)))
	h.Set("X-Total-Pages", strconv.Itoa(pages))
	h.Set("X-Next-Page", "")
	h.Set("X-Prev-Page", "")
	var links []string
	if page > 1 && page <= pages {
		h.Set("X-Prev-Page", strconv.Itoa(page-1))
		links = append(links, link(page-1, "prev"))
	}
	if page < pages {
		h.Set("X-Next-Page", strconv.Itoa(page+1))
		links = append(links, link(page+1, "next"))
	}
	links = append(links, link(1, "first"), link(pages, "last"))
	h.Set("Link", strings.Join(links, ", "))
	writeJSON(w, http.StatusOK, out)
}

// effectiveLevel is a user's access level in a project or group: the highest of the
// direct membership and every ancestor group's, as the members API computes it. Call
// with s.mu held.
func (s *Server) effectiveLevel(kind string, id int64, ns *namespace, userID int64) int {
	level := s.direct[memberKey{kind, id, userID}]
	for ; ns != nil; ns = ns.parent {
		level = max(level, s.direct[memberKey{"groups", ns.id, userID}])
	}
	return level
}
