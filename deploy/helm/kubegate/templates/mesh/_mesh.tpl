{{/*
Service-mesh modes (mesh.md says what each one can and cannot guarantee).

  none           kubegate's own Envoy container (the core templates).
  istio          Istio's gateway proxy runs kubegate's whole listener and clusters,
                 delivered by istiod from one EnvoyFilter (istio-envoyfilter.yaml);
                 authz and extproc stay on unix sockets in the pod; the agent token is
                 read by Envoy from a projected volume (file-based SDS).
  istio-custom   refused: AuthorizationPolicy CUSTOM + extensionProviders.
  envoy-gateway  refused: SecurityPolicy extAuth + EnvoyExtensionPolicy extProc.

The Envoy configuration is never written here: files/mesh/istio.json and
files/mesh/token-sds.yaml are `envoy.MeshResources` output (go-control-plane
builders, checked by `kubegate envoy validate`'s rules), kept equal to it by
test/chartmesh (TestMeshFilesAreTheBuildersOutput; regenerate with
`go test ./test/chartmesh -run TestMeshFilesAreTheBuildersOutput -update`).
*/}}

{{- define "kubegate.mesh.mode" -}}
{{- .Values.mesh.mode | default "none" }}
{{- end }}

{{/* Paths the mesh fragments were built with (test/chartmesh checks they agree). */}}
{{- define "kubegate.mesh.socketDir" -}}/run/kubegate{{- end }}
{{- define "kubegate.mesh.tlsDir" -}}/etc/kubegate/tls{{- end }}
{{- define "kubegate.mesh.tokenDir" -}}/var/run/kubegate/token{{- end }}
{{- define "kubegate.mesh.authzSocket" -}}unix:///run/kubegate/authz.sock{{- end }}
{{- define "kubegate.mesh.extprocSocket" -}}unix:///run/kubegate/extproc.sock{{- end }}

