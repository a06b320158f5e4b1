#!/usr/bin/env bash
# The container test: builds the image from packaging/Dockerfile and runs docker-compose.yml
# for real, as a user would.
#
#   bash tests/docker/run.sh
#
# It checks that the container becomes healthy and ready, runs as uid 10001 with a writable
# /data, that a tenant and keys made with `docker compose exec -T` work, that a proxied call
# reaches the upstream and is recorded, that SIGTERM stops the server cleanly within the
# stop grace period, that health probes stay out of the INFO log, and that after `down` and
# `up` the call and the tenant are still there. The override files are checked with
# `docker compose config`.
#
# The upstream is the repo's mock (examples/mock_upstream.rs, built on this machine), run
# in a container that shares agv's network namespace, so agv reaches it on 127.0.0.1.
# Base images the daemon lacks and cannot pull are made locally (tests/docker/base-images.sh).
#
# Needs a Docker daemon, `docker compose` or docker-compose, curl and python3; without a
# daemon it prints SKIPPED (a failure under AGV_TEST_REQUIRE_ALL=1). tests/docker/setup.sh
# installs and starts what is missing (as root).
#
# Environment: AGV_DOCKER_PROFILE (cargo profile of the image, default `release` to keep
# the test short; `dist` is what the compose file builds by default),
# AGV_DOCKER_MOCK_BIN (a mock_upstream binary already built, else cargo builds it),
# AGV_DOCKER_COMPOSE (the compose command, e.g. `docker-compose`; default `docker compose`
# when the plugin is there, else docker-compose).
set -euo pipefail
cd "$(dirname "$0")/../.."

PROJECT=agv-docker-test
IMAGE=agv-server:docker-test
MOCK=agv-docker-test-mock
MOCK_PORT=9099
PROFILE=${AGV_DOCKER_PROFILE:-release}
started=$SECONDS
passed=0

step() { printf '\n-- %s (%ss)\n' "$*" "$((SECONDS - started))"; }
ok() { passed=$((passed + 1)); echo "ok: $*"; }
fail() {
  echo "FAILED: $*" >&2
  exit 1
}
skip() {
  if [ "${AGV_TEST_REQUIRE_ALL:-}" = 1 ]; then
    fail "$* (AGV_TEST_REQUIRE_ALL=1: a skipped test is a failure; run tests/docker/setup.sh as root)"
  fi
  echo "SKIPPED: the container test: $*"
  exit 0
}

command -v docker >/dev/null 2>&1 || skip "no docker CLI"
docker info >/dev/null 2>&1 || skip "no Docker daemon answers"
if [ -n "${AGV_DOCKER_COMPOSE:-}" ]; then
  read -r -a compose_cmd <<<"$AGV_DOCKER_COMPOSE"
elif docker compose version >/dev/null 2>&1; then
  compose_cmd=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  compose_cmd=(docker-compose)
else
  skip "neither \`docker compose\` nor docker-compose is installed"
fi
command -v curl >/dev/null 2>&1 || skip "no curl"
command -v python3 >/dev/null 2>&1 || skip "no python3"

# A free port on the host for agv's published 8080.
port=18080
while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done

export AGV_IMAGE=$IMAGE AGV_PORT=$port AGV_BUILD_PROFILE=$PROFILE
export AGV_UPSTREAM_URL="http://127.0.0.1:$MOCK_PORT/v1" AGV_UPSTREAM_API_KEY=sk-docker-test
compose() { "${compose_cmd[@]}" -p "$PROJECT" -f docker-compose.yml "$@"; }
base="http://127.0.0.1:$port"

cleanup() {
  local status=$?
  if [ "$status" != 0 ]; then
    echo "--- the last lines of agv's log:" >&2
    compose logs --no-color --tail 40 agv >&2 2>/dev/null || true
  fi
  docker rm -f "$MOCK" >/dev/null 2>&1 || true
  compose down -v --remove-orphans >/dev/null 2>&1 || true
}
trap cleanup EXIT

