package handoff

import (
	"fmt"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/structpb"
)

func TestRoundTrip(t *testing.T) {
	for _, d := range []Decision{
		{ID: "a", AccessAs: AccessAsAgent},
		{ID: "b", AccessAs: AccessAsUser, User: "gitlab:user:x", Groups: []string{"gitlab:user"}, Extra: map[string][]string{"k": {"v1", "v2"}}},
	} {
		s, err := d.Struct()
		if err != nil {
			t.Fatal(err)
		}
		got, err := FromMetadata(&corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{Namespace: s}})
		if err != nil || fmt.Sprint(got) != fmt.Sprint(d) {
			t.Fatalf("round trip of %+v gave %+v, %v", d, got, err)
		}
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
