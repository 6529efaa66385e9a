package gitlabtest

// Project repositories and the repository files API, which kubegate authz reads
// agent configurations (.gitlab/agents/<name>/config.yaml) through, following
// GitLab's documentation (https://docs.gitlab.com/api/repository_files/, GitLab
// 17.x–18.x):
//
//   - GET /api/v4/projects/:id/repository/files/:file_path?ref= — "Get file from
//     repository": file_path is URL-encoded (.gitlab%2Fagents%2Fa%2Fconfig.yaml);
//     ref is required (400 "ref is missing") and may be HEAD, "to automatically use
//     the default branch"; the answer is JSON with file_name, file_path, size,
//     encoding "base64", content, content_sha256, ref, blob_id, commit_id,
//     last_commit_id and execute_filemode.
//   - HEAD on the same URL — "you can also use HEAD to get just file metadata": the
//     same status, no body, the metadata in X-Gitlab-Blob-Id, X-Gitlab-Commit-Id,
//     X-Gitlab-Content-Sha256, X-Gitlab-Encoding, X-Gitlab-File-Name,
//     X-Gitlab-File-Path, X-Gitlab-Last-Commit-Id, X-Gitlab-Ref, X-Gitlab-Size and
//     X-Gitlab-Execute-Filemode headers.
//
// A project the caller cannot see is "404 Project Not Found"; a ref that does not
// exist "404 Commit Not Found"; a path not in it "404 File Not Found". Reading a
// private project's files needs the Reporter role or more (administrators see
// everything; https://docs.gitlab.com/user/permissions/), and a token with the api,
// read_api or read_repository scope (the page's "Available scopes" table), else 403
// insufficient_scope. blob_id is git's blob id of the content (SHA-1 of "blob
// <size>\x00<content>"), so equal content has equal blob ids, as in git.

import (
	"crypto/sha1"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net/http"
	"path"
	"slices"
	"strconv"
)

// repository is a project's git repository: branches, each a file tree at a head
// commit. Guarded by the server's lock.
type repository struct {
	defaultBranch string
	branches      map[string]*branch
}

type branch struct {
	head  string // commit id
	files map[string]*file
}

type file struct {
	content    []byte
	lastCommit string // the last commit that changed this file on the branch
}

// commitID makes a fresh, unique commit id. Call with s.mu held.
func (s *Server) commitID() string {
	s.commits++
	sum := sha1.Sum([]byte("kubegate-gitlabtest-commit-" + strconv.Itoa(s.commits)))
	return hex.EncodeToString(sum[:])
}

// repo returns a project's repository, creating it with default branch "main".
// Call with s.mu held.
func (s *Server) repo(projectPath string) *repository {
	p := s.findProject(projectPath)
	if p == nil {
		panic("gitlabtest: project " + projectPath + " missing")
	}
	if s.repos[p.id] == nil {
		s.repos[p.id] = &repository{defaultBranch: "main", branches: map[string]*branch{}}
	}
	return s.repos[p.id]
}

// SetDefaultBranch sets a project's default branch (it need not exist yet).
func (s *Server) SetDefaultBranch(projectPath, branchName string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.repo(projectPath).defaultBranch = branchName
}

// PushFile commits content at filePath on a branch of a project (creating both as
// needed) and returns the new commit id.
func (s *Server) PushFile(projectPath, branchName, filePath string, content []byte) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.repo(projectPath)
	b := r.branches[branchName]
	if b == nil {
		b = &branch{files: map[string]*file{}}
		r.branches[branchName] = b
	}
	b.head = s.commitID()
	b.files[filePath] = &file{content: slices.Clone(content), lastCommit: b.head}
	return b.head
}

// RemoveFile commits the removal of filePath from a branch and returns the commit id.
func (s *Server) RemoveFile(projectPath, branchName, filePath string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.repo(projectPath).branches[branchName]
	if b == nil {
		panic("gitlabtest: branch " + branchName + " missing")
	}
	b.head = s.commitID()
	delete(b.files, filePath)
	return b.head
}

// BlobID is git's blob id of content, as GitLab's blob_id.
func BlobID(content []byte) string {
	h := sha1.New()
	fmt.Fprintf(h, "blob %d\x00", len(content))
	h.Write(content)
	return hex.EncodeToString(h.Sum(nil))
}

// repositoryFile serves GET and HEAD /projects/:id/repository/files/:file_path.
func (s *Server) repositoryFile(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	u, tok := s.caller(r)
	if u == nil {
		message(w, http.StatusUnauthorized, "401 Unauthorized")
		return
	}
	p := s.findProject(r.PathValue("id"))
	if p == nil || (!u.Admin && s.effectiveLevel("projects", p.id, p.ns, u.ID) < 20) {
		message(w, http.StatusNotFound, "404 Project Not Found")
		return
	}
	if !slices.ContainsFunc(tok.Scopes, func(sc string) bool {
		return sc == "api" || sc == "read_api" || sc == "read_repository"
	}) {
		insufficientScope(w, "api read_api read_repository")
		return
	}
	ref := r.URL.Query().Get("ref")
	if ref == "" {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "ref is missing"})
		return
	}
	repo := s.repos[p.id]
	var b *branch
	if repo != nil {
		name := ref
		if ref == "HEAD" {
			name = repo.defaultBranch
		}
		b = repo.branches[name]
		if b == nil {
			for _, c := range repo.branches { // a commit id names a branch's head here
				if c.head == ref {
					b = c
				}
			}
		}
	}
	if b == nil {
		message(w, http.StatusNotFound, "404 Commit Not Found")
		return
	}
	filePath := r.PathValue("file")
	f := b.files[filePath]
	if f == nil {
		message(w, http.StatusNotFound, "404 File Not Found")
		return
	}
	sum := sha256.Sum256(f.content)
	meta := map[string]string{
		"Blob-Id": BlobID(f.content), "Commit-Id": b.head, "Content-Sha256": hex.EncodeToString(sum[:]),
		"Encoding": "base64", "File-Name": path.Base(filePath), "File-Path": filePath,
		"Last-Commit-Id": f.lastCommit, "Ref": ref, "Size": strconv.Itoa(len(f.content)), "Execute-Filemode": "false",
	}
	if r.Method == http.MethodHead {
		for k, v := range meta {
			w.Header().Set("X-Gitlab-"+k, v)
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"file_name": meta["File-Name"], "file_path": filePath, "size": len(f.content), "encoding": "base64",
		"content": base64.StdEncoding.EncodeToString(f.content), "content_sha256": meta["Content-Sha256"],
		"ref": ref, "blob_id": meta["Blob-Id"], "commit_id": b.head, "last_commit_id": f.lastCommit,
		"execute_filemode": false,
	})
}
