{{/*
kubegate.validate: the rules values.schema.json cannot express. Each message names
the value and how to fix it; nothing renders half-configured. Included once, by
validate.yaml.
*/}}
{{- define "kubegate.validate" -}}
{{- $v := .Values }}
{{- if not $v.agent.id }}
{{- fail "agent.id is required: the numeric id of the GitLab agent this gateway serves (--set agent.id=<id>)" }}
{{- end }}
{{- if not $v.agent.configProjectId }}
{{- fail "agent.configProjectId is required: the numeric id of the project holding the agent configuration (--set agent.configProjectId=<id>)" }}
{{- end }}
{{- if and $v.agent.config.inline $v.agent.config.existingConfigMap }}
{{- fail "agent.config: set either agent.config.inline or agent.config.existingConfigMap, not both" }}
{{- end }}
{{- if not (or $v.agent.config.inline $v.agent.config.existingConfigMap) }}
{{- fail "agent.config is empty: give the agent configuration file with --set-file agent.config.inline=config.yaml, or name your ConfigMap in agent.config.existingConfigMap" }}
{{- end }}
{{- include "kubegate.validateBrowser" . }}
{{- $gitlabSet := or $v.identity.gitlab.url $v.identity.gitlab.tokenSecret.name }}
{{- if eq $v.identity.source "directory" }}
{{- if $gitlabSet }}
{{- fail "identity: both a directory and GitLab are configured: identity.source is directory but identity.gitlab.url or identity.gitlab.tokenSecret.name is set; unset them, or set identity.source=gitlab and unset identity.directory.existingSecret" }}
{{- end }}
{{- if not $v.identity.directory.existingSecret }}
{{- fail "identity.directory.existingSecret is required with identity.source=directory: the Secret holding the directory file (kubectl create secret generic kubegate-directory --from-file=directory.yaml)" }}
{{- end }}
{{- else }}
{{- if $v.identity.directory.existingSecret }}
{{- fail "identity: both a directory and GitLab are configured: identity.source is gitlab but identity.directory.existingSecret is set; unset it, or use identity.source=directory without the identity.gitlab values" }}
{{- end }}
{{- if not (hasPrefix "https://" $v.identity.gitlab.url) }}
{{- fail (printf "identity.gitlab.url %q must be GitLab's https:// base URL (kubegate's service token and users' tokens travel to it)" $v.identity.gitlab.url) }}
{{- end }}
{{- if not $v.identity.gitlab.tokenSecret.name }}
{{- fail "identity.gitlab.tokenSecret.name is required with identity.source=gitlab: the Secret holding kubegate's GitLab service token (kubectl create secret generic kubegate-gitlab --from-file=token)" }}
{{- end }}
{{- end }}
{{- if $v.identity.oidc.issuer }}
{{- if not (hasPrefix "https://" $v.identity.oidc.issuer) }}
{{- fail (printf "identity.oidc.issuer %q must be an https:// URL" $v.identity.oidc.issuer) }}
{{- end }}
{{- if not $v.identity.oidc.clientId }}
{{- fail "identity.oidc.clientId is required with identity.oidc.issuer: the audience ID tokens must name" }}
{{- end }}
{{- end }}
{{- if and $v.policy.modules $v.policy.existingConfigMap }}
{{- fail "policy: set either policy.modules or policy.existingConfigMap, not both" }}
{{- end }}
{{- range $name, $_ := $v.policy.modules }}
{{- if not (regexMatch "^[A-Za-z0-9][A-Za-z0-9._-]*\\.rego$" $name) }}
{{- fail (printf "policy.modules: %q is not a file name ending in .rego" $name) }}
{{- end }}
{{- end }}
{{- if not (hasPrefix "https://" $v.apiServer.url) }}
{{- fail (printf "apiServer.url %q must be https:// (the agent token is sent there)" $v.apiServer.url) }}
{{- end }}
{{- $xds := include "kubegate.xdsAddress" . }}
{{- if not (regexMatch "^unix:///run/kubegate/[A-Za-z0-9._-]+$" $xds) }}
{{- fail (printf "sockets.xds %q is not a unix socket in /run/kubegate: the SDS server hands out the agent token, which can impersonate anyone, so it must never listen on the network; use unix:///run/kubegate/xds.sock" $xds) }}
{{- end }}
{{- if include "kubegate.ownEnvoy" . }}
{{- range $name, $addr := dict "authz" (include "kubegate.authzAddress" .) "extproc" (include "kubegate.extprocAddress" .) }}
{{- if not (regexMatch "^unix:///run/kubegate/[A-Za-z0-9._-]+$" $addr) }}
{{- fail (printf "sockets.%s %q is not a unix socket in /run/kubegate: with kubegate's own Envoy nothing else may reach %s; use unix:///run/kubegate/%s.sock" $name $addr $name $name) }}
{{- end }}
{{- end }}
{{- $owned := list "--listen" "--admin" "--tls-cert" "--tls-key" "--apiserver" "--apiserver-ca" "--authz" "--extproc" "--xds" "--browser" "--allow-non-loopback" "--check-files" "--node-id" "--node-cluster" "-o" "--output" }}
{{- range $v.envoy.renderArgs }}
{{- $flag := regexReplaceAll "=.*$" (toString .) "" }}
{{- if has $flag $owned }}
{{- fail (printf "envoy.renderArgs: %s is set by the chart (from listener, apiServer, sockets and the mounts); remove it from envoy.renderArgs" $flag) }}
{{- end }}
{{- if not (hasPrefix "--" (toString .)) }}
{{- fail (printf "envoy.renderArgs: %q is not a --flag=value argument of kubegate envoy render" .) }}
{{- end }}
{{- end }}
{{- end }}
{{- $tls := $v.listener.tls }}
{{- if and (eq $tls.source "secret") (not $tls.existingSecret) }}
{{- fail "listener.tls.existingSecret is required with listener.tls.source=secret: a kubernetes.io/tls Secret with tls.crt and tls.key" }}
{{- end }}
{{- if eq $tls.source "certManager" }}
{{- if not $tls.certManager.issuerRef.name }}
{{- fail "listener.tls.certManager.issuerRef.name is required with listener.tls.source=certManager: the Issuer or ClusterIssuer that signs the listener certificate" }}
{{- end }}
{{- if not $tls.certManager.dnsNames }}
{{- fail "listener.tls.certManager.dnsNames is empty: list the names kubectl reaches the listener by" }}
{{- end }}
{{- end }}
{{- if and $v.autoscaling.enabled (gt (int $v.autoscaling.minReplicas) (int $v.autoscaling.maxReplicas)) }}
{{- fail "autoscaling.minReplicas is greater than autoscaling.maxReplicas" }}
{{- end }}
{{- if and $v.networkPolicy.enabled (or $v.identity.gitlab.url $v.identity.oidc.issuer) (not $v.networkPolicy.identityEndpoints) }}
{{- fail "networkPolicy.identityEndpoints is empty, but authz must reach GitLab (identity.gitlab.url) or the OIDC issuer (identity.oidc.issuer): list their addresses as {cidr, ports}, or set networkPolicy.enabled=false" }}
{{- end }}
{{- end }}

