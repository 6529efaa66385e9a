// Package handoff is the wire form of the decision ext_authz hands to ext_proc
// through Envoy's dynamic metadata; both services import it (part of package
// contract, owned by neither).
//
// ext_authz returns it in CheckResponse.dynamic_metadata as {"kubegate": {...}};
// Envoy stores that under the filter namespace envoy.filters.http.ext_authz, and
// ext_proc (configured with metadata_options.forwarding_namespaces.untyped =
// [envoy.filters.http.ext_authz]) receives it in ProcessingRequest.metadata_context.
//
// The decoder is strict and fails closed: a missing, unknown-version or malformed
// decision is an error, and ext_proc answers it with a denial, never a pass-through.
//
// Wire form (google.protobuf.Struct), version 3:
//
//	kubegate:
//	  version: 3
//	  decision_id: "<Envoy request id or random id>"   # correlates the two services' logs
//	  access_as: "agent" | "user"
//	  identity: "<compact identity>"                     # user mode only
//
// The identity (user, groups, extra) is ONE string value, encoded once per identity
// and config version by ext_authz and cached: at real size a user has a few hundred
// groups, and one protobuf Value per group (version 1) cost more CPU to build, send
// and read than the decision itself, and ~22 KB per cached identity. The compact
// form is a sequence of length-prefixed strings and counts, canonical (one encoding
// per identity, extra keys sorted), so the decoder can refuse anything else:
//
//	identity = str(user) count(groups) group… count(extra keys) (str(key) count(values) str(value)…)…
//	group    = count(shared) str(suffix)
//	str      = <decimal byte length> ":" <bytes>
//	count    = <decimal> ";"
//
// Decimals have no sign and no leading zero. Lengths are bytes of UTF-8 text.
//
// The groups are front-coded (version 3): a group is the number of bytes it
// shares with the previous group (0 for the first), then the bytes that follow
// them. The groups policy/builtin.go emits are "gitlab:user" and, per qualifying
// project or group, its role strings in order ("gitlab:project_role:<id>:guest",
// "...:planner", "...:reporter", …), so adjacent groups share most of their bytes:
// the test/realsize user under test (243 groups and the four extras) encodes in
// 3,517 bytes instead of version 2's 8,510 (0.41). The encoded identity is what
// ext_authz's decision cache keeps per identity and what ext_proc's response cache
// is keyed on, so this is most of what a cached identity weighs: the live heap per
// identity fell from 4.7 to 2.8 KB (extauthz BenchmarkIdentityMemoryRealSize).
//
// shared is exactly the longest common prefix of the two groups made of whole
// runes, so the decoder refuses a shared longer than the previous group, one that
// ends inside a rune, and one shorter than the whole runes the two have in common.
// Whole runes, not the longest common byte prefix: the identity travels as a
// protobuf string (google.protobuf.Value's string_value, proto3), which must be
// UTF-8 as a whole, and a suffix starting inside a rune would not be (Go's
// protobuf refuses to marshal it: google.golang.org/protobuf internal/impl
// codec_field.go, errInvalidUTF8). So every suffix, like every other string and
// every reconstructed group, is UTF-8 text. The decoded groups are bounded like
// the encoded identity (MaxIdentityBytes), since a few bytes of input may repeat a
// long shared prefix many times.
//
// In user mode ext_authz also sets the request header Impersonate-User itself (one
// line, OkHttpResponse.headers with OVERWRITE_IF_EXISTS_OR_ADD), so that a request
// on which ext_proc never acts still reaches the API server as the user and never
// as the agent: Envoy continues a request unmodified when the processor closes its
// stream with gRPC OK before answering, whatever failure_mode_allow says
// (ext_proc/client_impl.cc onRemoteClose → ext_proc.cc Filter::onGrpcClose).
// ext_proc checks that the header it is sent is exactly the decision's user.
package handoff

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"kubegate.dev/kubegate/contract"
)

// Namespace is where Envoy keeps ext_authz's dynamic metadata, and Key kubegate's
// field inside it (see package contract).
const (
	Namespace = contract.MetadataNamespace
	Key       = contract.MetadataKey
)

// Version of the wire form. Bumped on any incompatible change; a decoder refuses
// every version but its own: kubegate authz and extproc ship in one image (the
// Helm chart, deploy/helm, runs both in one pod; docker-compose.yaml runs both
// from kubegate:local). 3: the groups are front-coded (2: the identity is one
// compact string, each group written whole; 1: one protobuf Value per group).
const Version = 3