{{- define "kubegate.mesh.tokenSDSConfigMapName" -}}
{{- printf "%s-mesh-token-sds" (include "kubegate.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kubegate.mesh.istioFragments" -}}
{{- include "kubegate.mesh.agentNames" (dict "text" (.Files.Get "files/mesh/istio.json") "id" .Values.agent.id) }}
{{- end }}

{{/*
kubegate.mesh.agentNames puts this release's agent id into text: files/mesh is
envoy.MeshResources output for the agent id 4242424242 (test/chartmesh
placeholderAgentID), and the agent's cluster (kubegate_apiserver_<id>, the name
kubegate authz routes to) and its token secret (kubegate-agent-token-<id>) are
named after the id. Only whole names are replaced: each is followed by a quote
(JSON) or the line's end (YAML).
*/}}
{{- define "kubegate.mesh.agentNames" -}}
{{- $id := printf "%d" (.id | int64) }}
{{- .text | replace "kubegate_apiserver_4242424242\"" (printf "kubegate_apiserver_%s\"" $id) | replace "kubegate-agent-token-4242424242\"" (printf "kubegate-agent-token-%s\"" $id) | replace "kubegate-agent-token-4242424242\n" (printf "kubegate-agent-token-%s\n" $id) }}
{{- end }}

{{/*
kubegate.mesh.check fails `helm template` for a mode that cannot carry kubegate's
fail-closed chain, naming the value and the way out. Every template under mesh/
includes it, so nothing renders half-configured.
*/}}
{{- define "kubegate.mesh.check" -}}
{{- $mode := include "kubegate.mesh.mode" . }}
{{- if eq $mode "istio-custom" }}
{{- fail "mesh.mode=istio-custom is refused: Istio's AuthorizationPolicy CUSTOM with a meshConfig.extensionProviders[].envoyExtAuthzGrpc provider cannot carry kubegate's chain fail-closed. istiod builds that ext_authz filter without encode_raw_headers, validate_mutations or header mutation rules and runs it only when an RBAC shadow policy's metadata matches (filter_enabled_metadata), MeshConfig has no ext_proc provider, and nothing in it injects the agent token with overwrite. Use mesh.mode=istio (kubegate's own listener through one EnvoyFilter) or mesh.mode=none; see deploy/helm/kubegate/mesh.md." }}
{{- else if eq $mode "envoy-gateway" }}
{{- fail "mesh.mode=envoy-gateway is refused: Envoy Gateway's SecurityPolicy extAuth and EnvoyExtensionPolicy extProc cannot carry kubegate's chain fail-closed. They set no encode_raw_headers, validate_mutations or ext_proc mutation_rules (so a processor could rewrite Authorization), both filters are disabled on the listener and enabled per route, and HTTPRouteFilter credentialInjection takes a static Secret instead of the rotating projected token. Use mesh.mode=none (expose kubegate's Envoy through a TLSRoute passthrough) or mesh.mode=istio; see deploy/helm/kubegate/mesh.md." }}
{{- else if not (has $mode (list "none" "istio")) }}
{{- fail (printf "mesh.mode=%q is not a mode: use none (kubegate's own Envoy) or istio (Istio's gateway proxy with kubegate's listener); istio-custom and envoy-gateway are refused, see deploy/helm/kubegate/mesh.md." $mode) }}
{{- end }}
{{- if eq $mode "istio" }}
{{- $v := .Values.AsMap }}
{{- $authz := dig "sockets" "authz" (include "kubegate.mesh.authzSocket" .) $v }}
{{- $extproc := dig "sockets" "extproc" (include "kubegate.mesh.extprocSocket" .) $v }}
{{- if or (ne $authz (include "kubegate.mesh.authzSocket" .)) (ne $extproc (include "kubegate.mesh.extprocSocket" .)) }}
{{- fail (printf "sockets.authz=%q / sockets.extproc=%q: with mesh.mode=istio they must stay %s and %s, the sockets the chart's EnvoyFilter (files/mesh/istio.json) points Istio's proxy at." $authz $extproc (include "kubegate.mesh.authzSocket" .) (include "kubegate.mesh.extprocSocket" .)) }}
{{- end }}
{{- $api := dig "apiServer" "url" "https://kubernetes.default.svc" $v }}
{{- if not (has $api (list "https://kubernetes.default.svc" "https://kubernetes.default.svc:443")) }}
{{- fail (printf "apiServer.url=%q: with mesh.mode=istio the upstream is the chart's pre-built cluster for https://kubernetes.default.svc (files/mesh/istio.json); remove apiServer.url, or use mesh.mode=none." $api) }}
{{- end }}
{{- if dig "envoy" "renderArgs" list $v }}
{{- fail "envoy.renderArgs is set but mesh.mode=istio does not run `kubegate envoy render`: its listener is the chart's pre-built files/mesh/istio.json (kubegate's defaults). Remove envoy.renderArgs, or use mesh.mode=none." }}
{{- end }}
{{- if not .Values.mesh.istio.istiodNamespace }}
{{- fail "mesh.istio.istiodNamespace is empty: name the namespace istiod runs in (the NetworkPolicy lets the gateway proxy reach it on 15012), usually istio-system." }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Pod template additions, for the core Deployment (wired by the core templates):

  metadata.labels:       include "kubegate.mesh.podLabels" .
  metadata.annotations:  include "kubegate.mesh.podAnnotations" .
  spec.containers:       instead of the envoy container, when kubegate.ownEnvoy is
                         empty: include "kubegate.mesh.proxyContainer" (dict "root" .
                         "socketsVolume" NAME "tlsVolume" NAME)
  spec.volumes:          include "kubegate.mesh.volumes" .
  the xds container and its agent-token volume:
                         only when include "kubegate.mesh.runsXDS" . is "true"
  the Service, the listener certificate, the listener-tls volume and the
  NetworkPolicy's ingress on listener.port:
                         when include "kubegate.mesh.listenerInPod" . is "true"
  the NetworkPolicy's egress:  include "kubegate.mesh.networkPolicyEgress" .

Istio's gateway injection (istio.io/latest/docs/setup/additional-setup/gateway/):
the pod asks for the proxy with the sidecar.istio.io/inject label and the
inject.istio.io/templates: gateway annotation and holds a container named
istio-proxy with image "auto", which the injector replaces (IST0146,
istio.io/latest/docs/reference/config/analysis/ist0146/). The pod's own istio-proxy
fields are applied on top of the injected container (istio/istio
pkg/kube/inject/webhook.go: each template container is overlaid with the pod's
container of the same name, applyContainer), so the mounts and the user below hold.
*/}}
{{- define "kubegate.mesh.podLabels" -}}
{{- if eq (include "kubegate.mesh.mode" .) "istio" }}
sidecar.istio.io/inject: "true"
{{- with .Values.mesh.istio.revision }}
istio.io/rev: {{ . | quote }}
{{- end }}
{{- end }}
{{- end }}

