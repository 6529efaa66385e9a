package envoy

import (
	"errors"
	"fmt"
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
)

// protoValidate runs the protoc-gen-validate rules of m and of every message packed
// in a google.protobuf.Any below it. Bootstrap.ValidateAll alone stops at each
// typed_config (envoy.md, "Checking a configuration without Envoy"): the HTTP
// connection manager, every HTTP filter and every TLS context live in one.
func protoValidate(m proto.Message, path string) []Finding {
	var out []Finding
	if v, ok := m.(interface{ ValidateAll() error }); ok {
		if err := v.ValidateAll(); err != nil {
			out = append(out, pgvFindings(err, m.ProtoReflect().Descriptor(), path)...)
		}
	}
	forEachAny(m.ProtoReflect(), path, func(a *anypb.Any, p string) {
		inner, err := a.UnmarshalNew()
		if err != nil {
			out = append(out, Finding{Path: p, Rule: RuleSchema, Message: fmt.Sprintf("cannot unpack %s: %v", a.GetTypeUrl(), err)})
			return
		}
		out = append(out, protoValidate(inner, p)...)
	})
	return out
}

// forEachAny calls fn for each populated google.protobuf.Any reachable from m
// without crossing another Any, with its JSON path.
func forEachAny(m protoreflect.Message, path string, fn func(*anypb.Any, string)) {
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		p := path + "." + string(fd.Name())
		visit := func(msg protoreflect.Message, p string) {
			if a, ok := msg.Interface().(*anypb.Any); ok {
				fn(a, p)
				return
			}
			forEachAny(msg, p, fn)
		}
		switch {
		case fd.IsMap():
			if fd.MapValue().Message() == nil {
				return true
			}
			v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				visit(mv.Message(), fmt.Sprintf("%s[%q]", p, k.String()))
				return true
			})
		case fd.IsList():
			if fd.Message() == nil {
				return true
			}
			for i := 0; i < v.List().Len(); i++ {
				visit(v.List().Get(i).Message(), fmt.Sprintf("%s[%d]", p, i))
			}
		case fd.Message() != nil:
			visit(v.Message(), p)
		}
		return true
	})
}

// The error types protoc-gen-validate generates: XMultiError (AllErrors) and
// XValidationError (Field, Reason, Cause), where Field is the Go field name with
// an optional [index] or [key], and Cause is the nested message's error.
type pgvMulti interface{ AllErrors() []error }

type pgvField interface {
	Field() string
	Reason() string
	Cause() error
}

func pgvFindings(err error, md protoreflect.MessageDescriptor, path string) []Finding {
	var multi pgvMulti
	if errors.As(err, &multi) {
		var out []Finding
		for _, e := range multi.AllErrors() {
			out = append(out, pgvFindings(e, md, path)...)
		}
		return out
	}
	fe, ok := err.(pgvField)
	if !ok {
		return []Finding{{Path: path, Rule: RuleProtoValidate, Message: err.Error()}}
	}
	goName, sub, _ := strings.Cut(fe.Field(), "[")
	fd := fieldByGoName(md, goName)
	p := path + "." + goName
	if fd != nil {
		p = path + "." + string(fd.Name())
	}
	if sub != "" {
		sub = strings.TrimSuffix(sub, "]")
		if fd != nil && fd.IsMap() {
			p += fmt.Sprintf("[%q]", sub)
		} else {
			p += "[" + sub + "]"
		}
	}
	if cause := fe.Cause(); cause != nil && fd != nil {
		nested := fd.Message()
		if fd.IsMap() {
			nested = fd.MapValue().Message()
		}
		if nested != nil && fe.Reason() == "embedded message failed validation" {
			return pgvFindings(cause, nested, p)
		}
	}
	msg := fe.Reason()
	if cause := fe.Cause(); cause != nil {
		msg += ": " + cause.Error()
	}
	return []Finding{{Path: p, Rule: RuleProtoValidate, Message: msg}}
}

// fieldByGoName finds the field protoc-gen-go named goName.
func fieldByGoName(md protoreflect.MessageDescriptor, goName string) protoreflect.FieldDescriptor {
	for i := 0; i < md.Fields().Len(); i++ {
		fd := md.Fields().Get(i)
		if goCamelCase(string(fd.Name())) == goName {
			return fd
		}
	}
	return nil
}

// goCamelCase is protoc-gen-go's field-name mangling (protogen.GoCamelCase).
func goCamelCase(s string) string {
	var b []byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '.' && i+1 < len(s) && isLower(s[i+1]):
		case c == '.':
			b = append(b, '_')
		case c == '_' && (i == 0 || s[i-1] == '.'):
			b = append(b, 'X')
		case c == '_' && i+1 < len(s) && isLower(s[i+1]):
		case isDigit(c):
			b = append(b, c)
		default:
			if isLower(c) {
				c -= 'a' - 'A'
			}
			b = append(b, c)
			for ; i+1 < len(s) && isLower(s[i+1]); i++ {
				b = append(b, s[i+1])
			}
		}
	}
	return string(b)
}

func isLower(c byte) bool { return 'a' <= c && c <= 'z' }
func isDigit(c byte) bool { return '0' <= c && c <= '9' }