// Access modes on the wire.
const (
	AccessAsAgent = "agent"
	AccessAsUser  = "user"
)

// HeaderImpersonateUser is the request header ext_authz sets in user mode and
// ext_proc checks (k8s.io/apiserver endpoints/filters/impersonation.go reads it).
const HeaderImpersonateUser = contract.HeaderImpersonateUser

// MaxIdentityBytes bounds an encoded identity, and also the bytes of its groups
// once decoded (front coding lets a small input expand). Envoy's default request
// headers limit is 60 KiB (max_request_headers_kb), and every group becomes a
// header line, so an identity beyond it could not reach the API server anyway.
const MaxIdentityBytes = 1 << 20

// Decision is what ext_proc needs to shape the upstream request.
type Decision struct {
	ID       string
	AccessAs string
	User     string
	Groups   []string
	Extra    map[string][]string
}

// Struct encodes d as the CheckResponse.dynamic_metadata value.
func (d Decision) Struct() (*structpb.Struct, error) {
	if err := d.validate(); err != nil {
		return nil, err
	}
	var ident *Identity
	if d.AccessAs == AccessAsUser {
		ident = NewIdentity(d.User, d.Groups, d.Extra)
	}
	return Encode(d.ID, d.AccessAs, ident)
}

// Identity is the user-mode part of a decision (user, groups, extra) encoded once:
// the same identity is sent for every request of a user, and encoding a few hundred
// group strings per request would cost more than deciding. Encoded values are only
// read afterwards, so one Identity may be used by concurrent requests.
type Identity struct {
	encoded    *structpb.Value
	size       int
	userHeader *corev3.HeaderValueOption
}

// UserHeader is the Impersonate-User header ext_authz sets in user mode: one
// line, replacing any other (append_action OVERWRITE_IF_EXISTS_OR_ADD, which
// Envoy 1.40's ext_authz maps to setCopy: ext_authz_grpc_impl.cc getAppendAction,
// ext_authz.cc Filter::onComplete). The value travels in HeaderValue.value, the
// field ext_authz reads. Read-only: shared by concurrent responses.
func (id *Identity) UserHeader() *corev3.HeaderValueOption { return id.userHeader }

// Bytes is the length of the encoded identity, for weighing a cache of them.
func (id *Identity) Bytes() int { return id.size }

// User is the identity's user.
func (id *Identity) User() string { return id.userHeader.GetHeader().GetValue() }

// Decode reads the identity back, as DecodeIdentity (the groups are rebuilt in one
// new buffer; the user and extra share the encoded form's memory): for the few
// readers of the groups and extra, which are kept only encoded. An identity whose
// text is not UTF-8 does not decode (nor would ext_proc accept it).
func (id *Identity) Decode() (user string, groups []string, extra map[string][]string, err error) {
	return DecodeIdentity(id.encoded.GetStringValue())
}

// NewIdentity encodes a user-mode identity.
func NewIdentity(user string, groups []string, extra map[string][]string) *Identity {
	enc := EncodeIdentity(user, groups, extra)
	return &Identity{
		encoded: structpb.NewStringValue(enc),
		size:    len(enc),
		userHeader: &corev3.HeaderValueOption{
			Header:       &corev3.HeaderValue{Key: HeaderImpersonateUser, Value: user},
			AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
		},
	}
}

// EncodeIdentity is the compact form of an identity (see the package doc): groups
// in order, each front-coded against the one before, extra keys sorted.
func EncodeIdentity(user string, groups []string, extra map[string][]string) string {
	// The exact length, so the string keeps no spare capacity: it is cached for
	// the identity's life.
	n := strLen(user) + countLen(len(groups)) + countLen(len(extra))
	prev := ""
	for _, g := range groups {
		shared := sharedPrefix(prev, g)
		n += countLen(shared) + strLen(g[shared:])
		prev = g
	}
	keys := make([]string, 0, len(extra))
	for k, vs := range extra {
		keys = append(keys, k)
		n += strLen(k) + countLen(len(vs))
		for _, v := range vs {
			n += strLen(v)
		}
	}
	slices.Sort(keys)
	// One buffer of exactly that size, handed over as the string without a copy
	// (strings.Builder): at real size the identity is ~3 KB, made per new identity.
	var b strings.Builder
	b.Grow(n)
	var scratch [20]byte
	appendStr := func(s string) {
		b.Write(strconv.AppendUint(scratch[:0], uint64(len(s)), 10))
		b.WriteByte(':')
		b.WriteString(s)
	}
	appendCount := func(c int) {
		b.Write(strconv.AppendUint(scratch[:0], uint64(c), 10))
		b.WriteByte(';')
	}
	appendStr(user)
	appendCount(len(groups))
	prev = ""
	for _, g := range groups {
		shared := sharedPrefix(prev, g)
		appendCount(shared)
		appendStr(g[shared:])
		prev = g
	}
	appendCount(len(keys))
	for _, k := range keys {
		appendStr(k)
		appendCount(len(extra[k]))
		for _, v := range extra[k] {
			appendStr(v)
		}
	}
	return b.String()
}

