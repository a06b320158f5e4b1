#!/usr/bin/env sh
# Installs the OpenID Connect provider the single sign-on tests run (tests/oidc/provider.mjs:
# panva's oidc-provider, pinned with its dependencies in package-lock.json) into
# tests/oidc/node_modules (not committed). Needs Node.js 20+ and npm. Idempotent and quiet:
# reinstalls only when package-lock.json changed since the last run.
#
#   sh tests/oidc/setup.sh && node tests/oidc/provider.mjs 0
set -eu
DIR=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
STAMP="$DIR/node_modules/.package-lock.sha256"
want=$(sha256sum "$DIR/package-lock.json" | cut -d' ' -f1)
have=$(cat "$STAMP" 2>/dev/null || true)
if [ "$want" != "$have" ] || [ ! -d "$DIR/node_modules/oidc-provider" ]; then
    (cd "$DIR" && npm ci --no-audit --no-fund --loglevel=error)
    echo "$want" > "$STAMP"
fi
