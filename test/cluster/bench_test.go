package cluster_test

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"kubegate.dev/kubegate/test/cluster"
)

// BenchmarkDirectList is the floor for the gateway benchmarks: GET
// /api/v1/namespaces straight to the API server over a kept-alive TLS connection, as
// the admin, and as the agent impersonating alice with the full header set kubegate
// sends (user, two groups, four extras). "parallel" runs 8 concurrent clients.
func BenchmarkDirectList(b *testing.B) {
	c := cluster.StartForTest(b, cluster.Options{})
	admin := clientset(b, c.AdminConfig())

	// Without the controller manager the built-in view role is empty: grant listing
	// namespaces to the maintainer group directly.
	ctx := b.Context()
	role := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "namespace-reader"},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"namespaces"}, Verbs: []string{"get", "list"}}},
	}
	if _, err := admin.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "maintainers-read-namespaces"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.GroupKind, Name: maintainerGroup}},
	}
	if _, err := admin.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}

	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(c.CAPEM)
	client := &http.Client{Transport: &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: pool},
		MaxIdleConnsPerHost: 64,
	}}
	url := c.URL + "/api/v1/namespaces"

	impersonated := http.Header{"Authorization": {"Bearer " + c.AgentTokens[0]}}
	impersonated["Impersonate-User"] = []string{alice.UserName}
	impersonated["Impersonate-Group"] = alice.Groups
	for k, v := range alice.Extra {
		// Assigned directly, not with Set, to send the key the way kubegate does:
		// percent-encoded, case kept (access.md §3).
		impersonated["Impersonate-Extra-"+strings.ReplaceAll(k, "/", "%2F")] = v
	}
	cases := []struct {
		name   string
		header http.Header
	}{
		{name: "admin", header: http.Header{"Authorization": {"Bearer " + c.AdminToken}}},
		{name: "impersonated", header: impersonated},
	}

	// RBAC sees the new binding through an informer: wait until it does.
	deadline := time.Now().Add(30 * time.Second)
	for err := list(client, url, impersonated); err != nil; err = list(client, url, impersonated) {
		if time.Now().After(deadline) {
			b.Fatalf("impersonated list still fails: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}

	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			latencies := make([]time.Duration, 0, b.N)
			for b.Loop() {
				start := time.Now()
				if err := list(client, url, tc.header); err != nil {
					b.Fatal(err)
				}
				latencies = append(latencies, time.Since(start))
			}
			reportPercentiles(b, latencies)
		})
		b.Run(tc.name+"/parallel", func(b *testing.B) {
			b.SetParallelism(4) // 4 × GOMAXPROCS (2 here) concurrent clients
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := list(client, url, tc.header); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

func list(client *http.Client, url string, header http.Header) error {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	req.Header = header
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s: %s", url, resp.Status, body)
	}
	return nil
}

func reportPercentiles(b *testing.B, d []time.Duration) {
	if len(d) == 0 {
		return
	}
	slices.Sort(d)
	p := func(q float64) float64 { return float64(d[int(q*float64(len(d)-1))].Microseconds()) }
	b.ReportMetric(p(0.50), "µs-p50")
	b.ReportMetric(p(0.99), "µs-p99")
}
