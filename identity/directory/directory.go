package directory

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.yaml.in/yaml/v3"

	"kubegate.dev/kubegate/identity"
	"kubegate.dev/kubegate/internal/boundedread"
)

// ScopeK8sProxy is the token scope the gateway requires, as in GitLab.
const ScopeK8sProxy = "k8s_proxy"

// maxFileSize bounds the directory file; a larger file is almost certainly a mistake.
const maxFileSize = 32 << 20

// Directory is a loaded, validated directory file. It is immutable and safe for
// concurrent use; reloading builds a new one.
type Directory struct {
	usersByName map[string]*user // lower-case username
	usersByID   map[int64]*user
	groups      map[string]*group // lower-case full path
	projects    map[string]*project
	tokens      map[[sha256.Size]byte]*token
	now         func() time.Time

	// index resolves the listing in service to directory entries, built on the
	// first Memberships call for it (one listing per configuration).
	index   atomic.Pointer[listedIndex]
	indexMu sync.Mutex

	// dummy is checked for users without a usable password_hash (CheckPassword).
	dummy dummy
}

type user struct {
	identity.User
	state    string
	password *passwordHash // nil: no password login
	directG  []groupLevel  // direct group memberships
	directP  []projectLevel
}

type groupLevel struct {
	group *group
	level identity.AccessLevel
}

type projectLevel struct {
	project *project
	level   identity.AccessLevel
}

type group struct {
	id     int64
	path   string
	parent *group
}

type project struct {
	id        int64
	path      string
	namespace *group
}

type token struct {
	user      *user
	name      string
	scopes    []string
	expiresAt time.Time
	revoked   bool
}

// HashToken returns the digest a directory file stores for a token.
func HashToken(tok string) string {
	sum := sha256.Sum256([]byte(tok))
	return "sha256:" + hex.EncodeToString(sum[:])
}

func parseDigest(s string) ([sha256.Size]byte, error) {
	var d [sha256.Size]byte
	hexPart, ok := strings.CutPrefix(s, "sha256:")
	if !ok {
		return d, errors.New(`digest must look like "sha256:<64 hex digits>" (kubegate directory hash-token prints one)`)
	}
	b, err := hex.DecodeString(hexPart)
	if err != nil || len(b) != sha256.Size {
		return d, errors.New(`digest must look like "sha256:<64 hex digits>" (kubegate directory hash-token prints one)`)
	}
	copy(d[:], b)
	return d, nil
}

// Load reads and validates a directory file.
func Load(file string) (*Directory, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, fmt.Errorf("directory: %w", err)
	}
	defer f.Close()
	// Read as a string, parsed in place: at real size a copy per line was 4 MB of
	// fresh memory, and at start-up every fresh page costs (a page fault, ~14 µs
	// each on a 2-core VM) more than the parse that fills it. build clones what the
	// Directory keeps, so the file's text is garbage once Load returns.
	data, tooLarge, err := boundedread.String(f, maxFileSize)
	if err != nil {
		return nil, fmt.Errorf("directory %s: %w", file, err)
	}
	if tooLarge {
		return nil, fmt.Errorf("directory %s: larger than %d MiB, the most kubegate reads; is it the directory file? A directory this large belongs in GitLab (--identity-source gitlab)", file, maxFileSize>>20)
	}
	return parse(file, data)
}

// Parse validates a directory document; name is used in error messages.
func Parse(name string, data []byte) (*Directory, error) {
	return parse(name, string(data))
}

func parse(name, data string) (*Directory, error) {
	ff, err := decode(data)
	if err != nil {
		return nil, fmt.Errorf("directory %s: %v", name, err)
	}
	d, errs := build(ff)
	if len(errs) > 0 {
		return nil, &LoadError{File: name, Problems: errs}
	}
	return d, nil
}

// decode reads the file's entries: by the line reader when the file is in the
// one-flow-mapping-per-line shape it knows, else by the YAML decoder.
func decode(data string) (fileFormat, error) {
	if ff, ok := parseFlowLines(data); ok {
		return ff, nil
	}
	return decodeYAML(data)
}

