package main

import (
	"bufio"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/term"

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
	cmd.AddCommand(hash, newHashPasswordCommand())
	return cmd
}

func newHashPasswordCommand() *cobra.Command {
	var algorithm string
	var cost int
	cmd := &cobra.Command{
		Use:   "hash-password",
		Short: "Print the digest of a Dashboard login password, for a user's password_hash in the directory",
		Long: `Read a password and print its digest, a PHC string to put in the user's
password_hash in the directory file (quoted: it contains '$' and ','); the directory
never holds the password itself. From a terminal the password is asked twice without
echo; from a pipe it is the first line of standard input (so it appears in neither
the shell history nor the process list). An empty password is refused.

--algorithm argon2id (the default) uses OWASP's parameters (m=19456 KiB, t=2, p=1)
and a random 16-byte salt; --algorithm bcrypt uses --bcrypt-cost (default 10, at
most 13). kubegate authz checks either; bcrypt reads only the first 72 bytes of a
password, so longer ones are refused for it.`,
		Example: `  kubegate directory hash-password
  printf '%s\n' "$PASSWORD" | kubegate directory hash-password --algorithm bcrypt`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if algorithm != "argon2id" && algorithm != "bcrypt" {
				return fmt.Errorf("--algorithm %q: use argon2id (the default) or bcrypt", algorithm)
			}
			if cmd.Flags().Changed("bcrypt-cost") && algorithm != "bcrypt" {
				return errors.New("--bcrypt-cost is for --algorithm bcrypt")
			}
			pw, err := readNewPassword(cmd.InOrStdin(), cmd.ErrOrStderr(), stdinTerminal(cmd.InOrStdin()))
			if err != nil {
				return err
			}
			var digest string
			if algorithm == "bcrypt" {
				digest, err = directory.HashPasswordBcrypt(pw, cost)
			} else {
				digest, err = directory.HashPassword(pw)
			}
			if err != nil {
				return err
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), digest)
			return err
		},
	}
	cmd.Flags().StringVar(&algorithm, "algorithm", "argon2id", "the digest: argon2id (OWASP's m=19456 KiB, t=2, p=1) or bcrypt")
	cmd.Flags().IntVar(&cost, "bcrypt-cost", directory.DefaultBcryptCost, fmt.Sprintf("bcrypt's cost (4 to %d; each step doubles the time of every login)", directory.MaxBcryptCost))
	return cmd
}

// terminal reads a password without echo; nil when standard input is not a terminal.
type terminal interface {
	ReadPassword() ([]byte, error)
}

type fdTerminal int

func (fd fdTerminal) ReadPassword() ([]byte, error) { return term.ReadPassword(int(fd)) }

func stdinTerminal(in io.Reader) terminal {
	if f, ok := in.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		return fdTerminal(f.Fd())
	}
	return nil
}

// readNewPassword asks twice on a terminal (prompts on errOut), or reads one line
// from a pipe; empty is refused.
func readNewPassword(in io.Reader, errOut io.Writer, tty terminal) (string, error) {
	if tty == nil {
		line, err := bufio.NewReader(in).ReadString('\n')
		pw := strings.TrimRight(line, "\r\n")
		if pw == "" {
			if err != nil && !errors.Is(err, io.EOF) {
				return "", fmt.Errorf("reading the password from stdin: %w", err)
			}
			return "", errors.New("no password on stdin: pipe one line in, or run it in a terminal to be asked")
		}
		return pw, nil
	}
	ask := func(prompt string) (string, error) {
		fmt.Fprint(errOut, prompt)
		b, err := tty.ReadPassword()
		fmt.Fprintln(errOut)
		if err != nil {
			return "", fmt.Errorf("reading the password: %w", err)
		}
		return string(b), nil
	}
	pw, err := ask("Password: ")
	if err != nil {
		return "", err
	}
	if pw == "" {
		return "", errors.New("the password is empty: nothing was printed")
	}
	again, err := ask("Again: ")
	if err != nil {
		return "", err
	}
	if again != pw {
		return "", errors.New("the two passwords differ: nothing was printed; run it again")
	}
	return pw, nil
}
