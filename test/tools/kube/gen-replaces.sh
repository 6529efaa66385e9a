#!/usr/bin/env bash
# Prints the replace block k8s.io/kubernetes needs when used as a module: its go.mod
# requires every staging module at v0.0.0 and replaces them with ./staging paths, which
# a consumer cannot see. We map each one to the published v0.<minor>.<patch> tag.
set -euo pipefail
ver=${1:?usage: gen-replaces.sh v1.37.2}
mod=$(go mod download -json "k8s.io/kubernetes@${ver}" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')
stag="v0.${ver#v1.}"
echo "replace ("
grep -oE '^\s+k8s.io/[a-z0-9./-]+ v0\.0\.0(\s|$)' "$mod" | awk -v s="$stag" '{print "\t" $1 " => " $1 " " s}' | sort -u
echo ")"
