package dashboard

import (
	"io/fs"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"kubegate.dev/kubegate/contract"
)

func TestHandlerAnswers(t *testing.T) {
	h := Handler()
	tests := []struct {
		name, method, path string
		wantCode           int
		wantType, wantCC   string
		wantBody           string
	}{
		{name: "the page", method: "GET", path: contract.DashboardPath, wantCode: 200, wantType: "text/html; charset=utf-8", wantCC: "no-store", wantBody: `<script type="module" src="/ui/assets/app.js">`},
		{name: "a script", method: "GET", path: contract.AssetsPrefix + "app.js", wantCode: 200, wantType: "text/javascript; charset=utf-8", wantCC: "no-cache", wantBody: "import "},
		{name: "the style sheet", method: "GET", path: contract.AssetsPrefix + "app.css", wantCode: 200, wantType: "text/css; charset=utf-8", wantCC: "no-cache"},
		{name: "HEAD has no body", method: "HEAD", path: contract.AssetsPrefix + "api.js", wantCode: 200, wantType: "text/javascript; charset=utf-8", wantCC: "no-cache"},
		{name: "the page is not an asset", method: "GET", path: contract.AssetsPrefix + "index.html", wantCode: 404},
		{name: "unknown asset", method: "GET", path: contract.AssetsPrefix + "nope.js", wantCode: 404},
		{name: "the assets directory", method: "GET", path: contract.AssetsPrefix, wantCode: 404},
		{name: "traversal", method: "GET", path: contract.AssetsPrefix + "../dashboard.go", wantCode: 404},
		{name: "encoded traversal", method: "GET", path: contract.AssetsPrefix + "%2e%2e/app.js", wantCode: 404},
		{name: "a nested name", method: "GET", path: contract.AssetsPrefix + "x/app.js", wantCode: 404},
		{name: "outside the prefix", method: "GET", path: "/ui/index.html", wantCode: 404},
		{name: "POST", method: "POST", path: contract.DashboardPath, wantCode: 405},
		{name: "DELETE an asset", method: "DELETE", path: contract.AssetsPrefix + "app.js", wantCode: 405},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(tt.method, tt.path, nil))
			if rec.Code != tt.wantCode {
				t.Fatalf("%s %s: %d, want %d (%s)", tt.method, tt.path, rec.Code, tt.wantCode, rec.Body)
			}
			// Every answer, refusals included, carries the security headers.
			for k, v := range map[string]string{
				"Content-Security-Policy": ContentSecurityPolicy,
				"X-Content-Type-Options":  "nosniff",
				"Referrer-Policy":         "same-origin",
				"X-Frame-Options":         "DENY",
			} {
				if got := rec.Header().Get(k); got != v {
					t.Errorf("%s = %q, want %q", k, got, v)
				}
			}
			if tt.wantCode == 405 && rec.Header().Get("Allow") != "GET, HEAD" {
				t.Errorf("Allow = %q", rec.Header().Get("Allow"))
			}
			if tt.wantCode != 200 {
				return
			}
			if got := rec.Header().Get("Content-Type"); got != tt.wantType {
				t.Errorf("Content-Type = %q, want %q", got, tt.wantType)
			}
			if got := rec.Header().Get("Cache-Control"); got != tt.wantCC {
				t.Errorf("Cache-Control = %q, want %q", got, tt.wantCC)
			}
			if !regexp.MustCompile(`^"[0-9a-f]{32}"$`).MatchString(rec.Header().Get("ETag")) {
				t.Errorf("ETag = %q", rec.Header().Get("ETag"))
			}
			if tt.method == "HEAD" && rec.Body.Len() != 0 {
				t.Errorf("HEAD answered a body of %d bytes", rec.Body.Len())
			}
			if !strings.Contains(rec.Body.String(), tt.wantBody) {
				t.Errorf("body lacks %q", tt.wantBody)
			}
		})
	}
}

func TestAssetsRevalidateWithETag(t *testing.T) {
	h := Handler()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", contract.AssetsPrefix+"app.js", nil))
	etag := rec.Header().Get("ETag")
	for _, tt := range []struct {
		name, ifNoneMatch string
		want              int
	}{
		{"same ETag", etag, http.StatusNotModified},
		{"another ETag", `"0000"`, http.StatusOK},
	} {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest("GET", contract.AssetsPrefix+"app.js", nil)
			req.Header.Set("If-None-Match", tt.ifNoneMatch)
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != tt.want {
				t.Fatalf("If-None-Match %s: %d, want %d", tt.ifNoneMatch, rec.Code, tt.want)
			}
		})
	}
	// Different files have different tags.
	rec2 := httptest.NewRecorder()
	h.ServeHTTP(rec2, httptest.NewRequest("GET", contract.AssetsPrefix+"api.js", nil))
	if rec2.Header().Get("ETag") == etag {
		t.Errorf("app.js and api.js share the ETag %s", etag)
	}
}

// TestAssetsNeedNoInlineCodeOrOtherOrigin reads the embedded files as the CSP will:
// no inline <script> or <style>, no style= or on*= attribute, no URL of another
// origin (no CDN), no innerHTML (the page builds nodes from text).
func TestAssetsNeedNoInlineCodeOrOtherOrigin(t *testing.T) {
	forbidden := []struct {
		name    string
		re      *regexp.Regexp
		ext     string
		example string // what the rule must catch
	}{
		{"inline script", regexp.MustCompile(`<script(?:\s[^>]*)?>\s*[^<\s]`), ".html", `<script>alert(1)</script>`},
		{"style element", regexp.MustCompile(`<style`), ".html", `<style>p{}</style>`},
		{"style attribute", regexp.MustCompile(`\sstyle\s*=`), ".html", `<p style="color:red">`},
		{"event handler attribute", regexp.MustCompile(`\son[a-z]+\s*=\s*["']`), ".html", `<button onclick="x()">`},
		{"javascript: URL", regexp.MustCompile(`javascript:`), "", `<a href="javascript:x()">`},
		{"another origin", regexp.MustCompile(`(?:src|href)\s*=\s*["']?(?:https?:)?//`), "", `<script src="https://cdn.example/x.js">`},
		{"import from another origin", regexp.MustCompile(`(?:import|from)\s*\(?\s*["'](?:https?:)?//`), ".js", `import { x } from 'https://cdn.example/x.js'`},
		{"innerHTML", regexp.MustCompile(`innerHTML|outerHTML|insertAdjacentHTML|document\.write`), ".js", `el.innerHTML = s`},
		{"eval", regexp.MustCompile(`\beval\(|new Function\(`), ".js", `eval(s)`},
		{"a style set from script", regexp.MustCompile(`\.style\.|setAttribute\(\s*["']style`), ".js", `el.style.color = "red"`},
	}
	for _, f := range forbidden {
		if !f.re.MatchString(f.example) {
			t.Errorf("rule %q does not catch its example %s", f.name, f.example)
		}
	}
	err := fs.WalkDir(embedded, "assets", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		body, err := fs.ReadFile(embedded, p)
		if err != nil {
			return err
		}
		for _, f := range forbidden {
			if f.ext != "" && !strings.HasSuffix(p, f.ext) {
				continue
			}
			if loc := f.re.FindIndex(body); loc != nil {
				t.Errorf("%s: %s at byte %d: %q", p, f.name, loc[0], body[loc[0]:min(len(body), loc[1]+40)])
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
