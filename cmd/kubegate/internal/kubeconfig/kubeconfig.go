// Package kubeconfig writes the kubeconfig entries of `kubegate update-kubeconfig`: a
// cluster at the gateway, a user whose credential is `kubegate get-token` as an exec
// plugin, and a context joining them. Like `kubectl config set-cluster/set-credentials/
// set-context` it merges into the existing configuration with client-go's clientcmd
// (KUBECONFIG and --kubeconfig respected, every other entry left alone, each entry
// written back to the file it came from by clientcmd.ModifyConfig).
//
// Merge is pure and holds the rules; Update loads, merges and writes.
//
// It is under cmd/kubegate/internal because only the CLI writes kubeconfigs; nothing
// in it concerns the gateway's identity checks.
package kubeconfig

import (
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"

	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"kubegate.dev/kubegate/contract"
)

// ProxyPath is the path prefix under which the gateway serves the Kubernetes API
// (access.md §4), as KAS does.
const ProxyPath = contract.ProxyPath

// Names are the three kubeconfig entries kubegate owns for one gateway and agent.
type Names struct {
	Cluster string
	User    string
	Context string
}

// DefaultNames derives the names from the gateway's host (and port) and the agent:
// cluster kubegate-<host>, user and context kubegate-<host>-agent-<id>. The prefix
// keeps them apart from entries other tools wrote for the same host.
func DefaultNames(server *url.URL, agentID int64) Names {
	host := server.Host
	if h, p, err := net.SplitHostPort(host); err == nil && (p == "443" && server.Scheme == "https") {
		host = h
	}
	cluster := "kubegate-" + host
	user := cluster + "-agent-" + strconv.FormatInt(agentID, 10)
	return Names{Cluster: cluster, User: user, Context: user}
}

// AgentNames are the names update-kubeconfig --all-agents gives one agent of a
// gateway that serves several: cluster kubegate-<host> (the gateway, shared with
// DefaultNames'), user and context kubegate-<host>-<agent-name>-agent-<id>. They
// never equal DefaultNames' kubegate-<host>-agent-<id> (the part after the host
// would have to be both "agent-<digits>" and "<name>-agent-<digits>" with a
// non-empty name), so listing all agents leaves a single-agent entry, perhaps
// written with other credentials, alone.
func AgentNames(server *url.URL, agentID int64, agentName string) Names {
	n := DefaultNames(server, agentID)
	n.User = n.Cluster + "-" + agentName + "-agent-" + strconv.FormatInt(agentID, 10)
	n.Context = n.User
	return n
}

// ServerURL turns the gateway's base URL into the kubeconfig server: the base with
// /k8s-proxy appended. A base that already ends in /k8s-proxy is taken as is, so a
// KAS-style address (https://kas.example.com/k8s-proxy) works too. Only https is
// accepted: the exec plugin's token would otherwise cross the network in clear text.
func ServerURL(base string) (*url.URL, error) {
	u, err := url.Parse(strings.TrimSpace(base))
	if err != nil || u.Scheme != "https" || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("--server %q must be the gateway's https address, such as https://kubegate.example.com (kubegate adds %s)", base, ProxyPath)
	}
	p := strings.TrimSuffix(u.Path, "/")
	if !strings.HasSuffix(p, ProxyPath) {
		p += ProxyPath
	}
	u.Path, u.RawPath = p, ""
	return u, nil
}

// Entry is what update-kubeconfig writes.
type Entry struct {
	Names
	// Server is the cluster's server URL (ServerURL's result).
	Server string
	// CAData, when non-nil, replaces the cluster's certificate authority (embedded,
	// so the kubeconfig keeps working when the CA file moves). nil keeps whatever CA
	// settings the cluster entry already has, as kubectl config set-cluster does for
	// flags not given.
	CAData []byte
	// Exec is the user's credential plugin.
	Exec clientcmdapi.ExecConfig
	// UseContext makes the context the current one.
	UseContext bool
}

// Merge returns a copy of cfg with e's cluster, user and context set and nothing else
// changed:
//   - cluster: server set; CA replaced when given, otherwise kept; other fields (proxy
//     URL, TLS server name, extensions) kept.
//   - user: every other credential removed (a token, client certificate, auth provider
//     or impersonation left from before would be sent along with, or instead of, the
//     exec plugin's token), then the exec plugin set. Extensions kept.
//   - context: cluster and user set; namespace and extensions kept, so
//     `kubectl config set-context --current --namespace=...` survives a re-run.
//   - current-context changed only with UseContext.
//
// Merging the result again with the same entry yields an equal config: a repeated
// update-kubeconfig writes nothing.
func Merge(cfg *clientcmdapi.Config, e Entry) *clientcmdapi.Config {
	out := cfg.DeepCopy()
	if out == nil {
		out = clientcmdapi.NewConfig()
	}
	if out.Clusters == nil {
		out.Clusters = map[string]*clientcmdapi.Cluster{}
	}
	if out.AuthInfos == nil {
		out.AuthInfos = map[string]*clientcmdapi.AuthInfo{}
	}
	if out.Contexts == nil {
		out.Contexts = map[string]*clientcmdapi.Context{}
	}

	cluster := out.Clusters[e.Cluster]
	if cluster == nil {
		cluster = clientcmdapi.NewCluster()
	}
	cluster.Server = e.Server
	if e.CAData != nil {
		cluster.CertificateAuthorityData = append([]byte(nil), e.CAData...)
		cluster.CertificateAuthority = ""
		cluster.InsecureSkipTLSVerify = false
	}
	out.Clusters[e.Cluster] = cluster

	user := out.AuthInfos[e.User]
	if user == nil {
		user = clientcmdapi.NewAuthInfo()
	}
	clearCredentials(user)
	user.Exec = e.Exec.DeepCopy()
	out.AuthInfos[e.User] = user

	ctx := out.Contexts[e.Context]
	if ctx == nil {
		ctx = clientcmdapi.NewContext()
	}
	ctx.Cluster = e.Cluster
	ctx.AuthInfo = e.User
	out.Contexts[e.Context] = ctx

	if e.UseContext {
		out.CurrentContext = e.Context
	}
	return out
}

// clearCredentials removes every credential but the exec plugin's from a user entry.
// Empty collections are left as they are (nil or empty) so that a re-merge is equal
// to what was loaded.
func clearCredentials(a *clientcmdapi.AuthInfo) {
	a.Token, a.TokenFile = "", ""
	a.Username, a.Password = "", ""
	a.ClientCertificate, a.ClientKey = "", ""
	if len(a.ClientCertificateData) > 0 {
		a.ClientCertificateData = nil
	}
	if len(a.ClientKeyData) > 0 {
		a.ClientKeyData = nil
	}
	a.Impersonate, a.ImpersonateUID = "", ""
	if len(a.ImpersonateGroups) > 0 {
		a.ImpersonateGroups = nil
	}
	if len(a.ImpersonateUserExtra) > 0 {
		a.ImpersonateUserExtra = nil
	}
	a.AuthProvider = nil
}