func decodeYAML(data string) (fileFormat, error) {
	var ff fileFormat
	dec := yaml.NewDecoder(strings.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&ff); err != nil && !errors.Is(err, io.EOF) {
		return fileFormat{}, err
	}
	return ff, nil
}

// LoadError lists every problem found in a directory file.
type LoadError struct {
	File     string
	Problems []string
}

func (e *LoadError) Error() string {
	return fmt.Sprintf("directory %s: %d problem(s):\n  %s", e.File, len(e.Problems), strings.Join(e.Problems, "\n  "))
}

// userStates maps each state a file may give to the Directory's own copy of it.
var userStates = map[string]string{"active": "active", "blocked": "blocked", "deactivated": "deactivated", "banned": "banned"}

func build(ff fileFormat) (*Directory, []string) {
	var errs []string
	bad := func(line int, format string, args ...any) {
		errs = append(errs, fmt.Sprintf("line %d: %s", line, fmt.Sprintf(format, args...)))
	}
	// Maps are sized from the file: growing them entry by entry cost a fifth of
	// loading a real-size directory (start-up, every reload).
	d := &Directory{
		usersByName: make(map[string]*user, len(ff.Users)),
		usersByID:   make(map[int64]*user, len(ff.Users)),
		groups:      make(map[string]*group, len(ff.Groups)),
		projects:    make(map[string]*project, len(ff.Projects)),
		tokens:      make(map[[sha256.Size]byte]*token, len(ff.Tokens)),
		now:         time.Now,
	}

	var hashes []*passwordHash
	for i, u := range ff.Users {
		where := entryAt{"users", i}
		state := u.State
		if state == "" {
			state = "active"
		}
		var pw *passwordHash
		var pwErr error
		if u.PasswordHash != "" {
			pw, pwErr = parsePasswordHash(u.PasswordHash)
		}
		switch {
		case u.ID <= 0:
			bad(u.line, "%s.id must be a positive number", where)
		case u.Username == "" || strings.ContainsAny(u.Username, " /:\t"):
			bad(u.line, "%s.username %q must be non-empty without spaces, '/' or ':'", where, u.Username)
		case userStates[state] == "":
			bad(u.line, "%s.state %q must be active, blocked, deactivated or banned", where, u.State)
		case d.usersByID[u.ID] != nil:
			bad(u.line, "%s.id %d is used twice", where, u.ID)
		case d.usersByName[strings.ToLower(u.Username)] != nil:
			bad(u.line, "%s.username %q is used twice", where, u.Username)
		case pwErr != nil:
			bad(u.line, "%s.password_hash: %v", where, pwErr)
		default:
			if pw != nil {
				hashes = append(hashes, pw)
			}
			name := strings.Clone(u.Username)
			nu := &user{User: identity.User{ID: u.ID, Username: name}, state: userStates[state], password: pw}
			d.usersByID[u.ID] = nu
			d.usersByName[strings.ToLower(name)] = nu
		}
	}

	d.dummy.like = mostCommon(hashes)

	ids := make(map[int64]bool, len(ff.Groups))
	for i, g := range ff.Groups {
		where := entryAt{"groups", i}
		key := strings.ToLower(g.Path)
		switch {
		case g.ID <= 0:
			bad(g.line, "%s.id must be a positive number", where)
		case !validPath(g.Path):
			bad(g.line, "%s.path %q is not a full path like group or group/subgroup", where, g.Path)
		case ids[g.ID]:
			bad(g.line, "%s.id %d is used twice", where, g.ID)
		case d.groups[key] != nil:
			bad(g.line, "%s.path %q is used twice", where, g.Path)
		default:
			ids[g.ID] = true
			p := strings.Clone(g.Path)
			d.groups[strings.ToLower(p)] = &group{id: g.ID, path: p}
		}
	}
	// Parents resolve once every group is known, so the file order does not matter.
	for i, g := range ff.Groups {
		ng := d.groups[strings.ToLower(g.Path)]
		if ng == nil || ng.id != g.ID {
			continue
		}
		parent := path.Dir(g.Path)
		if g.Parent != "" && !strings.EqualFold(g.Parent, parent) {
			bad(g.line, "groups[%d].parent %q is not the parent of %q (expected %q)", i, g.Parent, g.Path, parent)
			continue
		}
		if parent == "." {
			continue
		}
		if ng.parent = d.groups[strings.ToLower(parent)]; ng.parent == nil {
			bad(g.line, "groups[%d]: parent group %q of %q is not in the directory", i, parent, g.Path)
		}
	}

	pids := make(map[int64]bool, len(ff.Projects))
	for i, p := range ff.Projects {
		where := entryAt{"projects", i}
		key := strings.ToLower(p.Path)
		ns := path.Dir(p.Path)
		switch {
		case p.ID <= 0:
			bad(p.line, "%s.id must be a positive number", where)
		case !validPath(p.Path) || ns == ".":
			bad(p.line, "%s.path %q is not a full path like group/project", where, p.Path)
		case p.Namespace != "" && !strings.EqualFold(p.Namespace, ns):
			bad(p.line, "%s.namespace %q is not the parent of %q (expected %q)", where, p.Namespace, p.Path, ns)
		case d.groups[strings.ToLower(ns)] == nil:
			bad(p.line, "%s: namespace group %q of %q is not in the directory", where, ns, p.Path)
		case pids[p.ID]:
			bad(p.line, "%s.id %d is used twice", where, p.ID)
		case d.projects[key] != nil:
			bad(p.line, "%s.path %q is used twice", where, p.Path)
		default:
			pids[p.ID] = true
			pp := strings.Clone(p.Path)
			d.projects[strings.ToLower(pp)] = &project{id: p.ID, path: pp, namespace: d.groups[strings.ToLower(ns)]}
		}
	}

	// Memberships in two passes: count each user's, then append them into windows
	// of one backing array per kind, sized exactly. Growing a thousand slices entry
	// by entry, and sets of (user, entity) pairs to find repeated memberships, were
	// 3 MB of garbage per real-size load, and at start-up every fresh page costs
	// more than the parse that fills it. Repeats are looked for afterwards, per user
	// (repeatedMemberships); only a file that has one pays for the exact messages.
	type counts struct{ projects, groups int }
	perUser := make(map[*user]*counts, len(d.usersByID))
	var nP, nG int
	for _, m := range ff.Memberships {
		u := d.usersByName[strings.ToLower(m.User)]
		if u == nil {
			continue
		}
		c := perUser[u]
		if c == nil {
			c = &counts{}
			perUser[u] = c
		}
		if m.Project != "" {
			c.projects++
			nP++
		} else {
			c.groups++
			nG++
		}
	}
	allP, allG := make([]projectLevel, nP), make([]groupLevel, nG)
	for u, c := range perUser {
		u.directP, allP = allP[:0:c.projects], allP[c.projects:]
		u.directG, allG = allG[:0:c.groups], allG[c.groups:]
	}
	for i, m := range ff.Memberships {
		where := entryAt{"memberships", i}
		u := d.usersByName[strings.ToLower(m.User)]
		if u == nil {
			bad(m.line, "%s.user %q is not in users", where, m.User)
			continue
		}
		level, err := membershipLevel(m)
		if err != nil {
			bad(m.line, "%s: %v", where, err)
			continue
		}
		switch {
		case (m.Project == "") == (m.Group == ""):
			bad(m.line, "%s needs exactly one of project or group", where)
		case m.Project != "":
			if p := d.projects[strings.ToLower(m.Project)]; p == nil {
				bad(m.line, "%s.project %q is not in projects", where, m.Project)
			} else {
				u.directP = append(u.directP, projectLevel{p, level})
			}
		default:
			if g := d.groups[strings.ToLower(m.Group)]; g == nil {
				bad(m.line, "%s.group %q is not in groups", where, m.Group)
			} else {
				u.directG = append(u.directG, groupLevel{g, level})
			}
		}
	}
	if repeatedMemberships(d.usersByID) {
		// A file with errors is refused whole, so the repeats appended above are
		// never used; this pass only names them, in file order.
		type userProject struct {
			u *user
			p *project
		}
		type userGroup struct {
			u *user
			g *group
		}
		seenP, seenG := map[userProject]bool{}, map[userGroup]bool{}
		for i, m := range ff.Memberships {
			u := d.usersByName[strings.ToLower(m.User)]
			if _, err := membershipLevel(m); u == nil || err != nil || (m.Project == "") == (m.Group == "") {
				continue // refused above, and never appended
			}
			if p := d.projects[strings.ToLower(m.Project)]; m.Project != "" && p != nil {
				if seenP[userProject{u, p}] {
					bad(m.line, "%s: %s is already a member of project %s", entryAt{"memberships", i}, m.User, m.Project)
				}
				seenP[userProject{u, p}] = true
			} else if g := d.groups[strings.ToLower(m.Group)]; m.Project == "" && g != nil {
				if seenG[userGroup{u, g}] {
					bad(m.line, "%s: %s is already a member of group %s", entryAt{"memberships", i}, m.User, m.Group)
				}
				seenG[userGroup{u, g}] = true
			}
		}
	}

	for i, t := range ff.Tokens {
		where := entryAt{"tokens", i}
		u := d.usersByName[strings.ToLower(t.User)]
		digest, err := parseDigest(t.Digest)
		switch {
		case u == nil:
			bad(t.line, "%s.user %q is not in users", where, t.User)
		case t.Name == "":
			bad(t.line, "%s.name is empty: give the token a name people recognise", where)
		case err != nil:
			bad(t.line, "%s.digest: %v", where, err)
		case d.tokens[digest] != nil:
			bad(t.line, "%s.digest is used twice", where)
		default:
			d.tokens[digest] = &token{user: u, name: strings.Clone(t.Name), scopes: cloneScopes(t.Scopes), expiresAt: t.ExpiresAt.Time, revoked: t.Revoked}
		}
	}
	return d, errs
}

