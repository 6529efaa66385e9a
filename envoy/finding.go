package envoy

import (
	"fmt"
	"sort"
	"strings"
)

// Finding is one problem in an Envoy configuration: where (a JSON path such as
// $.static_resources.listeners[0].address), which rule, and what to do about it.
type Finding struct {
	Path    string
	Rule    string
	Message string
}

func (f Finding) String() string {
	return fmt.Sprintf("%s: %s [%s]", f.Path, f.Message, f.Rule)
}

// FormatFindings prints one finding per line, in a stable order.
func FormatFindings(fs []Finding) string {
	var b strings.Builder
	for _, f := range sortFindings(fs) {
		b.WriteString(f.String())
		b.WriteByte('\n')
	}
	return b.String()
}

func sortFindings(fs []Finding) []Finding {
	out := append([]Finding(nil), fs...)
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Path != out[j].Path {
			return out[i].Path < out[j].Path
		}
		return out[i].Rule < out[j].Rule
	})
	return out
}

// findings collects Findings; add formats the message.
type findings []Finding

func (fs *findings) add(path, rule, format string, args ...any) {
	*fs = append(*fs, Finding{Path: path, Rule: rule, Message: fmt.Sprintf(format, args...)})
}
