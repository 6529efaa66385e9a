package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"kubegate.dev/kubegate/identity/tokencache"
	"kubegate.dev/kubegate/identity/usertoken"
)

// credentialFlags say where get-token's token comes from. update-kubeconfig takes the
// same flags and writes them into the exec plugin's arguments.
type credentialFlags struct {
	gitlabURL       string
	gitlabTokenFile string
	tokenFile       string
	expiry          time.Duration
	checkRevoked    bool
	insecureHTTP    bool
}

func (c *credentialFlags) add(f *pflag.FlagSet) {
	f.StringVar(&c.gitlabURL, "gitlab-url", "", "GitLab's address (https://gitlab.example.com): create short-lived k8s_proxy tokens there with your own GitLab token")
	f.StringVar(&c.gitlabTokenFile, "gitlab-token-file", "", "file holding your GitLab personal access token (api scope); default: the "+usertoken.EnvGitLabToken+" environment variable")
	f.StringVar(&c.tokenFile, "token-file", "", "file holding a token to use as is, instead of creating one in GitLab (the sandbox's demo tokens, or a k8s_proxy token made by hand)")
	f.DurationVar(&c.expiry, "token-expiry-duration", usertoken.DefaultExpiryDuration, "lifetime of created tokens, at least 24h; GitLab ends them at 00:00 UTC, so the default lasts until the end of the current UTC day")
	f.BoolVar(&c.insecureHTTP, "gitlab-insecure-http-for-tests", false, "INSECURE: allow an http:// --gitlab-url, sending your GitLab token unencrypted; only for a GitLab stand-in in tests")
	f.BoolVar(&c.checkRevoked, "check-revoked", false, "ask GitLab whether the cached token was revoked before reusing it (one more GitLab call per kubectl process)")
}

// validate checks the combination. flags reports which flags the user set.
func (c *credentialFlags) validate(flags *pflag.FlagSet) error {
	switch {
	case c.gitlabURL == "" && c.tokenFile == "":
		return errors.New("say where the token comes from: --gitlab-url https://gitlab.example.com (kubegate creates short-lived tokens with your " +
			usertoken.EnvGitLabToken + " or --gitlab-token-file), or --token-file FILE (a token you already have)")
	case c.gitlabURL != "" && c.tokenFile != "":
		return errors.New("--gitlab-url and --token-file exclude each other: use one")
	case c.tokenFile != "":
		for _, name := range []string{"gitlab-token-file", "token-expiry-duration", "check-revoked", "gitlab-insecure-http-for-tests"} {
			if flags.Changed(name) {
				return fmt.Errorf("--%s applies only with --gitlab-url (with --token-file the token is used as is)", name)
			}
		}
		return nil
	}
	base, err := usertoken.NormalizeGitLabURL(c.gitlabURL)
	if err != nil {
		return err
	}
	if err := usertoken.RequireHTTPS(base, c.insecureHTTP); err != nil {
		return err
	}
	if c.expiry < usertoken.MinExpiryDuration {
		return fmt.Errorf("--token-expiry-duration %s is too short: GitLab tokens end at a day boundary, so it must be at least %s", c.expiry, usertoken.MinExpiryDuration)
	}
	return nil
}

// execArgs are the flags update-kubeconfig passes on to get-token. Files become
// absolute paths: kubectl runs the plugin from whatever directory it is in.
func (c *credentialFlags) execArgs() ([]string, error) {
	if c.tokenFile != "" {
		abs, err := filepath.Abs(c.tokenFile)
		if err != nil {
			return nil, err
		}
		return []string{"--token-file", abs}, nil
	}
	base, err := usertoken.NormalizeGitLabURL(c.gitlabURL)
	if err != nil {
		return nil, err
	}
	args := []string{"--gitlab-url", base}
	if c.gitlabTokenFile != "" {
		abs, err := filepath.Abs(c.gitlabTokenFile)
		if err != nil {
			return nil, err
		}
		args = append(args, "--gitlab-token-file", abs)
	}
	if c.expiry != usertoken.DefaultExpiryDuration {
		args = append(args, "--token-expiry-duration", c.expiry.String())
	}
	if c.checkRevoked {
		args = append(args, "--check-revoked")
	}
	if c.insecureHTTP {
		args = append(args, "--gitlab-insecure-http-for-tests")
	}
	return args, nil
}

