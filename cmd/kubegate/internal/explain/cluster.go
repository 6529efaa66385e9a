// Package explain is the cluster half of `kubegate explain` and its output: it asks
// the API server (SubjectAccessReview) what RBAC answers for the identity the
// gateway would send, names the RoleBindings and ClusterRoleBindings whose subjects
// match it, and renders the whole answer as a tree or as JSON.
package explain

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"

	authorizationv1 "k8s.io/api/authorization/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apiserver/pkg/authentication/serviceaccount"
	"k8s.io/apiserver/pkg/authentication/user"

	"kubegate.dev/kubegate/policy"
)

// Subject is an identity as the API server's authorizer sees it.
type Subject struct {
	User   string              `json:"user"`
	Groups []string            `json:"groups"`
	Extra  map[string][]string `json:"extra,omitempty"`
}

// ImpersonatedSubject is the identity the API server authorizes for an impersonated
// request: the Impersonate-* values plus system:authenticated, which the API
// server's impersonation filter adds for a non-anonymous user
// (k8s.io/apiserver/pkg/endpoints/filters/impersonation/impersonation.go).
func ImpersonatedSubject(imp *policy.Impersonation) Subject {
	groups := imp.Groups() // decoded afresh: the caller's own copy
	if !slices.Contains(groups, user.AllAuthenticated) && !slices.Contains(groups, user.AllUnauthenticated) {
		groups = append(groups, user.AllAuthenticated)
	}
	return Subject{User: imp.User(), Groups: groups, Extra: imp.Extra()}
}

// AgentSubject is the agent's own identity (agent mode): a service account
// "system:serviceaccount:<namespace>:<name>" gets the groups its token
// authenticates with (serviceaccount.MakeGroupNames, and system:authenticated);
// another user name gets the given groups and system:authenticated.
func AgentSubject(name string, groups []string) Subject {
	groups = slices.Clone(groups)
	if ns, _, err := serviceaccount.SplitUsername(name); err == nil {
		for _, g := range serviceaccount.MakeGroupNames(ns) {
			if !slices.Contains(groups, g) {
				groups = append(groups, g)
			}
		}
	}
	if !slices.Contains(groups, user.AllAuthenticated) {
		groups = append(groups, user.AllAuthenticated)
	}
	return Subject{User: name, Groups: groups}
}

// ClusterAnswer is what the API server says for a subject and request.
type ClusterAnswer struct {
	AskedAs Subject `json:"asked_as"`
	// Allowed, Denied, Reason and EvaluationError are the SubjectAccessReview's
	// status: RBAC and every other authorizer the API server runs.
	Allowed         bool   `json:"allowed"`
	Denied          bool   `json:"denied,omitempty"`
	Reason          string `json:"reason,omitempty"`
	EvaluationError string `json:"evaluation_error,omitempty"`
	// Bindings are the RoleBindings (in the request's namespace) and
	// ClusterRoleBindings with a subject that is the user, one of the groups or
	// the service account, each saying whether its role grants the request.
	Bindings []BindingMatch `json:"bindings"`
	// BindingsError says why the bindings could not be read (the --kubeconfig
	// identity may create SubjectAccessReviews but not list bindings).
	BindingsError string `json:"bindings_error,omitempty"`
}

// BindingMatch is one binding whose subjects match.
type BindingMatch struct {
	Kind      string `json:"kind"` // RoleBinding or ClusterRoleBinding
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name"`
	Role      string `json:"role"`    // <Role|ClusterRole>/<name>
	Subject   string `json:"subject"` // the subject that matched: "Group gitlab:user"
	Grants    bool   `json:"grants"`
	// Rule is the first rule that grants the request; Why says what is missing
	// when none does.
	Rule string `json:"rule,omitempty"`
	Why  string `json:"why,omitempty"`
}

// Ask creates a SubjectAccessReview for s on req, then reads the bindings.
func Ask(ctx context.Context, c *Client, s Subject, req policy.Request) (*ClusterAnswer, error) {
	sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{User: s.User, Groups: s.Groups}}
	if len(s.Extra) > 0 {
		sar.Spec.Extra = map[string]authorizationv1.ExtraValue{}
		for k, v := range s.Extra {
			sar.Spec.Extra[k] = v
		}
	}
	if req.IsResourceRequest {
		sar.Spec.ResourceAttributes = resourceAttributes(req)
	} else {
		sar.Spec.NonResourceAttributes = &authorizationv1.NonResourceAttributes{Path: req.Path, Verb: req.Verb}
	}
	got, err := c.CreateSubjectAccessReview(ctx, sar)
	if err != nil {
		if apierrors.IsForbidden(err) {
			return nil, fmt.Errorf("the --kubeconfig identity may not create SubjectAccessReviews (it needs create on subjectaccessreviews.authorization.k8s.io): %w", err)
		}
		return nil, fmt.Errorf("asking the cluster (SubjectAccessReview): %w", err)
	}
	a := &ClusterAnswer{AskedAs: s, Allowed: got.Status.Allowed, Denied: got.Status.Denied, Reason: got.Status.Reason, EvaluationError: got.Status.EvaluationError}
	a.Bindings, err = matchingBindings(ctx, c, s, req)
	if err != nil {
		a.BindingsError = err.Error()
	}
	return a, nil
}

