package main

import (
	"bufio"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"kubegate.dev/kubegate/identity/directory"
)

func newDirectoryCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "directory",
		Short: "Work with kubegate's local directory file of users, groups, projects and tokens",
	}
	var fromStdin bool
	hash := &cobra.Command{
		Use:   "hash-token",
		Short: "Make a new personal access token and print it with the digest the directory stores",
		Long: `Generate a new random personal access token and print it once, with the digest to
put in the directory file's tokens list (the directory never holds the token itself).
With --stdin, read an existing token from standard input instead (one line), so it
never appears in the shell history.`,
		Example: `  kubegate directory hash-token
  printf '%s' "$TOKEN" | kubegate directory hash-token --stdin`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			out := cmd.OutOrStdout()
			if fromStdin {
				line, err := bufio.NewReader(cmd.InOrStdin()).ReadString('\n')
				tok := strings.TrimRight(line, "\r\n")
				if tok == "" {
					if err != nil && err.Error() != "EOF" {
						return fmt.Errorf("reading the token from stdin: %w", err)
					}
					return errors.New("no token on stdin: pipe the token in, or run without --stdin to generate one")
				}
				_, err = fmt.Fprintln(out, directory.HashToken(tok))
				return err
			}
			tok := "kgpat-" + rand.Text()
			_, err := fmt.Fprintf(out, "token:  %s\ndigest: %s\n\n# Give the token to its owner now; it is not stored anywhere. Add to the directory:\n#   - {user: <username>, name: <name>, digest: \"%s\", scopes: [k8s_proxy], expires_at: <YYYY-MM-DD>}\n",
				tok, directory.HashToken(tok), directory.HashToken(tok))
			return err
		},
	}
	hash.Flags().BoolVar(&fromStdin, "stdin", false, "read an existing token from standard input instead of generating one")
	cmd.AddCommand(hash)
	return cmd
}
