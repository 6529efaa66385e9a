package explain

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	authorizationv1 "k8s.io/api/authorization/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/rest"
)

// Client is the part of the Kubernetes API explain asks: access reviews and RBAC
// reads, as plain JSON over client-go's authenticated transport. It is not
// client-go's typed clientset on purpose: that one (k8s.io/client-go/kubernetes,
// and each typed group through kubernetes/scheme) registers every built-in API
// group when the program starts, which cost every kubegate process — authz,
// extproc and xds included, none of which use it — about 20 MB of resident memory
// (BenchmarkLifecycle: 44 → 68 MB idle).
type Client struct {
	http *http.Client
	base *url.URL
}

// NewClient builds a Client from a rest.Config (a kubeconfig's credentials, TLS
// and proxy settings, through rest.HTTPClientFor).
func NewClient(cfg *rest.Config) (*Client, error) {
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return nil, err
	}
	host := cfg.Host
	if !strings.Contains(host, "://") {
		host = "https://" + host
	}
	base, err := url.Parse(host)
	if err != nil {
		return nil, fmt.Errorf("server %q: %v", cfg.Host, err)
	}
	base.Path = strings.TrimSuffix(base.Path, "/") + strings.TrimSuffix(cfg.APIPath, "/")
	return &Client{http: hc, base: base}, nil
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	u := *c.base
	u.Path = strings.TrimSuffix(u.Path, "/") + path
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), body)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		// The API server answers errors with a metav1.Status; keep it, so callers
		// can ask apierrors.IsForbidden and users see the server's message.
		var st metav1.Status
		if json.Unmarshal(data, &st) == nil && st.Kind == "Status" {
			return &apierrors.StatusError{ErrStatus: st}
		}
		return apierrors.NewGenericServerResponse(resp.StatusCode, method, schema.GroupResource{}, "", strings.TrimSpace(string(data)), 0, false)
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("%s %s: the answer is not the expected JSON: %v", method, path, err)
	}
	return nil
}

// CreateSubjectAccessReview asks what the authorizer answers for another identity.
func (c *Client) CreateSubjectAccessReview(ctx context.Context, sar *authorizationv1.SubjectAccessReview) (*authorizationv1.SubjectAccessReview, error) {
	sar.APIVersion, sar.Kind = "authorization.k8s.io/v1", "SubjectAccessReview"
	out := &authorizationv1.SubjectAccessReview{}
	return out, c.do(ctx, http.MethodPost, "/apis/authorization.k8s.io/v1/subjectaccessreviews", sar, out)
}

// CreateSelfSubjectAccessReview asks what the authorizer answers for the caller.
func (c *Client) CreateSelfSubjectAccessReview(ctx context.Context, ssar *authorizationv1.SelfSubjectAccessReview) (*authorizationv1.SelfSubjectAccessReview, error) {
	ssar.APIVersion, ssar.Kind = "authorization.k8s.io/v1", "SelfSubjectAccessReview"
	out := &authorizationv1.SelfSubjectAccessReview{}
	return out, c.do(ctx, http.MethodPost, "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", ssar, out)
}

const rbacPath = "/apis/rbac.authorization.k8s.io/v1"

// ListClusterRoleBindings lists every ClusterRoleBinding.
func (c *Client) ListClusterRoleBindings(ctx context.Context) (*rbacv1.ClusterRoleBindingList, error) {
	out := &rbacv1.ClusterRoleBindingList{}
	return out, c.do(ctx, http.MethodGet, rbacPath+"/clusterrolebindings", nil, out)
}

// ListRoleBindings lists the RoleBindings of one namespace.
func (c *Client) ListRoleBindings(ctx context.Context, namespace string) (*rbacv1.RoleBindingList, error) {
	out := &rbacv1.RoleBindingList{}
	return out, c.do(ctx, http.MethodGet, rbacPath+"/namespaces/"+url.PathEscape(namespace)+"/rolebindings", nil, out)
}

// GetClusterRole reads one ClusterRole.
func (c *Client) GetClusterRole(ctx context.Context, name string) (*rbacv1.ClusterRole, error) {
	out := &rbacv1.ClusterRole{}
	return out, c.do(ctx, http.MethodGet, rbacPath+"/clusterroles/"+url.PathEscape(name), nil, out)
}

// GetRole reads one Role.
func (c *Client) GetRole(ctx context.Context, namespace, name string) (*rbacv1.Role, error) {
	out := &rbacv1.Role{}
	return out, c.do(ctx, http.MethodGet, rbacPath+"/namespaces/"+url.PathEscape(namespace)+"/roles/"+url.PathEscape(name), nil, out)
}
