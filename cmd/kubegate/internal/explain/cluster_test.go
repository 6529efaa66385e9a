package explain

import (
	"reflect"
	"testing"

	rbacv1 "k8s.io/api/rbac/v1"

	"kubegate.dev/kubegate/policy"
)

func request(t *testing.T, method, target string) policy.Request {
	t.Helper()
	r, err := policy.ParseRequest(method, target)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestRuleAllows follows RBAC's rule match case by case (evaluation_helpers.go);
// TestExplainAgainstTheCluster checks it against the API server's own answers.
func TestRuleAllows(t *testing.T) {
	pods := request(t, "GET", "/api/v1/namespaces/demo/pods/web")
	logs := request(t, "GET", "/api/v1/namespaces/demo/pods/web/log")
	deploy := request(t, "DELETE", "/apis/apps/v1/namespaces/demo/deployments/d")
	healthz := request(t, "GET", "/healthz/etcd")
	tests := []struct {
		name string
		rule rbacv1.PolicyRule
		req  policy.Request
		want bool
	}{
		{"exact", rbacv1.PolicyRule{Verbs: []string{"get"}, APIGroups: []string{""}, Resources: []string{"pods"}}, pods, true},
		{"other verb", rbacv1.PolicyRule{Verbs: []string{"list"}, APIGroups: []string{""}, Resources: []string{"pods"}}, pods, false},
		{"every verb", rbacv1.PolicyRule{Verbs: []string{"*"}, APIGroups: []string{""}, Resources: []string{"pods"}}, pods, true},
		{"other group", rbacv1.PolicyRule{Verbs: []string{"delete"}, APIGroups: []string{""}, Resources: []string{"deployments"}}, deploy, false},
		{"every group", rbacv1.PolicyRule{Verbs: []string{"delete"}, APIGroups: []string{"*"}, Resources: []string{"deployments"}}, deploy, true},
		{"resource does not cover its subresource", rbacv1.PolicyRule{Verbs: []string{"get"}, APIGroups: []string{""}, Resources: []string{"pods"}}, logs, false},
		{"resource/subresource", rbacv1.PolicyRule{Verbs: []string{"get"}, APIGroups: []string{""}, Resources: []string{"pods/log"}}, logs, true},
		{"*/subresource", rbacv1.PolicyRule{Verbs: []string{"get"}, APIGroups: []string{""}, Resources: []string{"*/log"}}, logs, true},
		{"*/subresource is not the resource", rbacv1.PolicyRule{Verbs: []string{"get"}, APIGroups: []string{""}, Resources: []string{"*/log"}}, pods, false},
		{"every resource", rbacv1.PolicyRule{Verbs: []string{"get"}, APIGroups: []string{""}, Resources: []string{"*"}}, logs, true},
		{"named", rbacv1.PolicyRule{Verbs: []string{"get"}, APIGroups: []string{""}, Resources: []string{"pods"}, ResourceNames: []string{"web"}}, pods, true},
		{"another name", rbacv1.PolicyRule{Verbs: []string{"get"}, APIGroups: []string{""}, Resources: []string{"pods"}, ResourceNames: []string{"db"}}, pods, false},
		{"non-resource URL prefix", rbacv1.PolicyRule{Verbs: []string{"get"}, NonResourceURLs: []string{"/healthz/*"}}, healthz, true},
		{"non-resource URL exact, another path", rbacv1.PolicyRule{Verbs: []string{"get"}, NonResourceURLs: []string{"/healthz"}}, healthz, false},
		{"a resource rule never grants a URL", rbacv1.PolicyRule{Verbs: []string{"get"}, APIGroups: []string{"*"}, Resources: []string{"*"}}, healthz, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ruleAllows(tt.rule, tt.req); got != tt.want {
				t.Fatalf("ruleAllows = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestAppliesTo(t *testing.T) {
	user := Subject{User: "gitlab:user:alice", Groups: []string{"gitlab:user", "system:authenticated"}}
	sa := AgentSubject("system:serviceaccount:kubegate:agent", nil)
	tests := []struct {
		name      string
		subjects  []rbacv1.Subject
		s         Subject
		namespace string
		want      string
	}{
		{"user by name", []rbacv1.Subject{{Kind: "User", Name: "gitlab:user:alice"}}, user, "", "User gitlab:user:alice"},
		{"another user", []rbacv1.Subject{{Kind: "User", Name: "gitlab:user:bob"}}, user, "", ""},
		{"group", []rbacv1.Subject{{Kind: "User", Name: "x"}, {Kind: "Group", Name: "gitlab:user"}}, user, "", "Group gitlab:user"},
		{"service account", []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: "kubegate", Name: "agent"}}, sa, "", "ServiceAccount kubegate/agent"},
		{"service account in the binding's namespace", []rbacv1.Subject{{Kind: "ServiceAccount", Name: "agent"}}, sa, "kubegate", "ServiceAccount kubegate/agent"},
		{"service account without a namespace in a ClusterRoleBinding", []rbacv1.Subject{{Kind: "ServiceAccount", Name: "agent"}}, sa, "", ""},
		{"service account's groups", []rbacv1.Subject{{Kind: "Group", Name: "system:serviceaccounts:kubegate"}}, sa, "", "Group system:serviceaccounts:kubegate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := appliesTo(tt.subjects, tt.s, tt.namespace)
			if got != tt.want || ok != (tt.want != "") {
				t.Fatalf("appliesTo = %q %v, want %q", got, ok, tt.want)
			}
		})
	}
}

func TestSubjects(t *testing.T) {
	imp := policy.NewImpersonation("gitlab:user:alice", []string{"gitlab:user", "gitlab:project_role:1:developer"}, nil)
	if got := ImpersonatedSubject(imp).Groups; !reflect.DeepEqual(got, []string{"gitlab:user", "gitlab:project_role:1:developer", "system:authenticated"}) {
		t.Fatalf("impersonated groups %v", got)
	}
	if len(imp.Groups()) != 2 {
		t.Fatal("ImpersonatedSubject changed the decision's groups")
	}
	if got := AgentSubject("system:serviceaccount:kubegate:agent", nil).Groups; !reflect.DeepEqual(got, []string{"system:serviceaccounts", "system:serviceaccounts:kubegate", "system:authenticated"}) {
		t.Fatalf("service account groups %v", got)
	}
	if got := AgentSubject("kubegate-agent", []string{"ops"}).Groups; !reflect.DeepEqual(got, []string{"ops", "system:authenticated"}) {
		t.Fatalf("user groups %v", got)
	}
}
