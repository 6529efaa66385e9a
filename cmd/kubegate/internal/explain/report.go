package explain

import (
	"fmt"
	"io"
	"slices"
	"strings"

	"kubegate.dev/kubegate/extauthz"
	"kubegate.dev/kubegate/identity"
	"kubegate.dev/kubegate/policy"
)

// Report is the whole answer of `kubegate explain`: the gateway part (computed
// offline or by the gateway's explain endpoint), the cluster part when it was
// asked, and the outcome end to end.
type Report struct {
	extauthz.Explanation
	// Via says where the gateway part comes from: "directory", "gitlab" or
	// "gateway" (the explain endpoint, for the caller's own credential).
	Via string `json:"via"`
	// Cluster is the API server's answer; nil when it was not asked, and then
	// ClusterNotAsked says why.
	Cluster         *ClusterAnswer `json:"cluster,omitempty"`
	ClusterNotAsked string         `json:"cluster_not_asked,omitempty"`
	Result          Result         `json:"result"`
}

// Result is the outcome end to end.
type Result struct {
	Allowed bool `json:"allowed"`
	// RefusedBy is "gateway" (the built-in policy or an operator module) or
	// "cluster" (the API server's authorizers); empty when allowed.
	RefusedBy string `json:"refused_by,omitempty"`
	Summary   string `json:"summary"`
}

// Conclude fills in r.Result from the gateway's decision and the cluster's answer.
func (r *Report) Conclude() {
	d := r.Gateway.Decision
	switch {
	case !d.Allowed && d.Reason == policy.ReasonPolicyDenied:
		r.Result = Result{RefusedBy: "gateway", Summary: "refused by the gateway: an operator policy module denies it: " + d.Message}
	case !d.Allowed:
		r.Result = Result{RefusedBy: "gateway", Summary: fmt.Sprintf("refused by the gateway (%s): %s", d.Reason, d.Message)}
	case r.Cluster == nil:
		r.Result = Result{Allowed: true, Summary: "allowed by the gateway; the cluster was not asked (" + r.ClusterNotAsked + ")"}
	case !r.Cluster.Allowed:
		why := "no RBAC rule allows it"
		if r.Cluster.Denied {
			why = "an authorizer denies it"
		}
		if r.Cluster.Reason != "" {
			why += " (" + r.Cluster.Reason + ")"
		}
		r.Result = Result{RefusedBy: "cluster", Summary: "allowed by the gateway, refused by the cluster: " + why}
	default:
		r.Result = Result{Allowed: true, Summary: "allowed end to end"}
	}
}

// ExitCode is explain's exit status for the report: 0 allowed end to end (as far as
// it was asked), 1 refused.
func (r *Report) ExitCode() int {
	if r.Result.Allowed {
		return 0
	}
	return 1
}

// Render writes the report as a short tree, in the manner of `kubectl describe`.
func Render(w io.Writer, r *Report) error {
	p := &printer{w: w}
	x := r.Explanation
	p.line(0, "Request:      %s", describeAPIRequest(x.Request))
	agent := fmt.Sprintf("%d (configuration project %d)", x.Agent.ID, x.Agent.ConfigProjectID)
	if x.Agent.Name != "" {
		agent = fmt.Sprintf("%d %s (configuration project %d %s)", x.Agent.ID, x.Agent.Name, x.Agent.ConfigProjectID, x.Agent.ConfigProject)
	}
	p.line(0, "Agent:        %s, access_as: %s", agent, x.Gateway.ConfiguredAccessAs)
	p.line(0, "User:         %s (id %d), authenticated with %s", x.User.Username, x.User.ID, x.AccessType)
	p.line(0, "Answered by:  %s", via(r.Via))
	p.line(0, "")
	verdict := "allowed"
	if !x.Gateway.Decision.Allowed {
		verdict = fmt.Sprintf("REFUSED (%s)", x.Gateway.Decision.Reason)
	}
	p.line(0, "Gateway:      %s", verdict)
	if !x.Gateway.Decision.Allowed && x.Gateway.Decision.Message != "" {
		p.line(1, "message: %s", x.Gateway.Decision.Message)
	}
	p.line(1, "user_access entries:")
	sources := map[string]identity.EntrySource{}
	for _, s := range x.Sources {
		sources[string(s.Kind)+" "+strings.ToLower(s.Path)] = s
	}
	shown := map[string]bool{}
	for _, e := range x.Gateway.Entries {
		key := string(e.Kind) + " " + strings.ToLower(e.Path)
		p.line(2, "%s %s %s: %s", mark(e.Verdict), e.Kind, e.Path, e.Verdict)
		p.line(3, "%s", e.Why)
		if s, ok := sources[key]; ok && !shown[key] {
			shown[key] = true
			p.source(4, s)
		}
		if len(e.Groups) > 0 {
			p.line(3, "groups: %s", strings.Join(e.Groups, ", "))
		}
	}
	// Sources of entries the decision had no membership for (subgroup-only
	// memberships, paths the source does not know).
	for _, s := range x.Sources {
		key := string(s.Kind) + " " + strings.ToLower(s.Path)
		if shown[key] || (len(s.Grants) == 0 && s.Found) {
			continue
		}
		shown[key] = true
		p.line(2, "  %s %s:", s.Kind, s.Path)
		p.source(3, s)
	}
	if x.OtherListedEntries > 0 {
		p.line(2, "(%d more listed entries: you have no membership of them)", x.OtherListedEntries)
	}
	switch {
	case x.Gateway.ModulesEvaluated:
		p.line(1, "operator policy modules:")
		for _, m := range x.Gateway.Modules {
			if len(m.Denials) == 0 {
				p.line(2, "%s: no denial", m.Package)
			} else {
				p.line(2, "%s: DENIES: %s", m.Package, strings.Join(m.Denials, "; "))
			}
		}
	case x.Gateway.Decision.Reason == policy.ReasonNotMember:
		p.line(1, "operator policy modules: not evaluated (the built-in policy refuses first)")
	default:
		p.line(1, "operator policy modules: none")
	}
	p.line(0, "")
	p.identity(x)
	p.line(0, "")
	p.cluster(r)
	p.line(0, "")
	p.line(0, "Result:       %s", r.Result.Summary)
	return p.err
}

