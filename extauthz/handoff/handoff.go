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
	fields := map[string]*structpb.Value{
		"version":     structpb.NewNumberValue(Version),
		"decision_id": structpb.NewStringValue(d.ID),
		"access_as":   structpb.NewStringValue(d.AccessAs),
	}
	if d.AccessAs == AccessAsUser {
		groups := make([]*structpb.Value, len(d.Groups))
		for i, g := range d.Groups {
			groups[i] = structpb.NewStringValue(g)
		}
		extra := make(map[string]*structpb.Value, len(d.Extra))
		for k, vs := range d.Extra {
			vals := make([]*structpb.Value, len(vs))
			for i, v := range vs {
				vals[i] = structpb.NewStringValue(v)
			}
			extra[k] = structpb.NewListValue(&structpb.ListValue{Values: vals})
		}
		fields["user"] = structpb.NewStringValue(d.User)
		fields["groups"] = structpb.NewListValue(&structpb.ListValue{Values: groups})
		fields["extra"] = structpb.NewStructValue(&structpb.Struct{Fields: extra})
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
