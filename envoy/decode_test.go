package envoy

import (
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

func rendered(t *testing.T) string {
	t.Helper()
	y, err := Render(testOptions(t))
	if err != nil {
		t.Fatal(err)
	}
	return string(y)
}

// replaceOnce edits a rendered YAML text and fails if old is not there exactly once.
func replaceOnce(t *testing.T, s, old, new string) string {
	t.Helper()
	if n := strings.Count(s, old); n != 1 {
		t.Fatalf("%q occurs %d times in the rendered config", old, n)
	}
	return strings.Replace(s, old, new, 1)
}

func TestDecodeFindings(t *testing.T) {
	const hcm = "$.static_resources.listeners[0].filter_chains[0].filters[0].typed_config"
	tests := []struct {
		name     string
		doc      func(t *testing.T) string
		wantRule string
		wantPath string
		wantMsg  string
	}{
		{"typo in a field name", func(t *testing.T) string {
			return replaceOnce(t, rendered(t), "encode_raw_headers: true", "encode_raw_header: true")
		}, RuleSchema, hcm + ".http_filters[2].typed_config.encode_raw_header", `did you mean "encode_raw_headers"`},
		{"typo in a top-level field", func(t *testing.T) string {
			return replaceOnce(t, rendered(t), "static_resources:", "static_resource:")
		}, RuleSchema, "$.static_resource", `did you mean "static_resources"`},
		{"typo in an enum value", func(t *testing.T) string {
			return replaceOnce(t, rendered(t), "headers_with_underscores_action: REJECT_REQUEST", "headers_with_underscores_action: REJECT_REQUST")
		}, RuleSchema, hcm + ".common_http_protocol_options.headers_with_underscores_action", `did you mean "REJECT_REQUEST"`},
		{"string where a bool belongs", func(t *testing.T) string {
			return replaceOnce(t, rendered(t), "encode_raw_headers: true", `encode_raw_headers: "yes"`)
		}, RuleSchema, hcm + ".http_filters[2].typed_config.encode_raw_headers", "expected true or false"},
		{"bad duration", func(t *testing.T) string {
			return replaceOnce(t, rendered(t), "message_timeout: 1s", "message_timeout: 1 second")
		}, RuleSchema, hcm + ".http_filters[3].typed_config.message_timeout", "expected a duration"},
		{"unknown typed_config type", func(t *testing.T) string {
			return replaceOnce(t, rendered(t), "envoy.extensions.filters.http.router.v3.Router", "envoy.extensions.filters.http.routr.v3.Router")
		}, RuleSchema, hcm + ".http_filters[4].typed_config.@type", "unknown type"},
		{"two members of a oneof", func(t *testing.T) string {
			return replaceOnce(t, rendered(t), "route_config:\n", "rds: {route_config_name: x}\n          route_config:\n")
		}, RuleSchema, hcm + ".route_config", `only one of the oneof "route_specifier"`},
		{"proto-validate rule inside a typed_config", func(t *testing.T) string {
			return replaceOnce(t, rendered(t), "max_request_headers_kb: 512", "max_request_headers_kb: 9000")
		}, RuleProtoValidate, hcm + ".max_request_headers_kb", "(0, 8192]"},
		{"proto-validate rule in a nested message", func(t *testing.T) string {
			return replaceOnce(t, rendered(t), "port_value: 9001", "port_value: 70000")
		}, RuleProtoValidate, "$.static_resources.clusters[1].load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value", "65535"},
		{"duplicate key", func(t *testing.T) string {
			return replaceOnce(t, rendered(t), "shadow_mode: false\n", "shadow_mode: false\n              failure_mode_allow: true\n")
		}, RuleSyntax, "$", `key "failure_mode_allow" already set`},
		{"not YAML", func(*testing.T) string { return "static_resources: [\n" }, RuleSyntax, "$", "not valid YAML"},
		{"empty file", func(*testing.T) string { return "" }, RuleSchema, "$", "empty"},
		{"a list at the top", func(*testing.T) string { return "- a\n- b\n" }, RuleSchema, "$", "expected an object"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := Validate([]byte(tt.doc(t)))
			for _, f := range fs {
				if f.Rule == tt.wantRule && f.Path == tt.wantPath && strings.Contains(f.Message, tt.wantMsg) {
					return
				}
			}
			t.Fatalf("want a %s finding at %s containing %q; got:\n%s", tt.wantRule, tt.wantPath, tt.wantMsg, FormatFindings(fs))
		})
	}
}

// A typo must not decode into a config that silently lacks the field: Decode
// returns nothing at all, so no caller can go on with a half-read file.
func TestDecodeReturnsNothingOnFindings(t *testing.T) {
	doc := replaceOnce(t, rendered(t), "shadow_mode: false\n", "shadow_mod: false\n")
	b, fs := Decode([]byte(doc))
	if b != nil || len(fs) == 0 {
		t.Fatalf("Decode = %v, %v; want nil and findings", b, fs)
	}
}

func TestDecodeAcceptsJSONAndCamelCase(t *testing.T) {
	b, err := Bootstrap(testOptions(t))
	if err != nil {
		t.Fatal(err)
	}
	y, err := MarshalYAML(b)
	if err != nil {
		t.Fatal(err)
	}
	// JSON with protobuf's lowerCamelCase names is what protojson writes by default.
	j := strings.NewReplacer("static_resources", "staticResources", `"connect_timeout"`, `"connectTimeout"`).Replace(string(mustJSON(t, y)))
	if fs := Validate([]byte(j)); len(fs) > 0 {
		t.Fatalf("JSON with camelCase names has findings:\n%s", FormatFindings(fs))
	}
}

func TestDecodeReportsEveryProblem(t *testing.T) {
	doc := rendered(t)
	doc = replaceOnce(t, doc, "encode_raw_headers: true", "encode_raw_header: true")
	doc = replaceOnce(t, doc, "merge_slashes: true", "merge_slash: true")
	fs := Validate([]byte(doc))
	if len(fs) != 2 {
		t.Fatalf("want 2 findings, got:\n%s", FormatFindings(fs))
	}
}

func mustJSON(t *testing.T, y []byte) []byte {
	t.Helper()
	j, err := yaml.YAMLToJSON(y)
	if err != nil {
		t.Fatal(err)
	}
	return j
}
