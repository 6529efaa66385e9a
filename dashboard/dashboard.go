package dashboard

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"io/fs"
	"net/http"
	"path"
	"strings"
	"time"

	"kubegate.dev/kubegate/contract"
	"kubegate.dev/kubegate/internal/webheaders"
)

//go:embed assets
var embedded embed.FS

// indexFile is the page served at contract.DashboardPath (and not under
// contract.AssetsPrefix: it is the one response that must never be cached).
const indexFile = "index.html"

// SecurityHeaders sets the headers every browser-listener answer carries: the
// login pages' set (internal/webheaders), one definition for the whole listener.
func SecurityHeaders(h http.Header) { webheaders.Set(h) }

// ContentSecurityPolicy is the policy of every answer: only this origin's own
// scripts, styles and connections; no inline script or style, no frames, no form
// posts elsewhere, no <base>.
const ContentSecurityPolicy = webheaders.ContentSecurityPolicy

type asset struct {
	body        []byte
	etag        string
	contentType string
}

// contentTypes are the only kinds of file the assets may be; another is a build
// failure (Handler panics at start, caught by the package's tests).
var contentTypes = map[string]string{
	".html": "text/html; charset=utf-8",
	".css":  "text/css; charset=utf-8",
	".js":   "text/javascript; charset=utf-8",
	".svg":  "image/svg+xml",
}

// Handler serves contract.DashboardPath (the page) and contract.AssetsPrefix (its
// assets). Anything else, and any method but GET and HEAD, is refused.
func Handler() http.Handler {
	assets, err := load(embedded)
	if err != nil {
		panic(err) // the embedded files are part of the binary: a bad one is a build bug
	}
	return &handler{assets: assets}
}

func load(fsys fs.FS) (map[string]*asset, error) {
	out := map[string]*asset{}
	err := fs.WalkDir(fsys, "assets", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		body, err := fs.ReadFile(fsys, p)
		if err != nil {
			return err
		}
		ct, ok := contentTypes[path.Ext(p)]
		if !ok {
			return fmt.Errorf("dashboard asset %s: no content type for %q", p, path.Ext(p))
		}
		sum := sha256.Sum256(body)
		out[strings.TrimPrefix(p, "assets/")] = &asset{body: body, contentType: ct, etag: `"` + hex.EncodeToString(sum[:16]) + `"`}
		return nil
	})
	if err == nil && out[indexFile] == nil {
		err = fmt.Errorf("dashboard: assets/%s is missing", indexFile)
	}
	return out, err
}

type handler struct{ assets map[string]*asset }

// noModTime: the embedded files have no modification time; the ETag stands in for it
// (ServeContent sends no Last-Modified for the zero time).
var noModTime time.Time

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	SecurityHeaders(w.Header())
	var a *asset
	cache := ""
	switch {
	case r.URL.Path == contract.DashboardPath:
		// The page names its assets by fixed paths, so it must never be cached:
		// a new kubegate's page must not load with an old one's scripts.
		a, cache = h.assets[indexFile], "no-store"
	case strings.HasPrefix(r.URL.Path, contract.AssetsPrefix):
		name := strings.TrimPrefix(r.URL.Path, contract.AssetsPrefix)
		if name != indexFile {
			a = h.assets[name] // an exact name: no directory, no "..", no index
		}
		// Cached, but revalidated with the ETag on each load (a 304 costs no body):
		// the names carry no version, so a long max-age would keep an old script
		// after an upgrade.
		cache = "no-cache"
	}
	if a == nil {
		http.Error(w, "404 not found: the Dashboard is at "+contract.DashboardPath, http.StatusNotFound)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "405 method not allowed: use GET", http.StatusMethodNotAllowed)
		return
	}
	w.Header().Set("Cache-Control", cache)
	w.Header().Set("ETag", a.etag)
	w.Header().Set("Content-Type", a.contentType)
	// http.ServeContent answers If-None-Match with 304 and HEAD without a body.
	http.ServeContent(w, r, "", noModTime, bytes.NewReader(a.body))
}
