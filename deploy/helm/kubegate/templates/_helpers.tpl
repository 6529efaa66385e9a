{{/*
Names and labels shared by every template. Kept here so each object names the same
release the same way.
*/}}
{{- define "kubegate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kubegate.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "kubegate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubegate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "kubegate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "kubegate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
kubegate.ownEnvoy: "true" when the pod runs kubegate's own Envoy container (mesh.mode
none, the default); a service-mesh mode provides Envoy instead (templates/mesh/).
*/}}
{{- define "kubegate.ownEnvoy" -}}
{{- if eq (.Values.mesh.mode | default "none") "none" }}true{{ end }}
{{- end }}

{{- define "kubegate.serviceAccountName" -}}
{{- default (include "kubegate.fullname" .) .Values.serviceAccount.name }}
{{- end }}

{{- define "kubegate.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{- define "kubegate.envoyImage" -}}
{{- printf "%s:%s" .Values.envoy.image.repository .Values.envoy.image.tag }}
{{- end }}

{{/*
The addresses authz, extproc and xds listen on, and the bootstrap points Envoy at.
Named templates so a service-mesh mode can change them (templates/mesh/); every
one is checked by kubegate.validate (xds always a unix socket: it serves the agent
token).
*/}}
{{- define "kubegate.authzAddress" -}}
{{- .Values.sockets.authz }}
{{- end }}

{{- define "kubegate.extprocAddress" -}}
{{- .Values.sockets.extproc }}
{{- end }}

{{- define "kubegate.xdsAddress" -}}
{{- .Values.sockets.xds }}
{{- end }}

{{/*
Paths inside the pod. The chart's tests run the rendered containers as local
processes and rewrite exactly these prefixes (test/chart), so keep every path the
containers use under one of them.
*/}}
{{- define "kubegate.socketDir" -}}/run/kubegate{{- end }}
{{- define "kubegate.bootstrapDir" -}}/etc/envoy{{- end }}
{{- define "kubegate.tlsDir" -}}/etc/kubegate/tls{{- end }}
{{- define "kubegate.clusterCADir" -}}/etc/kubegate/cluster{{- end }}
{{- define "kubegate.tokenDir" -}}/var/run/kubegate/token{{- end }}
{{- define "kubegate.agentConfigDir" -}}/etc/kubegate/agent{{- end }}
{{- define "kubegate.directoryDir" -}}/etc/kubegate/directory{{- end }}
{{- define "kubegate.gitlabDir" -}}/etc/kubegate/gitlab{{- end }}
{{- define "kubegate.policyDir" -}}/etc/kubegate/policy{{- end }}
{{- define "kubegate.sessionKeyDir" -}}/etc/kubegate/session{{- end }}
{{- define "kubegate.sessionEtcdDir" -}}/etc/kubegate/session-etcd{{- end }}
{{- define "kubegate.oidcClientDir" -}}/etc/kubegate/oidc-client{{- end }}

{{/*
kubegate.browserAddress: authz's browser listener. Loopback in the pod: the pod's
own Envoy is its one client (kubegate envoy render refuses a --browser that is not
loopback without --allow-non-loopback), and nothing outside the pod can reach it.
*/}}
{{- define "kubegate.browserAddress" -}}
127.0.0.1:{{ .Values.browser.port }}
{{- end }}

{{- define "kubegate.tlsSecretName" -}}
{{- if eq .Values.listener.tls.source "secret" }}
{{- .Values.listener.tls.existingSecret }}
{{- else }}
{{- printf "%s-tls" (include "kubegate.fullname" .) }}
{{- end }}
{{- end }}

{{- define "kubegate.agentConfigMapName" -}}
{{- .Values.agent.config.existingConfigMap | default (printf "%s-agent-config" (include "kubegate.fullname" .)) }}
{{- end }}

{{- define "kubegate.agentConfigKey" -}}
{{- if .Values.agent.config.existingConfigMap }}{{ .Values.agent.config.key }}{{ else }}config.yaml{{ end }}
{{- end }}

{{- define "kubegate.policyConfigMapName" -}}
{{- .Values.policy.existingConfigMap | default (printf "%s-policy" (include "kubegate.fullname" .)) }}
{{- end }}

{{- define "kubegate.hasPolicy" -}}
{{- if or .Values.policy.modules .Values.policy.existingConfigMap }}true{{ end }}
{{- end }}

{{/*
The restricted Pod Security Standard (kubernetes.io/docs/concepts/security/
pod-security-standards/#restricted): non-root, no privilege escalation, every
capability dropped, RuntimeDefault seccomp; and a read-only root filesystem. Not
values: nothing in kubegate needs more. uid 65532 is the kubegate image's user
(Dockerfile); Envoy runs as the same uid so both can use the sockets and the key.
*/}}
{{- define "kubegate.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "kubegate.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
kubegate envoy render's flags for this release (the init container and the chart
test both use them). check-files stays on: a listener Secret without tls.crt/tls.key
or an unreadable CA stops the pod in its init container, with kubegate's message.
*/}}
{{- define "kubegate.renderArgs" -}}
- envoy
- render
- --listen=0.0.0.0:{{ .Values.listener.port }}
- --admin=
- --tls-cert={{ include "kubegate.tlsDir" . }}/tls.crt
- --tls-key={{ include "kubegate.tlsDir" . }}/tls.key
- --agent-id={{ .Values.agent.id }}
- --apiserver={{ .Values.apiServer.url }}
- --apiserver-ca={{ include "kubegate.clusterCADir" . }}/ca.crt
- --authz={{ include "kubegate.authzAddress" . }}
- --extproc={{ include "kubegate.extprocAddress" . }}
- --xds={{ include "kubegate.xdsAddress" . }}
- --node-id={{ include "kubegate.fullname" . }}
- --node-cluster={{ include "kubegate.fullname" . }}
{{- if .Values.browser.enabled }}
- --browser={{ include "kubegate.browserAddress" . }}
{{- end }}
{{- range .Values.envoy.renderArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{- define "kubegate.probeTiming" -}}
initialDelaySeconds: {{ .Values.probes.initialDelaySeconds }}
periodSeconds: {{ .Values.probes.periodSeconds }}
timeoutSeconds: {{ .Values.probes.timeoutSeconds }}
failureThreshold: {{ .Values.probes.failureThreshold }}
{{- end }}

{{/*
kubegate.clusterScopedName: the ClusterRole and ClusterRoleBinding. They carry the
namespace, so two releases of the same name in different namespaces do not take
each other's binding.
*/}}
{{- define "kubegate.clusterScopedName" -}}
{{- printf "%s-%s-impersonator" .Release.Namespace (include "kubegate.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
