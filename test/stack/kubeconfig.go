package stack

import (
	"fmt"
	"os"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// KubeconfigUser is one user of a written kubeconfig: a context named after the
// user, with the static token pat:<agent>:<token>.
type KubeconfigUser struct {
	Name  string
	Token string // the personal access token itself; the pat:<agent-id>: prefix is added
}

// WriteKubeconfig writes a kubeconfig (mode 0600) for the gateway with one context
// per user; the first becomes the current context.
func (s *Stack) WriteKubeconfig(path string, users ...KubeconfigUser) error {
	ca, err := os.ReadFile(s.GatewayCA)
	if err != nil {
		return err
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["kubegate-sandbox"] = &clientcmdapi.Cluster{Server: s.GatewayURL, CertificateAuthorityData: ca}
	for i, u := range users {
		cfg.AuthInfos[u.Name] = &clientcmdapi.AuthInfo{Token: fmt.Sprintf("pat:%d:%s", AgentID, u.Token)}
		cfg.Contexts[u.Name] = &clientcmdapi.Context{Cluster: "kubegate-sandbox", AuthInfo: u.Name, Namespace: DemoNamespace}
		if i == 0 {
			cfg.CurrentContext = u.Name
		}
	}
	return clientcmd.WriteToFile(*cfg, path)
}
