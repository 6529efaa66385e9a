package extproc

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"kubegate.dev/kubegate/contract/handoff"
)

// userOf is a user-mode decision for name with n groups of its own.
func userOf(name string, n int) handoff.Decision {
	d := userDecision
	d.User = "gitlab:user:" + name
	d.Groups = []string{"gitlab:user"}
	for i := range n {
		d.Groups = append(d.Groups, fmt.Sprintf("gitlab:project_role:%d:%s", i, name))
	}
	d.Extra = map[string][]string{"agent.gitlab.com/username": {name}}
	return d
}

// wantMutation is the header mutation the processor must answer d with, built
// afresh (never from a kept answer).
func wantMutation(d handoff.Decision, removes ...string) *extprocv3.HeaderMutation {
	return mutation(removes, d)
}

// TestPreEncodedAnswersAreTheMessages: an answer kept and sent pre-encoded is,
// byte for byte after decoding, the message a server without the codec sends, on
// the first request of an identity and on later ones.
func TestPreEncodedAnswersAreTheMessages(t *testing.T) {
	cases := []struct {
		name    string
		d       handoff.Decision
		headers []string
	}{
		{"user mode", userDecision, []string{"impersonate-user", "gitlab:user:alice"}},
		{"user mode, client impersonation headers", userDecision, []string{"Impersonate-User", "gitlab:user:alice", "impersonate-group", "system:masters", "Impersonate-Extra-Scopes", "all"}},
		{"real size, 243 groups", realSizeDecision(), []string{"impersonate-user", "gitlab:user:alice"}},
		{"agent mode", handoff.Decision{ID: "r", AccessAs: "agent"}, []string{"impersonate-group", "admin"}},
	}
	plainSrv, err := NewServer(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	encSrv, err := NewServer(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	plain, enc := openStream(t, serve(t, plainSrv, false)), openStream(t, serve(t, encSrv, true))
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req := headersRequest(metadata(t, tc.d), append([]string{":path", "/api/v1/pods"}, tc.headers...)...)
			for i := range 3 { // the first builds the answer, the others reuse it
				a, b := roundTrip(t, plain, req), roundTrip(t, enc, req)
				if a.GetRequestHeaders() == nil {
					t.Fatalf("request %d: not continued: %v", i, a)
				}
				if !proto.Equal(a, b) {
					t.Fatalf("request %d: pre-encoded answer differs:\n%v\nplain:\n%v", i, b, a)
				}
			}
		})
	}
}

