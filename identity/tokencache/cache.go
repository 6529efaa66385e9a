// Package tokencache keeps the short-lived personal access tokens that `kubegate
// get-token` creates, so that kubectl, which runs the exec plugin again in every new
// process, reuses one token until it nears its expiry instead of creating a token per
// command.
//
// Design:
//
//   - One JSON file per key, <dir>/<sha256(key)>.json, mode 0600 in a 0700 directory.
//     The key (which callers build from the GitLab URL and a digest of the user's own
//     token) never appears in a file name or a file.
//   - Get holds an exclusive flock(2) on <dir>/<sha256(key)>.lock for the whole
//     read → check → create → write sequence, so concurrent invocations (kubectl
//     running several commands at once, or shell loops) create one token: the first
//     creates it, the others wait and then read it. flock is released by the kernel
//     when a process dies, so a crashed get-token never leaves a stale lock behind;
//     the lock file itself is kept (deleting it would let two processes lock two
//     different files of the same name).
//   - A file is replaced atomically (temporary file, fsync, rename), so a reader never
//     sees half an entry. An unreadable or malformed file is a cache miss, not an
//     error: the entry is created again and the file overwritten.
package tokencache

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// formatVersion is written into every file; a file of another version is a miss.
const formatVersion = 1

// DefaultMinRemaining is how long a cached token must still be valid to be reused. It
// matches the 5 minutes by which get-token's ExecCredential expires before the token
// does: a token closer to its expiry than that would be handed to kubectl already
// expired in its eyes.
const DefaultMinRemaining = 5 * time.Minute

// DefaultLockTimeout bounds the wait for another invocation holding the lock (which is
// normally creating a token: one GitLab call).
const DefaultLockTimeout = 30 * time.Second

// Entry is one cached token.
type Entry struct {
	Token     string    `json:"token"`
	ExpiresAt time.Time `json:"expires_at"` // the instant the token stops working
	ID        int64     `json:"id,omitempty"`
	Name      string    `json:"name,omitempty"`
	CreatedAt time.Time `json:"created_at"`
}

// file is the on-disk format.
type file struct {
	Version int   `json:"version"`
	Entry   Entry `json:"entry"`
}

// Cache is a directory of cached tokens. The zero value is not usable: Dir is required.
type Cache struct {
	// Dir holds the files; it is created (0700) when missing.
	Dir string
	// MinRemaining: see DefaultMinRemaining (used when zero).
	MinRemaining time.Duration
	// LockTimeout: see DefaultLockTimeout (used when zero).
	LockTimeout time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// DefaultDir is $XDG_CACHE_HOME/kubegate, or the platform's user cache directory
// (~/.cache on Linux) followed by kubegate.
func DefaultDir() (string, error) {
	base, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("no cache directory for kubegate's token cache (%v): set XDG_CACHE_HOME or HOME", err)
	}
	return filepath.Join(base, "kubegate"), nil
}

// Check decides whether a cached entry that has not expired may still be used (e.g.
// asks GitLab whether it was revoked). An error aborts Get.
type Check func(ctx context.Context, e Entry) (bool, error)

// Create makes a new entry when none can be reused.
type Create func(ctx context.Context) (Entry, error)

// Get returns the entry cached under key if it is valid for at least MinRemaining and
// check (when non-nil) accepts it; otherwise it calls create, stores the result and
// returns it. reused reports which happened. The whole sequence holds the key's lock.
func (c *Cache) Get(ctx context.Context, key string, check Check, create Create) (e Entry, reused bool, err error) {
	if c.Dir == "" {
		return Entry{}, false, errors.New("tokencache: no directory configured")
	}
	if err := ensureDir(c.Dir); err != nil {
		return Entry{}, false, err
	}
	name := fileName(key)
	wait := c.LockTimeout
	if wait <= 0 {
		wait = DefaultLockTimeout
	}
	lockPath := filepath.Join(c.Dir, name+".lock")
	unlock, err := lock(ctx, lockPath, wait)
	if err != nil {
		return Entry{}, false, err
	}
	defer func() {
		if uerr := unlock(); uerr != nil && err == nil {
			err = fmt.Errorf("releasing the token cache lock %s: %w", lockPath, uerr)
		}
	}()

	path := filepath.Join(c.Dir, name+".json")
	if cached, ok := read(path); ok && c.fresh(cached) {
		use := true
		if check != nil {
			if use, err = check(ctx, cached); err != nil {
				return Entry{}, false, err
			}
		}
		if use {
			return cached, true, nil
		}
	}
	fresh, err := create(ctx)
	if err != nil {
		return Entry{}, false, err
	}
	if err := write(path, fresh); err != nil {
		// The token exists now; failing here would make the next run create another
		// one. Return it, and say why it was not kept.
		return fresh, false, fmt.Errorf("the token was created but could not be cached in %s: %w", c.Dir, err)
	}
	return fresh, false, nil
}

// fresh reports whether e is valid for at least MinRemaining more.
func (c *Cache) fresh(e Entry) bool {
	now := time.Now
	if c.Now != nil {
		now = c.Now
	}
	margin := c.MinRemaining
	if margin <= 0 {
		margin = DefaultMinRemaining
	}
	return e.Token != "" && now().Add(margin).Before(e.ExpiresAt)
}

// fileName derives the file name from the key, so that no part of the key (a URL, a
// token digest) is visible in the directory listing.
func fileName(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:])
}

// ensureDir creates the directory 0700, and tightens an existing one that others can
// read or enter: the files hold secrets.
func ensureDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating the token cache directory %s: %w (set XDG_CACHE_HOME to a writable directory)", dir, err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("the token cache path %s is not a directory", dir)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		if err := os.Chmod(dir, fi.Mode().Perm()&^0o077); err != nil {
			return fmt.Errorf("restricting the token cache directory %s to its owner: %w", dir, err)
		}
	}
	return nil
}

// read loads an entry; any problem (missing, unreadable, malformed, other version,
// not a regular file) is a miss.
func read(path string) (Entry, bool) {
	fi, err := os.Lstat(path)
	if err != nil || !fi.Mode().IsRegular() {
		return Entry{}, false
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return Entry{}, false
	}
	var f file
	if err := json.Unmarshal(data, &f); err != nil || f.Version != formatVersion {
		return Entry{}, false
	}
	return f.Entry, true
}

// write replaces the file atomically with a 0600 one.
func write(path string, e Entry) (err error) {
	data, err := json.Marshal(file{Version: formatVersion, Entry: e})
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-*") // created 0600
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	if err = tmp.Chmod(0o600); err != nil {
		return err
	}
	if _, err = tmp.Write(data); err != nil {
		return err
	}
	if err = tmp.Sync(); err != nil {
		return err
	}
	if err = tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// Remove deletes the entry cached under key, if any (e.g. after GitLab refused it).
func (c *Cache) Remove(key string) error {
	err := os.Remove(filepath.Join(c.Dir, fileName(key)+".json"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}
