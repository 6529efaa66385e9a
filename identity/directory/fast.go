package directory

import (
	"runtime"
	"strconv"
	"strings"
	"sync"
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
func parseFlowLines(data string) (fileFormat, bool) {
	var ff fileFormat
	if !printableASCII(data) {
		return ff, false // YAML refuses control characters and checks UTF-8: let it decide
	}
	secs, ok := planSections(data)
	if !ok {
		return ff, false
	}
	// A section's entry lines are independent of each other, so a large one is
	// parsed in parts on every core and the parts appended in file order: at real
	// size the 50,000 membership lines are most of the file, and this parse most of
	// kubegate authz's start-up.
	var chunks []*chunk
	for _, sec := range secs {
		chunks = append(chunks, sec.split(runtime.GOMAXPROCS(0))...)
	}
	// Each chunk parses into its own region of one list per section, allocated
	// once from the section's count: no list grows, and the parts need no copying.
	users := place(secs, chunks, "users", func(f *fileFormat) *[]userEntry { return &f.Users })
	groups := place(secs, chunks, "groups", func(f *fileFormat) *[]groupEntry { return &f.Groups })
	projects := place(secs, chunks, "projects", func(f *fileFormat) *[]projectEntry { return &f.Projects })
	memberships := place(secs, chunks, "memberships", func(f *fileFormat) *[]membershipEntry { return &f.Memberships })
	tokens := place(secs, chunks, "tokens", func(f *fileFormat) *[]tokenEntry { return &f.Tokens })
	if len(chunks) > len(secs) {
		var wg sync.WaitGroup
		for _, c := range chunks {
			wg.Add(1)
			go func() { defer wg.Done(); c.parse() }()
		}
		wg.Wait()
	} else {
		for _, c := range chunks {
			c.parse()
		}
	}
	for _, c := range chunks {
		if !c.ok {
			return fileFormat{}, false
		}
	}
	ff.Users = gather(users, chunks, "users", func(f *fileFormat) []userEntry { return f.Users })
	ff.Groups = gather(groups, chunks, "groups", func(f *fileFormat) []groupEntry { return f.Groups })
	ff.Projects = gather(projects, chunks, "projects", func(f *fileFormat) []projectEntry { return f.Projects })
	ff.Memberships = gather(memberships, chunks, "memberships", func(f *fileFormat) []membershipEntry { return f.Memberships })
	ff.Tokens = gather(tokens, chunks, "tokens", func(f *fileFormat) []tokenEntry { return f.Tokens })
	return ff, true
}

// place allocates section name's list for all its entries and hands each of its
// chunks its own region (zero length, capped at the chunk's count), so appends
// fill the list in place. Empty sections stay nil, as the YAML decoder leaves them.
func place[E any](secs []chunkPlan, chunks []*chunk, name string, list func(*fileFormat) *[]E) []E {
	total := 0
	for _, sec := range secs {
		if sec.name == name {
			total = sec.entries
		}
	}
	if total == 0 {
		return nil
	}
	all := make([]E, total)
	off := 0
	for _, c := range chunks {
		if c.section == name {
			n := min(c.entries, total-off)
			*list(&c.out) = all[off : off : off+n]
			off += n
		}
	}
	return all
}

// gather returns the section's entries in file order: all itself when every chunk
// filled exactly its region, else (a count that did not match, which the
// entry-line rule makes impossible for a file that parsed) a copy in order.
func gather[E any](all []E, chunks []*chunk, name string, list func(*fileFormat) []E) []E {
	if all == nil {
		return nil
	}
	n, inPlace := 0, true
	for _, c := range chunks {
		if c.section != name {
			continue
		}
		got := list(&c.out)
		if len(got) != c.entries || len(got) > 0 && (n >= len(all) || &got[0] != &all[n]) {
			inPlace = false
		}
		n += len(got)
	}
	if inPlace && n == len(all) {
		return all
	}
	out := make([]E, 0, n)
	for _, c := range chunks {
		if c.section == name {
			out = append(out, list(&c.out)...)
		}
	}
	return out
}

// countEntries counts the lines of body that start "  - ": planSections' count of
// a section's entries, per chunk.
func countEntries(body string) int {
	n := strings.Count(body, "\n  - ")
	if strings.HasPrefix(body, "  - ") {
		n++
	}
	return n
}

// section is one top-level key's entry lines.
type section struct {
	name    string
	start   int // offset of the first line after the key's own line
	end     int // offset of the next key's line, or the end of the file
	line    int // the file's line number of the line at start
	entries int // lines starting "  - "
}

// minChunkEntries is the least number of entry lines worth a goroutine of its own.
const minChunkEntries = 4096

// chunk is a run of whole lines of one section, parsed on its own.
type chunk struct {
	section string
	body    string
	line    int
	entries int        // lines starting "  - " (countEntries)
	out     fileFormat // only the section's own list is used
	ok      bool
}

// planSections walks the top-level keys: each must be a known section, once,
// with nothing but a comment after its colon, and nothing but comments and blank
// lines may come before the first. Tabs anywhere leave the file to YAML.
func planSections(data string) ([]chunkPlan, bool) {
	var secs []section
	seen := map[string]bool{}
	line := 0
	for off := 0; off < len(data); {
		line++
		l, next := data[off:], len(data)
		if i := strings.IndexByte(l, '\n'); i >= 0 {
			l, next = l[:i], off+i+1
		}
		if strings.IndexByte(l, '\t') >= 0 {
			return nil, false
		}
		trimmed := strings.TrimLeft(l, " ")
		switch {
		case len(trimmed) == 0 || trimmed[0] == '#':
		case len(trimmed) == len(l): // column 1: a top-level key
			key, rest, ok := strings.Cut(l, ":")
			if !ok || !onlyComment(rest) {
				return nil, false
			}
			switch name := key; name {
			case "users", "groups", "projects", "memberships", "tokens":
				if seen[name] {
					return nil, false
				}
				seen[name] = true
				if n := len(secs); n > 0 {
					secs[n-1].end = off
				}
				secs = append(secs, section{name: name, start: next, end: len(data), line: line + 1})
			default:
				return nil, false
			}
		case len(secs) == 0:
			return nil, false // an entry before any section
		case strings.HasPrefix(l, "  - "):
			secs[len(secs)-1].entries++
		}
		off = next
	}
	plans := make([]chunkPlan, len(secs))
	for i, sec := range secs {
		plans[i] = chunkPlan{section: sec, body: data[sec.start:sec.end]}
	}
	return plans, true
}

// chunkPlan is a section with its lines.
type chunkPlan struct {
	section
	body string
}

// split cuts the section into up to n chunks of whole lines, each with about
// minChunkEntries entries or more.
func (p chunkPlan) split(n int) []*chunk {
	n = min(n, max(p.entries/minChunkEntries, 1))
	var out []*chunk
	body, line := p.body, p.line
	for i := n; i > 1; i-- {
		cut := len(body) / i
		nl := strings.IndexByte(body[cut:], '\n')
		if nl < 0 {
			break
		}
		cut += nl + 1
		out = append(out, &chunk{section: p.name, body: body[:cut], line: line, entries: countEntries(body[:cut])})
		line += strings.Count(body[:cut], "\n")
		body = body[cut:]
	}
	return append(out, &chunk{section: p.name, body: body, line: line, entries: countEntries(body)})
}

// parse reads the chunk's lines: entries "  - {...}" with an optional comment,
// blank lines and comment lines.
func (c *chunk) parse() {
	var fields flowFields
	line, data := c.line-1, c.body
	for len(data) > 0 {
		line++
		var l string
		if i := strings.IndexByte(data, '\n'); i >= 0 {
			l, data = data[:i], data[i+1:]
		} else {
			l, data = data, ""
		}
		trimmed := strings.TrimLeft(l, " ")
		if len(trimmed) == 0 || trimmed[0] == '#' {
			continue
		}
		if len(l)-len(trimmed) != 2 || !strings.HasPrefix(trimmed, "- {") {
			return
		}
		body, rest, ok := strings.Cut(trimmed[3:], "}")
		if !ok || !onlyComment(rest) {
			return
		}
		if !fields.parse(body) {
			return
		}
		if !c.out.add(c.section, &fields, line) {
			return
		}
	}
	c.ok = true
}

// onlyComment: nothing, or whitespace then a comment.
func onlyComment(rest string) bool {
	t := strings.TrimLeft(rest, " ")
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
		f.only("id", "username", "state", "password_hash")
		ff.Users = append(ff.Users, userEntry{ID: f.num("id"), Username: f.str("username"), State: f.str("state"), PasswordHash: f.str("password_hash"), line: line})
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
func printableASCII(data string) bool {
	for i := 0; i < len(data); i++ {
		c := data[i]
		if (c < 0x20 && c != '\n' && c != '\t') || c >= 0x7f {
			return false
		}
	}
	return true
}
