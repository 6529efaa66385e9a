package envoy

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"sigs.k8s.io/yaml"
)

// Rules reported while reading a file, before kubegate's own rules can run.
const (
	RuleSyntax        = "syntax"         // not YAML or JSON
	RuleSchema        = "schema"         // unknown field, wrong type, unknown extension type
	RuleProtoValidate = "proto-validate" // a protoc-gen-validate constraint of Envoy's API
)

// Decode reads an Envoy bootstrap in YAML or JSON strictly: an unknown field, a
// value of the wrong type or an unknown typed_config type is a finding with its JSON
// path, and nothing is decoded. protojson alone would report the first problem at a
// byte offset of the converted JSON, which means nothing to the person who wrote
// YAML; the descriptor walk below finds all of them and names where they are.
//
// The test data plane loads the rendered bootstrap through Decode, so both read a
// file the same way.
func Decode(data []byte) (*bootstrapv3.Bootstrap, []Finding) {
	var fs findings
	// YAMLToJSONStrict refuses duplicate keys, which YAML would otherwise resolve
	// silently to the last one (a second failure_mode_allow: true would win).
	j, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		fs.add("$", RuleSyntax, "not valid YAML or JSON: %v", err)
		return nil, fs
	}
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.UseNumber()
	var root any
	if err := dec.Decode(&root); err != nil {
		fs.add("$", RuleSyntax, "not valid JSON: %v", err)
		return nil, fs
	}
	if root == nil {
		fs.add("$", RuleSchema, "the file is empty: expected an Envoy v3 bootstrap (static_resources, node, admin, ...)")
		return nil, fs
	}
	w := walker{}
	w.message((&bootstrapv3.Bootstrap{}).ProtoReflect().Descriptor(), root, "$")
	if len(w.fs) > 0 {
		return nil, w.fs
	}
	b := &bootstrapv3.Bootstrap{}
	if err := (protojson.UnmarshalOptions{}).Unmarshal(j, b); err != nil {
		// The walk accepts only what protojson accepts, so this is a value the walk
		// does not model (say an out-of-range integer); protojson's text names it.
		fs.add("$", RuleSchema, "%v", err)
		return nil, fs
	}
	return b, nil
}

// walker checks a decoded JSON value against a message descriptor the way protojson
// reads it (field names in proto or JSON spelling, WKTs in their JSON forms).
type walker struct{ fs findings }

func (w *walker) message(md protoreflect.MessageDescriptor, v any, path string) {
	if v == nil {
		return
	}
	if w.wellKnown(md, v, path) {
		return
	}
	obj, ok := v.(map[string]any)
	if !ok {
		w.fs.add(path, RuleSchema, "expected an object (%s), got %s", md.FullName(), jsonKind(v))
		return
	}
	w.fields(md, obj, path, nil)
}

// fields checks the members of obj against md; skip names keys already handled
// (the "@type" of an Any).
func (w *walker) fields(md protoreflect.MessageDescriptor, obj map[string]any, path string, skip map[string]bool) {
	seenOneof := map[protoreflect.FullName]string{}
	for _, key := range sortedKeys(obj) {
		if skip[key] {
			continue
		}
		val := obj[key]
		fd := md.Fields().ByJSONName(key)
		if fd == nil {
			fd = md.Fields().ByName(protoreflect.Name(key))
		}
		if fd == nil {
			msg := fmt.Sprintf("unknown field %q in %s", key, md.FullName())
			if s := suggest(key, md); s != "" {
				msg += fmt.Sprintf("; did you mean %q?", s)
			}
			w.fs.add(path+"."+key, RuleSchema, "%s", msg)
			continue
		}
		fpath := path + "." + string(fd.Name())
		if od := fd.ContainingOneof(); od != nil && !od.IsSynthetic() && val != nil {
			if other, dup := seenOneof[od.FullName()]; dup {
				w.fs.add(fpath, RuleSchema, "only one of the oneof %q may be set, and %q is set too", od.Name(), other)
			}
			seenOneof[od.FullName()] = string(fd.Name())
		}
		switch {
		case fd.IsMap():
			if val == nil {
				continue
			}
			m, ok := val.(map[string]any)
			if !ok {
				w.fs.add(fpath, RuleSchema, "expected an object (a map), got %s", jsonKind(val))
				continue
			}
			for _, k := range sortedKeys(m) {
				w.value(fd.MapValue(), m[k], fmt.Sprintf("%s[%q]", fpath, k))
			}
		case fd.IsList():
			if val == nil {
				continue
			}
			l, ok := val.([]any)
			if !ok {
				w.fs.add(fpath, RuleSchema, "expected a list, got %s", jsonKind(val))
				continue
			}
			for i, e := range l {
				w.value(fd, e, fmt.Sprintf("%s[%d]", fpath, i))
			}
		default:
			w.value(fd, val, fpath)
		}
	}
}

