#!/bin/sh
# session-key.sh FILE: writes a kubegate session key to FILE unless it already holds
# one: one line, base64 of 32 random bytes (kubegate authz --session-key-file;
# identity/session/keys.go), owned by uid 65532 (the kubegate image's user, which
# authz runs as), mode 0600, in a directory of mode 0700. Run by init.sh as root in
# the k3s image (busybox sh and kubectl; its busybox has no base64 applet, see
# k3s-root's package/busybox/busybox.config, so kubectl encodes the bytes: it prints
# a Secret's data as base64). deploy/compose's TestSessionKeyScript runs it.
set -eu
file=$1
dir=$(dirname "$file")
umask 077
mkdir -p "$dir"
if [ -s "$file" ]; then
  echo "init: session key kept ($file)"
else
  raw=$(mktemp)
  trap 'rm -f "$raw"' EXIT
  head -c 32 /dev/urandom > "$raw"
  key=$(kubectl create secret generic session-key --dry-run=client --from-file=key="$raw" -o 'jsonpath={.data.key}')
  rm -f "$raw"
  [ "${#key}" -eq 44 ] || { echo "init: the session key is not 44 base64 characters" >&2; exit 1; }
  # Write then rename, so authz never reads half a key.
  printf '%s\n' "$key" > "$dir/.key.tmp"
  mv "$dir/.key.tmp" "$file"
  echo "init: session key written ($file)"
fi
chown -R "${SESSION_KEY_OWNER:-65532:65532}" "$dir"
chmod 0700 "$dir"
chmod 0600 "$file"
