#!/usr/bin/env sh
# Creates target/sdk-venv with the pinned OpenAI SDK and pytest (tests/sdk/requirements.txt).
# Idempotent and quiet: reinstalls only when requirements.txt changed since the last run.
#
#   tests/sdk/setup.sh && target/sdk-venv/bin/pytest -q tests/sdk
set -eu
ROOT=$(CDPATH= cd -- "$(dirname -- "$0")/../.." && pwd)
VENV="$ROOT/target/sdk-venv"
REQ="$ROOT/tests/sdk/requirements.txt"
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
