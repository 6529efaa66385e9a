// Package gitlabtest is an in-process stand-in for the parts of GitLab's REST API v4
// that kubegate's GitLab backend calls, for tests and benchmarks (a real GitLab cannot
// run here). It follows GitLab's API documentation for GitLab 17.8–18.x:
//
//   - POST /api/v4/admin/token — https://docs.gitlab.com/api/admin/token/
//     (administrators only: 401 without a valid token, 403 for a non-administrator;
//     404 unknown token; 422 a token type it cannot identify; a deploy token is
//     described in the deploy-token shape, without user_id)
//   - GET /api/v4/personal_access_tokens/self —
//     https://docs.gitlab.com/api/personal_access_tokens/#self-inform
//     (authenticated by the token itself; any scope may describe itself; 401 for an
//     unknown, revoked or expired token; 400 for a token that is not a PAT)
//   - GET /api/v4/users/:id — https://docs.gitlab.com/api/users/#get-a-single-user
//   - GET /api/v4/users?username= — https://docs.gitlab.com/api/users/#list-users
//   - GET /api/v4/projects/:id — https://docs.gitlab.com/api/projects/#get-a-single-project
//   - GET /api/v4/groups/:id — https://docs.gitlab.com/api/groups/#get-a-single-group
//   - GET /api/v4/{projects,groups}/:id/members/all/:user_id —
//     https://docs.gitlab.com/api/members/#get-a-member-of-a-group-or-project-including-inherited-and-invited-members
//     (the effective level: the highest of the direct membership and every ancestor
//     group's; 404 when the user has none)
//   - GET and HEAD /api/v4/projects/:id/repository/files/:file_path —
//     https://docs.gitlab.com/api/repository_files/ (repository.go)
//
// Latency: by default the stand-in answers as fast as the loopback allows, which no
// GitLab does. SetLatency adds a fixed delay to every answer (waited out before the
// handler runs, ended early if the client gives up), so that benchmarks see a
// backend whose calls take time and therefore occupy in-flight slots and budgets
// as a real one would. The benchmarks use RealisticLatency.
//
// :id is a numeric id or a URL-encoded full path. Every endpoint but self-inform needs
// a valid PRIVATE-TOKEN (401 {"message":"401 Unauthorized"} otherwise); errors have
// GitLab's {"message": "..."} body. Personal access tokens expire at 00:00 UTC on
// their expires_at date, as GitLab documents for token expiry.
package gitlabtest

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Server is a running stand-in GitLab. Configure it before or between requests; its
// methods are safe for concurrent use.
type Server struct {
	*httptest.Server

	mu       sync.Mutex
	now      time.Time
	users    map[int64]*User
	tokens   map[string]*Token // by secret
	deploy   map[string]bool   // secrets of deploy tokens
	groups   map[string]*namespace
	projects map[string]*project
	direct   map[memberKey]int // direct memberships: access level
	repos    map[int64]*repository
	commits  int
	calls    map[string]int
	fault    func(w http.ResponseWriter, r *http.Request) bool
	latency  time.Duration
	stop     chan struct{}
	stopOnce sync.Once
}

// User is a GitLab user.
type User struct {
	ID       int64
	Username string
	State    string // active, blocked, deactivated, ...
	Admin    bool
}

// Token is a personal access token.
type Token struct {
	ID        int64
	UserID    int64
	Name      string
	Scopes    []string
	Revoked   bool
	ExpiresAt string // "2006-01-02" or empty for none
}

type namespace struct {
	id     int64
	path   string
	parent *namespace
}

type project struct {
	id   int64
	path string
	ns   *namespace
}

type memberKey struct {
	kind   string // "projects" or "groups"
	id     int64
	userID int64
}