// cloneScopes is a token's scopes in memory of their own (the parsed values are
// substrings of the file's text, which the Directory must not keep alive); the
// scope every gateway token carries is the package's constant.
func cloneScopes(scopes []string) []string {
	if scopes == nil {
		return nil
	}
	out := make([]string, len(scopes))
	for i, sc := range scopes {
		if sc == ScopeK8sProxy {
			out[i] = ScopeK8sProxy
		} else {
			out[i] = strings.Clone(sc)
		}
	}
	return out
}

// repeatedMemberships reports whether any user is a direct member of one project
// or group twice: each user's entity ids, sorted in one scratch slice, side by side.
func repeatedMemberships(users map[int64]*user) bool {
	var ids []int64
	repeated := func() bool {
		slices.Sort(ids)
		for i := 1; i < len(ids); i++ {
			if ids[i] == ids[i-1] {
				return true
			}
		}
		return false
	}
	for _, u := range users {
		ids = ids[:0]
		for _, m := range u.directP {
			ids = append(ids, m.project.id)
		}
		if repeated() {
			return true
		}
		ids = ids[:0]
		for _, m := range u.directG {
			ids = append(ids, m.group.id)
		}
		if repeated() {
			return true
		}
	}
	return false
}

// entryAt names an entry in messages ("users[3]"); formatted only when a message
// is made, not for each of the file's tens of thousands of entries.
type entryAt struct {
	section string
	i       int
}

