package stack

import (
	"context"
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"kubegate.dev/kubegate/test/cluster"
)

// DemoNamespace is where the demo RBAC grants access.
const DemoNamespace = "demo"

// DemoBindings are the RoleBindings SeedDemo creates in DemoNamespace: GitLab-shaped
// groups bound to the built-in roles (filled by kube-controller-manager's
// clusterrole-aggregation-controller).
var DemoBindings = []struct{ Name, Group, ClusterRole string }{
	{"project-1-developers-view", "gitlab:project_role:1:developer", "view"},   // alice, heidi
	{"subgroup-developers-view", "gitlab:group_role:4:developer", "view"},      // carol
	{"group-2-developers-edit", "gitlab:group_role:2:developer", "edit"},       // grace
	{"project-1-maintainers-edit", "gitlab:project_role:1:maintainer", "edit"}, // alice
}

// SeedDemo creates the demo namespace, its default ServiceAccount (no controller
// makes it here), a pod object and a ConfigMap to look at, and DemoBindings. It is
// idempotent.
func SeedDemo(ctx context.Context, cs kubernetes.Interface) error {
	create := func(what string, err error) error {
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("seeding the demo: %s: %w", what, err)
		}
		return nil
	}
	if err := create("namespace", func() error {
		_, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: DemoNamespace}}, metav1.CreateOptions{})
		return err
	}()); err != nil {
		return err
	}
	if err := create("service account", func() error {
		_, err := cs.CoreV1().ServiceAccounts(DemoNamespace).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{})
		return err
	}()); err != nil {
		return err
	}
	if err := create("pod", func() error {
		_, err := cs.CoreV1().Pods(DemoNamespace).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "web", Labels: map[string]string{"app": "web"}},
			Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "web", Image: "nginx:1.27"}}},
		}, metav1.CreateOptions{})
		return err
	}()); err != nil {
		return err
	}
	if err := create("configmap", func() error {
		_, err := cs.CoreV1().ConfigMaps(DemoNamespace).Create(ctx, &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: "welcome"},
			Data:       map[string]string{"message": "hello from the cluster behind kubegate"},
		}, metav1.CreateOptions{})
		return err
	}()); err != nil {
		return err
	}
	for _, b := range DemoBindings {
		if err := create("rolebinding "+b.Name, func() error {
			_, err := cs.RbacV1().RoleBindings(DemoNamespace).Create(ctx, &rbacv1.RoleBinding{
				ObjectMeta: metav1.ObjectMeta{Name: b.Name},
				RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: b.ClusterRole},
				Subjects:   []rbacv1.Subject{{APIGroup: "rbac.authorization.k8s.io", Kind: "Group", Name: b.Group}},
			}, metav1.CreateOptions{})
			return err
		}()); err != nil {
			return err
		}
	}
	return nil
}

// DemoDeployment is the Deployment SeedDemoDeployment creates in DemoNamespace, for
// the Dashboard's restart and scale: kube-controller-manager makes its ReplicaSet
// and pods, bound to KWOK's node by the template (there is no scheduler), where
// KWOK runs them.
const DemoDeployment = "api"

// SeedDemoDeployment creates DemoDeployment with replicas pods (the stack must run
// KWOK for them to become Running). It is idempotent.
func SeedDemoDeployment(ctx context.Context, cs kubernetes.Interface, replicas int32) error {
	labels := map[string]string{"app": DemoDeployment}
	_, err := cs.AppsV1().Deployments(DemoNamespace).Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: DemoDeployment, Labels: labels},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					NodeName:   cluster.KubeletNode,
					Containers: []corev1.Container{{Name: "api", Image: "registry.example/api:1.0"}},
				},
			},
		},
	}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("seeding the demo deployment: %w", err)
	}
	return nil
}