{{/*
kubegate.validateBrowser: the browser.* rules.
*/}}
{{- define "kubegate.validateBrowser" -}}
{{- $v := .Values }}
{{- $b := $v.browser }}
{{- if $b.enabled }}
{{- if not (include "kubegate.ownEnvoy" .) }}
{{- fail (printf "browser.enabled is not available with mesh.mode=%s: kubegate renders the browser routes (/ui/ to authz, ext_authz and ext_proc off for that route only) for its own Envoy only, and the mesh's listener has none; use mesh.mode=none, or set browser.enabled=false" $v.mesh.mode) }}
{{- end }}
{{- if not $b.publicURL }}
{{- fail "browser.publicURL is required with browser.enabled: the origin browsers open, e.g. --set browser.publicURL=https://kubegate.example.com (login forms must come from it; the OIDC redirect URI is <publicURL>/ui/oidc/callback)" }}
{{- end }}
{{- if not (regexMatch "^(https://[^/?#@]+|http://(localhost|127\\.0\\.0\\.1|\\[::1\\])(:[0-9]+)?)$" $b.publicURL) }}
{{- fail (printf "browser.publicURL %q must be an origin, scheme://host[:port] with no path: https://, or http:// for localhost only (the session cookie is Secure)" $b.publicURL) }}
{{- end }}
{{- if not $b.sessionKey.existingSecret }}
{{- fail "browser.sessionKey.existingSecret is required with browser.enabled: the Secret holding the session cookies' key. The chart does not generate one (it would change at every helm upgrade and log everyone out); create it once with\n  kubectl -n <namespace> create secret generic kubegate-session-key --from-literal=session.key=\"$(head -c 32 /dev/urandom | base64)\"\nand set browser.sessionKey.existingSecret=kubegate-session-key" }}
{{- end }}
{{- if and (eq $b.sessionStore "memory") (or $v.autoscaling.enabled (gt (int $v.replicas) 1)) }}
{{- fail (printf "browser.sessionStore=memory with %s: logouts are kept in the memory of the replica that served them, so a logout would not reach the other replicas (the cookie would keep working there until it expires). Use browser.sessionStore=etcd with browser.etcd.endpoints, or run one replica (replicas=1, autoscaling.enabled=false)" (ternary "autoscaling.enabled=true" (printf "replicas=%v" $v.replicas) $v.autoscaling.enabled)) }}
{{- end }}
{{- if eq $b.sessionStore "etcd" }}
{{- if not $b.etcd.endpoints }}
{{- fail "browser.etcd.endpoints is required with browser.sessionStore=etcd: etcd's client URLs, e.g. --set browser.etcd.endpoints='{https://etcd-0.etcd:2379}'" }}
{{- end }}
{{- if and $v.networkPolicy.enabled (not $b.etcd.networkPolicyTo) }}
{{- fail "browser.etcd.networkPolicyTo is empty, but authz must reach etcd (browser.sessionStore=etcd) through the NetworkPolicy: list etcd's peers, e.g. [{podSelector: {matchLabels: {app: etcd}}}], or set networkPolicy.enabled=false" }}
{{- end }}
{{- end }}
{{- if and $b.oidc.clientSecret.name (not $v.identity.oidc.issuer) }}
{{- fail "browser.oidc.clientSecret.name is set but identity.oidc.issuer is empty: the browser's OIDC login needs the issuer" }}
{{- end }}
{{- if and $b.oidc.clientId (not $v.identity.oidc.issuer) }}
{{- fail "browser.oidc.clientId is set but identity.oidc.issuer is empty: the browser's OIDC login needs the issuer" }}
{{- end }}
{{- if and (ne $v.identity.source "directory") (not $v.identity.oidc.issuer) }}
{{- fail "browser.enabled: there is no way to log in: passwords need identity.source=directory, and OIDC login needs identity.oidc.issuer" }}
{{- end }}
{{- end }}
{{- end }}
