package main

import (
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"

	"kubegate.dev/kubegate/extauthz"
	"kubegate.dev/kubegate/identity"
	"kubegate.dev/kubegate/identity/directory"
	"kubegate.dev/kubegate/policy"
)

type explainOptions struct {
	agentID, configProjectID int64
	agentConfig, directory   string
	policyDir, user          string
	accessType               string
}

func newExplainCommand() *cobra.Command {
	o := &explainOptions{}
	cmd := &cobra.Command{
		Use:   "explain --agent-id N --agent-config FILE --config-project-id N --directory FILE --user USERNAME METHOD PATH",
		Short: "Show the decision kubegate would make for a user's request, as JSON",
		Long: `Decide, offline, what the gateway would do with one request of one user from the
directory, and print the decision as one JSON object:

  {"allowed": bool, "reason": string, "message": string, "access_as": "agent"|"user",
   "impersonate": {"user": string, "groups": [string], "extra": {key: [string]}},
   "request": {"verb", "apiGroup", "apiVersion", "resource", "subresource", "namespace", "name", ...}}

"impersonate" is present only when the request is allowed in user mode. PATH is the
path the API server sees (without the gateway's /k8s-proxy prefix), query included.
The credential itself is not checked: the user is taken as authenticated.`,
		Example: `  kubegate explain --agent-id 1 --config-project-id 1 \
    --agent-config deploy/sandbox/agent-config.yaml --directory deploy/sandbox/directory.yaml \
    --user alice GET /api/v1/namespaces/demo/pods`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error { return o.run(cmd, args[0], args[1]) },
	}
	f := cmd.Flags()
	f.Int64Var(&o.agentID, "agent-id", 0, "numeric id of the agent the gateway serves (required)")
	f.Int64Var(&o.configProjectID, "config-project-id", 0, "numeric id of the project holding the agent configuration (required)")
	f.StringVar(&o.agentConfig, "agent-config", "", "the agent configuration file, .gitlab/agents/<agent>/config.yaml (required)")
	f.StringVar(&o.directory, "directory", "", "the directory file of users, groups, projects and memberships (required)")
	f.StringVar(&o.policyDir, "policy", "", "a directory of operator Rego modules that may add denials")
	f.StringVar(&o.user, "user", "", "username from the directory to decide for (required)")
	f.StringVar(&o.accessType, "access-type", string(identity.AccessPersonalAccessToken), "how the user authenticated: personal_access_token, oidc_id_token or session_cookie")
	for _, name := range []string{"agent-id", "config-project-id", "agent-config", "directory", "user"} {
		_ = cmd.MarkFlagRequired(name)
	}
	return cmd
}

func (o *explainOptions) run(cmd *cobra.Command, method, path string) error {
	switch identity.AccessType(o.accessType) {
	case identity.AccessPersonalAccessToken, identity.AccessOIDCIDToken, identity.AccessSessionCookie:
	default:
		return fmt.Errorf("--access-type %q: use personal_access_token, oidc_id_token or session_cookie", o.accessType)
	}
	if o.agentID <= 0 || o.configProjectID <= 0 {
		return fmt.Errorf("--agent-id and --config-project-id must be positive numbers")
	}
	ctx := cmd.Context()
	cfg, err := policy.LoadAgentConfig(o.agentConfig)
	if err != nil {
		return err
	}
	dir, err := directory.Load(o.directory)
	if err != nil {
		return err
	}
	mods, err := policy.LoadModules(o.policyDir)
	if err != nil {
		return err
	}
	engine, err := policy.NewEngine(ctx, policy.Agent{ID: o.agentID, ConfigProjectID: o.configProjectID}, cfg, mods)
	if err != nil {
		return err
	}
	user, ok := dir.UserByName(o.user)
	if !ok {
		return fmt.Errorf("user %q is not an active user in %s", o.user, o.directory)
	}
	req, err := extauthz.APIRequest(method, path)
	if err != nil {
		return err
	}
	memberships, err := dir.Memberships(ctx, user, engine.Listed())
	if err != nil {
		return err
	}
	decision, err := engine.Decide(ctx, policy.Input{
		Identity:    identity.Identity{User: user, AccessType: identity.AccessType(o.accessType), AgentID: o.agentID},
		Memberships: memberships,
		Request:     req,
	})
	if err != nil {
		return err
	}
	enc := json.NewEncoder(cmd.OutOrStdout())
	enc.SetEscapeHTML(false)
	return enc.Encode(decision)
}
