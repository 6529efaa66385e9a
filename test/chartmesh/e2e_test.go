package chartmesh

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"kubegate.dev/kubegate/test/stack"
)

type upstreamLog struct {
	mu   sync.Mutex
	reqs []stack.UpstreamRequest
}

func (u *upstreamLog) add(r stack.UpstreamRequest) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.reqs = append(u.reqs, r)
}

func (u *upstreamLog) count() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.reqs)
}

// lastAuthorization is the Authorization lines of the last request forwarded.
func (u *upstreamLog) lastAuthorization() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.reqs) == 0 {
		return nil
	}
	var out []string
	for _, h := range u.reqs[len(u.reqs)-1].Header {
		if h.Name == "authorization" {
			out = append(out, h.Value)
		}
	}
	return out
}

// TestIstioFragmentsCarryKubectl runs what mesh.mode=istio hands Istio's proxy
// (envoy.MeshResources, the source of the chart's files/mesh) in the test data
// plane, with kubegate authz and extproc as processes, in front of the real API
// server: alice is impersonated with her groups, the agent token comes from the
// kubelet-style token directory and replaces alice's credential, a rotated token
// is used without a restart, and with authz down nothing reaches the API server.
func TestIstioFragmentsCarryKubectl(t *testing.T) {
	if testing.Short() {
		t.Skip("starts an API server and kubegate's services")
	}
	var ups upstreamLog
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	s, err := stack.Start(ctx, stack.Options{Mesh: true, Observe: ups.add, Logf: t.Logf})
	if err != nil {
		t.Fatalf("starting the stack: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Errorf("stopping the stack: %v", err)
		}
	})
	if s.XDS != nil {
		t.Fatal("the mesh stack runs kubegate xds; the mesh proxy reads the token itself")
	}
	alice, err := kubernetes.NewForConfig(&rest.Config{
		Host:            s.GatewayURL,
		BearerToken:     "pat:1:kg-sandbox-alice-token",
		TLSClientConfig: rest.TLSClientConfig{CAFile: s.GatewayCA},
	})
	if err != nil {
		t.Fatal(err)
	}
	self := func() (*authnv1.SelfSubjectReview, error) {
		return alice.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authnv1.SelfSubjectReview{}, metav1.CreateOptions{})
	}

	r, err := self()
	if err != nil {
		t.Fatalf("alice through the mesh fragments: %v", err)
	}
	if u := r.Status.UserInfo; u.Username != "gitlab:user:alice" || !strings.Contains(strings.Join(u.Groups, ","), "gitlab:project_role:1:maintainer") {
		t.Fatalf("the API server saw %q with groups %v; want alice impersonated with her project roles", u.Username, u.Groups)
	}
	if got := ups.lastAuthorization(); len(got) != 1 || got[0] != "Bearer "+s.Cluster.AgentTokens[0] {
		t.Fatalf("authorization toward the API server %q; want only the agent token from the token directory", got)
	}

	if err := s.RotateMeshToken(s.Cluster.AgentTokens[1]); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second) // guards against a hang only
	for {
		if _, err := self(); err != nil {
			t.Fatalf("after the token rotation: %v", err)
		}
		if got := ups.lastAuthorization(); len(got) == 1 && got[0] == "Bearer "+s.Cluster.AgentTokens[1] {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the rotated agent token never reached the API server; last authorization %q", ups.lastAuthorization())
		}
		time.Sleep(20 * time.Millisecond)
	}

	s.Authz.Stop()
	before := ups.count()
	if _, err := self(); err == nil {
		t.Fatal("with kubegate authz down the request succeeded")
	}
	if n := ups.count() - before; n != 0 {
		t.Fatalf("with kubegate authz down %d requests reached the API server", n)
	}
}
