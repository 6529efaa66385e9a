// Package compose holds the files docker-compose.yaml uses. This test applies the
// manifests its init service applies to a real kube-apiserver (the test bed,
// testbed.md) and asks the API server's RBAC what each identity may then do: the
// agent may impersonate and nothing else; the sandbox users get what demo.yaml says.
package compose

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"testing"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"

	"kubegate.dev/kubegate/test/cluster"
)

// The files init.sh applies, in its order.
var initManifests = []string{"../kubernetes/impersonation-clusterrole.yaml", "agent.yaml", "demo.yaml"}

func apply(ctx context.Context, t *testing.T, cs kubernetes.Interface, path string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		obj, _, err := scheme.Codecs.UniversalDeserializer().Decode(doc, nil, nil)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		err = create(ctx, cs, obj)
		// The test bed has already created the shipped ClusterRole (init.sh's
		// kubectl apply would find it unchanged); anything else must be new.
		if _, isRole := obj.(*rbacv1.ClusterRole); isRole && apierrors.IsAlreadyExists(err) {
			err = nil
		}
		if err != nil {
			t.Fatalf("%s: the API server refused %T: %v", path, obj, err)
		}
	}
}

func create(ctx context.Context, cs kubernetes.Interface, obj runtime.Object) error {
	var err error
	o := metav1.CreateOptions{FieldValidation: "Strict"}
	switch x := obj.(type) {
	case *corev1.Namespace:
		if _, err = cs.CoreV1().Namespaces().Create(ctx, x, o); err != nil {
			return err
		}
		// k3s's serviceaccount controller creates "default" in every namespace, and
		// the ServiceAccount admission plugin refuses pods without it; the test bed
		// does not run that controller, so do its one job here.
		_, err = cs.CoreV1().ServiceAccounts(x.Name).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, o)
	case *corev1.ServiceAccount:
		_, err = cs.CoreV1().ServiceAccounts(x.Namespace).Create(ctx, x, o)
	case *corev1.Secret:
		_, err = cs.CoreV1().Secrets(x.Namespace).Create(ctx, x, o)
	case *corev1.Pod:
		_, err = cs.CoreV1().Pods(x.Namespace).Create(ctx, x, o)
	case *rbacv1.ClusterRole:
		_, err = cs.RbacV1().ClusterRoles().Create(ctx, x, o)
	case *rbacv1.ClusterRoleBinding:
		_, err = cs.RbacV1().ClusterRoleBindings().Create(ctx, x, o)
	case *rbacv1.RoleBinding:
		_, err = cs.RbacV1().RoleBindings(x.Namespace).Create(ctx, x, o)
	default:
		return errors.New("the test does not know how to create this kind; extend create()")
	}
	return err
}

func TestInitManifestsOnARealAPIServer(t *testing.T) {
	c := cluster.StartForTest(t, cluster.Options{ControllerManager: true})
	cs, err := kubernetes.NewForConfig(&rest.Config{Host: c.URL, BearerToken: c.AdminToken,
		TLSClientConfig: rest.TLSClientConfig{CAData: c.CAPEM}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	for _, m := range initManifests {
		apply(ctx, t, cs, m)
	}

	agent := who{user: "system:serviceaccount:kubegate:kubegate-agent",
		groups: []string{"system:serviceaccounts", "system:serviceaccounts:kubegate", "system:authenticated"}}
	roles := func(kind string, id string, upTo int) []string {
		all := []string{"guest", "planner", "reporter", "developer", "maintainer", "owner"}
		out := []string{"gitlab:user", "system:authenticated"}
		for _, r := range all[:upTo] {
			out = append(out, "gitlab:"+kind+"_role:"+id+":"+r)
		}
		return out
	}
	alice := who{user: "gitlab:user:alice", groups: roles("project", "1", 5)}
	carol := who{user: "gitlab:user:carol", groups: roles("group", "4", 4)}

	tests := []struct {
		name  string
		who   who
		attrs authorizationv1.ResourceAttributes
		want  bool
	}{
		{"agent impersonates users", agent, authorizationv1.ResourceAttributes{Verb: "impersonate", Resource: "users", Name: "gitlab:user:alice"}, true},
		{"agent impersonates groups", agent, authorizationv1.ResourceAttributes{Verb: "impersonate", Resource: "groups", Name: "gitlab:project_role:1:maintainer"}, true},
		{"agent impersonates extra agent.gitlab.com/id", agent, authorizationv1.ResourceAttributes{Verb: "impersonate", Group: "authentication.k8s.io", Resource: "userextras", Subresource: "agent.gitlab.com/id"}, true},
		{"agent impersonates extra config_project_id", agent, authorizationv1.ResourceAttributes{Verb: "impersonate", Group: "authentication.k8s.io", Resource: "userextras", Subresource: "agent.gitlab.com/config_project_id"}, true},
		{"agent cannot impersonate service accounts", agent, authorizationv1.ResourceAttributes{Verb: "impersonate", Resource: "serviceaccounts", Namespace: "kube-system", Name: "default"}, false},
		{"agent reads no pods itself", agent, authorizationv1.ResourceAttributes{Verb: "list", Resource: "pods"}, false},
		{"alice lists pods everywhere", alice, authorizationv1.ResourceAttributes{Verb: "list", Resource: "pods"}, true},
		{"alice execs in demo", alice, authorizationv1.ResourceAttributes{Verb: "create", Resource: "pods", Subresource: "exec", Namespace: "demo", Name: "shell"}, true},
		{"alice cannot create namespaces", alice, authorizationv1.ResourceAttributes{Verb: "create", Resource: "namespaces"}, false},
		{"carol lists pods in demo", carol, authorizationv1.ResourceAttributes{Verb: "list", Resource: "pods", Namespace: "demo"}, true},
		{"carol cannot list kube-system", carol, authorizationv1.ResourceAttributes{Verb: "list", Resource: "pods", Namespace: "kube-system"}, false},
		{"carol cannot exec in demo", carol, authorizationv1.ResourceAttributes{Verb: "create", Resource: "pods", Subresource: "exec", Namespace: "demo"}, false},
	}
	review := func(w who, attrs authorizationv1.ResourceAttributes) *authorizationv1.SubjectAccessReview {
		t.Helper()
		sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
			User: w.user, Groups: w.groups, ResourceAttributes: &attrs}}
		got, err := cs.AuthorizationV1().SubjectAccessReviews().Create(ctx, sar, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	// The RBAC authorizer reads bindings through informers, so a binding created a
	// moment ago may not count yet: wait (bounded) for every expected allow first.
	// Once they all hold, the informers have seen every manifest, and a denial
	// means the manifests do not grant it.
	for _, tt := range tests {
		if !tt.want {
			continue
		}
		err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
			return review(tt.who, tt.attrs).Status.Allowed, nil
		})
		if err != nil {
			t.Errorf("%s: never allowed: %v", tt.name, err)
		}
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := review(tt.who, tt.attrs); got.Status.Allowed != tt.want {
				t.Fatalf("allowed = %v, want %v (%s)", got.Status.Allowed, tt.want, got.Status.Reason)
			}
		})
	}
}

type who struct {
	user   string
	groups []string
}