// New starts a stand-in GitLab whose clock reads now.
func New(now time.Time) *Server {
	s := &Server{
		now:      now,
		users:    map[int64]*User{},
		tokens:   map[string]*Token{},
		deploy:   map[string]bool{},
		groups:   map[string]*namespace{},
		projects: map[string]*project{},
		direct:   map[memberKey]int{},
		repos:    map[int64]*repository{},
		calls:    map[string]int{},
		stop:     make(chan struct{}),
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /api/v4/admin/token", s.adminToken)
	mux.HandleFunc("GET /api/v4/personal_access_tokens/self", s.selfToken)
	mux.HandleFunc("GET /api/v4/users/{id}", s.user)
	mux.HandleFunc("GET /api/v4/users", s.listUsers)
	mux.HandleFunc("GET /api/v4/projects/{id}", s.project)
	mux.HandleFunc("GET /api/v4/groups/{id}", s.group)
	mux.HandleFunc("GET /api/v4/projects/{id}/members/all/{uid}", s.member("projects"))
	mux.HandleFunc("GET /api/v4/groups/{id}/members/all/{uid}", s.member("groups"))
	mux.HandleFunc("GET /api/v4/projects/{id}/members/{uid}", s.directMember("projects"))
	mux.HandleFunc("GET /api/v4/groups/{id}/members/{uid}", s.directMember("groups"))
	// GET patterns also match HEAD (net/http ServeMux); the handler answers HEAD
	// with headers only, as GitLab documents (repository.go).
	mux.HandleFunc("GET /api/v4/projects/{id}/repository/files/{file}", s.repositoryFile)
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		_, pattern := mux.Handler(r)
		s.calls[pattern]++
		if rest, ok := strings.CutPrefix(pattern, "GET "); ok && r.Method == http.MethodHead {
			s.calls["HEAD "+rest]++ // also counted apart, for tests of conditional reads
		}
		fault, latency := s.fault, s.latency
		s.mu.Unlock()
		if latency > 0 {
			t := time.NewTimer(latency)
			select {
			case <-t.C:
			case <-r.Context().Done():
				t.Stop()
				return
			case <-s.stop:
				t.Stop()
				return
			}
		}
		if fault != nil && fault(w, r) {
			return
		}
		mux.ServeHTTP(w, r)
	}))
	return s
}

// Close stops the server, first releasing requests held by Hang.
func (s *Server) Close() {
	s.stopOnce.Do(func() { close(s.stop) })
	s.Server.Close()
}

// Hang is a fault that never answers: it reads the request (so that net/http notices
// the client going away) and waits until the client gives up or the server closes.
func (s *Server) Hang(w http.ResponseWriter, r *http.Request) bool {
	_, _ = io.Copy(io.Discard, r.Body)
	select {
	case <-r.Context().Done():
	case <-s.stop:
	}
	return true
}

// AddUser adds a user.
func (s *Server) AddUser(u User) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if u.State == "" {
		u.State = "active"
	}
	s.users[u.ID] = &u
}

// SetUserState changes a user's state (block, deactivate).
func (s *Server) SetUserState(id int64, state string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.users[id].State = state
}

// AddToken adds a personal access token with the given secret.
func (s *Server) AddToken(secret string, t Token) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tokens[secret] = &t
}

// Revoke revokes a personal access token.
func (s *Server) Revoke(secret string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tokens[secret].Revoked = true
}

// AddDeployToken adds a deploy token: a GitLab token that is not a personal access token.
func (s *Server) AddDeployToken(secret string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.deploy[secret] = true
}

// AddGroup adds a group; its parent (the path's dirname) must exist already.
func (s *Server) AddGroup(id int64, path string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ns := &namespace{id: id, path: path}
	if i := strings.LastIndex(path, "/"); i > 0 {
		ns.parent = s.groups[strings.ToLower(path[:i])]
		if ns.parent == nil {
			panic("gitlabtest: parent group of " + path + " missing")
		}
	}
	s.groups[strings.ToLower(path)] = ns
}

// AddProject adds a project; its namespace group must exist already.
func (s *Server) AddProject(id int64, path string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := strings.LastIndex(path, "/")
	ns := s.groups[strings.ToLower(path[:max(i, 0)])]
	if ns == nil {
		panic("gitlabtest: namespace of " + path + " missing")
	}
	s.projects[strings.ToLower(path)] = &project{id: id, path: path, ns: ns}
}

