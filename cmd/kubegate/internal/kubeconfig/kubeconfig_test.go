package kubeconfig

import (
	"bytes"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

func testExec(args ...string) clientcmdapi.ExecConfig {
	return clientcmdapi.ExecConfig{
		APIVersion:      "client.authentication.k8s.io/v1",
		Command:         "/opt/kubegate/bin/kubegate",
		Args:            append([]string{"get-token", "--agent", "1"}, args...),
		InteractiveMode: clientcmdapi.NeverExecInteractiveMode,
		InstallHint:     "install kubegate",
	}
}

func testEntry() Entry {
	return Entry{
		Names:  Names{Cluster: "kubegate-gw.example.com", User: "kubegate-gw.example.com-agent-1", Context: "kubegate-gw.example.com-agent-1"},
		Server: "https://gw.example.com/k8s-proxy",
		Exec:   testExec(),
	}
}

// existing is a kubeconfig with someone else's cluster, user and context current.
func existing() *clientcmdapi.Config {
	c := clientcmdapi.NewConfig()
	c.Clusters["prod"] = &clientcmdapi.Cluster{Server: "https://prod.example.com", CertificateAuthority: "/etc/prod-ca.pem"}
	c.AuthInfos["admin"] = &clientcmdapi.AuthInfo{Token: "admin-token"}
	c.Contexts["prod"] = &clientcmdapi.Context{Cluster: "prod", AuthInfo: "admin", Namespace: "kube-system"}
	c.CurrentContext = "prod"
	return c
}

func TestMerge(t *testing.T) {
	e := testEntry()
	tests := []struct {
		name   string
		start  func() *clientcmdapi.Config
		entry  func(Entry) Entry
		verify func(t *testing.T, got *clientcmdapi.Config)
	}{
		{
			name:  "empty config",
			start: clientcmdapi.NewConfig,
			verify: func(t *testing.T, got *clientcmdapi.Config) {
				if len(got.Clusters) != 1 || len(got.AuthInfos) != 1 || len(got.Contexts) != 1 {
					t.Fatalf("entries: %d clusters, %d users, %d contexts; want one each", len(got.Clusters), len(got.AuthInfos), len(got.Contexts))
				}
				if got.CurrentContext != "" {
					t.Fatalf("current-context = %q without --use-context", got.CurrentContext)
				}
				if c := got.Clusters[e.Cluster]; c.Server != e.Server || c.CertificateAuthorityData != nil {
					t.Fatalf("cluster = %+v", c)
				}
				if u := got.AuthInfos[e.User]; u.Exec == nil || !reflect.DeepEqual(*u.Exec, e.Exec) || u.Token != "" {
					t.Fatalf("user = %+v", u)
				}
				if c := got.Contexts[e.Context]; c.Cluster != e.Cluster || c.AuthInfo != e.User {
					t.Fatalf("context = %+v", c)
				}
			},
		},
		{
			name:  "nil maps",
			start: func() *clientcmdapi.Config { return &clientcmdapi.Config{} },
			verify: func(t *testing.T, got *clientcmdapi.Config) {
				if got.Contexts[e.Context] == nil {
					t.Fatal("no context written")
				}
			},
		},
		{
			name:  "other entries untouched",
			start: existing,
			verify: func(t *testing.T, got *clientcmdapi.Config) {
				want := existing()
				if !reflect.DeepEqual(got.Clusters["prod"], want.Clusters["prod"]) || !reflect.DeepEqual(got.AuthInfos["admin"], want.AuthInfos["admin"]) ||
					!reflect.DeepEqual(got.Contexts["prod"], want.Contexts["prod"]) {
					t.Fatal("another tool's entries changed")
				}
				if got.CurrentContext != "prod" {
					t.Fatalf("current-context = %q, want prod kept", got.CurrentContext)
				}
			},
		},
		{
			name:  "use-context",
			start: existing,
			entry: func(e Entry) Entry { e.UseContext = true; return e },
			verify: func(t *testing.T, got *clientcmdapi.Config) {
				if got.CurrentContext != e.Context {
					t.Fatalf("current-context = %q, want %q", got.CurrentContext, e.Context)
				}
			},
		},
		{
			name: "old credentials of kubegate's user are removed",
			start: func() *clientcmdapi.Config {
				c := existing()
				c.AuthInfos[e.User] = &clientcmdapi.AuthInfo{
					Token: "pat:1:old", ClientCertificateData: []byte("cert"), ClientKeyData: []byte("key"), Username: "u", Password: "p",
					Impersonate: "someone", ImpersonateGroups: []string{"g"}, AuthProvider: &clientcmdapi.AuthProviderConfig{Name: "oidc"},
					Extensions: map[string]runtime.Object{},
				}
				return c
			},
			verify: func(t *testing.T, got *clientcmdapi.Config) {
				u := got.AuthInfos[e.User]
				want := clientcmdapi.AuthInfo{Exec: ptr(e.Exec), Extensions: map[string]runtime.Object{}}
				if !reflect.DeepEqual(*u, want) {
					t.Fatalf("user = %+v, want only the exec plugin", u)
				}
			},
		},
		{
			name: "cluster: CA and other settings kept without --ca",
			start: func() *clientcmdapi.Config {
				c := existing()
				c.Clusters[e.Cluster] = &clientcmdapi.Cluster{Server: "https://old.example.com/k8s-proxy", CertificateAuthority: "/etc/gw-ca.pem", TLSServerName: "gw", ProxyURL: "http://proxy:3128"}
				return c
			},
			verify: func(t *testing.T, got *clientcmdapi.Config) {
				c := got.Clusters[e.Cluster]
				if c.Server != e.Server || c.CertificateAuthority != "/etc/gw-ca.pem" || c.TLSServerName != "gw" || c.ProxyURL != "http://proxy:3128" {
					t.Fatalf("cluster = %+v", c)
				}
			},
		},
		{
			name: "cluster: --ca replaces the CA settings",
			start: func() *clientcmdapi.Config {
				c := existing()
				c.Clusters[e.Cluster] = &clientcmdapi.Cluster{Server: e.Server, CertificateAuthority: "/etc/gw-ca.pem", InsecureSkipTLSVerify: true}
				return c
			},
			entry: func(e Entry) Entry { e.CAData = []byte("PEM"); return e },
			verify: func(t *testing.T, got *clientcmdapi.Config) {
				c := got.Clusters[e.Cluster]
				if string(c.CertificateAuthorityData) != "PEM" || c.CertificateAuthority != "" || c.InsecureSkipTLSVerify {
					t.Fatalf("cluster = %+v", c)
				}
			},
		},
		{
			name: "context keeps the user's namespace",
			start: func() *clientcmdapi.Config {
				c := existing()
				c.Contexts[e.Context] = &clientcmdapi.Context{Cluster: "elsewhere", AuthInfo: "admin", Namespace: "demo"}
				return c
			},
			verify: func(t *testing.T, got *clientcmdapi.Config) {
				c := got.Contexts[e.Context]
				if c.Cluster != e.Cluster || c.AuthInfo != e.User || c.Namespace != "demo" {
					t.Fatalf("context = %+v", c)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			entry := e
			if tt.entry != nil {
				entry = tt.entry(e)
			}
			start := tt.start()
			before := start.DeepCopy()
			got := Merge(start, entry)
			if !reflect.DeepEqual(start, before) {
				t.Fatal("Merge changed its input")
			}
			tt.verify(t, got)
			if again := Merge(got, entry); !reflect.DeepEqual(again, got) {
				t.Fatal("merging the result again changed it: a repeated run would write")
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

func TestServerURL(t *testing.T) {
	tests := []struct{ in, want string }{
		{"https://gw.example.com", "https://gw.example.com/k8s-proxy"},
		{"https://gw.example.com/", "https://gw.example.com/k8s-proxy"},
		{"https://gw.example.com/k8s-proxy", "https://gw.example.com/k8s-proxy"},
		{"https://gw.example.com/k8s-proxy/", "https://gw.example.com/k8s-proxy"},
		{"https://127.0.0.1:8443", "https://127.0.0.1:8443/k8s-proxy"},
		{"https://example.com/kube", "https://example.com/kube/k8s-proxy"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ServerURL(tt.in)
			if err != nil || got.String() != tt.want {
				t.Fatalf("ServerURL(%q) = %v, %v; want %s", tt.in, got, err, tt.want)
			}
		})
	}
	for _, bad := range []string{"", "gw.example.com", "http://gw.example.com", "https://u:p@gw.example.com", "https://gw.example.com/?x=1"} {
		t.Run("bad "+bad, func(t *testing.T) {
			if _, err := ServerURL(bad); err == nil || !strings.Contains(err.Error(), "https") {
				t.Fatalf("ServerURL(%q) err = %v, want a refusal naming https", bad, err)
			}
		})
	}
}

func TestDefaultNames(t *testing.T) {
	tests := []struct {
		server string
		agent  int64
		want   Names
	}{
		{"https://gw.example.com/k8s-proxy", 1, Names{"kubegate-gw.example.com", "kubegate-gw.example.com-agent-1", "kubegate-gw.example.com-agent-1"}},
		{"https://gw.example.com:443/k8s-proxy", 7, Names{"kubegate-gw.example.com", "kubegate-gw.example.com-agent-7", "kubegate-gw.example.com-agent-7"}},
		{"https://127.0.0.1:8443/k8s-proxy", 1, Names{"kubegate-127.0.0.1:8443", "kubegate-127.0.0.1:8443-agent-1", "kubegate-127.0.0.1:8443-agent-1"}},
	}
	for _, tt := range tests {
		t.Run(tt.server, func(t *testing.T) {
			u, _ := url.Parse(tt.server)
			if got := DefaultNames(u, tt.agent); got != tt.want {
				t.Fatalf("DefaultNames = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestAgentNames(t *testing.T) {
	u, _ := url.Parse("https://gw.example.com/k8s-proxy")
	tests := []struct {
		agent int64
		name  string
		want  Names
	}{
		{1, "prod", Names{"kubegate-gw.example.com", "kubegate-gw.example.com-prod-agent-1", "kubegate-gw.example.com-prod-agent-1"}},
		// A GitLab agent may well be named agent-2: its names still differ from the
		// single-agent ones of agent 2 and of agent 1.
		{1, "agent-2", Names{"kubegate-gw.example.com", "kubegate-gw.example.com-agent-2-agent-1", "kubegate-gw.example.com-agent-2-agent-1"}},
		{2, "agent", Names{"kubegate-gw.example.com", "kubegate-gw.example.com-agent-agent-2", "kubegate-gw.example.com-agent-agent-2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := AgentNames(u, tt.agent, tt.name)
			if got != tt.want {
				t.Fatalf("AgentNames = %+v, want %+v", got, tt.want)
			}
			for id := int64(1); id <= 3; id++ {
				if single := DefaultNames(u, id); single.Context == got.Context || single.User == got.User {
					t.Errorf("%+v collides with the single-agent names of agent %d", got, id)
				}
			}
		})
	}
}

// access is the ConfigAccess update-kubeconfig builds: --kubeconfig when given,
// otherwise KUBECONFIG (set by the test) and ~/.kube/config.
func access(explicit string) clientcmd.ConfigAccess {
	po := clientcmd.NewDefaultPathOptions()
	po.LoadingRules.ExplicitPath = explicit
	return po
}

func writeConfig(t *testing.T, path string, c *clientcmdapi.Config, mode os.FileMode) {
	t.Helper()
	if err := clientcmd.WriteToFile(*c, path); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

func load(t *testing.T, path string) *clientcmdapi.Config {
	t.Helper()
	c, err := clientcmd.LoadFromFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func mode(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func TestUpdateFile(t *testing.T) {
	e := testEntry()
	e.UseContext = true
	e.CAData = []byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")

	t.Run("no file yet", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "sub", "config")
		res, err := Update(access(path), e)
		if err != nil || !res.Changed || res.File != path {
			t.Fatalf("Update = %+v, %v", res, err)
		}
		if m := mode(t, path); m != 0o600 {
			t.Fatalf("mode = %v, want 0600", m)
		}
		got := load(t, path)
		if err := clientcmd.Validate(*got); err != nil {
			t.Fatalf("kubectl would refuse the kubeconfig: %v", err)
		}
		if got.CurrentContext != e.Context || got.AuthInfos[e.User].Exec.Command != e.Exec.Command {
			t.Fatalf("written config: current %q, user %+v", got.CurrentContext, got.AuthInfos[e.User])
		}
		raw, _ := os.ReadFile(path)
		for _, want := range []string{"interactiveMode: Never", "apiVersion: client.authentication.k8s.io/v1", "command: /opt/kubegate/bin/kubegate", "server: https://gw.example.com/k8s-proxy"} {
			if !bytes.Contains(raw, []byte(want)) {
				t.Errorf("kubeconfig lacks %q:\n%s", want, raw)
			}
		}
	})

	t.Run("existing file: other entries kept, mode tightened", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "config")
		writeConfig(t, path, existing(), 0o644)
		if _, err := Update(access(path), e); err != nil {
			t.Fatal(err)
		}
		got := load(t, path)
		ex := existing()
		if got.Clusters["prod"].Server != ex.Clusters["prod"].Server || got.AuthInfos["admin"].Token != "admin-token" || got.Contexts["prod"].Namespace != "kube-system" {
			t.Fatal("another tool's entries changed")
		}
		if m := mode(t, path); m != 0o600 {
			t.Fatalf("mode = %v, want 0600", m)
		}
	})

	t.Run("repeated run writes nothing", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "config")
		writeConfig(t, path, existing(), 0o600)
		if res, err := Update(access(path), e); err != nil || !res.Changed {
			t.Fatalf("first Update = %+v, %v", res, err)
		}
		before, _ := os.ReadFile(path)
		old := time.Unix(1_000_000_000, 0)
		if err := os.Chtimes(path, old, old); err != nil {
			t.Fatal(err)
		}
		res, err := Update(access(path), e)
		if err != nil || res.Changed {
			t.Fatalf("second Update = %+v, %v; want unchanged", res, err)
		}
		after, _ := os.ReadFile(path)
		fi, _ := os.Stat(path)
		if !bytes.Equal(before, after) || !fi.ModTime().Equal(old) {
			t.Fatal("the second run rewrote the file")
		}
	})

	t.Run("KUBECONFIG list: each entry stays in its file", func(t *testing.T) {
		dir := t.TempDir()
		a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
		writeConfig(t, a, existing(), 0o600)
		old := clientcmdapi.NewConfig()
		old.AuthInfos[e.User] = &clientcmdapi.AuthInfo{Token: "pat:1:stale"}
		writeConfig(t, b, old, 0o600)
		t.Setenv("KUBECONFIG", a+string(os.PathListSeparator)+b)
		if _, err := Update(access(""), e); err != nil {
			t.Fatal(err)
		}
		ga, gb := load(t, a), load(t, b)
		if u := gb.AuthInfos[e.User]; u == nil || u.Exec == nil || u.Token != "" {
			t.Fatalf("user in b = %+v, want updated in place", u)
		}
		if ga.AuthInfos[e.User] != nil {
			t.Fatal("the user was copied into a as well")
		}
		if ga.Clusters[e.Cluster] == nil || ga.Contexts[e.Context] == nil || ga.Contexts["prod"] == nil {
			t.Fatalf("a lacks the new entries or lost its own: %v %v", ga.Clusters, ga.Contexts)
		}
		if res, err := Update(access(""), e); err != nil || res.Changed {
			t.Fatalf("repeat over KUBECONFIG = %+v, %v; want unchanged", res, err)
		}
	})

	t.Run("exec command stays absolute next to the binary", func(t *testing.T) {
		dir := t.TempDir()
		path := filepath.Join(dir, "config")
		e := e
		e.Exec.Command = filepath.Join(dir, "bin", "kubegate")
		if _, err := Update(access(path), e); err != nil {
			t.Fatal(err)
		}
		raw, _ := os.ReadFile(path)
		if !bytes.Contains(raw, []byte("command: "+e.Exec.Command)) {
			t.Fatalf("command not written as the absolute path:\n%s", raw)
		}
	})
}

func TestUpdateErrors(t *testing.T) {
	e := testEntry()
	t.Run("locked", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "config")
		writeConfig(t, path, existing(), 0o600)
		if err := os.WriteFile(path+".lock", nil, 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := Update(access(path), e)
		if err == nil || !strings.Contains(err.Error(), "delete "+path+".lock") {
			t.Fatalf("err = %v, want one saying to delete the lock", err)
		}
	})
	t.Run("not a kubeconfig", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "config")
		if err := os.WriteFile(path, []byte("clusters: [[["), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := Update(access(path), e)
		if err == nil || !strings.Contains(err.Error(), "reading the kubeconfig") || !strings.Contains(err.Error(), "--kubeconfig") {
			t.Fatalf("err = %v", err)
		}
		if raw, _ := os.ReadFile(path); string(raw) != "clusters: [[[" {
			t.Fatal("a file that could not be read was overwritten")
		}
	})
	t.Run("path under a regular file", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "plain-file")
		if err := os.WriteFile(file, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		// KUBECONFIG names a file under a regular file: nothing there to read, and
		// nothing can be written.
		t.Setenv("KUBECONFIG", filepath.Join(file, "config"))
		_, err := Update(access(""), e)
		if err == nil || !strings.Contains(err.Error(), "--kubeconfig") {
			t.Fatalf("err = %v, want one pointing at --kubeconfig", err)
		}
	})
}

func TestWriteErrorPermission(t *testing.T) {
	err := writeError("/home/u/.kube/config", &os.PathError{Op: "open", Path: "/home/u/.kube/config", Err: os.ErrPermission})
	for _, want := range []string{"not writable", "/home/u/.kube/config", "--kubeconfig"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q lacks %q", err, want)
		}
	}
}
