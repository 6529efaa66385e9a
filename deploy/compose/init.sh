#!/bin/sh
# One-shot setup for docker compose, run as root in the k3s image (busybox sh and
# kubectl). It prepares what Envoy and kubegate need from the cluster:
#   /shared/token/token     the agent's service-account token (kubegate xds)
#   /shared/cluster/ca.crt  the cluster CA Envoy verifies the API server with
#   /shared/session/key     the key browser session cookies are sealed with (kubegate
#                           authz --session-key-file): made here once, kept across
#                           restarts, in a volume only this script and authz mount
# and hands the shared volumes to uid 65532, which the kubegate image and the
# Envoy service run as (/shared/sockets: the services' unix sockets; mode 0700,
# so only that uid can connect).
set -eu

log() { echo "init: $*"; }

# k3s writes its kubeconfig for 127.0.0.1; from this container the server is "k3s"
# (in the certificate through --tls-san=k3s).
until [ -s /k3s-output/kubeconfig.yaml ]; do log "waiting for k3s's kubeconfig"; sleep 2; done
sed 's#https://127.0.0.1:6443#https://k3s:6443#' /k3s-output/kubeconfig.yaml > /tmp/kubeconfig
export KUBECONFIG=/tmp/kubeconfig
until kubectl get --raw /readyz >/dev/null 2>&1; do log "waiting for the API server"; sleep 2; done

kubectl apply -f /manifests/impersonation-clusterrole.yaml
kubectl apply -f /init/agent.yaml
kubectl apply -f /init/demo.yaml

token=""
until [ -n "$token" ]; do
  token=$(kubectl -n kubegate get secret kubegate-agent-token -o go-template='{{if .data.token}}{{.data.token | base64decode}}{{end}}')
  [ -n "$token" ] || { log "waiting for the token controller"; sleep 1; }
done

mkdir -p /shared/token /shared/cluster /shared/certs /shared/sockets /shared/session
# Write then rename, so kubegate xds never reads half a token.
printf '%s' "$token" > /shared/token/.token.tmp
mv /shared/token/.token.tmp /shared/token/token
kubectl -n kubegate get secret kubegate-agent-token -o go-template='{{index .data "ca.crt" | base64decode}}' > /shared/cluster/ca.crt
chown -R 65532:65532 /shared/token /shared/cluster /shared/certs /shared/sockets
chmod 0700 /shared/sockets
chmod 0600 /shared/token/token
log "agent token and cluster CA written"

# The session key: 32 random bytes, base64 (the format --session-key-file reads,
# identity/session/keys.go). k3s's busybox has no base64 applet (k3s-root's
# package/busybox/busybox.config: CONFIG_BASE64 is not set), so kubectl encodes it:
# it writes a Secret's data as base64. Made only once: a new key would log every
# browser out at each `docker compose up`. The raw bytes never leave /tmp of this
# container, which exits next.
/bin/sh /init/session-key.sh /shared/session/key