// AddMember makes a user a direct member of a project or group ("projects"/"groups"
// and the full path) at an access level.
func (s *Server) AddMember(kind, path string, userID int64, level int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var id int64
	switch kind {
	case "projects":
		id = s.projects[strings.ToLower(path)].id
	case "groups":
		id = s.groups[strings.ToLower(path)].id
	default:
		panic("gitlabtest: kind must be projects or groups")
	}
	s.direct[memberKey{kind, id, userID}] = level
}

// RealisticLatency is the delay the benchmarks give every answer: an assumption, not
// a measurement — a GitLab API read in the same region is a network round trip plus
// a Rails request with a few database queries, commonly tens of milliseconds; 20 ms
// is the fast end of that range.
const RealisticLatency = 20 * time.Millisecond

// SetLatency delays every answer by d (0: none).
func (s *Server) SetLatency(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.latency = d
}

// SetFault installs a hook that runs before every request; when it returns true it
// has answered the request itself (errors, malformed answers, hangs). nil removes it.
func (s *Server) SetFault(f func(w http.ResponseWriter, r *http.Request) bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fault = f
}

// Calls reports how many requests reached each route pattern, e.g.
// "POST /api/v4/admin/token". A HEAD request counts under its GET pattern and also
// under the same pattern with HEAD.
func (s *Server) Calls(pattern string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[pattern]
}

// TotalCalls reports every request received.
func (s *Server) TotalCalls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for p, c := range s.calls {
		if !strings.HasPrefix(p, "HEAD ") {
			n += c
		}
	}
	return n
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func message(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"message": msg})
}

// caller authenticates a request by its PRIVATE-TOKEN; GitLab's authentication refuses
// revoked and expired tokens outright. Call with s.mu held.
func (s *Server) caller(r *http.Request) (*User, *Token) {
	t := s.tokens[r.Header.Get("Private-Token")]
	if t == nil || t.Revoked || s.expired(t) {
		return nil, nil
	}
	u := s.users[t.UserID]
	if u == nil || u.State != "active" {
		return nil, nil
	}
	return u, t
}

func (s *Server) expired(t *Token) bool {
	if t.ExpiresAt == "" {
		return false
	}
	day, err := time.Parse(time.DateOnly, t.ExpiresAt)
	return err == nil && !s.now.Before(day)
}

func (s *Server) tokenJSON(t *Token) map[string]any {
	var expires any
	if t.ExpiresAt != "" {
		expires = t.ExpiresAt
	}
	return map[string]any{
		"id": t.ID, "name": t.Name, "revoked": t.Revoked, "created_at": "2025-01-02T03:04:05.000Z",
		"description": "", "scopes": t.Scopes, "user_id": t.UserID, "last_used_at": nil,
		"active": !t.Revoked && !s.expired(t), "expires_at": expires,
	}
}

func (s *Server) adminToken(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	u, _ := s.caller(r)
	switch {
	case u == nil:
		message(w, http.StatusUnauthorized, "401 Unauthorized")
		return
	case !u.Admin:
		message(w, http.StatusForbidden, "403 Forbidden")
		return
	}
	var body struct {
		Token string `json:"token"`
	}
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil || body.Token == "" {
		message(w, http.StatusBadRequest, "400 Bad request - token is missing")
		return
	}
	if s.deploy[body.Token] {
		// The deploy token shape (https://docs.gitlab.com/api/deploy_tokens/): no user_id.
		writeJSON(w, http.StatusOK, map[string]any{"id": 9, "name": "deploy", "username": "gitlab+deploy-token-9",
			"expires_at": nil, "scopes": []string{"read_repository"}, "revoked": false, "expired": false})
		return
	}
	t := s.tokens[body.Token]
	if t == nil {
		if strings.HasPrefix(body.Token, "glpat-") {
			message(w, http.StatusNotFound, "404 Not Found")
		} else {
			message(w, http.StatusUnprocessableEntity, "422 Unprocessable Entity")
		}
		return
	}
	// The admin API's example answer has no "active"; GitLab's entity includes more
	// fields than kubegate reads.
	v := s.tokenJSON(t)
	delete(v, "active")
	v["impersonation"] = false
	writeJSON(w, http.StatusOK, v)
}

