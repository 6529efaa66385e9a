package gitlab

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	gl "gitlab.com/gitlab-org/api/client-go"
	"golang.org/x/sync/errgroup"

	"kubegate.dev/kubegate/identity"
)

// memberInfo is the part of GET /projects/:id/members/all/:user_id and
// GET /groups/:id/members/all/:user_id
// (https://docs.gitlab.com/api/members/#get-a-member-of-a-group-or-project-including-inherited-and-invited-members)
// that kubegate reads. GitLab answers with the member's effective access: the highest
// of the direct membership, the memberships inherited from ancestor groups and those
// through invited (shared) groups.
type memberInfo struct {
	ID              int64                 `json:"id"`
	AccessLevel     *identity.AccessLevel `json:"access_level"`
	State           string                `json:"state"`            // the user's state
	MembershipState string                `json:"membership_state"` // "awaiting" while pending approval
	ExpiresAt       *string               `json:"expires_at"`
}

// Memberships asks GitLab for the user's effective access to each listed project and
// group (access.md §3), in the order of the listing. Paths are resolved to numeric ids
// (cached for Config.PathCacheTTL); a path GitLab does not know, or that the service
// token cannot see, is left out, as is an entry the user has no access to. Any other
// failure fails the whole call: a partial answer could hide a role.
//
// Cost: one members/all call per listed entry, plus one call per path not yet cached,
// Config.Concurrency at a time.
func (b *Backend) Memberships(ctx context.Context, u identity.User, listed identity.Listed) ([]identity.Membership, error) {
	if u.ID <= 0 {
		return nil, fmt.Errorf("gitlab: memberships of user %q without a GitLab user id", u.Username)
	}
	ctx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()

	type entry struct {
		kind identity.Kind
		path string
	}
	entries := make([]entry, 0, len(listed.Projects)+len(listed.Groups))
	for _, p := range listed.Projects {
		entries = append(entries, entry{identity.KindProject, p})
	}
	for _, g := range listed.Groups {
		entries = append(entries, entry{identity.KindGroup, g})
	}

	found := make([]*identity.Membership, len(entries))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(b.concurrency)
	for i, e := range entries {
		g.Go(func() error {
			id, ok, err := b.resolve(gctx, e.kind, e.path)
			if err != nil || !ok {
				return err
			}
			level, ok, err := b.memberLevel(gctx, e.kind, id, u.ID)
			if err != nil || !ok {
				return err
			}
			found[i] = &identity.Membership{Kind: e.kind, ID: id, Path: e.path, AccessLevel: level}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	var out []identity.Membership
	for _, m := range found {
		if m != nil {
			out = append(out, *m)
		}
	}
	return out, nil
}

// memberLevel reads the user's effective access level to a project or group; ok is
// false when the user has no usable membership there.
func (b *Backend) memberLevel(ctx context.Context, kind identity.Kind, id, userID int64) (identity.AccessLevel, bool, error) {
	return b.memberLevelAt(ctx, kind, id, userID, "/members/all/")
}

// memberLevelAt reads a member record from members/all/ (effective access) or,
// for `kubegate explain`, members/ (the direct membership only; same answer shape,
// https://docs.gitlab.com/api/members/#get-a-member-of-a-group-or-project).
func (b *Backend) memberLevelAt(ctx context.Context, kind identity.Kind, id, userID int64, members string) (identity.AccessLevel, bool, error) {
	collection := "projects"
	if kind == identity.KindGroup {
		collection = "groups"
	}
	endpoint := "GET /" + collection + "/:id" + members + ":user_id"
	var m memberInfo
	a := b.call(ctx, endpoint, http.MethodGet,
		collection+"/"+strconv.FormatInt(id, 10)+members+strconv.FormatInt(userID, 10), nil, &m)
	switch {
	case a.ok():
	case a.err == nil && a.status == http.StatusNotFound:
		return identity.NoAccess, false, nil
	default:
		return identity.NoAccess, false, a.unavailable()
	}
	if m.ID != userID || m.AccessLevel == nil {
		return identity.NoAccess, false, identity.SourceUnavailable(sourceName, fmt.Errorf("%s: GitLab's answer for %s %d is not a member record of user %d", endpoint, kind, id, userID))
	}
	switch {
	case m.MembershipState != "" && m.MembershipState != "active":
		return identity.NoAccess, false, nil // invited or awaiting approval: no access yet
	case m.State != "" && m.State != "active":
		return identity.NoAccess, false, nil
	case memberExpired(m.ExpiresAt, b.now()):
		return identity.NoAccess, false, nil
	case *m.AccessLevel < identity.Guest:
		return identity.NoAccess, false, nil // minimal access (5) is no role
	}
	return *m.AccessLevel, true, nil
}

// memberExpired reads a membership's expires_at, a date ("2024-10-04") or, in older
// GitLab versions, a timestamp. A value that is neither counts as expired: kubegate
// denies what it cannot read.
func memberExpired(expiresAt *string, now time.Time) bool {
	if expiresAt == nil || *expiresAt == "" {
		return false
	}
	if t, err := time.Parse(time.DateOnly, *expiresAt); err == nil {
		return !now.Before(t)
	}
	if t, err := time.Parse(time.RFC3339, *expiresAt); err == nil {
		return !now.Before(t)
	}
	return true
}

// resolve maps a project or group path to its numeric id, through the path cache.
// Concurrent resolutions of one path share a single GitLab call.
func (b *Backend) resolve(ctx context.Context, kind identity.Kind, path string) (int64, bool, error) {
	key := pathKey{kind, strings.ToLower(path)}
	if e, ok := b.paths.get(key); ok {
		return e.id, e.found, nil
	}
	ch := b.resolving.DoChan(string(kind)+"\x00"+key.path, func() (any, error) {
		// Shared by every caller waiting on this path, so not bound to the first
		// caller's cancellation; the operation timeout still bounds it.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), b.timeout)
		defer cancel()
		e, err := b.lookupPath(rctx, kind, path)
		if err == nil {
			b.paths.put(key, e)
		}
		return e, err
	})
	select {
	case <-ctx.Done():
		return 0, false, identity.SourceUnavailable(sourceName, fmt.Errorf("resolving %s %q: no answer within the timeout (--gitlab-timeout): %w", kind, path, ctx.Err()))
	case r := <-ch:
		if r.Err != nil {
			return 0, false, r.Err
		}
		e := r.Val.(pathEntry)
		return e.id, e.found, nil
	}
}

// lookupPath asks GitLab for a project (GET /projects/:id,
// https://docs.gitlab.com/api/projects/#retrieve-a-project) or a group (GET /groups/:id,
// https://docs.gitlab.com/api/groups/#get-a-single-group) by URL-encoded full path.
func (b *Backend) lookupPath(ctx context.Context, kind identity.Kind, path string) (pathEntry, error) {
	var v struct {
		ID int64 `json:"id"`
	}
	var a answer
	if kind == identity.KindGroup {
		// with_projects=false: the group alone, not (up to) 100 of its projects.
		a = b.call(ctx, "GET /groups/:id", http.MethodGet, "groups/"+gl.PathEscape(path), struct {
			WithProjects bool `url:"with_projects"`
		}{false}, &v)
	} else {
		a = b.call(ctx, "GET /projects/:id", http.MethodGet, "projects/"+gl.PathEscape(path), nil, &v)
	}
	switch {
	case a.ok():
	case a.err == nil && a.status == http.StatusNotFound:
		return pathEntry{found: false}, nil
	default:
		return pathEntry{}, a.unavailable()
	}
	if v.ID <= 0 {
		return pathEntry{}, identity.SourceUnavailable(sourceName, fmt.Errorf("%s: GitLab's answer for %s %q has no id", a.endpoint, kind, path))
	}
	return pathEntry{id: v.ID, found: true}, nil
}

// negativePathTTL caps how long "no such path" is remembered, so a project created
// after the agent config was written is picked up soon.
const negativePathTTL = 30 * time.Second

// maxPaths bounds the path cache. Agent configs list at most 1,000 entries; when a
// series of config changes pushes the cache past this, it starts over.
const maxPaths = 10000

type pathKey struct {
	kind identity.Kind
	path string // lower-case: GitLab paths compare case-insensitively
}

type pathEntry struct {
	id      int64
	found   bool
	expires time.Time
}

type pathCache struct {
	mu  sync.Mutex
	m   map[pathKey]pathEntry
	ttl time.Duration
	now func() time.Time
}

func newPathCache(ttl time.Duration, now func() time.Time) *pathCache {
	return &pathCache{m: map[pathKey]pathEntry{}, ttl: ttl, now: now}
}

func (c *pathCache) get(k pathKey) (pathEntry, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[k]
	if !ok || !c.now().Before(e.expires) {
		return pathEntry{}, false
	}
	return e, true
}

func (c *pathCache) put(k pathKey, e pathEntry) {
	ttl := c.ttl
	if !e.found {
		ttl = min(ttl, negativePathTTL)
	}
	e.expires = c.now().Add(ttl)
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= maxPaths {
		clear(c.m)
	}
	c.m[k] = e
}