# `json FIELD` reads a JSON document on stdin and prints FIELD (a.b.c) of it.
json() { python3 -c 'import json,sys
v = json.load(sys.stdin)
for k in sys.argv[1].split("."):
    v = v[int(k)] if isinstance(v, list) else v[k]
print(v if not isinstance(v, (dict, list)) else json.dumps(v))' "$1"; }

wait_healthy() {
  local cid health=""
  cid=$(compose ps -q agv)
  [ -n "$cid" ] || fail "no agv container"
  for _ in $(seq 1 120); do
    health=$(docker inspect -f '{{.State.Health.Status}}' "$cid")
    [ "$health" = healthy ] && return 0
    if [ "$(docker inspect -f '{{.State.Running}}' "$cid")" != true ]; then
      fail "the agv container stopped: $(docker inspect -f '{{.State.Status}} exit {{.State.ExitCode}} {{.State.Error}}' "$cid")"
    fi
    sleep 1
  done
  fail "agv did not become healthy in 120 s (health: $health)"
}

start_mock() {
  local cid
  cid=$(compose ps -q agv)
  docker rm -f "$MOCK" >/dev/null 2>&1 || true
  docker run -d --name "$MOCK" --network "container:$cid" \
    -v "$mock_bin:/usr/local/bin/mock_upstream:ro" --entrypoint mock_upstream \
    "$IMAGE" --listen "127.0.0.1:$MOCK_PORT" --workers 1 >/dev/null
  for _ in $(seq 1 50); do
    [[ "$(docker logs "$MOCK" 2>/dev/null)" == http://* ]] && return 0
    sleep 0.1
  done
  fail "the mock upstream did not start: $(docker logs "$MOCK" 2>&1 | tail -n 5)"
}

step "compose: ${compose_cmd[*]} ($("${compose_cmd[@]}" version --short 2>/dev/null || true))"
compose config -q
for override in docker-compose.postgres.yml docker-compose.nice.yml; do
  "${compose_cmd[@]}" -p "$PROJECT" -f docker-compose.yml -f "$override" config -q
done
compose config | grep -q 'stop_grace_period' || fail "no stop_grace_period in the compose file"
ok "docker-compose.yml and its override files are valid"

step "the mock upstream"
if [ -n "${AGV_DOCKER_MOCK_BIN:-}" ]; then
  mock_bin=$(realpath "$AGV_DOCKER_MOCK_BIN")
else
  cargo build --locked --quiet --example mock_upstream
  mock_bin=$(realpath "${CARGO_TARGET_DIR:-target}/debug/examples/mock_upstream")
fi
[ -x "$mock_bin" ] || fail "no mock upstream binary at $mock_bin"

step "base images"
bash tests/docker/base-images.sh

step "build the image (cargo profile $PROFILE)"
build_started=$SECONDS
compose down -v --remove-orphans >/dev/null 2>&1 || true
compose build
echo "image built in $((SECONDS - build_started)) s: $(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.1f MB", $1 / 1e6}')"
[ "$(docker image inspect -f '{{.Config.User}}' "$IMAGE")" = agv ] || fail "the image does not run as agv"
ok "the image builds"

step "up"
compose up -d --no-build
wait_healthy
ok "the container becomes healthy (agv-server healthcheck)"
[ "$(curl -fsS "$base/health" | json status)" = ok ] || fail "/health"
[ "$(curl -fsS "$base/ready" | json status)" = ready ] || fail "/ready"
ok "/health and /ready answer on the published port $port"
[ "$(compose exec -T agv id -u)" = 10001 ] || fail "agv does not run as uid 10001"
compose exec -T agv sh -c 'test -w /data && test -f /data/agv.db' || {
  compose exec -T agv ls -la /data >&2 || true
  fail "/data is not writable or holds no database"
}
ok "runs as uid 10001 with a writable /data volume"

step "a tenant and keys with docker compose exec -T"
tenant=$(compose exec -T agv agv-server tenant create docker-test)
[[ "$tenant" =~ ^[A-Za-z0-9_-]+$ ]] || fail "tenant create printed '$tenant'"
key=$(compose exec -T agv agv-server key create --tenant "$tenant" --name app)
admin=$(compose exec -T agv agv-server key create --tenant "$tenant" --name ops --scope admin)
[[ "$key" == agv_* && "$admin" == agv_* ]] || fail "key create printed '$key' / '$admin'"
ok "tenant $tenant and two keys made inside the container"

step "a proxied call is answered by the upstream and recorded"
start_mock
headers=$(mktemp)
body=$(curl -fsS -D "$headers" "$base/v1/chat/completions" \
  -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
  -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hello from the container test"}]}') \
  || fail "the proxied call failed: $(cat "$headers")"
call_id=$(tr -d '\r' <"$headers" | awk 'tolower($1) == "x-agv-call-id:" {print $2}')
rm -f "$headers"
[ -n "$call_id" ] || fail "no x-agv-call-id on the answer"
[ -n "$(printf '%s' "$body" | json choices.0.message.content)" ] || fail "no answer: $body"
recorded=$(curl -fsS "$base/v1/calls/$call_id" -H "Authorization: Bearer $admin")
[ "$(printf '%s' "$recorded" | json status)" = 200 ] || fail "the recorded call: $recorded"
ok "call $call_id answered by the mock and recorded"

step "health probes stay out of the INFO log"
# The health check has run at least once (the container is healthy); the proxied call
# above is logged.
requests=$(compose logs --no-color agv | grep '"message":"request"' || true)
grep -q '"route":"/v1/chat/completions"' <<<"$requests" || fail "the proxied call is not in the log"
if grep -E '"route":"/(ready|health)"' <<<"$requests"; then
  fail "health probes are logged at INFO"
fi
ok "the log has the call and no health probe"

step "stop: SIGTERM within the stop grace period"
docker rm -f "$MOCK" >/dev/null
cid=$(compose ps -q agv)
stop_started=$SECONDS
compose stop agv
[ "$(docker inspect -f '{{.State.ExitCode}}' "$cid")" = 0 ] || fail "agv exited with $(docker inspect -f '{{.State.ExitCode}}' "$cid")"
grep -q 'agv-server stopped' <<<"$(compose logs --no-color agv)" || fail "no 'agv-server stopped' in the log"
ok "agv stopped cleanly (exit 0) in $((SECONDS - stop_started)) s"

step "down and up: the data is still there"
compose down
compose up -d --no-build
wait_healthy
start_mock
recorded=$(curl -fsS "$base/v1/calls/$call_id" -H "Authorization: Bearer $admin") \
  || fail "call $call_id is gone after down and up"
[ "$(printf '%s' "$recorded" | json id)" = "$call_id" ] || fail "the recorded call: $recorded"
grep -q "$tenant" <<<"$(compose exec -T agv agv-server tenant list)" || fail "tenant $tenant is gone"
curl -fsS "$base/v1/chat/completions" -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
  -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"again"}]}' >/dev/null \
  || fail "the key no longer works after down and up"
ok "after down and up: the call, the tenant and the keys are there"

step "done"
echo "docker: $passed passed, 0 failed (in $((SECONDS - started)) s)"