func (s *Server) selfToken(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	secret := r.Header.Get("Private-Token")
	if s.deploy[secret] {
		message(w, http.StatusBadRequest, "400 Bad request - This endpoint requires token type to be a personal access token")
		return
	}
	_, t := s.caller(r)
	if t == nil {
		message(w, http.StatusUnauthorized, "401 Unauthorized")
		return
	}
	writeJSON(w, http.StatusOK, s.tokenJSON(t))
}

func userJSON(u *User) map[string]any {
	return map[string]any{"id": u.ID, "username": u.Username, "name": u.Username, "state": u.State,
		"locked": u.State != "active", "avatar_url": "", "web_url": "https://gitlab.example.com/" + u.Username}
}

func (s *Server) user(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if u, _ := s.caller(r); u == nil {
		message(w, http.StatusUnauthorized, "401 Unauthorized")
		return
	}
	id, _ := strconv.ParseInt(r.PathValue("id"), 10, 64)
	u := s.users[id]
	if u == nil {
		message(w, http.StatusNotFound, "404 User Not Found")
		return
	}
	writeJSON(w, http.StatusOK, userJSON(u))
}

func (s *Server) listUsers(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if u, _ := s.caller(r); u == nil {
		message(w, http.StatusUnauthorized, "401 Unauthorized")
		return
	}
	name := r.URL.Query().Get("username")
	out := []map[string]any{}
	for _, u := range s.users {
		if strings.EqualFold(u.Username, name) {
			out = append(out, userJSON(u))
		}
	}
	writeJSON(w, http.StatusOK, out)
}

// findProject and findGroup accept a numeric id or a full path. Call with s.mu held.
func (s *Server) findProject(id string) *project {
	if p := s.projects[strings.ToLower(id)]; p != nil {
		return p
	}
	for _, p := range s.projects {
		if strconv.FormatInt(p.id, 10) == id {
			return p
		}
	}
	return nil
}

func (s *Server) findGroup(id string) *namespace {
	if g := s.groups[strings.ToLower(id)]; g != nil {
		return g
	}
	for _, g := range s.groups {
		if strconv.FormatInt(g.id, 10) == id {
			return g
		}
	}
	return nil
}

func (s *Server) project(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if u, _ := s.caller(r); u == nil {
		message(w, http.StatusUnauthorized, "401 Unauthorized")
		return
	}
	p := s.findProject(r.PathValue("id"))
	if p == nil {
		message(w, http.StatusNotFound, "404 Project Not Found")
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"id": p.id, "path_with_namespace": p.path,
		"namespace": map[string]any{"id": p.ns.id, "full_path": p.ns.path, "kind": "group"}})
}

func (s *Server) group(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if u, _ := s.caller(r); u == nil {
		message(w, http.StatusUnauthorized, "401 Unauthorized")
		return
	}
	g := s.findGroup(r.PathValue("id"))
	if g == nil {
		message(w, http.StatusNotFound, "404 Group Not Found")
		return
	}
	var parent any
	if g.parent != nil {
		parent = g.parent.id
	}
	v := map[string]any{"id": g.id, "full_path": g.path, "parent_id": parent}
	if r.URL.Query().Get("with_projects") != "false" {
		v["projects"] = []any{} // deprecated; kubegate asks without them
	}
	writeJSON(w, http.StatusOK, v)
}

