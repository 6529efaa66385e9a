// Package handoff is the contract between kubegate's two Envoy services: the
// decision ext_authz hands to ext_proc through Envoy's dynamic metadata.
//
// ext_authz returns it in CheckResponse.dynamic_metadata as {"kubegate": {...}};
// Envoy stores that under the filter namespace envoy.filters.http.ext_authz, and
// ext_proc (configured with metadata_options.forwarding_namespaces.untyped =
// [envoy.filters.http.ext_authz]) receives it in ProcessingRequest.metadata_context.
//
// The decoder is strict and fails closed: a missing, unknown-version or malformed
// decision is an error, and ext_proc answers it with a denial, never a pass-through.
//
// Wire form (google.protobuf.Struct):
//
//	kubegate:
//	  version: 1
//	  decision_id: "<Envoy request id or random id>"   # correlates the two services' logs
//	  access_as: "agent" | "user"
//	  user: "gitlab:user:alice"                          # user mode only
//	  groups: ["gitlab:user", "gitlab:project_role:1:developer", …]   # user mode only
//	  extra: {"agent.gitlab.com/id": ["1"], …}           # user mode only
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

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/structpb"
)

// Namespace is where Envoy keeps ext_authz's dynamic metadata (the ext_authz HTTP
// filter's canonical name; CheckResponse.dynamic_metadata proto comment).
const Namespace = "envoy.filters.http.ext_authz"

// Key is kubegate's field inside that namespace.
const Key = "kubegate"

// Version of the wire form. Bumped on any incompatible change; a decoder refuses
// versions it does not know.
const Version = 1

// Access modes on the wire.
const (
	AccessAsAgent = "agent"
	AccessAsUser  = "user"
)

// HeaderImpersonateUser is the request header ext_authz sets in user mode and
// ext_proc checks (k8s.io/apiserver endpoints/filters/impersonation.go reads it).
const HeaderImpersonateUser = "impersonate-user"

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
	user, groups, extra *structpb.Value
	userHeader          *corev3.HeaderValueOption
}

// UserHeader is the Impersonate-User header ext_authz sets in user mode: one
// line, replacing any other (append_action OVERWRITE_IF_EXISTS_OR_ADD, which
// Envoy 1.40's ext_authz maps to setCopy: ext_authz_grpc_impl.cc getAppendAction,
// ext_authz.cc Filter::onComplete). The value travels in HeaderValue.value, the
// field ext_authz reads. Read-only: shared by concurrent responses.
func (id *Identity) UserHeader() *corev3.HeaderValueOption { return id.userHeader }

// NewIdentity encodes a user-mode identity.
func NewIdentity(user string, groups []string, extra map[string][]string) *Identity {
	gv := make([]*structpb.Value, len(groups))
	for i, g := range groups {
		gv[i] = structpb.NewStringValue(g)
	}
	ev := make(map[string]*structpb.Value, len(extra))
	for k, vs := range extra {
		vals := make([]*structpb.Value, len(vs))
		for i, v := range vs {
			vals[i] = structpb.NewStringValue(v)
		}
		ev[k] = structpb.NewListValue(&structpb.ListValue{Values: vals})
	}
	return &Identity{
		user:   structpb.NewStringValue(user),
		groups: structpb.NewListValue(&structpb.ListValue{Values: gv}),
		extra:  structpb.NewStructValue(&structpb.Struct{Fields: ev}),
		userHeader: &corev3.HeaderValueOption{
			Header:       &corev3.HeaderValue{Key: HeaderImpersonateUser, Value: user},
			AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
		},
	}
}

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
	fields := make(map[string]*structpb.Value, 6)
	fields["version"] = structpb.NewNumberValue(Version)
	fields["decision_id"] = structpb.NewStringValue(decisionID)
	fields["access_as"] = structpb.NewStringValue(accessAs)
	if ident != nil {
		fields["user"], fields["groups"], fields["extra"] = ident.user, ident.groups, ident.extra
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
	ns := md.GetFilterMetadata()[Namespace]
	if ns == nil {
		return Decision{}, fmt.Errorf("handoff: no %s metadata (is ext_authz before ext_proc, and forwarding_namespaces set?)", Namespace)
	}
	v := ns.GetFields()[Key]
	if v == nil {
		return Decision{}, fmt.Errorf("handoff: no %q decision in the %s metadata", Key, Namespace)
	}
	s := v.GetStructValue()
	if s == nil {
		return Decision{}, errors.New("handoff: the decision is not a struct")
	}
	var d Decision
	seen := 0
	for name, val := range s.GetFields() {
		var err error
		switch name {
		case "version":
			n, ok := val.GetKind().(*structpb.Value_NumberValue)
			if !ok || n.NumberValue != Version {
				err = fmt.Errorf("version %v is not %d", val.AsInterface(), Version)
			}
			seen++
		case "decision_id":
			d.ID, err = str(val)
		case "access_as":
			d.AccessAs, err = str(val)
		case "user":
			d.User, err = str(val)
		case "groups":
			d.Groups, err = strs(val)
		case "extra":
			st := val.GetStructValue()
			if st == nil {
				err = errors.New("extra is not a struct")
				break
			}
			d.Extra = make(map[string][]string, len(st.GetFields()))
			for k, vs := range st.GetFields() {
				if d.Extra[k], err = strs(vs); err != nil {
					err = fmt.Errorf("extra %q: %w", k, err)
					break
				}
			}
		default:
			err = errors.New("unknown field")
		}
		if err != nil {
			return Decision{}, fmt.Errorf("handoff: field %q: %w", name, err)
		}
	}
	if seen == 0 {
		return Decision{}, errors.New("handoff: the decision has no version")
	}
	if err := d.validate(); err != nil {
		return Decision{}, err
	}
	return d, nil
}

func str(v *structpb.Value) (string, error) {
	s, ok := v.GetKind().(*structpb.Value_StringValue)
	if !ok {
		return "", errors.New("not a string")
	}
	return s.StringValue, nil
}

func strs(v *structpb.Value) ([]string, error) {
	l := v.GetListValue()
	if l == nil {
		return nil, errors.New("not a list")
	}
	out := make([]string, len(l.GetValues()))
	for i, e := range l.GetValues() {
		s, err := str(e)
		if err != nil {
			return nil, fmt.Errorf("item %d: %w", i, err)
		}
		out[i] = s
	}
	return out, nil
}
