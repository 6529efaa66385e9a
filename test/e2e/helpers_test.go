package e2e

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/rest"
)

var (
	clientsOnce sync.Once
	gwHTTP      *http.Client // to the gateway, trusting its CA
	adminHTTP   *http.Client // straight to the API server
)

func clients(t *testing.T) {
	t.Helper()
	clientsOnce.Do(func() {
		pool := x509.NewCertPool()
		ca, err := os.ReadFile(gw.GatewayCA)
		if err != nil {
			panic(err)
		}
		pool.AppendCertsFromPEM(ca)
		gwHTTP = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
		rt, err := rest.TransportFor(gw.Cluster.AdminConfig())
		if err != nil {
			panic(err)
		}
		adminHTTP = &http.Client{Timeout: 30 * time.Second, Transport: rt}
	})
}

// response is what came back through the gateway.
type response struct {
	code   int
	header http.Header
	body   string
}

// status decodes a Kubernetes Status body.
func (r response) status(t *testing.T) (reason, message string, code int) {
	t.Helper()
	var st struct {
		Kind, Status, Reason, Message string
		Code                          int
	}
	if err := json.Unmarshal([]byte(r.body), &st); err != nil || st.Kind != "Status" || st.Status != "Failure" {
		t.Fatalf("not a Kubernetes Status (%v): %q", err, r.body)
	}
	return st.Reason, st.Message, st.Code
}

// through sends one request through the gateway. path is under /k8s-proxy/ unless
// it starts with "!" (then sent as is). Headers are name, value pairs; repeated
// names become repeated lines.
func through(t *testing.T, method, path string, headers ...string) response {
	t.Helper()
	clients(t)
	base := strings.TrimSuffix(gw.GatewayURL, "/k8s-proxy")
	url := gw.GatewayURL + path
	if strings.HasPrefix(path, "!") {
		url = base + path[1:]
	}
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Add(headers[i], headers[i+1])
	}
	resp, err := gwHTTP.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return response{code: resp.StatusCode, header: resp.Header, body: string(b)}
}

func pat(user string) string { return fmt.Sprintf("Bearer pat:1:kg-sandbox-%s-token", user) }

// adminGet reads from the API server directly, as the admin (not through the gateway).
func adminGet(t *testing.T, path string) (string, error) {
	t.Helper()
	clients(t)
	resp, err := adminHTTP.Get(gw.Cluster.URL + path)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s: %s", path, resp.Status, b)
	}
	return string(b), err
}

// kubectl runs the real kubectl against the gateway with the test kubeconfig.
func kubectl(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command("kubectl", append([]string{"--kubeconfig", kubecfg}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}
