package handoff

import (
	"fmt"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

func md(s *structpb.Struct) *corev3.Metadata {
	return &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{Namespace: s}}
}

func TestRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		d    Decision
	}{
		{"agent", Decision{ID: "a", AccessAs: AccessAsAgent}},
		{"user with extra", Decision{ID: "b", AccessAs: AccessAsUser, User: "gitlab:user:x", Groups: []string{"gitlab:user"}, Extra: map[string][]string{"k": {"v1", "v2"}, "a": {"1"}}}},
		{"user without extra", Decision{ID: "c", AccessAs: AccessAsUser, User: "gitlab:user:x", Groups: []string{"gitlab:user", ""}}},
		{"separators and non-ASCII in values", Decision{ID: "d", AccessAs: AccessAsUser, User: "gitlab:user:1:2;3", Groups: []string{"12:ab;", "ü"}, Extra: map[string][]string{"k;:": {""}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := tt.d.Struct()
			if err != nil {
				t.Fatal(err)
			}
			// Through the protobuf wire, as Envoy forwards it.
			b, err := proto.Marshal(s)
			if err != nil {
				t.Fatal(err)
			}
			var back structpb.Struct
			if err := proto.Unmarshal(b, &back); err != nil {
				t.Fatal(err)
			}
			got, err := FromMetadata(md(&back))
			if err != nil || fmt.Sprint(got) != fmt.Sprint(tt.d) {
				t.Fatalf("round trip of %+v gave %+v, %v", tt.d, got, err)
			}
		})
	}
}

// TestRealSizeIsOneValue: a user with a few hundred groups is one string on the
// wire, not one protobuf Value per group (version 1).
func TestRealSizeIsOneValue(t *testing.T) {
	groups := make([]string, 243)
	for i := range groups {
		groups[i] = fmt.Sprintf("gitlab:group_role:%d:developer", 1000+i)
	}
	s, err := Decision{ID: "r", AccessAs: AccessAsUser, User: "gitlab:user:alice", Groups: groups}.Struct()
	if err != nil {
		t.Fatal(err)
	}
	inner := s.GetFields()[Key].GetStructValue().GetFields()
	if len(inner) != 4 || inner["identity"].GetStringValue() == "" {
		t.Fatalf("want version, decision_id, access_as and one identity string, got %v", inner)
	}
}

func TestEncodeRefusesInconsistentDecisions(t *testing.T) {
	for _, d := range []Decision{
		{AccessAs: ""},
		{AccessAs: "root"},
		{AccessAs: AccessAsAgent, User: "gitlab:user:x"},
		{AccessAs: AccessAsUser, Groups: []string{"g"}},
		{AccessAs: AccessAsUser, User: "u"},
	} {
		if _, err := d.Struct(); err == nil {
			t.Errorf("encoded %+v", d)
		}
	}
}

// TestDecodeIdentityRefuses: every deviation from the one canonical encoding is
// refused, so a decision ext_authz did not make cannot be read as one.
func TestDecodeIdentityRefuses(t *testing.T) {
	good := EncodeIdentity("u", []string{"g1", "g2"}, map[string][]string{"a": {"1"}, "b": {"2", "3"}})
	if good != "1:u2;2:g12:g22;1:a1;1:11:b2;1:21:3" {
		t.Fatalf("the encoding changed: %q (bump Version if that is meant)", good)
	}
	tests := []struct {
		name, enc, want string
	}{
		{"empty", "", "no ':'-terminated number"},
		{"trailing data", good + "x", "trailing data"},
		{"trailing count", good + "0;", "trailing data"},
		{"truncated", good[:len(good)-1], "runs past the end"},
		{"no groups count", "1:u", "no ';'-terminated number"},
		{"no extra count", "1:u1;1:g", "no ';'-terminated number"},
		{"leading zero length", "01:u1;1:g0;", "not a canonical number"},
		{"leading zero count", "1:u01;1:g0;", "not a canonical number"},
		{"signed length", "+1:u1;1:g0;", "not a canonical number"},
		{"negative count", "1:u-1;0;", "not a canonical number"},
		{"empty number", ":u1;1:g0;", "not a canonical number"},
		{"huge length", "99999999:u", "not a canonical number"},
		{"length past end", "9:u1;1:g0;", "runs past the end"},
		{"count past end", "1:u999;1:g0;", "cannot fit"},
		{"group count too high", "1:u2;1:g0;", "no ':'-terminated number"},
		{"group count too low", "1:u1;1:g1:h0;", "not a canonical number"},
		{"unsorted extra keys", "1:u1;1:g2;1:b0;1:a0;", "is not after"},
		{"repeated extra key", "1:u1;1:g2;1:a0;1:a0;", "is not after"},
		{"not UTF-8", "1:\xff1;1:g0;", "not UTF-8"},
		{"split UTF-8", "1:\xc3\xbc1;1:g0;", "not UTF-8"},
		{"too large", strings.Repeat("x", MaxIdentityBytes+1), "over the"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, _, err := DecodeIdentity(tt.enc)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("DecodeIdentity(%q) = %v, want an error containing %q", tt.enc, err, tt.want)
			}
		})
	}
}

