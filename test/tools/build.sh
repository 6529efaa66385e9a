#!/usr/bin/env bash
# Builds the real control-plane binaries the test bed runs (kube-apiserver,
# kube-controller-manager, etcd), KWOK's `kwok` controller (a simulated node and
# kubelet API) and the `helm` CLI (for the chart tests) from the Go module proxy, and caches them by version under
# $KUBEGATE_TOOLS_DIR (default: <repo>/.cache/tools). A cached binary is reused; the
# first build takes several minutes and prints progress so nobody mistakes it for a
# hang. Prints nothing else on stdout except a cache directory when called with
# --print-dir (kube-apiserver, kube-controller-manager, etcd), --print-kwok-dir or
# --print-helm-dir.
# It also makes sure Debian's `chromium` is installed (the Dashboard's browser tests,
# test/browser, drive it headless): it is a system package, not a cached build, so it
# is installed with apt-get when this runs as root and is otherwise a failure naming
# the command to run.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
KUBE_VERSION=v1.37.2
ETCD_VERSION=v3.7.3
# sigs.k8s.io/kwok: the newest version the module proxy serves
# (`go list -m -versions sigs.k8s.io/kwok`).
KWOK_VERSION=v0.8.0
# helm.sh/helm/v3, for the chart tests (helm lint / helm template of deploy/helm).
HELM_VERSION=v3.22.0
dir=${KUBEGATE_TOOLS_DIR:-$repo/.cache/tools}
bindir="$dir/bin-kube-${KUBE_VERSION}-etcd-${ETCD_VERSION}"
# KWOK has its own versioned directory, so bumping it never invalidates the
# kube-apiserver cache (the expensive one).
kwokdir="$dir/kwok-${KWOK_VERSION}"
helmdir="$dir/helm-${HELM_VERSION}"

if [ "${1:-}" = "--print-dir" ]; then echo "$bindir"; exit 0; fi
if [ "${1:-}" = "--print-kwok-dir" ]; then echo "$kwokdir"; exit 0; fi
if [ "${1:-}" = "--print-helm-dir" ]; then echo "$helmdir"; exit 0; fi
mkdir -p "$bindir" "$kwokdir" "$helmdir"

log() { printf '[testbed-tools] %s\n' "$*" >&2; }

# build NAME MODULE_DIR PACKAGE LDFLAGS [OUT_DIR]
build() {
  local name=$1 moddir=$2 pkg=$3 ldflags=$4 out="${5:-$bindir}/$1"
  if [ -x "$out" ]; then log "$name: cached at $out"; return; fi
  log "$name: building $pkg (first build takes minutes; later runs reuse the cache)"
  local start=$SECONDS tmp="$out.tmp.$$"
  ( cd "$moddir" && CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$tmp" "$pkg" ) &
  local pid=$!
  # Progress: elapsed time and the size of Go's build cache, every 15 s.
  while kill -0 "$pid" 2>/dev/null; do
    sleep 15
    kill -0 "$pid" 2>/dev/null || break
    log "$name: still building, $((SECONDS - start)) s elapsed, go build cache $(du -sh "$(go env GOCACHE)" 2>/dev/null | cut -f1)"
  done
  if ! wait "$pid"; then rm -f "$tmp"; log "$name: build FAILED (see the go output above)"; exit 1; fi
  mv "$tmp" "$out"
  log "$name: built in $((SECONDS - start)) s ($(du -h "$out" | cut -f1))"
}

major=${KUBE_VERSION#v}; major=${major%%.*}
minor=${KUBE_VERSION#v*.}; minor=${minor%%.*}
# Without these, kube-apiserver reports v0.0.0-master+$Format:%H$ and kubectl
# cannot parse the server version (testbed.md).
kv="-s -w -X k8s.io/component-base/version.gitVersion=${KUBE_VERSION} -X k8s.io/component-base/version.gitMajor=${major} -X k8s.io/component-base/version.gitMinor=${minor} -X k8s.io/component-base/version.gitTreeState=clean"
build etcd "$here/etcd" go.etcd.io/etcd/server/v3 "-s -w"
build kube-apiserver "$here/kube" k8s.io/kubernetes/cmd/kube-apiserver "$kv"
build kube-controller-manager "$here/kube" k8s.io/kubernetes/cmd/kube-controller-manager "$kv"
# The released module already carries its version (sigs.k8s.io/kwok/pkg/consts).
build kwok "$here/kwok" sigs.k8s.io/kwok/cmd/kwok "-s -w" "$kwokdir"
# Without the version, `helm version` says v3.22 and charts' kubeVersion checks see a
# development build.
build helm "$here/helm" helm.sh/helm/v3/cmd/helm "-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}" "$helmdir"
# Debian's chromium for test/browser (chromedp drives it headless). Not cached
# under $dir: it is a system package with its own shared libraries.
if command -v chromium >/dev/null 2>&1; then
  log "chromium: $(chromium --version 2>/dev/null | head -n 1) at $(command -v chromium)"
elif [ "$(id -u)" = 0 ]; then
  log "chromium: not installed; installing Debian's package (apt-get update, then apt-get install -y chromium: a minute or two)"
  start=$SECONDS
  apt-get update >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y chromium >&2
  log "chromium: installed in $((SECONDS - start)) s: $(chromium --version 2>/dev/null | head -n 1)"
else
  log "chromium: not installed, and installing it needs root; run: sudo apt-get update && sudo apt-get install -y chromium"
  exit 1
fi
log "kwok ready: $kwokdir"
log "helm ready: $helmdir"
log "ready: $bindir"