func (e entryAt) String() string { return fmt.Sprintf("%s[%d]", e.section, e.i) }

func membershipLevel(m membershipEntry) (identity.AccessLevel, error) {
	switch {
	case m.Role != "" && m.AccessLevel != 0:
		return 0, errors.New("give role or access_level, not both")
	case m.Role != "":
		return identity.ParseRole(m.Role)
	}
	for _, r := range identity.Roles {
		if identity.AccessLevel(m.AccessLevel) == r.Level {
			return r.Level, nil
		}
	}
	return 0, fmt.Errorf("access_level %d is not one of 10, 15, 20, 30, 40, 50 (or give role: developer …)", m.AccessLevel)
}

// validPath accepts GitLab-style full paths: non-empty segments of letters, digits,
// '_', '-', '.', separated by single '/'.
func validPath(p string) bool {
	if p == "" {
		return false
	}
	for _, seg := range strings.Split(p, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return false
		}
		for _, c := range seg {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.') {
				return false
			}
		}
	}
	return true
}

// Authenticate verifies personal access tokens (access.md §2): the token must be
// known, carry the k8s_proxy scope, be neither revoked nor expired, and belong to an
// active user. Other credential types are not this authenticator's.
func (d *Directory) Authenticate(_ context.Context, cred identity.Credential) (*identity.Identity, bool, error) {
	if cred.Type != identity.AccessPersonalAccessToken {
		return nil, false, nil
	}
	t := d.tokens[sha256.Sum256([]byte(cred.Secret))]
	switch {
	case t == nil:
		return nil, false, identity.Rejected(identity.ReasonInvalid, errors.New("no token with this digest"))
	case t.revoked:
		return nil, false, identity.Rejected(identity.ReasonRevoked, fmt.Errorf("token %q of %s is revoked", t.name, t.user.Username))
	case !t.expiresAt.IsZero() && !d.now().Before(t.expiresAt):
		return nil, false, identity.Rejected(identity.ReasonExpired, fmt.Errorf("token %q of %s expired at %s", t.name, t.user.Username, t.expiresAt.Format(time.RFC3339)))
	case !hasScope(t.scopes, ScopeK8sProxy):
		return nil, false, identity.Rejected(identity.ReasonScope, fmt.Errorf("token %q of %s lacks the %s scope", t.name, t.user.Username, ScopeK8sProxy))
	case t.user.state != "active":
		return nil, false, identity.Rejected(identity.ReasonInactive, fmt.Errorf("user %s is %s", t.user.Username, t.user.state))
	}
	return &identity.Identity{User: t.user.User, AccessType: cred.Type, AgentID: cred.AgentID, Expiry: t.expiresAt}, true, nil
}