// TestFromMetadataRefuses: the decoder fails closed on every malformed decision.
func TestFromMetadataRefuses(t *testing.T) {
	good, err := Decision{ID: "r", AccessAs: AccessAsUser, User: "u", Groups: []string{"g"}}.Struct()
	if err != nil {
		t.Fatal(err)
	}
	with := func(field string, v *structpb.Value) *corev3.Metadata {
		fields := map[string]*structpb.Value{}
		for k, x := range good.GetFields()[Key].GetStructValue().GetFields() {
			fields[k] = x
		}
		if v == nil {
			delete(fields, field)
		} else {
			fields[field] = v
		}
		return md(&structpb.Struct{Fields: map[string]*structpb.Value{Key: structpb.NewStructValue(&structpb.Struct{Fields: fields})}})
	}
	tests := []struct {
		name, want string
		md         *corev3.Metadata
	}{
		{"no metadata", "no envoy.filters.http.ext_authz metadata", nil},
		{"no kubegate key", "no \"kubegate\" decision", md(&structpb.Struct{})},
		{"not a struct", "not a struct", md(&structpb.Struct{Fields: map[string]*structpb.Value{Key: structpb.NewStringValue("allow")}})},
		{"no version", "no version", with("version", nil)},
		{"version 1", "is not 2", with("version", structpb.NewNumberValue(1))},
		{"future version", "is not 2", with("version", structpb.NewNumberValue(3))},
		{"version as string", "is not 2", with("version", structpb.NewStringValue("2"))},
		{"unknown access mode", "neither agent nor user", with("access_as", structpb.NewStringValue("admin"))},
		{"user mode without identity", "needs a user and groups", with("identity", nil)},
		{"identity not a string", "not a string", with("identity", structpb.NewNumberValue(1))},
		{"identity malformed", "trailing data", with("identity", structpb.NewStringValue("1:u1;1:g0;x"))},
		{"identity without groups", "needs a user and groups", with("identity", structpb.NewStringValue("1:u0;0;"))},
		{"identity without user", "needs a user and groups", with("identity", structpb.NewStringValue("0:1;1:g0;"))},
		{"version 1 groups field", "unknown field", with("groups", structpb.NewListValue(&structpb.ListValue{}))},
		{"unknown field", "unknown field", with("allow_all", structpb.NewBoolValue(true))},
		{"agent mode with identity", "agent-mode decision carries no identity", with("access_as", structpb.NewStringValue(AccessAsAgent))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := FromMetadata(tt.md)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("FromMetadata gave %+v, %v; want an error containing %q", d, err, tt.want)
			}
		})
	}
}

// FuzzDecodeIdentity: whatever the decoder accepts is exactly the canonical
// encoding of what it returned, so no two strings mean the same identity and
// nothing is read past or beside the encoded parts.
func FuzzDecodeIdentity(f *testing.F) {
	f.Add(EncodeIdentity("u", []string{"g1", "g2"}, map[string][]string{"a": {"1"}, "b": {"2", "3"}}))
	f.Add(EncodeIdentity("gitlab:user:alice", []string{"gitlab:user"}, nil))
	f.Add("1:u1;1:g0;x")
	f.Add("0:0;0;")
	f.Fuzz(func(t *testing.T, enc string) {
		user, groups, extra, err := DecodeIdentity(enc)
		if err != nil {
			return
		}
		if again := EncodeIdentity(user, groups, extra); again != enc {
			t.Fatalf("decoded %q as (%q, %q, %q), which encodes as %q", enc, user, groups, extra, again)
		}
	})
}

// TestEncodeIdentityLength: the encoded identity is sized exactly (it is cached for
// the identity's life, so spare capacity would be kept with it), for lengths and
// counts around every change in their number of digits.
func TestEncodeIdentityLength(t *testing.T) {
	for _, n := range []int{0, 1, 9, 10, 11, 99, 100, 101, 1000} {
		s := strings.Repeat("g", n)
		groups := make([]string, n)
		for i := range groups {
			groups[i] = s[:i%12]
		}
		extra := map[string][]string{s: {s, ""}, "k": nil}
		enc := EncodeIdentity(s, groups, extra)
		want := strLen(s) + countLen(n) + countLen(2) + strLen(s) + countLen(2) + strLen(s) + strLen("") + strLen("k") + countLen(0)
		for _, g := range groups {
			want += strLen(g)
		}
		if len(enc) != want {
			t.Fatalf("n=%d: %d bytes, the format's count is %d", n, len(enc), want)
		}
		if _, _, _, err := DecodeIdentity(enc); err != nil {
			t.Fatalf("n=%d: %v", n, err)
		}
	}
}
