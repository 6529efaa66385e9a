package policy

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"

	metainternalversionscheme "k8s.io/apimachinery/pkg/apis/meta/internalversion/scheme"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/apiserver/pkg/endpoints/request"

	"kubegate.dev/kubegate/identity"
)

// Request is a Kubernetes API request as the API server understands it: the
// attributes RBAC and operator policies reason about. Every field is read from the
// request target by the API server's own code, from the query the API server will
// receive (extauthz computes it as Envoy forwards it).
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
	// FieldSelector and LabelSelector are the selectors of a list, watch or
	// deletecollection, as RequestInfo reports them to the authorizer (the first
	// value of the query parameter); empty for other verbs, where the API server
	// ignores them.
	FieldSelector string `json:"fieldSelector"`
	LabelSelector string `json:"labelSelector"`
	// DryRun and FieldManager are what a create, update, patch, delete or
	// deletecollection handler decodes from the query (metav1.PatchOptions through
	// the API server's parameter codec): DryRun is true when any dryRun value is
	// present, as the handlers' isDryRun. A DELETE may also carry DeleteOptions in
	// its body, which the gateway does not read.
	DryRun       bool   `json:"dryRun"`
	FieldManager string `json:"fieldManager"`
}

// requestInfo is the API server's own parser (k8s.io/apiserver), configured as
// kube-apiserver configures it, so that the attributes a policy sees are the ones
// RBAC will see.
var requestInfo = &request.RequestInfoFactory{
	APIPrefixes:          sets.NewString("api", "apis"),
	GrouplessAPIPrefixes: sets.NewString("api"),
}

// verbsWithOptions are the verbs whose handlers decode dryRun and fieldManager.
var verbsWithOptions = sets.NewString("create", "update", "patch", "delete", "deletecollection")

// ParseRequest parses an API server request target (path and query, as the API
// server receives it — after the gateway's /k8s-proxy prefix is removed and the
// credential parameters are gone).
func ParseRequest(method, target string) (Request, error) {
	u, err := url.ParseRequestURI(target)
	if err != nil || u.Scheme != "" || u.Host != "" || u.Path == "" || u.Path[0] != '/' {
		return Request{}, fmt.Errorf("the request path %q is not a valid origin-form request target", target)
	}
	// The parser logs the query when it cannot decode list options; never let it
	// log a credential. The gateway hands over the query without them already;
	// this is for other callers (kubegate explain). Both credential parameters
	// start with "gitlab-", so the query is parsed here only when one may be present.
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
	r := Request{
		Verb:              info.Verb,
		APIGroup:          info.APIGroup,
		APIVersion:        info.APIVersion,
		Resource:          info.Resource,
		Subresource:       info.Subresource,
		Namespace:         info.Namespace,
		Name:              info.Name,
		IsResourceRequest: info.IsResourceRequest,
		Path:              info.Path,
		FieldSelector:     info.FieldSelector,
		LabelSelector:     info.LabelSelector,
	}
	if info.IsResourceRequest && verbsWithOptions.Has(info.Verb) && u.RawQuery != "" {
		// The handlers decode their options with this codec (endpoints/handlers:
		// create.go, patch.go, update.go, delete.go); PatchOptions holds both fields.
		var opts metav1.PatchOptions
		if err := metainternalversionscheme.ParameterCodec.DecodeParameters(u.Query(), metav1.SchemeGroupVersion, &opts); err != nil {
			return Request{}, fmt.Errorf("the query's dryRun or fieldManager cannot be read: %v", err)
		}
		r.DryRun, r.FieldManager = len(opts.DryRun) > 0, opts.FieldManager
	}
	return r, nil
}

// SingleValuedParameter reports whether the API server reads the query parameter
// as one value (the first, when repeated): the parameters of the option structs
// its handlers decode (metav1 List/Get/Delete/Create/Patch/Update/TableOptions, the
// core/v1 pod log/exec/attach/port-forward/proxy options) that are not lists, and
// those its filters read with Query().Get (pretty, timeout). dryRun is a list in
// the API but means one thing (dry run or not) and kubectl sends it once, so it is
// counted here. A test checks the list against those structs.
func SingleValuedParameter(key string) bool { return singleValued.Has(key) }

// MultiValuedParameters are the query parameters the API server reads as lists
// that a client may repeat: exec's command and port-forward's ports.
var MultiValuedParameters = sets.NewString("command", "ports")

var singleValued = sets.NewString(
	// metav1.ListOptions, GetOptions
	"allowWatchBookmarks", "continue", "fieldSelector", "labelSelector", "limit",
	"resourceVersion", "resourceVersionMatch", "sendInitialEvents", "shardSelector",
	"timeoutSeconds", "watch",
	// metav1.DeleteOptions, CreateOptions, PatchOptions, UpdateOptions, TableOptions
	"dryRun", "fieldManager", "fieldValidation", "force", "gracePeriodSeconds",
	"ignoreStoreReadErrorWithClusterBreakingPotential", "orphanDependents",
	"propagationPolicy", "includeObject",
	// core/v1 PodLogOptions, PodAttachOptions, PodExecOptions, proxy options
	"container", "follow", "insecureSkipTLSVerifyBackend", "limitBytes", "path",
	"previous", "sinceSeconds", "sinceTime", "stderr", "stdin", "stdout", "stream",
	"tailLines", "timestamps", "tty",
	// read by the API server's filters and negotiation
	"pretty", "timeout",
)