type printer struct {
	w   io.Writer
	err error
}

func (p *printer) line(depth int, format string, args ...any) {
	if p.err != nil {
		return
	}
	_, p.err = fmt.Fprintf(p.w, "%s%s\n", strings.Repeat("  ", depth), fmt.Sprintf(format, args...))
}

func (p *printer) source(depth int, s identity.EntrySource) {
	if !s.Found {
		p.line(depth, "the identity source does not know this path (it is skipped, as GitLab skips it)")
	}
	for _, g := range s.Grants {
		switch g.Relation {
		case identity.RelationDirect:
			p.line(depth, "direct: %s of %s %s", roleOf(g.AccessLevel), g.Kind, g.Path)
		case identity.RelationInherited:
			p.line(depth, "inherited: %s of ancestor group %s", roleOf(g.AccessLevel), g.Path)
		case identity.RelationSubgroupOnly:
			p.line(depth, "does not count: %s of %s %s, below the listed group (a group entry never counts its subgroups or projects)", roleOf(g.AccessLevel), g.Kind, g.Path)
		case identity.RelationEffective:
			p.line(depth, "effective: %s, which GitLab grants beyond the direct and inherited memberships (a share with another group, an invitation)", roleOf(g.AccessLevel))
		}
	}
}

func (p *printer) identity(x extauthz.Explanation) {
	switch {
	case x.Gateway.Identity != nil:
		p.line(0, "Identity:     as the user (Impersonate-* headers)")
		extra := x.Gateway.Identity.Extra()
		p.line(1, "user:   %s", x.Gateway.Identity.User())
		p.line(1, "groups: %s", strings.Join(x.Gateway.Identity.Groups(), ", "))
		keys := make([]string, 0, len(extra))
		for k := range extra {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			p.line(1, "extra:  %s=%s", k, strings.Join(extra[k], ","))
		}
	case x.Gateway.ConfiguredAccessAs == policy.AccessAsAgent && x.Gateway.Decision.Reason != policy.ReasonNotMember:
		p.line(0, "Identity:     as the agent's own service account (access_as: agent; no impersonation)")
	default:
		p.line(0, "Identity:     none (the gateway refuses before the cluster is reached)")
	}
}

func (p *printer) cluster(r *Report) {
	c := r.Cluster
	if c == nil {
		p.line(0, "Cluster:      not asked (%s)", r.ClusterNotAsked)
		return
	}
	verdict := "no"
	if c.Allowed {
		verdict = "yes"
	} else if c.Denied {
		verdict = "no (denied)"
	}
	p.line(0, "Cluster:      %s (SubjectAccessReview for %s)", verdict, c.AskedAs.User)
	if c.Reason != "" {
		p.line(1, "reason: %s", c.Reason)
	}
	if c.EvaluationError != "" {
		p.line(1, "evaluation error: %s", c.EvaluationError)
	}
	if c.BindingsError != "" {
		p.line(1, "bindings: not readable: %s", c.BindingsError)
		return
	}
	if len(c.Bindings) == 0 {
		p.line(1, "bindings: none has a subject matching this user, its groups or service account")
		return
	}
	p.line(1, "bindings whose subjects match:")
	for _, b := range c.Bindings {
		name := b.Name
		if b.Namespace != "" {
			name = b.Namespace + "/" + b.Name
		}
		if b.Grants {
			p.line(2, "+ %s %s -> %s (subject %s): grants it: %s", b.Kind, name, b.Role, b.Subject, b.Rule)
		} else {
			p.line(2, "- %s %s -> %s (subject %s): %s", b.Kind, name, b.Role, b.Subject, b.Why)
		}
	}
}

func mark(v policy.Verdict) string {
	if v == policy.VerdictQualifies {
		return "+"
	}
	return "-"
}

func roleOf(l identity.AccessLevel) string {
	name := "no role"
	for _, r := range identity.Roles {
		if r.Level <= l {
			name = r.Name
		}
	}
	return fmt.Sprintf("%s (%d)", name, l)
}

func via(v string) string {
	switch v {
	case "gateway":
		return "the gateway's explain endpoint, for your own credential"
	case "gitlab":
		return "GitLab (offline: the user is taken as authenticated)"
	default:
		return "the directory file (offline: the user is taken as authenticated)"
	}
}

func describeAPIRequest(req policy.Request) string {
	s := describeRequest(req)
	if req.Namespace != "" {
		s += " in namespace " + req.Namespace
	}
	return s + " (" + req.Path + ")"
}