// gitlab builds the GitLab source, with the user's token from --gitlab-token-file or
// GITLAB_TOKEN.
func (c *credentialFlags) gitlab(getenv func(string) string, cache *tokencache.Cache, stderr io.Writer) (*usertoken.GitLab, error) {
	token, err := usertoken.ResolveGitLabToken(c.gitlabTokenFile, getenv)
	if err != nil {
		return nil, err
	}
	return usertoken.NewGitLab(usertoken.GitLabConfig{
		URL:                  c.gitlabURL,
		InsecureHTTPForTests: c.insecureHTTP,
		Token:                token,
		ExpiryDuration:       c.expiry,
		CheckRevoked:         c.checkRevoked,
		Cache:                cache,
		Warnf: func(format string, args ...any) {
			fmt.Fprintf(stderr, "kubegate get-token: warning: "+format+"\n", args...)
		},
	})
}

// getTokenOptions follows kubectl's pattern: flags → complete → validate → run.
type getTokenOptions struct {
	agentID int64
	creds   credentialFlags

	// Filled by complete.
	getenv   func(string) string
	execInfo string
	cacheDir string
	stdout   io.Writer
	stderr   io.Writer
}

func newGetTokenCommand() *cobra.Command {
	o := &getTokenOptions{}
	cmd := &cobra.Command{
		Use:   "get-token",
		Short: "Print kubectl's credential for the gateway (an ExecCredential; the exec plugin update-kubeconfig sets up)",
		Long: `Print a client.authentication.k8s.io ExecCredential whose token is
pat:<agent-id>:<token>, the credential the gateway reads. kubectl runs this command
itself through the exec plugin that 'kubegate update-kubeconfig' writes; run it by
hand only to see what kubectl gets.

With --gitlab-url, the token is a personal access token with only the k8s_proxy
scope that kubegate creates for you (POST /user/personal_access_tokens, like
'glab cluster agent get-token'), using your own GitLab token from --gitlab-token-file
or GITLAB_TOKEN (it needs the api scope). The token lasts until the end of the
current UTC day (--token-expiry-duration for longer) and is cached, mode 0600, in
$XDG_CACHE_HOME/kubegate/ (default ~/.cache/kubegate/) under a lock, so kubectl
processes share one token until 5 minutes before it expires; expirationTimestamp
is set to that moment. You may get an email from GitLab for each token created.

With --token-file, the file's token is used as is, with no expiry (the sandbox).

The apiVersion follows KUBERNETES_EXEC_INFO (v1 or v1beta1; v1 when run by hand).`,
		Example: `  kubegate get-token --agent 1 --gitlab-url https://gitlab.example.com
  kubegate get-token --agent 1 --token-file ~/.config/kubegate/sandbox-token`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.complete(cmd); err != nil {
				return err
			}
			if err := o.validate(cmd.Flags()); err != nil {
				return err
			}
			return o.run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.Int64Var(&o.agentID, "agent", 0, "numeric id of the GitLab agent the gateway serves (required)")
	o.creds.add(f)
	return cmd
}

func (o *getTokenOptions) complete(cmd *cobra.Command) error {
	o.getenv = os.Getenv
	o.execInfo = os.Getenv(usertoken.EnvExecInfo)
	o.stdout, o.stderr = cmd.OutOrStdout(), cmd.ErrOrStderr()
	if o.creds.gitlabURL != "" {
		dir, err := tokencache.DefaultDir()
		if err != nil {
			return err
		}
		o.cacheDir = dir
	}
	return nil
}

func (o *getTokenOptions) validate(flags *pflag.FlagSet) error {
	if o.agentID <= 0 {
		return errors.New("--agent is required: the numeric id of the agent (GitLab: Operate > Kubernetes clusters)")
	}
	return o.creds.validate(flags)
}

// source is where the token comes from: the --token-file as is, or GitLab (tokens
// cached in cacheDir, shared by every kubegate process of the user).
func (c *credentialFlags) source(getenv func(string) string, cacheDir string, stderr io.Writer) (usertoken.Source, error) {
	if c.tokenFile != "" {
		return usertoken.StaticFile{Path: c.tokenFile}, nil
	}
	return c.gitlab(getenv, &tokencache.Cache{Dir: cacheDir}, stderr)
}

func (o *getTokenOptions) run(ctx context.Context) error {
	src, err := o.creds.source(o.getenv, o.cacheDir, o.stderr)
	if err != nil {
		return err
	}
	tok, err := src.Token(ctx)
	if err != nil {
		return err
	}
	out, err := usertoken.ExecCredential(o.agentID, tok, o.execInfo)
	if err != nil {
		return err
	}
	_, err = o.stdout.Write(out)
	return err
}
