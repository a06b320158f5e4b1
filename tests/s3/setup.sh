#!/usr/bin/env sh
# Creates target/s3-venv with moto's S3 server (tests/s3/requirements.txt), which the
# backup-upload tests (tests/api/s3.rs) start on a free port as target/s3-venv/bin/moto_server.
set -eu
exec sh "$(dirname -- "$0")/../venv.sh" s3