func (s *Server) member(kind string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		defer s.mu.Unlock()
		if u, _ := s.caller(r); u == nil {
			message(w, http.StatusUnauthorized, "401 Unauthorized")
			return
		}
		uid, _ := strconv.ParseInt(r.PathValue("uid"), 10, 64)
		user := s.users[uid]
		var id int64
		var ns *namespace
		if kind == "projects" {
			p := s.findProject(r.PathValue("id"))
			if p == nil {
				message(w, http.StatusNotFound, "404 Project Not Found")
				return
			}
			id, ns = p.id, p.ns
		} else {
			g := s.findGroup(r.PathValue("id"))
			if g == nil {
				message(w, http.StatusNotFound, "404 Group Not Found")
				return
			}
			id, ns = g.id, g
		}
		level := s.direct[memberKey{kind, id, uid}]
		for ; ns != nil; ns = ns.parent {
			level = max(level, s.direct[memberKey{"groups", ns.id, uid}])
		}
		if user == nil || level == 0 {
			message(w, http.StatusNotFound, "404 Not found")
			return
		}
		v := userJSON(user)
		v["access_level"] = level
		v["expires_at"] = nil
		v["membership_state"] = "active"
		v["created_at"] = "2025-01-02T03:04:05.000Z"
		writeJSON(w, http.StatusOK, v)
	}
}

// directMember is GET /:collection/:id/members/:user_id: the direct membership
// only, without inherited ones ("Get a member of a group or project",
// https://docs.gitlab.com/api/members/#get-a-member-of-a-group-or-project); same
// record shape as members/all.
func (s *Server) directMember(kind string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		defer s.mu.Unlock()
		if u, _ := s.caller(r); u == nil {
			message(w, http.StatusUnauthorized, "401 Unauthorized")
			return
		}
		uid, _ := strconv.ParseInt(r.PathValue("uid"), 10, 64)
		var id int64
		if kind == "projects" {
			p := s.findProject(r.PathValue("id"))
			if p == nil {
				message(w, http.StatusNotFound, "404 Project Not Found")
				return
			}
			id = p.id
		} else {
			g := s.findGroup(r.PathValue("id"))
			if g == nil {
				message(w, http.StatusNotFound, "404 Group Not Found")
				return
			}
			id = g.id
		}
		level, user := s.direct[memberKey{kind, id, uid}], s.users[uid]
		if user == nil || level == 0 {
			message(w, http.StatusNotFound, "404 Not found")
			return
		}
		v := userJSON(user)
		v["access_level"] = level
		v["expires_at"] = nil
		v["membership_state"] = "active"
		v["created_at"] = "2025-01-02T03:04:05.000Z"
		writeJSON(w, http.StatusOK, v)
	}
}

// Sandbox fills the server with the users, groups, projects and memberships of the
// sandbox directory (deploy/sandbox/directory.yaml), so GitLab-backed and
// directory-backed answers can be compared. Tokens are added by the caller.
func (s *Server) Sandbox() {
	for i, name := range []string{"alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory"} {
		s.AddUser(User{ID: int64(i + 1), Username: name})
	}
	s.SetUserState(11, "blocked")
	s.AddGroup(1, "group-1")
	s.AddGroup(2, "group-2")
	s.AddGroup(3, "group-3")
	s.AddGroup(4, "group-3/subgroup")
	s.AddGroup(5, "group-3/subgroup/team")
	s.AddProject(1, "group-1/project-1")
	s.AddProject(2, "group-2/project-2")
	s.AddProject(3, "group-3/subgroup/project-3")
	for _, m := range []struct {
		kind, path string
		user       int64
		level      int
	}{
		{"projects", "group-1/project-1", 1, 40}, {"projects", "group-2/project-2", 2, 20},
		{"groups", "group-3", 3, 30}, {"groups", "group-3/subgroup/team", 4, 40},
		{"projects", "group-1/project-1", 5, 30}, {"projects", "group-1/project-1", 6, 30},
		{"groups", "group-2", 7, 30}, {"groups", "group-1", 8, 30},
		{"projects", "group-3/subgroup/project-3", 9, 40}, {"projects", "group-1/project-1", 10, 30},
		{"projects", "group-1/project-1", 11, 50},
	} {
		s.AddMember(m.kind, m.path, m.user, m.level)
	}
}

// String describes the server for test logs.
func (s *Server) String() string { return fmt.Sprintf("stand-in GitLab at %s", s.URL) }