// sharedPrefix is the length of the longest common prefix of a and b made of
// whole runes: their longest common byte prefix, cut back to the start of the
// rune it ends inside, if any (a byte of b after it that is not a rune's first
// byte; for UTF-8 text, a and b agree on where their runes start in it).
func sharedPrefix(a, b string) int {
	n := min(len(a), len(b))
	i := 0
	for i < n && a[i] == b[i] {
		i++
	}
	for i > 0 && i < len(b) && !utf8.RuneStart(b[i]) {
		i--
	}
	return i
}

// decimalLen is the number of decimal digits of n.
func decimalLen(n int) int {
	d := 1
	for ; n >= 10; n /= 10 {
		d++
	}
	return d
}

func strLen(s string) int { return decimalLen(len(s)) + 1 + len(s) } // str = <len> ":" <bytes>
func countLen(c int) int  { return decimalLen(c) + 1 }               // count = <n> ";"

// Encode builds the dynamic_metadata value for one request: ident is required in
// user mode and must be nil in agent mode.
func Encode(decisionID, accessAs string, ident *Identity) (*structpb.Struct, error) {
	switch {
	case accessAs == AccessAsUser && ident == nil:
		return nil, errors.New("handoff: a user-mode decision needs an identity")
	case accessAs == AccessAsAgent && ident != nil:
		return nil, errors.New("handoff: an agent-mode decision carries no identity")
	case accessAs != AccessAsUser && accessAs != AccessAsAgent:
		return nil, fmt.Errorf("handoff: access_as %q is neither agent nor user", accessAs)
	}
	fields := make(map[string]*structpb.Value, 4)
	fields["version"] = structpb.NewNumberValue(Version)
	fields["decision_id"] = structpb.NewStringValue(decisionID)
	fields["access_as"] = structpb.NewStringValue(accessAs)
	if ident != nil {
		fields["identity"] = ident.encoded
	}
	return &structpb.Struct{Fields: map[string]*structpb.Value{
		Key: structpb.NewStructValue(&structpb.Struct{Fields: fields}),
	}}, nil
}

func (d Decision) validate() error {
	switch d.AccessAs {
	case AccessAsAgent:
		if d.User != "" || len(d.Groups) > 0 || len(d.Extra) > 0 {
			return errors.New("handoff: an agent-mode decision carries no identity")
		}
	case AccessAsUser:
		if d.User == "" || len(d.Groups) == 0 {
			return errors.New("handoff: a user-mode decision needs a user and groups")
		}
	default:
		return fmt.Errorf("handoff: access_as %q is neither agent nor user", d.AccessAs)
	}
	return nil
}

// FromMetadata reads the decision ext_authz left in Envoy's metadata. Any deviation
// from the wire form is an error.
func FromMetadata(md *corev3.Metadata) (Decision, error) {
	env, err := ReadEnvelope(md)
	if err != nil {
		return Decision{}, err
	}
	return env.Decode()
}

// Envelope is a decision as it travels, its identity still encoded: ext_proc reads
// it per request and decodes an identity only the first time it sees that exact
// string (Decode), since the same one comes with every request of a user.
type Envelope struct {
	ID       string
	AccessAs string
	// Identity is the compact identity (user mode), unchecked until Decode.
	Identity string
}

