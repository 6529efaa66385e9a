package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"kubegate.dev/kubegate/envoy"
	"kubegate.dev/kubegate/envoy/devcert"
	"kubegate.dev/kubegate/gateway"
)

func newEnvoyCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "envoy",
		Short: "Render, validate and prepare the Envoy configuration of the gateway",
		Long: `Envoy is kubegate's data plane. "kubegate envoy render" writes the bootstrap that
puts ext_authz (kubegate authz), ext_proc (kubegate extproc), the agent token from
SDS (kubegate xds) and the router in front of the API server; "kubegate envoy
validate" checks any bootstrap against the rules that keep the gateway closed.`,
	}
	cmd.AddCommand(newEnvoyRenderCommand(), newEnvoyValidateCommand(), newEnvoyCertsCommand())
	return cmd
}

func newEnvoyRenderCommand() *cobra.Command {
	o := envoy.DefaultOptions()
	var listen, authz, extproc, xds, browser, output, gatewayConfig string
	cmd := &cobra.Command{
		Use:   "render",
		Short: "Print the Envoy v3 bootstrap (YAML) for kubegate",
		Long: `Print an Envoy v3 bootstrap, built with go-control-plane types: a TLS listener
whose HTTP filters are a per-client local rate limit, ext_authz, ext_proc,
credential_injector and router, with timeouts and HTTP/2 limits against slow and
greedy clients and an access log without query strings, an
HTTP/1.1 TLS cluster per agent's API server (kubectl exec needs HTTP/1.1 upstream),
named kubegate_apiserver_<agent id>, each injecting its own agent's token from
the SDS secret kubegate-agent-token-<agent id> in an upstream credential_injector,
and HTTP/2 clusters for the three kubegate services, health-checked over gRPC.
API routes (/k8s-proxy/ and the API's top-level paths such as /version) take their
cluster from the x-kubegate-upstream header kubegate authz sets; a client's copy
is removed first, so a request kubegate authz did not route gets a 503.

With --browser ADDR (kubegate authz's --browser-listen), /ui/ goes to cluster
kubegate_browser (plain HTTP/1.1, no credential injector: the agent token is
never sent there) with ext_authz and ext_proc disabled for that route only and a
30s route timeout; / and /ui redirect to /ui/; every API route removes
Access-Control-* response headers, so no API server CORS setting opens the API
to another origin while a browser holds a session cookie.

The agents are those of --gateway-config FILE (each agent's id and upstream
server and ca_file), or the one agent of --agent-id, --apiserver and
--apiserver-ca.

The output always passes "kubegate envoy validate". ADDR is host:port or
unix:///path; --authz, --extproc and --xds must be loopback or unix sockets unless
--allow-non-loopback. The first lines are a comment with the flags that produced it.`,
		Example: `  kubegate envoy render --tls-cert tls.crt --tls-key tls.key \
    --apiserver https://kubernetes.default.svc --apiserver-ca /var/run/secrets/kubernetes.io/serviceaccount/ca.crt \
    --agent-id 42 --authz 127.0.0.1:9001 --extproc 127.0.0.1:9002 --xds 127.0.0.1:9003 > envoy.yaml
  kubegate envoy render --gateway-config gateway.yaml --tls-cert tls.crt --tls-key tls.key \
    --authz 127.0.0.1:9001 --extproc 127.0.0.1:9002 --xds 127.0.0.1:9003 > envoy.yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var err error
			for _, a := range []struct {
				dst  *envoy.Addr
				val  string
				flag string
			}{{&o.Listen, listen, "--listen"}, {&o.Authz, authz, "--authz"}, {&o.ExtProc, extproc, "--extproc"}, {&o.XDS, xds, "--xds"}, {&o.Browser, browser, "--browser"}} {
				if a.val == "" {
					continue // Options.Check names it as required
				}
				if *a.dst, err = envoy.ParseAddr(a.val); err != nil {
					return fmt.Errorf("%s: %w", a.flag, err)
				}
			}
			if gatewayConfig != "" {
				g, err := gateway.Load(gatewayConfig)
				if err != nil {
					return err
				}
				for _, a := range g.Agents {
					o.Agents = append(o.Agents, envoy.Agent{ID: a.ID, APIServer: a.Upstream.Server, APIServerCA: a.Upstream.CAFile})
				}
			}
			y, err := envoy.Render(o)
			if err != nil {
				return err
			}
			out := append([]byte(renderHeader(cmd.Flags())), y...)
			if output == "" || output == "-" {
				_, err = cmd.OutOrStdout().Write(out)
				return err
			}
			return os.WriteFile(output, out, 0o644)
		},
	}
	f := cmd.Flags()
	f.StringVar(&listen, "listen", envoy.DefaultListen, "ADDR of the TLS listener kubectl connects to")
	f.StringVar(&o.TLSCertFile, "tls-cert", "", "listener certificate chain, PEM (read by Envoy)")
	f.StringVar(&o.TLSKeyFile, "tls-key", "", "listener private key, PEM (read by Envoy)")
	f.StringVar(&gatewayConfig, "gateway-config", "", "gateway configuration FILE: one API server cluster per agent (its id, upstream.server and upstream.ca_file); instead of --agent-id, --apiserver and --apiserver-ca")
	f.Int64Var(&o.AgentID, "agent-id", 0, "the one agent's GitLab id (without --gateway-config): names its cluster kubegate_apiserver_<id> and its token secret kubegate-agent-token-<id>")
	f.StringVar(&o.APIServer, "apiserver", "", "the one agent's Kubernetes API server URL, https://host[:port] (without --gateway-config)")
	f.StringVar(&o.APIServerCA, "apiserver-ca", "", "CA bundle (PEM) that signed the one agent's API server certificate (without --gateway-config)")
	f.StringVar(&authz, "authz", "", "ADDR of kubegate authz (ext_authz gRPC)")
	f.StringVar(&extproc, "extproc", "", "ADDR of kubegate extproc (ext_proc gRPC)")
	f.StringVar(&xds, "xds", "", "ADDR of kubegate xds (SDS for the agent token)")
	f.StringVar(&browser, "browser", "", "ADDR of kubegate authz's browser listener (its --browser-listen, plain HTTP/1.1): routes /ui/ there with ext_authz and ext_proc off for that route only, redirects / and /ui to /ui/, and strips CORS response headers on the API routes; unset renders no browser route")
	f.StringVar(&o.Admin, "admin", o.Admin, `ADDR of Envoy's admin interface, loopback or unix only; "" disables it`)
	f.StringVar(&o.NodeID, "node-id", o.NodeID, "Envoy node id (shown to the SDS server)")
	f.StringVar(&o.NodeCluster, "node-cluster", o.NodeCluster, "Envoy node cluster")
	f.DurationVar(&o.AuthzTimeout, "authz-timeout", o.AuthzTimeout, "deadline of one ext_authz Check call (it may look up GitLab)")
	f.DurationVar(&o.ExtProcTimeout, "extproc-timeout", o.ExtProcTimeout, "ext_proc message_timeout")
	f.DurationVar(&o.ConnectTimeout, "connect-timeout", o.ConnectTimeout, "connect timeout of every cluster")
	f.DurationVar(&o.StreamIdleTimeout, "stream-idle-timeout", o.StreamIdleTimeout, fmt.Sprintf("idle time after which a stream is closed (at least %v: quiet watches)", envoy.MinStreamIdleTimeout))
	f.Uint32Var(&o.MaxHeadersCount, "max-headers-count", o.MaxHeadersCount, "most request headers, including the Impersonate-Group lines ext_proc adds")
	f.Uint32Var(&o.MaxRequestHeadersKB, "max-request-headers-kb", o.MaxRequestHeadersKB, "largest request header block, KiB (1 to 8192)")
	f.Uint32Var(&o.MaxConnections, "max-connections", o.MaxConnections, "most downstream connections, and most concurrent requests per cluster")
	f.DurationVar(&o.RequestHeadersTimeout, "request-headers-timeout", o.RequestHeadersTimeout, fmt.Sprintf("time a client has to send a request's headers (at most %v)", envoy.MaxSlowClientTimeout))
	f.DurationVar(&o.TLSHandshakeTimeout, "tls-handshake-timeout", o.TLSHandshakeTimeout, fmt.Sprintf("time a client has to finish the TLS handshake (at most %v)", envoy.MaxSlowClientTimeout))
	f.Uint32Var(&o.MaxConcurrentStreams, "max-concurrent-streams", o.MaxConcurrentStreams, fmt.Sprintf("most HTTP/2 streams per client connection (at most %d)", envoy.MaxConcurrentStreamsLimit))
	f.Uint32Var(&o.InitialStreamWindowSize, "http2-stream-window", o.InitialStreamWindowSize, "HTTP/2 initial stream window, bytes: what one stream may make Envoy buffer")
	f.Uint32Var(&o.InitialConnectionWindowSize, "http2-connection-window", o.InitialConnectionWindowSize, "HTTP/2 initial connection window, bytes")
	f.Uint32Var(&o.ConnectionBufferBytes, "connection-buffer-bytes", o.ConnectionBufferBytes, "listener per_connection_buffer_limit_bytes: what one connection may make Envoy buffer")
	f.Uint32Var(&o.ClientRateLimit, "client-rate-limit", o.ClientRateLimit, "requests per second one client address may make, refused with 429 beyond (before authentication)")
	f.Uint32Var(&o.ClientRateBurst, "client-rate-burst", o.ClientRateBurst, "requests one client address may make at once (its token bucket's size)")
	f.BoolVar(&o.AllowNonLoopback, "allow-non-loopback", o.AllowNonLoopback, "allow --authz, --extproc, --xds and --browser addresses that are not loopback or unix sockets (only if nothing but Envoy can reach them)")
	f.BoolVar(&o.CheckFiles, "check-files", o.CheckFiles, "read the certificate, key and CA files now; turn off when rendering for another machine or container")
	f.StringVarP(&output, "output", "o", "", "write to FILE instead of stdout")
	return cmd
}

// renderHeader records the flags that produced a rendered file, so it can be
// re-rendered (docker-compose's envoy.yaml is checked this way in a test).
func renderHeader(flags *pflag.FlagSet) string {
	args := []string{"kubegate", "envoy", "render"}
	flags.Visit(func(f *pflag.Flag) { // Visit goes in lexical order: deterministic
		if f.Name != "output" {
			args = append(args, "--"+f.Name+"="+shellQuote(f.Value.String()))
		}
	})
	return "# Generated by: " + strings.Join(args, " ") + "\n" +
		"# Check changes with: kubegate envoy validate FILE\n" +
		"# Needs Envoy " + envoy.MinEnvoyVersion + " or newer (older releases lack fields set here); emulated and tested as Envoy " + envoy.ReferenceEnvoyVersion + "\n"
}

func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./:=@,+", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func newEnvoyValidateCommand() *cobra.Command {
	var listRules bool
	cmd := &cobra.Command{
		Use:   "validate FILE",
		Short: "Check an Envoy bootstrap (YAML or JSON) against kubegate's rules",
		Long: `Check an Envoy v3 bootstrap the way kubegate needs it: strict decoding (an
unknown field is an error, with a did-you-mean), Envoy's protoc-gen-validate
constraints inside every typed_config, and kubegate's rules (filter order, fail
closed, body modes, metadata forwarding, mutation rules, upgrades, timeouts, TLS,
the API server cluster's upstream idle timeout (below kube-apiserver's 90s, so
Envoy never reuses a connection the server has just closed), cluster references;
--list-rules prints them all).

FILE may also be the Istio EnvoyFilter of the Helm chart's mesh.mode=istio
(kubectl get envoyfilter NAME -o yaml): its patches must only ADD one listener and
clusters to the gateway proxy, and those are checked like static resources, each
finding naming its patch ($.spec.configPatches[N].patch.value...).

Exit status 0 and "ok" on stdout when nothing is wrong; exit status 1 with every
finding on stderr as JSON-PATH: MESSAGE [RULE]. FILE "-" reads stdin.
"envoy --mode validate" remains the authoritative check where Envoy is installed.`,
		Example: `  kubegate envoy validate envoy.yaml
  kubegate envoy render ... | kubegate envoy validate -
  kubectl -n kubegate get envoyfilter kubegate -o yaml | kubegate envoy validate -`,
		Args: func(cmd *cobra.Command, args []string) error {
			if listRules {
				return cobra.NoArgs(cmd, args)
			}
			return cobra.ExactArgs(1)(cmd, args)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if listRules {
				return printRules(cmd.OutOrStdout())
			}
			var data []byte
			var err error
			if args[0] == "-" {
				data, err = io.ReadAll(cmd.InOrStdin())
			} else {
				data, err = os.ReadFile(args[0])
			}
			if err != nil {
				return &exitError{code: 1, err: fmt.Errorf("reading the configuration: %w", err)}
			}
			validate := envoy.Validate
			if envoy.IsEnvoyFilter(data) {
				validate = envoy.ValidateEnvoyFilter
			}
			fs := validate(data)
			if len(fs) > 0 {
				fmt.Fprint(cmd.ErrOrStderr(), envoy.FormatFindings(fs))
				return &exitError{code: 1, err: fmt.Errorf("%s: %d finding(s); the configuration is not safe to run as kubegate's gateway", args[0], len(fs))}
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), "ok")
			return err
		},
	}
	cmd.Flags().BoolVar(&listRules, "list-rules", false, "print every rule and what it checks, then exit")
	return cmd
}