// resourceAttributes are the request's attributes as the authorizer receives them
// (the selectors too: authorizers may use them, KEP-4601).
func resourceAttributes(req policy.Request) *authorizationv1.ResourceAttributes {
	ra := &authorizationv1.ResourceAttributes{Namespace: req.Namespace, Verb: req.Verb, Group: req.APIGroup, Version: req.APIVersion,
		Resource: req.Resource, Subresource: req.Subresource, Name: req.Name}
	if req.FieldSelector != "" {
		ra.FieldSelector = &authorizationv1.FieldSelectorAttributes{RawSelector: req.FieldSelector}
	}
	if req.LabelSelector != "" {
		ra.LabelSelector = &authorizationv1.LabelSelectorAttributes{RawSelector: req.LabelSelector}
	}
	return ra
}

// matchingBindings lists the bindings that apply to s for req, as RBAC's
// authorizer visits them: every ClusterRoleBinding, and the RoleBindings of the
// request's namespace (k8s.io/kubernetes plugin/pkg/auth/authorizer/rbac
// rule_resolver.go VisitRulesFor).
func matchingBindings(ctx context.Context, c *Client, s Subject, req policy.Request) ([]BindingMatch, error) {
	crbs, err := c.ListClusterRoleBindings(ctx)
	if err != nil {
		return nil, fmt.Errorf("listing ClusterRoleBindings: %w", err)
	}
	out := []BindingMatch{}
	for _, b := range crbs.Items {
		subject, ok := appliesTo(b.Subjects, s, "")
		if !ok {
			continue
		}
		m := BindingMatch{Kind: "ClusterRoleBinding", Name: b.Name, Role: b.RoleRef.Kind + "/" + b.RoleRef.Name, Subject: subject}
		m.judge(ctx, c, b.RoleRef, "", req)
		out = append(out, m)
	}
	if req.Namespace != "" {
		rbs, err := c.ListRoleBindings(ctx, req.Namespace)
		if err != nil {
			return out, fmt.Errorf("listing RoleBindings in %s: %w", req.Namespace, err)
		}
		for _, b := range rbs.Items {
			subject, ok := appliesTo(b.Subjects, s, b.Namespace)
			if !ok {
				continue
			}
			m := BindingMatch{Kind: "RoleBinding", Namespace: b.Namespace, Name: b.Name, Role: b.RoleRef.Kind + "/" + b.RoleRef.Name, Subject: subject}
			m.judge(ctx, c, b.RoleRef, b.Namespace, req)
			out = append(out, m)
		}
	}
	// Granting bindings first, then by kind and name: stable output.
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Grants != out[j].Grants {
			return out[i].Grants
		}
		return out[i].Kind+"/"+out[i].Namespace+"/"+out[i].Name < out[j].Kind+"/"+out[j].Namespace+"/"+out[j].Name
	})
	return out, nil
}

// judge reads the binding's role and says whether a rule grants req.
func (m *BindingMatch) judge(ctx context.Context, c *Client, ref rbacv1.RoleRef, namespace string, req policy.Request) {
	var rules []rbacv1.PolicyRule
	switch ref.Kind {
	case "ClusterRole":
		r, err := c.GetClusterRole(ctx, ref.Name)
		if err != nil {
			m.Why = fmt.Sprintf("its ClusterRole %s cannot be read: %v", ref.Name, err)
			return
		}
		rules = r.Rules
	case "Role":
		r, err := c.GetRole(ctx, namespace, ref.Name)
		if err != nil {
			m.Why = fmt.Sprintf("its Role %s/%s cannot be read: %v", namespace, ref.Name, err)
			return
		}
		rules = r.Rules
	default:
		m.Why = fmt.Sprintf("roleRef kind %q is neither Role nor ClusterRole", ref.Kind)
		return
	}
	for _, r := range rules {
		if ruleAllows(r, req) {
			m.Grants, m.Rule = true, describeRule(r)
			return
		}
	}
	m.Why = fmt.Sprintf("%s grants no %s", m.Role, describeRequest(req))
	if len(rules) == 0 {
		m.Why = fmt.Sprintf("%s has no rules (an aggregated ClusterRole is filled in by kube-controller-manager)", m.Role)
	}
}

