package directory

import (
	"bytes"
	"strconv"
	"strings"
)

// parseFlowLines reads the directory in the one shape large directories are written
// in — top-level keys, each followed by one flow mapping per line:
//
//	users:
//	  - {id: 1, username: alice}   # a comment
//
// with plain or simply double-quoted scalars, and flow lists of them ([k8s_proxy]).
// It is an optimisation only: go.yaml.in/yaml/v3 takes 1–2 s and ~150 MB of
// garbage for a 5 MB directory, this takes a few tens of milliseconds. It accepts a
// strict subset of what the YAML decoder accepts and returns ok=false, leaving the
// file to the YAML decoder, on anything else (block mappings, anchors, escapes,
// any scalar YAML would not read as the same plain string, int or bool, an unknown
// or repeated key, a key out of place). TestFlowLinesAgreeWithYAML and
// FuzzFlowLinesAgreeWithYAML hold the two paths to the same result.
func parseFlowLines(data []byte) (fileFormat, bool) {
	var ff fileFormat
	if !printableASCII(data) {
		return ff, false // YAML refuses control characters and checks UTF-8: let it decide
	}
	ff.presize(data)
	section := ""
	seen := map[string]bool{}
	line := 0
	var fields flowFields
	for len(data) > 0 {
		line++
		var l []byte
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			l, data = data[:i], data[i+1:]
		} else {
			l, data = data, nil
		}
		if bytes.IndexByte(l, '\t') >= 0 {
			return ff, false
		}
		trimmed := bytes.TrimLeft(l, " ")
		if len(trimmed) == 0 || trimmed[0] == '#' {
			continue
		}
		if len(trimmed) == len(l) { // column 1: a top-level key
			key, rest, ok := bytes.Cut(l, []byte{':'})
			if !ok || !onlyComment(rest) {
				return ff, false
			}
			switch s := string(key); s {
			case "users", "groups", "projects", "memberships", "tokens":
				if seen[s] {
					return ff, false
				}
				seen[s], section = true, s
				continue
			default:
				return ff, false
			}
		}
		if section == "" || len(l)-len(trimmed) != 2 || !bytes.HasPrefix(trimmed, []byte("- {")) {
			return ff, false
		}
		body, rest, ok := bytes.Cut(trimmed[3:], []byte{'}'})
		if !ok || !onlyComment(rest) {
			return ff, false
		}
		if !fields.parse(string(body)) {
			return ff, false
		}
		if !ff.add(section, &fields, line) {
			return ff, false
		}
	}
	return ff, true
}

// presize counts the entry lines of each section, so the entry lists are
// allocated once.
func (ff *fileFormat) presize(data []byte) {
	counts := map[string]int{}
	section := ""
	for len(data) > 0 {
		l := data
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			l, data = data[:i], data[i+1:]
		} else {
			data = nil
		}
		if len(l) > 0 && l[0] != ' ' && l[0] != '#' {
			key, _, _ := bytes.Cut(l, []byte{':'})
			section = string(key)
		} else if bytes.HasPrefix(l, []byte("  - ")) {
			counts[section]++
		}
	}
	// Empty sections stay nil, as the YAML decoder leaves them.
	if n := counts["users"]; n > 0 {
		ff.Users = make([]userEntry, 0, n)
	}
	if n := counts["groups"]; n > 0 {
		ff.Groups = make([]groupEntry, 0, n)
	}
	if n := counts["projects"]; n > 0 {
		ff.Projects = make([]projectEntry, 0, n)
	}
	if n := counts["memberships"]; n > 0 {
		ff.Memberships = make([]membershipEntry, 0, n)
	}
	if n := counts["tokens"]; n > 0 {
		ff.Tokens = make([]tokenEntry, 0, n)
	}
}

// onlyComment: nothing, or whitespace then a comment.
func onlyComment(rest []byte) bool {
	t := bytes.TrimLeft(rest, " ")
	return len(t) == 0 || t[0] == '#' && len(t) < len(rest)
}

type flowValue struct {
	s    string
	list []string
	// quoted: written in double quotes (always a string to YAML); isList: a [..].
	quoted, isList bool
}

// flowFields is one entry's fields, reused from line to line.
type flowFields struct {
	keys   []string
	values []flowValue
	ok     bool // every typed read so far matched its field's type
}

func (f *flowFields) lookup(key string) (flowValue, bool) {
	for i, k := range f.keys {
		if k == key {
			return f.values[i], true
		}
	}
	return flowValue{}, false
}

// parse splits "k: v, k: [a, b], k: \"s\"" into fields, refusing anything it does
// not read exactly as YAML would.
func (f *flowFields) parse(body string) bool {
	f.keys, f.values, f.ok = f.keys[:0], f.values[:0], true
	s := strings.TrimSpace(body)
	for s != "" {
		key, rest, ok := strings.Cut(s, ": ")
		if !ok || !plainWord(key) {
			return false
		}
		if _, dup := f.lookup(key); dup {
			return false
		}
		rest = strings.TrimLeft(rest, " ")
		var v flowValue
		switch {
		case strings.HasPrefix(rest, "["):
			inner, after, ok := strings.Cut(rest[1:], "]")
			if !ok {
				return false
			}
			v.isList, v.list = true, []string{}
			if strings.TrimSpace(inner) != "" {
				for _, item := range strings.Split(inner, ",") {
					item = strings.TrimSpace(item)
					if !plainString(item) {
						return false
					}
					v.list = append(v.list, item)
				}
			}
			rest = after
		case strings.HasPrefix(rest, `"`):
			inner, after, ok := strings.Cut(rest[1:], `"`)
			if !ok || strings.ContainsAny(inner, "\\") {
				return false
			}
			v.s, v.quoted, rest = inner, true, after
		default:
			end := strings.IndexByte(rest, ',')
			if end < 0 {
				end = len(rest)
			}
			v.s, rest = strings.TrimRight(rest[:end], " "), rest[end:]
			if v.s == "" || strings.ContainsAny(v.s, "\"'[]{}#&*!|>%@`") {
				return false
			}
		}
		f.keys, f.values = append(f.keys, key), append(f.values, v)
		rest = strings.TrimLeft(rest, " ")
		if rest == "" {
			break
		}
		if rest[0] != ',' {
			return false
		}
		s = strings.TrimLeft(rest[1:], " ")
		if s == "" {
			return false // a trailing comma: leave it to YAML
		}
	}
	return true
}

