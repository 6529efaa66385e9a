package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"kubegate.dev/kubegate/policy"
)

func newConfigCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "config",
		Short: "Work with GitLab agent configuration files (user_access)",
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "check FILE",
		Short: "Validate an agent configuration file's user_access section",
		Long: `Validate a GitLab agent configuration file (.gitlab/agents/<agent>/config.yaml)
as kubegate reads it: only user_access is checked, other keys are ignored.

Exit status 0 and "ok" on stdout when the file is valid; exit status 1 with every
problem on stderr, each as FILE:LINE:COLUMN: FIELD: MESSAGE.`,
		Example: `  kubegate config check .gitlab/agents/my-agent/config.yaml`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := policy.LoadAgentConfig(args[0])
			if err != nil {
				var ce *policy.ConfigError
				if errors.As(err, &ce) {
					for _, p := range ce.Problems {
						fmt.Fprintln(cmd.ErrOrStderr(), p.String())
					}
					return &exitError{code: 1, err: fmt.Errorf("%s: %d problem(s)", args[0], len(ce.Problems))}
				}
				return err
			}
			if !cfg.Present {
				fmt.Fprintf(cmd.ErrOrStderr(), "warning: %s has no user_access section: nobody is granted access through the gateway\n", args[0])
			} else if len(cfg.UserAccess.Projects)+len(cfg.UserAccess.Groups) == 0 {
				fmt.Fprintf(cmd.ErrOrStderr(), "warning: %s lists no projects or groups under user_access: nobody is granted access\n", args[0])
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), "ok")
			return err
		},
	})
	return cmd
}
