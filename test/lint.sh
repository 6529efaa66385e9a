#!/usr/bin/env bash
# `make lint`: fails when any Go file is not gofmt-ed, when `go mod tidy` would
# change go.mod/go.sum of kubegate or of a tools module under test/tools, or when
# staticcheck reports a finding. Each failure says how to fix it.
#
# staticcheck is pinned in test/tools/staticcheck/go.mod and built (first run: a few
# minutes, with progress) or reused from $KUBEGATE_TOOLS_DIR (default
# <repo>/.cache/tools)/staticcheck-<version>-<go version>/; the Go version is in the
# name because staticcheck must be built by a toolchain at least as new as the code.
# Its analysis cache goes beside it (cache/, unless STATICCHECK_CACHE is set), so a
# machine that keeps .cache/tools also keeps staticcheck warm: the first analysis
# of the module costs about as much CPU as building staticcheck, later ones seconds. A deliberate finding is
# suppressed where it occurs with `//lint:ignore CHECK reason`, never globally.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
log() { printf '[lint] %s\n' "$*" >&2; }
status=0

# 1. gofmt. Nested tools modules hold only tools.go; gofmt checks them too.
unformatted=$(gofmt -l . | grep -v '^\.cache/' || true)
if [ -n "$unformatted" ]; then
  log "these files are not gofmt-ed; run: gofmt -w $(echo $unformatted)"
  printf '%s\n' "$unformatted" >&2
  status=1
else
  log "gofmt: clean"
fi

# 2. go mod tidy, for kubegate and each tools module.
for m in . test/tools/*/; do
  m=${m%/}
  [ -f "$m/go.mod" ] || continue
  if ! out=$(cd "$m" && go mod tidy -diff 2>&1); then
    log "go mod tidy would change $m/go.mod or go.sum; run: (cd $m && go mod tidy) and commit the result"
    printf '%s\n' "$out" >&2
    status=1
  else
    log "go mod tidy: $m clean"
  fi
done

# 3. staticcheck, built from its pinned tools module and cached by version.
scmod=$repo/test/tools/staticcheck
scver=$(cd "$scmod" && go list -m -f '{{.Version}}' honnef.co/go/tools)
gover=$(go env GOVERSION)
dir=${KUBEGATE_TOOLS_DIR:-$repo/.cache/tools}
bindir="$dir/staticcheck-${scver}-${gover}"
sc="$bindir/staticcheck"
if [ -x "$sc" ]; then
  log "staticcheck $scver: cached at $sc"
else
  mkdir -p "$bindir"
  log "staticcheck $scver: building honnef.co/go/tools/cmd/staticcheck (a few minutes the first time; later runs reuse the cache)"
  start=$SECONDS tmp="$sc.tmp.$$"
  ( cd "$scmod" && CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o "$tmp" honnef.co/go/tools/cmd/staticcheck ) &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep 15
    kill -0 "$pid" 2>/dev/null || break
    log "staticcheck: still building, $((SECONDS - start)) s elapsed"
  done
  if ! wait "$pid"; then rm -f "$tmp"; log "staticcheck: build FAILED (see the go output above)"; exit 1; fi
  mv "$tmp" "$sc"
  log "staticcheck: built in $((SECONDS - start)) s"
fi
export STATICCHECK_CACHE=${STATICCHECK_CACHE:-$bindir/cache}
start=$SECONDS
if ! "$sc" ./...; then
  log "staticcheck reported the findings above. Fix each one; where a finding is deliberate,"
  log "suppress only that line with '//lint:ignore CHECK reason' saying why (https://staticcheck.dev/docs/configuration/#line-based-linter-directives)"
  status=1
else
  log "staticcheck ./...: clean ($((SECONDS - start)) s)"
fi
exit $status