// TestAnswersNeverCrossIdentities: from the attacker's side of a shared cache.
// Concurrent users each get exactly their own impersonation headers; a request
// naming another user in Impersonate-User is refused even when the identity it
// carries has an answer kept; extra client impersonation headers are removed even
// when an answer without them is kept.
func TestAnswersNeverCrossIdentities(t *testing.T) {
	srv, err := NewServer(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := serve(t, srv, true)
	users := []handoff.Decision{userOf("alice", 40), userOf("bob", 3), userOf("carol", 0), userOf("alice2", 40)}
	reqs := make([]*extprocv3.ProcessingRequest, len(users))
	for i, d := range users {
		reqs[i] = headersRequest(metadata(t, d), "impersonate-user", d.User)
	}
	var wg sync.WaitGroup
	errs := make(chan string, 100)
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := c.Process(t.Context())
			if err != nil {
				errs <- err.Error()
				return
			}
			for i := range 25 {
				d := users[(g+i)%len(users)]
				if err := s.Send(reqs[(g+i)%len(users)]); err != nil {
					errs <- err.Error()
					return
				}
				resp, err := s.Recv()
				if err != nil {
					errs <- err.Error()
					return
				}
				if got, want := resp.GetRequestHeaders().GetResponse().GetHeaderMutation(), wantMutation(d, "impersonate-user"); !proto.Equal(got, want) {
					errs <- fmt.Sprintf("%s got another answer:\n%v", d.User, got)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}

	alice := users[0]
	t.Run("alice's identity with bob's Impersonate-User", func(t *testing.T) {
		resp := roundTrip(t, openStream(t, c), headersRequest(metadata(t, alice), "impersonate-user", users[1].User))
		if ir := resp.GetImmediateResponse(); ir == nil || ir.GetStatus().GetCode() != http.StatusForbidden || ir.GetDetails() != "kubegate_identity_mismatch" {
			t.Fatalf("want a 403 identity_mismatch, got %v", resp)
		}
	})
	t.Run("alice's identity with a client Impersonate-Group", func(t *testing.T) {
		resp := roundTrip(t, openStream(t, c), headersRequest(metadata(t, alice), "impersonate-user", alice.User, "Impersonate-Group", "system:masters"))
		got := resp.GetRequestHeaders().GetResponse().GetHeaderMutation()
		if want := wantMutation(alice, "impersonate-user", "impersonate-group"); !proto.Equal(got, want) {
			t.Fatalf("got %v, want %v", got, want)
		}
	})
}

// TestMalformedIdentityIsNeverKept: an identity that does not decode is refused on
// every request, and nothing is kept for it.
func TestMalformedIdentityIsNeverKept(t *testing.T) {
	srv, err := NewServer(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	s := openStream(t, serve(t, srv, true))
	good := handoff.EncodeIdentity("gitlab:user:alice", []string{"gitlab:user"}, nil)
	for _, enc := range []string{
		good + "1:x", good[:len(good)-1], strings.Replace(good, "17:", "017:", 1),
		"17:gitlab:user:alice1;11:gitlab:user0;",                   // the version 2 form
		"17:gitlab:user:alice2;0;11:gitlab:user0;11:gitlab:user0;", // a shared prefix not the longest
	} {
		md, _ := handoff.Encode("r", handoff.AccessAsUser, handoff.NewIdentity("gitlab:user:alice", []string{"gitlab:user"}, nil))
		md.Fields[handoff.Key].GetStructValue().Fields["identity"] = structpb.NewStringValue(enc)
		for i := range 2 {
			resp := roundTrip(t, s, headersRequest(metadataOf(md), "impersonate-user", "gitlab:user:alice"))
			if ir := resp.GetImmediateResponse(); ir == nil || ir.GetDetails() != "kubegate_no_decision" {
				t.Fatalf("%q, request %d: want a no_decision denial, got %v", enc, i, resp)
			}
		}
	}
	if n := srv.responses.EstimatedSize(); n != 0 {
		t.Fatalf("%d answers kept for malformed identities", n)
	}
}

// TestResponseCacheIsBoundedByBytes: at its bound the cache evicts, it never grows
// past it; an evicted identity is answered again, correctly. A bound below the
// minimum is refused with the minimum in the message.
func TestResponseCacheIsBoundedByBytes(t *testing.T) {
	if _, err := NewServer(nil, nil, WithResponseCacheBytes(1000)); err == nil || !strings.Contains(err.Error(), "below the minimum of 1048576") {
		t.Fatalf("a 1000-byte bound: %v", err)
	}
	srv, err := NewServer(nil, nil, WithResponseCacheBytes(MinResponseCacheBytes))
	if err != nil {
		t.Fatal(err)
	}
	srv.ServerOptions()
	ctx := context.Background()
	const identities = 150 // each ~25 KB at real size: ~3.7 MB in all, over three times the bound
	first := realSizeDecision()
	for i := range identities {
		d := realSizeDecision()
		d.User = fmt.Sprintf("gitlab:user:u%d", i)
		if i == 0 {
			first = d
		}
		if resp, ok := srv.handle(ctx, headersRequest(metadata(t, d), "impersonate-user", d.User)).(*encodedResponse); !ok {
			t.Fatalf("identity %d: not a pre-encoded answer: %v", i, resp)
		}
	}
	srv.responses.CleanUp()
	if w := srv.responses.WeightedSize(); w > MinResponseCacheBytes {
		t.Fatalf("the cache weighs %d bytes, over its bound of %d", w, MinResponseCacheBytes)
	}
	if n := srv.responses.EstimatedSize(); n >= identities {
		t.Fatalf("%d answers kept of %d: nothing was evicted", n, identities)
	}
	enc, ok := srv.handle(ctx, headersRequest(metadata(t, first), "impersonate-user", first.User)).(*encodedResponse)
	if !ok {
		t.Fatal("the first identity, asked again, got no pre-encoded answer")
	}
	var resp extprocv3.ProcessingResponse
	if err := proto.Unmarshal(enc.bytes, &resp); err != nil {
		t.Fatal(err)
	}
	if got, want := resp.GetRequestHeaders().GetResponse().GetHeaderMutation(), wantMutation(first, "impersonate-user"); !proto.Equal(got, want) {
		t.Fatalf("the first identity, asked again: %v", got)
	}
}

func metadataOf(s *structpb.Struct) *corev3.Metadata {
	return &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{handoff.Namespace: s}}
}
