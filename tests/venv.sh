#!/usr/bin/env sh
# Creates target/NAME-venv from tests/NAME/requirements.txt (NAME: sdk, s3). Idempotent and
# quiet: reinstalls only when requirements.txt changed since the last run.
#
#   sh tests/venv.sh sdk
set -eu
NAME=${1:?usage: tests/venv.sh NAME (a folder of tests/ holding requirements.txt)}
ROOT=$(CDPATH='' cd -- "$(dirname -- "$0")/.." && pwd)
VENV="$ROOT/target/$NAME-venv"
REQ="$ROOT/tests/$NAME/requirements.txt"
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
