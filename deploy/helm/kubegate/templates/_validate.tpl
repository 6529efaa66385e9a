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
{{- $owned := list "--listen" "--admin" "--tls-cert" "--tls-key" "--apiserver" "--apiserver-ca" "--authz" "--extproc" "--xds" "--allow-non-loopback" "--check-files" "--node-id" "--node-cluster" "-o" "--output" }}
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