{{- define "kubegate.mesh.podAnnotations" -}}
{{- if eq (include "kubegate.mesh.mode" .) "istio" }}
inject.istio.io/templates: gateway
{{- end }}
{{- end }}

{{/*
kubegate.mesh.listenerInPod: "true" when kubegate's TLS listener runs in this
release's pods (mesh.mode none: kubegate's Envoy; istio: Istio's proxy with
kubegate's listener), so the Service, the listener certificate and the
NetworkPolicy's ingress on listener.port are rendered.
*/}}
{{- define "kubegate.mesh.listenerInPod" -}}
{{- if has (include "kubegate.mesh.mode" .) (list "none" "istio") }}true{{ end }}
{{- end }}

{{/*
kubegate.mesh.runsXDS: "true" unless a mesh mode reads the token itself. With
mesh.mode=istio the proxy reads it through file-based SDS: an SDS config source
over gRPC must name a cluster defined in Envoy's bootstrap, and istiod delivers
kubegate's clusters over CDS (envoy/mesh.go).
*/}}
{{- define "kubegate.mesh.runsXDS" -}}
{{- if ne (include "kubegate.mesh.mode" .) "istio" }}true{{ end }}
{{- end }}

{{/*
kubegate.mesh.proxyContainer: the istio-proxy container kubegate's listener runs
in. It runs as kubegate's uid (65532) so it can use the services' unix sockets and
read the listener key, as kubegate's own Envoy does; the injected template's 1337
would not. Its https port is the listener's.
*/}}
{{- define "kubegate.mesh.proxyContainer" -}}
{{- $root := .root }}
{{- if eq (include "kubegate.mesh.mode" $root) "istio" }}
- name: istio-proxy
  image: auto
  ports:
  - name: https
    containerPort: {{ dig "listener" "port" 8443 $root.Values.AsMap | int }}
    protocol: TCP
  securityContext:
    runAsNonRoot: true
    runAsUser: 65532
    runAsGroup: 65532
    allowPrivilegeEscalation: false
    readOnlyRootFilesystem: true
    capabilities:
      drop: [ALL]
    seccompProfile:
      type: RuntimeDefault
  volumeMounts:
  - name: {{ .socketsVolume }}
    mountPath: {{ include "kubegate.mesh.socketDir" $root }}
  - name: {{ .tlsVolume }}
    mountPath: {{ include "kubegate.mesh.tlsDir" $root }}
    readOnly: true
  - name: kubegate-mesh-token
    mountPath: {{ include "kubegate.mesh.tokenDir" $root }}
    readOnly: true
{{- end }}
{{- end }}

{{/*
kubegate.mesh.volumes: one projected volume with the agent token (audience-bound,
expiring, rotated by the kubelet), the cluster CA and the SDS response that points
Envoy at the token file. One volume, so the kubelet swaps all three at once and the
watched_directory reload sees them together.
*/}}
{{- define "kubegate.mesh.volumes" -}}
{{- if eq (include "kubegate.mesh.mode" .) "istio" }}
{{- $v := .Values.AsMap }}
- name: kubegate-mesh-token
  projected:
    sources:
    - serviceAccountToken:
        path: token
        expirationSeconds: {{ dig "agentToken" "expirationSeconds" 3600 $v | int }}
        {{- with (dig "agentToken" "audience" "" $v) }}
        audience: {{ . | quote }}
        {{- end }}
    - configMap:
        name: kube-root-ca.crt
        items:
        - key: ca.crt
          path: ca.crt
    - configMap:
        name: {{ include "kubegate.mesh.tokenSDSConfigMapName" . }}
        items:
        - key: token-sds.yaml
          path: token-sds.yaml
{{- end }}
{{- end }}

{{/*
kubegate.mesh.networkPolicyEgress: egress rules the pod needs in a mesh mode, for
the core NetworkPolicy's spec.egress: the gateway proxy's xDS and certificates from
istiod (15012, istio.io/latest/docs/ops/deployment/application-requirements/#ports-used-by-istio).
*/}}
{{- define "kubegate.mesh.networkPolicyEgress" -}}
{{- if eq (include "kubegate.mesh.mode" .) "istio" }}
- to:
  - namespaceSelector:
      matchLabels:
        kubernetes.io/metadata.name: {{ .Values.mesh.istio.istiodNamespace }}
    podSelector:
      matchLabels:
        app: istiod
  ports:
  - protocol: TCP
    port: 15012
{{- end }}
{{- end }}