func printRules(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, r := range envoy.RuleDocs {
		fmt.Fprintf(tw, "%s\t%s\n", r.ID, r.Checks)
	}
	return tw.Flush()
}

func newEnvoyCertsCommand() *cobra.Command {
	var dir string
	var hosts []string
	cmd := &cobra.Command{
		Use:   "certs",
		Short: "Make a throwaway CA and listener certificate for a local gateway",
		Long: `Write ca.crt, tls.crt and tls.key (ECDSA P-256) into --dir for a local gateway
(docker-compose, the sandbox). Files that are still valid for every --host are
kept, so a restart does not change the CA that kubeconfigs trust. Use your own
PKI for anything that is not a laptop.`,
		Example: `  kubegate envoy certs --dir ./certs --host localhost --host 127.0.0.1`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			wrote, err := devcert.Ensure(dir, hosts, time.Now())
			if err != nil {
				return fmt.Errorf("writing certificates into %s: %w", dir, err)
			}
			verb := "kept"
			if wrote {
				verb = "wrote"
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "%s %s/{%s,%s,%s} for %s\n", verb, dir, devcert.CAFile, devcert.CertFile, devcert.KeyFile, strings.Join(hosts, ", "))
			return err
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "directory for ca.crt, tls.crt and tls.key")
	cmd.Flags().StringSliceVar(&hosts, "host", nil, "DNS name or IP the listener is reached by (repeatable)")
	_ = cmd.MarkFlagRequired("dir")
	_ = cmd.MarkFlagRequired("host")
	return cmd
}