func hasScope(scopes []string, want string) bool {
	for _, s := range scopes {
		if s == want {
			return true
		}
	}
	return false
}

// UserByName finds a user (used by the OIDC backend to map a username claim, and by
// `kubegate explain`). Only active users are returned.
func (d *Directory) UserByName(username string) (identity.User, bool) {
	u := d.usersByName[strings.ToLower(username)]
	if u == nil || u.state != "active" {
		return identity.User{}, false
	}
	return u.User, true
}

// Memberships computes the user's effective access to each listed project and group
// (access.md §3): for a project, the highest of the direct membership and the
// memberships of every ancestor group of its namespace; for a group, the highest of
// the group's and its ancestors'. Membership in a subgroup never counts upward, and a
// group entry never expands into its projects. Listed paths the directory does not
// know are skipped, as GitLab skips entries it cannot resolve.
//
// The work per call follows the user's direct memberships, not the listing: the
// listing is resolved once (listedIndex), and each direct membership raises the
// listed entries below it.
func (d *Directory) Memberships(_ context.Context, u identity.User, listed identity.Listed) ([]identity.Membership, error) {
	du := d.usersByID[u.ID]
	if du == nil || du.state != "active" {
		return nil, nil
	}
	if du.Username != u.Username {
		// The identity was resolved from an earlier directory that numbered users
		// differently (a cached OIDC identity): this id is someone else now. Never
		// pair one user's name with another's memberships.
		return nil, identity.Rejected(identity.ReasonInvalid, fmt.Errorf("user id %d is %s in the directory, not %s: the identity comes from an earlier directory", u.ID, du.Username, u.Username))
	}
	idx := d.indexFor(&listed)
	// The user's direct memberships reach a few positions of the listing each;
	// collect those (pos, level) hits in a stack buffer, not a level per listed
	// entry (1,000 at real size: 8 KB allocated per request), then sort them into
	// the listing's order and keep the highest level per position.
	var buf [128]hit
	hits := buf[:0]
	for _, m := range du.directG {
		for _, pos := range idx.byGroup[m.group] {
			hits = append(hits, hit{pos, m.level})
		}
	}
	for _, m := range du.directP {
		for _, pos := range idx.byProject[m.project] {
			hits = append(hits, hit{pos, m.level})
		}
	}
	slices.SortFunc(hits, func(a, b hit) int { return cmp.Compare(a.pos, b.pos) })
	merged, n := hits[:0], 0 // one hit per position, with its highest level
	for _, h := range hits {
		if k := len(merged); k > 0 && merged[k-1].pos == h.pos {
			merged[k-1].level = max(merged[k-1].level, h.level)
			continue
		}
		merged = append(merged, h)
	}
	for _, h := range merged {
		if h.level > identity.NoAccess {
			n++
		}
	}
	if n == 0 {
		return nil, nil
	}
	out := make([]identity.Membership, 0, n)
	for _, h := range merged {
		if h.level > identity.NoAccess {
			e := idx.entries[h.pos]
			out = append(out, identity.Membership{Kind: e.kind, ID: e.id, Path: e.path, AccessLevel: h.level})
		}
	}
	return out, nil
}

