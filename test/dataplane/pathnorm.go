package dataplane

import (
	"net/http"
	"strings"

	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
)

// normalizePath is ConnectionManagerUtility::maybeNormalizePath, in its order:
// path_with_escaped_slashes_action, then normalize_path (PathUtil::canonicalPath),
// then merge_slashes (PathUtil::mergeSlashes). A refused path is a 400 local reply.
// Only the path is touched; the query string is kept as sent.
func normalizePath(s *stream, cfg *hcmConfig) *localReply {
	full := s.headers.first(":path")
	path, query, hasQuery := strings.Cut(full, "?")
	reject := &localReply{status: http.StatusBadRequest, details: "path_normalization_failed"}

	switch cfg.escapedSlashes {
	case hcmv3.HttpConnectionManager_REJECT_REQUEST:
		if hasEscapedSlash(path) {
			return reject
		}
	case hcmv3.HttpConnectionManager_UNESCAPE_AND_FORWARD:
		path = unescapeSlashes(path)
	}
	if cfg.normalizePath {
		p, ok := canonicalPath(path)
		if !ok {
			return reject
		}
		path = p
	}
	if cfg.mergeSlashes {
		path = mergeSlashes(path)
	}
	if hasQuery {
		path += "?" + query
	}
	if path != full {
		s.headers.set(":path", path)
	}
	return nil
}

func hasEscapedSlash(p string) bool {
	l := strings.ToLower(p)
	return strings.Contains(l, "%2f") || strings.Contains(l, "%5c")
}

// unescapeSlashes is PathUtil::unescapeSlashes: %2F and %5C (either case) become
// "/" and "\".
func unescapeSlashes(p string) string {
	r := strings.NewReplacer("%2F", "/", "%2f", "/", "%5C", `\`, "%5c", `\`)
	return r.Replace(p)
}

// canonicalPath approximates PathUtil::canonicalPath, which runs Chromium's URL
// path canonicalizer: backslashes count as slashes, "." and ".." segments
// (also percent-encoded as %2e) are resolved per RFC 3986 §5.2.4, and a path
// that is not origin-form is refused. Chromium's re-escaping of characters that
// are invalid in a path is not emulated; kubectl never sends them.
func canonicalPath(p string) (string, bool) {
	if !strings.HasPrefix(p, "/") && !strings.HasPrefix(p, `\`) {
		return "", false
	}
	p = strings.ReplaceAll(p, `\`, "/")
	segs := strings.Split(p[1:], "/")
	out := make([]string, 0, len(segs))
	for i, seg := range segs {
		last := i == len(segs)-1
		switch strings.ToLower(seg) {
		case ".", "%2e":
			if last {
				out = append(out, "")
			}
		case "..", ".%2e", "%2e.", "%2e%2e":
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
			if last {
				out = append(out, "")
			}
		default:
			out = append(out, seg)
		}
	}
	return "/" + strings.Join(out, "/"), true
}

// mergeSlashes collapses runs of "/" (PathUtil::mergeSlashes).
func mergeSlashes(p string) string {
	var b strings.Builder
	prev := false
	for i := 0; i < len(p); i++ {
		if p[i] == '/' {
			if prev {
				continue
			}
			prev = true
		} else {
			prev = false
		}
		b.WriteByte(p[i])
	}
	return b.String()
}