var durationRE = regexp.MustCompile(`^-?[0-9]+(\.[0-9]{1,9})?s$`)

// wellKnown handles the google.protobuf types whose JSON form is not an object of
// their fields (protobuf's JSON mapping). It reports whether md was one of them.
func (w *walker) wellKnown(md protoreflect.MessageDescriptor, v any, path string) bool {
	switch md.FullName() {
	case "google.protobuf.Any":
		w.anyValue(v, path)
	case "google.protobuf.Duration":
		if s, ok := v.(string); !ok || !durationRE.MatchString(s) {
			w.fs.add(path, RuleSchema, "expected a duration such as \"0s\", \"1.5s\" or \"300s\", got %s", jsonValue(v))
		}
	case "google.protobuf.Timestamp", "google.protobuf.FieldMask":
		if _, ok := v.(string); !ok {
			w.fs.add(path, RuleSchema, "expected a string, got %s", jsonKind(v))
		}
	case "google.protobuf.Struct":
		if _, ok := v.(map[string]any); !ok {
			w.fs.add(path, RuleSchema, "expected an object, got %s", jsonKind(v))
		}
	case "google.protobuf.ListValue":
		if _, ok := v.([]any); !ok {
			w.fs.add(path, RuleSchema, "expected a list, got %s", jsonKind(v))
		}
	case "google.protobuf.Value":
		// any JSON value
	case "google.protobuf.Empty":
		if o, ok := v.(map[string]any); !ok || len(o) != 0 {
			w.fs.add(path, RuleSchema, "expected {}, got %s", jsonValue(v))
		}
	case "google.protobuf.BoolValue", "google.protobuf.StringValue", "google.protobuf.BytesValue",
		"google.protobuf.Int32Value", "google.protobuf.Int64Value", "google.protobuf.UInt32Value",
		"google.protobuf.UInt64Value", "google.protobuf.FloatValue", "google.protobuf.DoubleValue":
		w.value(md.Fields().ByName("value"), v, path)
	default:
		return false
	}
	return true
}

func (w *walker) anyValue(v any, path string) {
	obj, ok := v.(map[string]any)
	if !ok {
		w.fs.add(path, RuleSchema, "expected an object with \"@type\", got %s", jsonKind(v))
		return
	}
	url, ok := obj["@type"].(string)
	if !ok || url == "" {
		w.fs.add(path, RuleSchema, "a typed_config (google.protobuf.Any) needs \"@type\", e.g. type.googleapis.com/envoy.extensions.filters.http.router.v3.Router")
		return
	}
	mt, err := protoregistry.GlobalTypes.FindMessageByURL(url)
	if err != nil {
		w.fs.add(path+".@type", RuleSchema, "unknown type %q: it is misspelled, or it is an extension kubegate's validator does not know and so cannot check", url)
		return
	}
	md := mt.Descriptor()
	if isWellKnownJSON(md) {
		for _, k := range sortedKeys(obj) {
			if k != "@type" && k != "value" {
				w.fs.add(path+"."+k, RuleSchema, "unknown field %q: an Any holding %s has only \"@type\" and \"value\"", k, md.FullName())
			}
		}
		w.message(md, obj["value"], path+".value")
		return
	}
	w.fields(md, obj, path, map[string]bool{"@type": true})
}

// isWellKnownJSON reports whether md has its own JSON form, which inside an Any
// sits under "value" (protobuf's JSON mapping for Any).
func isWellKnownJSON(md protoreflect.MessageDescriptor) bool {
	switch md.FullName() {
	case "google.protobuf.Any", "google.protobuf.Duration", "google.protobuf.Timestamp",
		"google.protobuf.FieldMask", "google.protobuf.Struct", "google.protobuf.ListValue",
		"google.protobuf.Value", "google.protobuf.Empty",
		"google.protobuf.BoolValue", "google.protobuf.StringValue", "google.protobuf.BytesValue",
		"google.protobuf.Int32Value", "google.protobuf.Int64Value", "google.protobuf.UInt32Value",
		"google.protobuf.UInt64Value", "google.protobuf.FloatValue", "google.protobuf.DoubleValue":
		return true
	}
	return false
}