// hit is one listed position a direct membership reaches, with its level.
type hit struct {
	pos   int32
	level identity.AccessLevel
}

// listedIndex is a listing resolved against the directory. Positions number the
// listing's projects, then its groups, as Memberships answers them.
type listedIndex struct {
	digest  [sha256.Size]byte
	entries []listedEntry
	// byGroup lists, for a group, the positions a membership of it gives access
	// to: listed projects whose namespace is the group or below it, and listed
	// groups that are the group or below it.
	byGroup   map[*group][]int32
	byProject map[*project][]int32
}

type listedEntry struct {
	kind identity.Kind
	id   int64
	path string // as written in the listing
}

// indexFor returns the index of listed, building it on first use. The directory is
// immutable, so an index stays valid for its life; only the last listing is kept
// (a configuration has one).
func (d *Directory) indexFor(listed *identity.Listed) *listedIndex {
	digest := listed.Digest()
	if idx := d.index.Load(); idx != nil && idx.digest == digest {
		return idx
	}
	d.indexMu.Lock()
	defer d.indexMu.Unlock()
	if idx := d.index.Load(); idx != nil && idx.digest == digest {
		return idx
	}
	idx := &listedIndex{digest: digest, entries: make([]listedEntry, len(listed.Projects)+len(listed.Groups)),
		byGroup: map[*group][]int32{}, byProject: map[*project][]int32{}}
	for i, p := range listed.Projects {
		proj := d.projects[listed.ProjectKey(i)]
		if proj == nil {
			continue
		}
		pos := int32(i)
		idx.entries[pos] = listedEntry{identity.KindProject, proj.id, p}
		idx.byProject[proj] = append(idx.byProject[proj], pos)
		for g := proj.namespace; g != nil; g = g.parent {
			idx.byGroup[g] = append(idx.byGroup[g], pos)
		}
	}
	for i, name := range listed.Groups {
		grp := d.groups[listed.GroupKey(i)]
		if grp == nil {
			continue
		}
		pos := int32(len(listed.Projects) + i)
		idx.entries[pos] = listedEntry{identity.KindGroup, grp.id, name}
		for g := grp; g != nil; g = g.parent {
			idx.byGroup[g] = append(idx.byGroup[g], pos)
		}
	}
	d.index.Store(idx)
	return idx
}

// Summary counts the directory's entries, for log lines after a (re)load.
func (d *Directory) Summary() string {
	return fmt.Sprintf("%d users, %d groups, %d projects, %d tokens", len(d.usersByID), len(d.groups), len(d.projects), len(d.tokens))
}
