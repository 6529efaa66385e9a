package main

import (
	"errors"

	"github.com/spf13/cobra"
)

// exitError carries a specific process exit code through cobra's RunE.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func exitCode(err error) int {
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return 1
}

func newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "kubegate",
		Short: "kubectl access to Kubernetes for GitLab project and group members, through Envoy",
		Long: `kubegate lets a cluster administrator grant the members of GitLab projects and
groups (listed under user_access in the agent configuration file) kubectl access
to a cluster through an Envoy listener. The API server sees either the agent's
service account or the impersonated GitLab user, and its RBAC has the last word.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newVersionCommand())
	root.AddCommand(newConfigCommand())
	root.AddCommand(newExplainCommand())
	root.AddCommand(newDirectoryCommand())
	root.AddCommand(newEnvoyCommand(), newXDSCommand())
	root.AddCommand(newAuthzCommand(), newExtProcCommand())
	root.AddCommand(newUpdateKubeconfigCommand(), newGetTokenCommand())
	root.AddCommand(newAgentCommand())
	return root
}
