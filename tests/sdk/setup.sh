#!/usr/bin/env sh
# Creates target/sdk-venv with the pinned OpenAI SDK and pytest (tests/sdk/requirements.txt).
#
#   tests/sdk/setup.sh && target/sdk-venv/bin/pytest -q tests/sdk
set -eu
exec sh "$(dirname -- "$0")/../venv.sh" sdk
