package extproc

import (
	"slices"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"kubegate.dev/kubegate/contract"
	"kubegate.dev/kubegate/contract/handoff"
)

// The impersonation headers the API server reads (k8s.io/apiserver
// endpoints/filters/impersonation.go; client-go transport/round_trippers.go).
const (
	HeaderImpersonateUser        = contract.HeaderImpersonateUser
	HeaderImpersonateGroup       = contract.HeaderImpersonateGroup
	HeaderImpersonateExtraPrefix = contract.HeaderImpersonateExtraPrefix
	impersonatePrefix            = contract.ImpersonatePrefix
)

// mutation builds the header mutation for one request.
//
// Removal: every impersonate-* header the client sent is removed (ext_authz already
// refuses such requests; this is defence in depth). Envoy applies remove_headers
// before set_headers (ext_proc mutation_utils.cc, applyHeaderMutations), so removing
// impersonate-group and then adding our own lines is safe.
//
// Setting, user mode only: Impersonate-User overwrites; each Impersonate-Group and
// Impersonate-Extra-* value is its own header line. Envoy 1.40's ext_proc reads only
// the deprecated `append` BoolValue of each HeaderValueOption and ignores
// append_action entirely (MutationUtils::applyHeaderMutations, mutation_utils.cc:
// PROTOBUF_GET_WRAPPED_OR_DEFAULT(sh, append, false)): true adds a new line
// (addCopy), false or unset overwrites (setCopy), so without `append: true` the
// last group would win. The API server never splits Impersonate-Group on commas
// (kubernetes#94683), so one line per group it is.
//
// Values travel in raw_value: with Envoy's send_header_raw_value (default on),
// ext_proc reads set_headers values from raw_value only (mutation_utils.cc).
func mutation(removes []string, d handoff.Decision) *extprocv3.HeaderMutation {
	m := &extprocv3.HeaderMutation{RemoveHeaders: removes}
	if d.AccessAs != handoff.AccessAsUser {
		return m // agent mode: the request goes upstream as the agent, unchanged
	}
	m.SetHeaders = make([]*corev3.HeaderValueOption, 0, 1+len(d.Groups)+2*len(d.Extra))
	m.SetHeaders = append(m.SetHeaders, set(HeaderImpersonateUser, d.User, false))
	for _, g := range d.Groups {
		m.SetHeaders = append(m.SetHeaders, set(HeaderImpersonateGroup, g, true))
	}
	for _, k := range sortedKeys(d.Extra) {
		name := HeaderImpersonateExtraPrefix + EscapeExtraKey(k)
		for _, v := range d.Extra[k] {
			m.SetHeaders = append(m.SetHeaders, set(name, v, true))
		}
	}
	return m
}

// clientImpersonation lists, lower-case and once each, the impersonate-* header
// names of the request, for the mutation to remove (nil when there is none).
func clientImpersonation(client *corev3.HeaderMap) []string {
	var names []string
	for _, h := range client.GetHeaders() {
		k := h.GetKey()
		if len(k) < len(impersonatePrefix) || !strings.EqualFold(k[:len(impersonatePrefix)], impersonatePrefix) {
			continue
		}
		k = strings.ToLower(k)
		if !slices.Contains(names, k) {
			names = append(names, k)
		}
	}
	return names
}

// joinNames is names as one string for a cache key: each name ends in "\n", which
// no header name holds, so different lists give different strings.
func joinNames(names []string) string {
	if len(names) == 1 {
		return names[0] + "\n"
	}
	var b strings.Builder
	for _, n := range names {
		b.WriteString(n)
		b.WriteByte('\n')
	}
	return b.String()
}

// The append flags are shared by every header option: messages that are only
// marshalled are safe to share.
var (
	appendTrue  = wrapperspb.Bool(true)
	appendFalse = wrapperspb.Bool(false)
)

func set(key, value string, appendLine bool) *corev3.HeaderValueOption {
	flag := appendFalse
	if appendLine {
		flag = appendTrue
	}
	return &corev3.HeaderValueOption{
		Header: &corev3.HeaderValue{Key: key, RawValue: []byte(value)},
		//lint:ignore SA1019 Envoy 1.40's ext_proc reads only the legacy append (mutation_utils.cc; spec envoy.md): append_action would be ignored and the group lines would overwrite each other
		Append: flag,
	}
}

// EscapeExtraKey percent-encodes an extra key for a header name exactly as client-go
// does (k8s.io/client-go/transport/round_trippers.go, headerKeyEscape): every byte
// that is not an RFC 7230 token character, and '%' itself, becomes %XX (upper-case
// hex). The API server percent-decodes and lower-cases the key again.
// "agent.gitlab.com/id" → "agent.gitlab.com%2Fid".
func EscapeExtraKey(key string) string {
	var b strings.Builder
	b.Grow(len(key) + 8)
	const hex = "0123456789ABCDEF"
	for i := 0; i < len(key); i++ {
		c := key[i]
		if c == '%' || !isTokenChar(c) {
			b.WriteByte('%')
			b.WriteByte(hex[c>>4])
			b.WriteByte(hex[c&0xf])
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

// isTokenChar reports whether c is an RFC 7230 tchar.
func isTokenChar(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

func sortedKeys(m map[string][]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	for i := 1; i < len(keys); i++ { // tiny maps: insertion sort keeps it allocation-free
		for j := i; j > 0 && keys[j] < keys[j-1]; j-- {
			keys[j], keys[j-1] = keys[j-1], keys[j]
		}
	}
	return keys
}
