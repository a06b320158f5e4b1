#!/usr/bin/env sh
# Creates target/s3-venv with moto's S3 server (tests/s3/requirements.txt), which the
# backup-upload tests (tests/api/s3.rs) start on a free port as target/s3-venv/bin/moto_server.
# Idempotent and quiet: reinstalls only when requirements.txt changed since the last run.
set -eu
ROOT=$(CDPATH='' cd -- "$(dirname -- "$0")/../.." && pwd)
VENV="$ROOT/target/s3-venv"
REQ="$ROOT/tests/s3/requirements.txt"
STAMP="$VENV/.requirements.sha256"

if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
want=$(sha256sum "$REQ" | cut -d' ' -f1)
have=$(cat "$STAMP" 2>/dev/null || true)
if [ "$want" != "$have" ]; then
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQ"
    echo "$want" > "$STAMP"
fi