// plainWord is a key: lower-case letters and '_'.
func plainWord(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c == '_') {
			return false
		}
	}
	return true
}

// plainString is a plain scalar YAML reads as this very string: it starts with a
// letter, holds only path-like characters, and is none of YAML 1.1/1.2's special
// words (yaml.v3 resolves true/false/null/~ and, for compatibility, y/yes/on …).
func plainString(s string) bool {
	if s == "" || !(s[0] >= 'a' && s[0] <= 'z' || s[0] >= 'A' && s[0] <= 'Z') {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.' || c == '/') {
			return false
		}
	}
	switch strings.ToLower(s) {
	case "true", "false", "null", "y", "yes", "n", "no", "on", "off", "nan", "inf":
		return false
	}
	return true
}

func (v flowValue) str() (string, bool) {
	if v.isList {
		return "", false
	}
	if v.quoted {
		return v.s, true
	}
	return v.s, plainString(v.s)
}

func (v flowValue) int() (int64, bool) {
	if v.isList || v.quoted || len(v.s) > 18 || v.s == "" || v.s[0] < '1' || v.s[0] > '9' {
		return 0, false
	}
	n, err := strconv.ParseInt(v.s, 10, 64)
	return n, err == nil
}

func (v flowValue) bool() (bool, bool) {
	if v.isList || v.quoted {
		return false, false
	}
	switch v.s {
	case "true":
		return true, true
	case "false":
		return false, true
	}
	return false, false
}

func (f *flowFields) str(k string) string {
	v, present := f.lookup(k)
	if !present {
		return ""
	}
	s, good := v.str()
	f.ok = f.ok && good
	return s
}

func (f *flowFields) num(k string) int64 {
	v, present := f.lookup(k)
	if !present {
		return 0
	}
	n, good := v.int()
	f.ok = f.ok && good
	return n
}

// only: every field is one of keys.
func (f *flowFields) only(keys ...string) {
	for _, k := range f.keys {
		known := false
		for _, want := range keys {
			known = known || k == want
		}
		f.ok = f.ok && known
	}
}

// add appends one entry to its section; false (leave it to YAML) for a field the
// section does not know or a value not of the field's type.
func (ff *fileFormat) add(section string, f *flowFields, line int) bool {
	switch section {
	case "users":
		f.only("id", "username", "state")
		ff.Users = append(ff.Users, userEntry{ID: f.num("id"), Username: f.str("username"), State: f.str("state"), line: line})
	case "groups":
		f.only("id", "path", "parent")
		ff.Groups = append(ff.Groups, groupEntry{ID: f.num("id"), Path: f.str("path"), Parent: f.str("parent"), line: line})
	case "projects":
		f.only("id", "path", "namespace")
		ff.Projects = append(ff.Projects, projectEntry{ID: f.num("id"), Path: f.str("path"), Namespace: f.str("namespace"), line: line})
	case "memberships":
		f.only("user", "project", "group", "role", "access_level")
		ff.Memberships = append(ff.Memberships, membershipEntry{User: f.str("user"), Project: f.str("project"), Group: f.str("group"), Role: f.str("role"), AccessLevel: int(f.num("access_level")), line: line})
	case "tokens":
		f.only("user", "name", "digest", "scopes", "expires_at", "revoked")
		t := tokenEntry{User: f.str("user"), Name: f.str("name"), Digest: f.str("digest"), line: line}
		if v, present := f.lookup("scopes"); present {
			f.ok = f.ok && v.isList
			t.Scopes = v.list
		}
		if v, present := f.lookup("revoked"); present {
			b, good := v.bool()
			f.ok = f.ok && good
			t.Revoked = b
		}
		if v, present := f.lookup("expires_at"); present {
			// Only the forms expiry reads: a date or an RFC 3339 time, written plain.
			if v.isList || v.quoted || v.s == "" || v.s[0] < '0' || v.s[0] > '9' {
				return false
			}
			if err := t.ExpiresAt.parse(v.s, line); err != nil {
				return false
			}
		}
		ff.Tokens = append(ff.Tokens, t)
	}
	return f.ok
}

// printableASCII reports whether data holds only printable ASCII, spaces and line
// feeds. Anything else (control characters, even in a comment; a carriage return,
// which YAML reads as a line break of its own; any non-ASCII byte)
// leaves the file to the YAML decoder, which refuses some of it
// (FuzzFlowLinesAgreeWithYAML found the line reader accepting a control character
// in a comment).
func printableASCII(data []byte) bool {
	for _, c := range data {
		if (c < 0x20 && c != '\n' && c != '\t') || c >= 0x7f {
			return false
		}
	}
	return true
}