// ReadEnvelope reads the decision's fields strictly (version, no unknown field,
// strings where strings belong, an identity exactly in user mode) without decoding
// the identity. An Envelope it returns is not a valid decision until Decode says so.
func ReadEnvelope(md *corev3.Metadata) (Envelope, error) {
	ns := md.GetFilterMetadata()[Namespace]
	if ns == nil {
		return Envelope{}, fmt.Errorf("handoff: no %s metadata (is ext_authz before ext_proc, and forwarding_namespaces set?)", Namespace)
	}
	v := ns.GetFields()[Key]
	if v == nil {
		return Envelope{}, fmt.Errorf("handoff: no %q decision in the %s metadata", Key, Namespace)
	}
	s := v.GetStructValue()
	if s == nil {
		return Envelope{}, errors.New("handoff: the decision is not a struct")
	}
	var e Envelope
	seen, hasIdentity := 0, false
	for name, val := range s.GetFields() {
		var err error
		switch name {
		case "version":
			n, ok := val.GetKind().(*structpb.Value_NumberValue)
			if !ok || n.NumberValue != Version {
				err = fmt.Errorf("version %v is not %d: kubegate authz and extproc must be the same kubegate version (deploy both from one image)", val.AsInterface(), Version)
			}
			seen++
		case "decision_id":
			e.ID, err = str(val)
		case "access_as":
			e.AccessAs, err = str(val)
		case "identity":
			e.Identity, err = str(val)
			hasIdentity = true
		default:
			err = errors.New("unknown field")
		}
		if err != nil {
			return Envelope{}, fmt.Errorf("handoff: field %q: %w", name, err)
		}
	}
	if seen == 0 {
		return Envelope{}, errors.New("handoff: the decision has no version")
	}
	switch {
	case e.AccessAs == AccessAsAgent && hasIdentity:
		return Envelope{}, errors.New("handoff: an agent-mode decision carries no identity")
	case e.AccessAs == AccessAsUser && !hasIdentity:
		return Envelope{}, errors.New("handoff: a user-mode decision needs a user and groups")
	case e.AccessAs != AccessAsUser && e.AccessAs != AccessAsAgent:
		return Envelope{}, fmt.Errorf("handoff: access_as %q is neither agent nor user", e.AccessAs)
	}
	return e, nil
}

// Decode decodes the envelope's identity strictly and checks the whole decision.
func (e Envelope) Decode() (Decision, error) {
	d := Decision{ID: e.ID, AccessAs: e.AccessAs}
	if e.AccessAs == AccessAsUser {
		var err error
		if d.User, d.Groups, d.Extra, err = DecodeIdentity(e.Identity); err != nil {
			return Decision{}, fmt.Errorf("handoff: field %q: %w", "identity", err)
		}
	}
	if err := d.validate(); err != nil {
		return Decision{}, err
	}
	return d, nil
}

// DecodeIdentity reads the compact form strictly: a non-canonical number, a
// length past the end, a shared prefix longer than the previous group, ending
// inside a rune or shorter than the whole runes the two groups have in common,
// text that is not UTF-8 (a group's suffix or the whole group, the user, an extra
// key or value), unsorted or repeated extra keys, a missing part, trailing data,
// and an identity or its decoded groups over MaxIdentityBytes are errors. The
// groups are rebuilt in one new buffer of their total size, each a substring of
// it, so they hold two allocations (the slice and the buffer) whatever their
// number; the user and the extra strings share enc's memory.
func DecodeIdentity(enc string) (user string, groups []string, extra map[string][]string, err error) {
	if len(enc) > MaxIdentityBytes {
		return "", nil, nil, fmt.Errorf("identity of %d bytes is over the %d-byte bound", len(enc), MaxIdentityBytes)
	}
	r := reader{s: enc}
	user = r.str("user")
	n := r.count("groups", minGroupBytes)
	if r.err == nil && n > 0 {
		// Two passes over the groups: the first checks their form and sums their
		// decoded size, refused over the bound before anything is allocated for
		// it; the second rebuilds them into one buffer of exactly that size.
		start := r.pos
		size := r.groups(n, nil, nil)
		if r.err == nil {
			var b strings.Builder
			b.Grow(size)
			groups = make([]string, n)
			r.pos = start
			r.groups(n, &b, groups)
		}
	}
	nk := r.count("extra keys", minExtraKeyBytes)
	if r.err == nil && nk > 0 {
		extra = make(map[string][]string, nk)
		prev := ""
		for i := 0; i < nk && r.err == nil; i++ {
			k := r.str("extra key")
			if r.err == nil && i > 0 && k <= prev {
				r.fail("extra key %q is not after %q (keys are sorted and unique)", k, prev)
			}
			prev = k
			nv := r.count("extra values", minStrBytes)
			vs := make([]string, 0, nv)
			for j := 0; j < nv && r.err == nil; j++ {
				vs = append(vs, r.str("extra value"))
			}
			extra[k] = vs
		}
	}
	if r.err == nil && r.pos != len(enc) {
		r.fail("%d bytes of trailing data", len(enc)-r.pos)
	}
	if r.err != nil {
		return "", nil, nil, r.err
	}
	return user, groups, extra, nil
}

