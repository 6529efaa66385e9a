package handoff

import (
	"fmt"
	"maps"
	"runtime"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

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
		{"groups sharing prefixes", Decision{ID: "e", AccessAs: AccessAsUser, User: "gitlab:user:x", Groups: []string{
			"gitlab:user", "gitlab:project_role:1000:guest", "gitlab:project_role:1000:planner", "gitlab:project_role:1000:reporter",
			"gitlab:group_role:1037:guest", "gitlab:group_role:1037:planner", "gitlab:project_role:1074:guest",
		}}},
		// ü is C3 BC and ö C3 B6: their common byte prefix ends inside a rune.
		{"common byte prefix ending inside a rune", Decision{ID: "f", AccessAs: AccessAsUser, User: "gitlab:user:x", Groups: []string{"gitlab:ü", "gitlab:ö", "gitlab:öü", "ö"}}},
		{"duplicate consecutive groups", Decision{ID: "g", AccessAs: AccessAsUser, User: "gitlab:user:x", Groups: []string{"gitlab:user", "gitlab:user", "gitlab:user", "x", "x"}}},
		{"group a prefix of the previous one", Decision{ID: "h", AccessAs: AccessAsUser, User: "gitlab:user:x", Groups: []string{"gitlab:project_role:1:guest", "gitlab:project_role:1", "gitlab", "g", "gitlab:"}}},
		{"empty groups", Decision{ID: "i", AccessAs: AccessAsUser, User: "gitlab:user:x", Groups: []string{"", "", "gitlab:user", "", "gitlab:user", ""}}},
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
// wire, not one protobuf Value per group (version 1), and front coding keeps it
// under half the bytes of the groups written whole (version 2).
func TestRealSizeIsOneValue(t *testing.T) {
	groups := realSizeGroups()
	s, err := Decision{ID: "r", AccessAs: AccessAsUser, User: "gitlab:user:alice", Groups: groups}.Struct()
	if err != nil {
		t.Fatal(err)
	}
	inner := s.GetFields()[Key].GetStructValue().GetFields()
	if len(inner) != 4 || inner["identity"].GetStringValue() == "" {
		t.Fatalf("want version, decision_id, access_as and one identity string, got %v", inner)
	}
	whole := 0
	for _, g := range groups {
		whole += strLen(g)
	}
	if got := len(inner["identity"].GetStringValue()); got > whole/2 {
		t.Fatalf("the identity is %d bytes, the groups written whole %d: front coding saved less than half", got, whole)
	}
}

// realSizeGroups has the shape policy/builtin.go gives test/realsize's user under
// test: gitlab:user, then the role strings of 50 projects and groups, in order.
func realSizeGroups() []string {
	groups := []string{"gitlab:user"}
	roles := []string{"guest", "planner", "reporter", "developer", "maintainer", "owner"}
	for i := 0; len(groups) < 243; i++ {
		kind := "project"
		if i%2 == 1 {
			kind = "group"
		}
		for _, r := range roles[:4+i%3] {
			if len(groups) < 243 {
				groups = append(groups, fmt.Sprintf("gitlab:%s_role:%d:%s", kind, 1000+37*i, r))
			}
		}
	}
	return groups
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
	if good != "1:u2;0;2:g11;1:22;1:a1;1:11:b2;1:21:3" {
		t.Fatalf("the encoding changed: %q (bump Version if that is meant)", good)
	}
	// A first group of 1,000 bytes, then groups each repeating all of it.
	expanding := func(n int) string {
		return "1:u" + fmt.Sprint(n+1) + ";0;1000:" + strings.Repeat("g", 1000) + strings.Repeat("1000;0:", n) + "0;"
	}
	tests := []struct {
		name, enc, want string
	}{
		{"empty", "", "no ':'-terminated number"},
		{"trailing data", good + "x", "trailing data"},
		{"trailing count", good + "0;", "trailing data"},
		{"truncated", good[:len(good)-1], "runs past the end"},
		{"no groups count", "1:u", "no ';'-terminated number"},
		{"no extra count", "1:u1;0;1:g", "no ';'-terminated number"},
		{"no shared count", "1:u1;1:g0;", "not a canonical number"},
		{"leading zero length", "01:u1;0;1:g0;", "not a canonical number"},
		{"leading zero count", "1:u01;0;1:g0;", "not a canonical number"},
		{"leading zero shared", "1:u2;0;2:g101;1:20;", "not a canonical number"},
		{"signed length", "+1:u1;0;1:g0;", "not a canonical number"},
		{"negative count", "1:u-1;0;", "not a canonical number"},
		{"negative shared", "1:u2;0;2:g1-1;1:20;", "not a canonical number"},
		{"empty number", ":u1;0;1:g0;", "not a canonical number"},
		{"huge length", "99999999:u", "not a canonical number"},
		{"length past end", "99:u1;0;1:g0;", "runs past the end"},
		{"suffix past end", "1:u1;0;9:g0;", "runs past the end"},
		{"count past end", "1:u999;0;1:g0;", "cannot fit"},
		{"group count over what the rest holds", "1:u2;0;0:", "cannot fit"},
		{"group count too high", "1:u3;0;1:g1;1:h0;", "no ':'-terminated number"},
		{"group count too low", "1:u1;0;1:g0;1:h0;", "trailing data"},
		{"first group sharing", "1:u1;1;1:g0;", "group 0 shares 1 bytes with the previous group, which has 0"},
		{"shared too long", "1:u2;0;1:g2;1:h0;", "group 1 shares 2 bytes with the previous group, which has 1"},
		{"shared too long after a shorter group", "1:u3;0;3:abc1;0:2;0:0;", "group 2 shares 2 bytes with the previous group, which has 1"},
		{"shared not maximal", "1:u2;0;8:gitlab:a0;8:gitlab:b0;", "group 1 shares 0 bytes with the previous group, not the longest prefix"},
		{"shared not maximal by one", "1:u2;0;8:gitlab:a6;2::b0;", "group 1 shares 6 bytes with the previous group, not the longest prefix"},
		{"shared not maximal by one rune", "1:u2;0;9:gitlab:ü7;3:üx0;", "group 1 shares 7 bytes with the previous group, not the longest prefix of whole runes"},
		{"shared not maximal, the previous group's suffix", "1:u3;0;3:abc1;1:x1;1:x0;", "group 2 shares 1 bytes with the previous group, not the longest prefix"},
		{"duplicate group not fully shared", "1:u2;0;1:g0;1:g0;", "group 1 shares 0 bytes with the previous group, not the longest prefix"},
		{"decoded size over the bound from a tiny input", expanding(1100), "decode to more than the 1048576-byte bound"},
		{"100,000 groups sharing 1,000 bytes each", expanding(100_000), "decode to more than the 1048576-byte bound"},
		{"unsorted extra keys", "1:u1;0;1:g2;1:b0;1:a0;", "is not after"},
		{"repeated extra key", "1:u1;0;1:g2;1:a0;1:a0;", "is not after"},
		{"user not UTF-8", "1:\xff1;0;1:g0;", "user is not UTF-8"},
		{"user split UTF-8", "1:\xc3\xbc1;0;1:g0;", "user is not UTF-8"},
		{"group not UTF-8", "1:u1;0;1:\xff0;", "group suffix is not UTF-8"},
		// The first group is ü (C3 BC); the second keeps its first byte, then ends
		// or goes on: a shared prefix ends between whole runes.
		{"reconstructed group not UTF-8", "1:u2;0;2:\xc3\xbc1;0:0;", "group 1 is not UTF-8 (its shared prefix ends inside a rune)"},
		{"reconstructed group splitting a rune", "1:u2;0;2:\xc3\xbc1;1:x0;", "group 1 is not UTF-8 (its shared prefix ends inside a rune)"},
		{"suffix starting inside a rune", "1:u2;0;2:\xc3\xbc1;1:\xa40;", "group suffix is not UTF-8"},
		{"extra value not UTF-8", "1:u1;0;1:g1;1:k1;1:\xff", "extra value is not UTF-8"},
		{"version 2 form", "1:u2;2:g12:g22;1:a1;1:11:b2;1:21:3", "not a canonical number"},
		{"version 2 form, one group", "17:gitlab:user:alice1;11:gitlab:user0;", "not a canonical number"},
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

// TestEncodeIdentityFrontCoding pins the group encoding: the bytes shared with the
// previous group (the longest common prefix of whole runes), then the rest.
func TestEncodeIdentityFrontCoding(t *testing.T) {
	tests := []struct {
		name   string
		groups []string
		want   string
	}{
		{"roles of one project", []string{"gitlab:project_role:1:guest", "gitlab:project_role:1:planner"}, "0;27:gitlab:project_role:1:guest22;7:planner"},
		{"nothing shared", []string{"gitlab:user", "x"}, "0;11:gitlab:user0;1:x"},
		{"duplicate", []string{"g", "g"}, "0;1:g1;0:"},
		{"a prefix of the previous group", []string{"gitlab:user", "gitlab"}, "0;11:gitlab:user6;0:"},
		{"extending the previous group", []string{"gitlab", "gitlab:user"}, "0;6:gitlab6;5::user"},
		{"empty groups", []string{"", "a", ""}, "0;0:0;1:a0;0:"},
		// ü is C3 BC and ö C3 B6: the shared prefix stops before the rune.
		{"common bytes inside a rune", []string{"gitlab:ü", "gitlab:ö"}, "0;9:gitlab:ü7;2:ö"},
		{"a common rune", []string{"gitlab:ü", "gitlab:üx"}, "0;9:gitlab:ü9;1:x"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			enc := EncodeIdentity("u", tt.groups, nil)
			if want := "1:u" + fmt.Sprint(len(tt.groups)) + ";" + tt.want + "0;"; enc != want {
				t.Fatalf("encoded %q as %q, want %q", tt.groups, enc, want)
			}
			if !utf8.ValidString(enc) {
				t.Fatalf("%q is not UTF-8: it cannot travel as a protobuf string", enc)
			}
			if _, groups, _, err := DecodeIdentity(enc); err != nil || !slices.Equal(groups, tt.groups) {
				t.Fatalf("%q decodes as %q, %v", enc, groups, err)
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
		{"version 1", "is not 3: kubegate authz and extproc must be the same kubegate version", with("version", structpb.NewNumberValue(1))},
		{"version 2", "is not 3: kubegate authz and extproc must be the same kubegate version", with("version", structpb.NewNumberValue(2))},
		{"future version", "is not 3", with("version", structpb.NewNumberValue(4))},
		{"version as string", "is not 3", with("version", structpb.NewStringValue("3"))},
		{"unknown access mode", "neither agent nor user", with("access_as", structpb.NewStringValue("admin"))},
		{"user mode without identity", "needs a user and groups", with("identity", nil)},
		{"identity not a string", "not a string", with("identity", structpb.NewNumberValue(1))},
		{"identity malformed", "trailing data", with("identity", structpb.NewStringValue("1:u1;0;1:g0;x"))},
		{"identity in the version 2 form", "not a canonical number", with("identity", structpb.NewStringValue("1:u1;1:g0;"))},
		{"identity without groups", "needs a user and groups", with("identity", structpb.NewStringValue("1:u0;0;"))},
		{"identity without user", "needs a user and groups", with("identity", structpb.NewStringValue("0:1;0;1:g0;"))},
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
	f.Add(EncodeIdentity("gitlab:user:x", realSizeGroups()[:20], nil))
	f.Add(EncodeIdentity("u", []string{"gitlab:ü", "gitlab:ö", "gitlab:ö", "gitlab", ""}, nil))
	f.Add("1:u2;0;8:gitlab:a6;2::b0;")
	f.Add("1:u2;0;2:\xc3\xbc1;1:x0;")
	f.Add("1:u1;0;1:g0;x")
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

// FuzzEncodeIdentity: any identity encodes to a string that decodes back to exactly
// it when all its text is UTF-8 (and the string is UTF-8 itself, to travel as a
// protobuf string: a shared prefix never ends inside a rune), and is refused
// otherwise. The groups come from groupText split at "|", the extra's one key's
// values from extraText.
func FuzzEncodeIdentity(f *testing.F) {
	f.Add("gitlab:user:alice", strings.Join(realSizeGroups()[:30], "|"), "agent.gitlab.com/id", "1|2")
	f.Add("u", "gitlab:ü|gitlab:ö|gitlab:ö||gitlab|g", "", "")
	f.Add("u", "a|ab|a|\xc3\xbc|\xc3\xa4|\xc3", "k", "")
	f.Fuzz(func(t *testing.T, user, groupText, key, extraText string) {
		groups := strings.Split(groupText, "|")
		extra := map[string][]string{key: strings.Split(extraText, "|")}
		if key == "" {
			extra = nil
		}
		text := append([]string{user, key}, groups...)
		text = append(text, extra[key]...)
		valid := true
		for _, s := range text {
			valid = valid && utf8.ValidString(s)
		}
		enc := EncodeIdentity(user, groups, extra)
		if valid && !utf8.ValidString(enc) {
			t.Fatalf("(%q, %q, %q) encodes as %q, not UTF-8: it cannot travel as a protobuf string", user, groups, extra, enc)
		}
		gotUser, gotGroups, gotExtra, err := DecodeIdentity(enc)
		switch {
		case !valid && err == nil:
			t.Fatalf("%q (text not UTF-8) decoded as (%q, %q, %q)", enc, gotUser, gotGroups, gotExtra)
		case !valid:
			return
		case err != nil:
			t.Fatalf("(%q, %q, %q) encodes as %q, which does not decode: %v", user, groups, extra, enc, err)
		case gotUser != user || !slices.Equal(gotGroups, groups) || !maps.EqualFunc(gotExtra, extra, slices.Equal):
			t.Fatalf("(%q, %q, %q) encodes as %q, which decodes as (%q, %q, %q)", user, groups, extra, enc, gotUser, gotGroups, gotExtra)
		}
	})
}

// TestDecodedGroupsAreCompact: decoded groups live in one buffer, so a decoded
// identity without extras is two allocations (the slice and that buffer) whatever
// its number of groups; a decoded size over the bound allocates nothing like it.
func TestDecodedGroupsAreCompact(t *testing.T) {
	for _, n := range []int{1, 10, 243} {
		enc := EncodeIdentity("gitlab:user:alice", realSizeGroups()[:n], nil)
		allocs := testing.AllocsPerRun(20, func() {
			if _, _, _, err := DecodeIdentity(enc); err != nil {
				t.Fatal(err)
			}
		})
		if allocs != 2 {
			t.Errorf("%d groups: %v allocations per decode, want 2 (the group slice and one buffer)", n, allocs)
		}
	}
	// 20,001 groups of 1,000 bytes from ~150 KB of input: refused while summing.
	enc := "1:u20001;0;1000:" + strings.Repeat("g", 1000) + strings.Repeat("1000;0:", 20000) + "0;"
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, _, _, err := DecodeIdentity(enc)
	runtime.ReadMemStats(&after)
	if err == nil {
		t.Fatal("a 20 MB decoded identity was accepted")
	}
	if grown := after.TotalAlloc - before.TotalAlloc; grown > MaxIdentityBytes/4 {
		t.Fatalf("refusing it allocated %d bytes", grown)
	}
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
		for i, g := range groups {
			// Each group is a prefix of s: it shares all of the previous one's
			// bytes or all of its own (0 for the first).
			shared := 0
			if i > 0 {
				shared = min(len(groups[i-1]), len(g))
			}
			want += countLen(shared) + strLen(g[shared:])
		}
		if len(enc) != want {
			t.Fatalf("n=%d: %d bytes, the format's count is %d", n, len(enc), want)
		}
		if _, _, _, err := DecodeIdentity(enc); err != nil {
			t.Fatalf("n=%d: %v", n, err)
		}
	}
}