// appliesTo is RBAC's subject match (k8s.io/kubernetes plugin/pkg/auth/authorizer/rbac
// rbac.go appliesToUser): a User by name, a Group by membership, a ServiceAccount by
// its user name, its namespace defaulting to the binding's. It returns the first
// subject that matches.
func appliesTo(subjects []rbacv1.Subject, s Subject, namespace string) (string, bool) {
	for _, sub := range subjects {
		switch sub.Kind {
		case rbacv1.UserKind:
			if s.User == sub.Name {
				return "User " + sub.Name, true
			}
		case rbacv1.GroupKind:
			if slices.Contains(s.Groups, sub.Name) {
				return "Group " + sub.Name, true
			}
		case rbacv1.ServiceAccountKind:
			ns := namespace
			if sub.Namespace != "" {
				ns = sub.Namespace
			}
			if ns != "" && serviceaccount.MatchesUsername(ns, sub.Name, s.User) {
				return "ServiceAccount " + ns + "/" + sub.Name, true
			}
		}
	}
	return "", false
}

// ruleAllows is RBAC's rule match (k8s.io/kubernetes pkg/apis/rbac/v1
// evaluation_helpers.go RuleAllows and its VerbMatches, APIGroupMatches,
// ResourceMatches, ResourceNameMatches, NonResourceURLMatches).
func ruleAllows(r rbacv1.PolicyRule, req policy.Request) bool {
	if !matchesOrAll(r.Verbs, req.Verb, rbacv1.VerbAll) {
		return false
	}
	if !req.IsResourceRequest {
		for _, u := range r.NonResourceURLs {
			if u == rbacv1.NonResourceAll || u == req.Path || (strings.HasSuffix(u, "*") && strings.HasPrefix(req.Path, strings.TrimRight(u, "*"))) {
				return true
			}
		}
		return false
	}
	if !matchesOrAll(r.APIGroups, req.APIGroup, rbacv1.APIGroupAll) {
		return false
	}
	combined := req.Resource
	if req.Subresource != "" {
		combined += "/" + req.Subresource
	}
	resourceOK := false
	for _, res := range r.Resources {
		if res == rbacv1.ResourceAll || res == combined ||
			(req.Subresource != "" && len(res) == len(req.Subresource)+2 && strings.HasPrefix(res, "*/") && strings.HasSuffix(res, req.Subresource)) {
			resourceOK = true
			break
		}
	}
	return resourceOK && (len(r.ResourceNames) == 0 || slices.Contains(r.ResourceNames, req.Name))
}

func matchesOrAll(list []string, want, all string) bool {
	return slices.Contains(list, all) || slices.Contains(list, want)
}

func describeRule(r rbacv1.PolicyRule) string {
	var parts []string
	add := func(name string, v []string) {
		if len(v) > 0 {
			parts = append(parts, name+"="+strings.Join(v, ","))
		}
	}
	add("verbs", r.Verbs)
	add("apiGroups", quoteEmpty(r.APIGroups))
	add("resources", r.Resources)
	add("resourceNames", r.ResourceNames)
	add("nonResourceURLs", r.NonResourceURLs)
	return strings.Join(parts, " ")
}

func quoteEmpty(v []string) []string {
	out := make([]string, len(v))
	for i, s := range v {
		if s == "" {
			s = `""`
		}
		out[i] = s
	}
	return out
}

// describeRequest says what a request asks, in RBAC's terms.
func describeRequest(req policy.Request) string {
	if !req.IsResourceRequest {
		return req.Verb + " on " + req.Path
	}
	s := req.Verb + " " + req.Resource
	if req.Subresource != "" {
		s += "/" + req.Subresource
	}
	if req.APIGroup != "" {
		s += "." + req.APIGroup
	}
	if req.Name != "" {
		s += " " + req.Name
	}
	return s
}

// AskSelf asks the cluster about the caller's own identity (a
// SelfSubjectAccessReview, which RBAC lets every authenticated user create:
// system:basic-user), through whatever c points at — the gateway, which
// impersonates the caller. The bindings are read when the caller may list them;
// s, when known, is the identity the gateway sends, to match their subjects.
func AskSelf(ctx context.Context, c *Client, s *Subject, req policy.Request) (*ClusterAnswer, error) {
	ssar := &authorizationv1.SelfSubjectAccessReview{}
	if req.IsResourceRequest {
		ssar.Spec.ResourceAttributes = resourceAttributes(req)
	} else {
		ssar.Spec.NonResourceAttributes = &authorizationv1.NonResourceAttributes{Path: req.Path, Verb: req.Verb}
	}
	got, err := c.CreateSelfSubjectAccessReview(ctx, ssar)
	if err != nil {
		return nil, err
	}
	a := &ClusterAnswer{Allowed: got.Status.Allowed, Denied: got.Status.Denied, Reason: got.Status.Reason, EvaluationError: got.Status.EvaluationError}
	if s == nil {
		a.BindingsError = "the identity the gateway sends is not known here (agent mode)"
		return a, nil
	}
	a.AskedAs = *s
	a.Bindings, err = matchingBindings(ctx, c, *s, req)
	if err != nil {
		a.BindingsError = err.Error()
	}
	return a, nil
}