func (w *walker) value(fd protoreflect.FieldDescriptor, v any, path string) {
	if v == nil {
		return // null is "unset" in protobuf's JSON mapping
	}
	switch fd.Kind() {
	case protoreflect.MessageKind, protoreflect.GroupKind:
		w.message(fd.Message(), v, path)
	case protoreflect.EnumKind:
		switch x := v.(type) {
		case string:
			if fd.Enum().Values().ByName(protoreflect.Name(x)) == nil {
				msg := fmt.Sprintf("%q is not a value of %s", x, fd.Enum().FullName())
				if s := suggestEnum(x, fd.Enum()); s != "" {
					msg += fmt.Sprintf("; did you mean %q?", s)
				}
				w.fs.add(path, RuleSchema, "%s", msg)
			}
		case json.Number:
			if _, err := strconv.ParseInt(string(x), 10, 32); err != nil {
				w.fs.add(path, RuleSchema, "expected an enum name of %s, got %s", fd.Enum().FullName(), x)
			}
		default:
			w.fs.add(path, RuleSchema, "expected an enum name of %s, got %s", fd.Enum().FullName(), jsonKind(v))
		}
	case protoreflect.BoolKind:
		if _, ok := v.(bool); !ok {
			w.fs.add(path, RuleSchema, "expected true or false, got %s", jsonValue(v))
		}
	case protoreflect.StringKind:
		if _, ok := v.(string); !ok {
			w.fs.add(path, RuleSchema, "expected a string, got %s", jsonValue(v))
		}
	case protoreflect.BytesKind:
		s, ok := v.(string)
		if !ok {
			w.fs.add(path, RuleSchema, "expected base64 bytes in a string, got %s", jsonKind(v))
		} else if _, err := base64.StdEncoding.DecodeString(s); err != nil {
			if _, err2 := base64.URLEncoding.DecodeString(s); err2 != nil {
				w.fs.add(path, RuleSchema, "expected base64 bytes: %v", err)
			}
		}
	case protoreflect.FloatKind, protoreflect.DoubleKind:
		switch x := v.(type) {
		case json.Number:
		case string:
			if _, err := strconv.ParseFloat(x, 64); err != nil && x != "NaN" && x != "Infinity" && x != "-Infinity" {
				w.fs.add(path, RuleSchema, "expected a number, got %q", x)
			}
		default:
			w.fs.add(path, RuleSchema, "expected a number, got %s", jsonKind(v))
		}
	default: // the integer kinds
		var s string
		switch x := v.(type) {
		case json.Number:
			s = string(x)
		case string:
			s = x
		default:
			w.fs.add(path, RuleSchema, "expected an integer, got %s", jsonKind(v))
			return
		}
		if !isInteger(s, fd.Kind()) {
			w.fs.add(path, RuleSchema, "expected %s, got %s", kindRange(fd.Kind()), s)
		}
	}
}

func isInteger(s string, k protoreflect.Kind) bool {
	// protojson accepts exponent forms of integral values ("1e3"); keep to that.
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f != float64(int64(f)) && f != float64(uint64(f)) {
		return false
	}
	switch k {
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		return f >= -1<<31 && f <= 1<<31-1
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		return f >= 0 && f <= 1<<32-1
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return f >= 0
	}
	return true
}

func kindRange(k protoreflect.Kind) string {
	switch k {
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		return "a 32-bit integer"
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		return "an unsigned 32-bit integer"
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return "an unsigned integer"
	}
	return "an integer"
}

func jsonKind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case bool:
		return "a boolean"
	case json.Number:
		return "a number"
	case string:
		return "a string"
	case []any:
		return "a list"
	case map[string]any:
		return "an object"
	}
	return fmt.Sprintf("%T", v)
}

func jsonValue(v any) string {
	switch x := v.(type) {
	case string:
		return strconv.Quote(x)
	case json.Number:
		return string(x)
	case bool:
		return strconv.FormatBool(x)
	}
	return jsonKind(v)
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// suggest returns the field name of md closest to a misspelled key, if close enough.
func suggest(key string, md protoreflect.MessageDescriptor) string {
	var names []string
	for i := 0; i < md.Fields().Len(); i++ {
		names = append(names, string(md.Fields().Get(i).Name()))
	}
	return closest(key, names)
}

func suggestEnum(v string, ed protoreflect.EnumDescriptor) string {
	var names []string
	for i := 0; i < ed.Values().Len(); i++ {
		names = append(names, string(ed.Values().Get(i).Name()))
	}
	return closest(v, names)
}

func closest(s string, candidates []string) string {
	best, bestD := "", len(s)/3+2
	norm := func(x string) string { return strings.ToLower(strings.ReplaceAll(x, "_", "")) }
	for _, c := range candidates {
		d := levenshtein(norm(s), norm(c))
		if d < bestD {
			best, bestD = c, d
		}
	}
	return best
}

func levenshtein(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
