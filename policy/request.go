package policy

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/apiserver/pkg/endpoints/request"

	"kubegate.dev/kubegate/identity"
)

// Request is a Kubernetes API request as the API server understands it: the
// attributes RBAC and operator policies reason about.
type Request struct {
	Verb              string `json:"verb"`
	APIGroup          string `json:"apiGroup"`
	APIVersion        string `json:"apiVersion"`
	Resource          string `json:"resource"`
	Subresource       string `json:"subresource"`
	Namespace         string `json:"namespace"`
	Name              string `json:"name"`
	IsResourceRequest bool   `json:"isResourceRequest"`
	Path              string `json:"path"`
}

// requestInfo is the API server's own parser (k8s.io/apiserver), configured as
// kube-apiserver configures it, so that the attributes a policy sees are the ones
// RBAC will see.
var requestInfo = &request.RequestInfoFactory{
	APIPrefixes:          sets.NewString("api", "apis"),
	GrouplessAPIPrefixes: sets.NewString("api"),
}

// ParseRequest parses an API server request target (path and query, as the API
// server receives it — after the gateway's /k8s-proxy prefix is removed).
func ParseRequest(method, target string) (Request, error) {
	u, err := url.ParseRequestURI(target)
	if err != nil || u.Scheme != "" || u.Host != "" || u.Path == "" || u.Path[0] != '/' {
		return Request{}, fmt.Errorf("the request path %q is not a valid origin-form request target", target)
	}
	// The parser logs the query when it cannot decode list options; never let it
	// log a credential. Both credential parameters start with "gitlab-", so the
	// query is parsed here only when one may be present.
	if strings.Contains(u.RawQuery, "gitlab-") {
		q := u.Query()
		q.Del(identity.QueryAgentID)
		q.Del(identity.QueryCSRFToken)
		u.RawQuery = q.Encode()
	}
	info, err := requestInfo.NewRequestInfo(&http.Request{Method: method, URL: u})
	if err != nil {
		return Request{}, fmt.Errorf("the request path %q is not a Kubernetes API path: %v", u.Path, err)
	}
	return Request{
		Verb:              info.Verb,
		APIGroup:          info.APIGroup,
		APIVersion:        info.APIVersion,
		Resource:          info.Resource,
		Subresource:       info.Subresource,
		Namespace:         info.Namespace,
		Name:              info.Name,
		IsResourceRequest: info.IsResourceRequest,
		Path:              info.Path,
	}, nil
}