// reader walks an encoded identity; the first error sticks and stops it.
type reader struct {
	s   string
	pos int
	err error
}

func (r *reader) fail(format string, args ...any) {
	if r.err == nil {
		r.err = fmt.Errorf("identity at byte %d: "+format, append([]any{r.pos}, args...)...)
	}
}

// number reads a canonical decimal ended by term: a count, or with ':' the length
// of the str what.
func (r *reader) number(what string, term byte) int {
	if r.err != nil {
		return 0
	}
	unit := ""
	if term == ':' {
		unit = " length" // joined only on failure: decoding allocates per identity, not per string
	}
	end := strings.IndexByte(r.s[r.pos:], term)
	if end < 0 {
		r.fail("%s%s: no %q-terminated number", what, unit, term)
		return 0
	}
	digits := r.s[r.pos : r.pos+end]
	if digits == "" || len(digits) > 7 || (len(digits) > 1 && digits[0] == '0') {
		r.fail("%s%s: %q is not a canonical number", what, unit, digits)
		return 0
	}
	n := 0
	for i := 0; i < len(digits); i++ {
		c := digits[i]
		if c < '0' || c > '9' {
			r.fail("%s%s: %q is not a canonical number", what, unit, digits)
			return 0
		}
		n = n*10 + int(c-'0')
	}
	r.pos += end + 1
	return n
}

// str reads a str of UTF-8 text.
func (r *reader) str(what string) string {
	n := r.number(what, ':')
	if r.err != nil {
		return ""
	}
	if n > len(r.s)-r.pos {
		r.fail("%s of %d bytes runs past the end", what, n)
		return ""
	}
	s := r.s[r.pos : r.pos+n]
	if !utf8.ValidString(s) {
		r.fail("%s is not UTF-8", what)
		return ""
	}
	r.pos += n
	return s
}

// groups reads n front-coded groups. Without b it checks their form and returns
// their decoded size; with b (grown to that size) it also rebuilds them into b,
// each group a substring of b's one buffer (a strings.Builder only appends, and
// after Grow(size) writes that much "without another allocation", so what its
// String returned earlier stays in place and unchanged), stored in out.
func (r *reader) groups(n int, b *strings.Builder, out []string) (size int) {
	prev, prevLen := "", 0
	for i := 0; i < n && r.err == nil; i++ {
		shared := r.number("group shared prefix", ';')
		suffix := r.str("group suffix")
		switch {
		case r.err != nil:
			return 0
		case shared > prevLen:
			r.fail("group %d shares %d bytes with the previous group, which has %d", i, shared, prevLen)
			return 0
		}
		prevLen = shared + len(suffix)
		if size += prevLen; size > MaxIdentityBytes {
			r.fail("the groups decode to more than the %d-byte bound", MaxIdentityBytes)
			return 0
		}
		if b == nil {
			continue
		}
		// Both are UTF-8 here (suffix by r.str, prev as checked below), so equal
		// first runes are equal bytes of the first rune's length.
		if _, w := utf8.DecodeRuneInString(suffix); w > 0 && strings.HasPrefix(prev[shared:], suffix[:w]) {
			r.fail("group %d shares %d bytes with the previous group, not the longest prefix of whole runes they have in common", i, shared)
			return 0
		}
		at := b.Len()
		b.WriteString(prev[:shared])
		b.WriteString(suffix)
		g := b.String()[at:]
		if !utf8.ValidString(g) { // prev[:shared] ended inside a rune
			r.fail("group %d is not UTF-8 (its shared prefix ends inside a rune)", i)
			return 0
		}
		out[i] = g
		prev = g
	}
	return size
}

// The fewest bytes an item of a count can take, so that a count the rest cannot
// hold is refused before anything is allocated for it.
const (
	minStrBytes      = len("0:")
	minGroupBytes    = len("0;0:")
	minExtraKeyBytes = len("0:0;")
)

// count reads a number of items, each at least least bytes long.
func (r *reader) count(what string, least int) int {
	n := r.number(what, ';')
	if r.err == nil && n > (len(r.s)-r.pos)/least {
		r.fail("%d %s cannot fit in the %d bytes left", n, what, len(r.s)-r.pos)
		return 0
	}
	return n
}

func str(v *structpb.Value) (string, error) {
	s, ok := v.GetKind().(*structpb.Value_StringValue)
	if !ok {
		return "", errors.New("not a string")
	}
	return s.StringValue, nil
}
