package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"
)

const (
	// ImpersonatorManifest is the shipped ClusterRole, relative to the repository root.
	ImpersonatorManifest = "deploy/kubernetes/impersonation-clusterrole.yaml"
	// ImpersonatorClusterRole is the name of the ClusterRole in ImpersonatorManifest.
	ImpersonatorClusterRole = "kubegate-impersonator"
	// AgentBinding binds ImpersonatorClusterRole to AgentUser.
	AgentBinding = "kubegate-agent-impersonator"
)

// readImpersonatorManifest reads the shipped ClusterRole. It is read from the
// repository, not embedded, so that the test bed always applies the file operators
// install.
func readImpersonatorManifest(moduleRoot string) ([]byte, error) {
	if moduleRoot == "" {
		return nil, fmt.Errorf("cannot find the kubegate repository (for %s): run from inside it or set Options.ModuleRoot",
			ImpersonatorManifest)
	}
	data, err := os.ReadFile(filepath.Join(moduleRoot, ImpersonatorManifest))
	if err != nil {
		return nil, fmt.Errorf("reading the shipped impersonation ClusterRole: %w", err)
	}
	return data, nil
}

// ParseImpersonatorClusterRole decodes the shipped manifest strictly (an unknown or
// misspelt field is an error, not silently dropped) and checks it is the ClusterRole
// the agent binding refers to.
func ParseImpersonatorClusterRole(data []byte) (*rbacv1.ClusterRole, error) {
	var role rbacv1.ClusterRole
	if err := yaml.UnmarshalStrict(data, &role); err != nil {
		return nil, fmt.Errorf("%s: %w", ImpersonatorManifest, err)
	}
	if role.APIVersion != rbacv1.SchemeGroupVersion.String() || role.Kind != "ClusterRole" {
		return nil, fmt.Errorf("%s: want a %s ClusterRole, got %s %s", ImpersonatorManifest,
			rbacv1.SchemeGroupVersion, role.APIVersion, role.Kind)
	}
	if role.Name != ImpersonatorClusterRole {
		return nil, fmt.Errorf("%s: want ClusterRole %q, got %q", ImpersonatorManifest, ImpersonatorClusterRole, role.Name)
	}
	return &role, nil
}

// applyAgentRBAC creates the shipped ClusterRole and a ClusterRoleBinding to
// AgentUser, then waits until the API server's RBAC authorizer (fed by informers)
// actually lets the agent impersonate, so the first test request does not race it.
func (c *Cluster) applyAgentRBAC(ctx context.Context, manifest []byte, timeout time.Duration) error {
	role, err := ParseImpersonatorClusterRole(manifest)
	if err != nil {
		return err
	}
	if len(role.Rules) == 0 {
		return fmt.Errorf("%s has no rules", ImpersonatorManifest)
	}
	admin, err := kubernetes.NewForConfig(c.AdminConfig())
	if err != nil {
		return err
	}
	if _, err := admin.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("applying %s: %w", ImpersonatorManifest, err)
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: AgentBinding},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: ImpersonatorClusterRole},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: c.AgentUser}},
	}
	if _, err := admin.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("binding %s to %s: %w", ImpersonatorClusterRole, c.AgentUser, err)
	}

	// Ask as the agent about the role's first rule: allowed means the authorizer has
	// seen both the role and the binding.
	agent, err := kubernetes.NewForConfig(c.AgentConfig())
	if err != nil {
		return err
	}
	r := role.Rules[0]
	if len(r.Verbs) == 0 || len(r.Resources) == 0 || len(r.APIGroups) == 0 {
		return fmt.Errorf("%s: its first rule needs a verb, a resource and an API group", ImpersonatorManifest)
	}
	resource, subresource, _ := strings.Cut(r.Resources[0], "/") // userextras/<key> is resource/subresource
	review := &authorizationv1.SelfSubjectAccessReview{Spec: authorizationv1.SelfSubjectAccessReviewSpec{
		ResourceAttributes: &authorizationv1.ResourceAttributes{
			Verb: r.Verbs[0], Group: r.APIGroups[0], Resource: resource, Subresource: subresource,
		},
	}}
	deadline := time.Now().Add(timeout)
	for {
		got, err := agent.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, review, metav1.CreateOptions{})
		if err == nil && got.Status.Allowed {
			return nil
		}
		if time.Now().After(deadline) {
			if err == nil {
				err = errors.New(got.Status.Reason)
			}
			return fmt.Errorf("%s still may not %s %s %s after %s (%v)", c.AgentUser, r.Verbs[0], r.APIGroups[0], r.Resources[0], timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
