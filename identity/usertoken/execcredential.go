package usertoken

import (
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clientauthv1 "k8s.io/client-go/pkg/apis/clientauthentication/v1"
)

// ExecCredential API versions kubegate can answer with. v1 is what update-kubeconfig
// writes; v1beta1 has the same status fields, so a kubeconfig written by hand with it
// works too.
const (
	APIVersionV1      = "client.authentication.k8s.io/v1"
	APIVersionV1beta1 = "client.authentication.k8s.io/v1beta1"
)

// EnvExecInfo is the variable through which client-go passes the exec plugin an
// ExecCredential describing the request, including the apiVersion it expects back
// (https://kubernetes.io/docs/reference/access-authn-authz/authentication/#input-and-output-formats).
const EnvExecInfo = "KUBERNETES_EXEC_INFO"

// ExpiryBuffer is how much earlier than the token the ExecCredential expires, so that
// kubectl asks for a new credential before the gateway starts refusing the old one.
const ExpiryBuffer = 5 * time.Minute

// GatewayCredential is the bearer token the gateway reads for agentID:
// pat:<agent-id>:<token> (access.md §2).
func GatewayCredential(agentID int64, tok Token) string {
	return "pat:" + strconv.FormatInt(agentID, 10) + ":" + tok.Secret
}

// ExecCredential renders the ExecCredential for agentID and tok, in the apiVersion
// execInfo (the value of KUBERNETES_EXEC_INFO, possibly empty) asks for. The token is
// pat:<agent-id>:<token> (access.md §2); the expiry, when the token's is known, is
// ExpiryBuffer before it.
func ExecCredential(agentID int64, tok Token, execInfo string) ([]byte, error) {
	version, err := execAPIVersion(execInfo)
	if err != nil {
		return nil, err
	}
	cred := clientauthv1.ExecCredential{
		Status: &clientauthv1.ExecCredentialStatus{
			Token: GatewayCredential(agentID, tok),
		},
	}
	cred.APIVersion = version
	cred.Kind = "ExecCredential"
	if !tok.ExpiresAt.IsZero() {
		cred.Status.ExpirationTimestamp = &metav1.Time{Time: tok.ExpiresAt.Add(-ExpiryBuffer).UTC()}
	}
	out, err := json.MarshalIndent(cred, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(out, '\n'), nil
}

// execAPIVersion picks the apiVersion client-go asked for. Without KUBERNETES_EXEC_INFO
// (get-token run by hand) it is v1.
func execAPIVersion(execInfo string) (string, error) {
	if execInfo == "" {
		return APIVersionV1, nil
	}
	var info struct {
		APIVersion string `json:"apiVersion"`
	}
	if err := json.Unmarshal([]byte(execInfo), &info); err != nil {
		return "", fmt.Errorf("%s is not the JSON ExecCredential client-go passes (%v); unset it to run get-token by hand", EnvExecInfo, err)
	}
	switch info.APIVersion {
	case "":
		return APIVersionV1, nil
	case APIVersionV1, APIVersionV1beta1:
		return info.APIVersion, nil
	}
	return "", fmt.Errorf("kubectl asked for an ExecCredential of %q; kubegate answers %s and %s: set the kubeconfig user's exec apiVersion to %s (kubegate update-kubeconfig writes it so)",
		info.APIVersion, APIVersionV1, APIVersionV1beta1, APIVersionV1)
}
