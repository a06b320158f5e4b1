#!/bin/sh
# Installs agv-server on Linux: downloads a release for this machine, checks its SHA-256
# against the release's SHA256SUMS and that file's Ed25519 signature, installs the binary,
# creates the `agv` service user, the data directory and the systemd unit, and prints the
# next steps.
#
#   curl -fsSL https://github.com/agv-server/agv-server/releases/latest/download/install.sh | sudo sh
#   sh install.sh [--version 1.2.3] [--from URL] [--uninstall]
#
# --from URL        a mirror holding the release files (air-gapped sites); also AGV_RELEASE_URL
# --version V       a given version instead of the latest
# --uninstall       stop and remove the service and the binary (the data directory is kept)
# AGV_RELEASE_PUBKEY_FILE  the PEM public key the release must be signed with (default: built in)
set -eu

REPO_URL="https://github.com/agv-server/agv-server/releases"
PREFIX="${AGV_PREFIX:-/usr/local}"
DATA_DIR="${AGV_DATA_DIR:-/var/lib/agv-server}"
UNIT_DIR="${AGV_UNIT_DIR:-/etc/systemd/system}"
VERSION="latest"
FROM="${AGV_RELEASE_URL:-}"
ACTION="install"

RELEASE_PUBKEY='-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAZGb5KMtND6TlI9FwoVJxG1AUIL4dkvAzcDW2LpBSw5Y=
-----END PUBLIC KEY-----'

say() { printf '%s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --version) [ $# -ge 2 ] || die "--version needs a value"; VERSION="$2"; shift 2 ;;
    --from) [ $# -ge 2 ] || die "--from needs a URL"; FROM="$2"; shift 2 ;;
    --uninstall) ACTION="uninstall"; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else
    command -v sudo >/dev/null 2>&1 || die "run as root (or install sudo)"
    sudo "$@"
  fi
}

have_systemd() { [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; }

if [ "$ACTION" = "uninstall" ]; then
  if have_systemd; then
    as_root systemctl disable --now agv-server.service 2>/dev/null || true
  fi
  as_root rm -f "$UNIT_DIR/agv-server.service" "$PREFIX/bin/agv-server" "$PREFIX/bin/agv-server.prev"
  if have_systemd; then as_root systemctl daemon-reload || true; fi
  say "agv-server removed; its data is kept in $DATA_DIR (delete it yourself if you mean to)"
  exit 0
fi

os=$(uname -s)
[ "$os" = "Linux" ] || die "this installer supports Linux; on $os use the container image (packaging/Dockerfile)"
case "$(uname -m)" in
  x86_64|amd64) arch="x86_64" ;;
  aarch64|arm64) arch="aarch64" ;;
  *) die "no release for the $(uname -m) architecture; build from source with cargo" ;;
esac
target="${arch}-unknown-linux-gnu"

for tool in sha256sum openssl tar; do
  command -v "$tool" >/dev/null 2>&1 || die "'$tool' is needed; install it first"
done
fetch() {
  if command -v curl >/dev/null 2>&1; then curl -fsSL -o "$2" "$1"
  elif command -v wget >/dev/null 2>&1; then wget -q -O "$2" "$1"
  else die "curl or wget is needed"; fi
}

if [ -z "$FROM" ]; then
  if [ "$VERSION" = "latest" ]; then FROM="$REPO_URL/latest/download"; else FROM="$REPO_URL/download/v$VERSION"; fi
fi
archive="agv-server-${target}.tar.gz"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM
say "downloading $archive from $FROM"
fetch "$FROM/$archive" "$work/$archive" || die "cannot download $FROM/$archive"
fetch "$FROM/SHA256SUMS" "$work/SHA256SUMS" || die "cannot download $FROM/SHA256SUMS"
fetch "$FROM/SHA256SUMS.sig" "$work/SHA256SUMS.sig" || die "cannot download $FROM/SHA256SUMS.sig"

if [ -n "${AGV_RELEASE_PUBKEY_FILE:-}" ]; then
  cp "$AGV_RELEASE_PUBKEY_FILE" "$work/release.pub"
else
  printf '%s\n' "$RELEASE_PUBKEY" > "$work/release.pub"
fi
openssl pkeyutl -verify -pubin -inkey "$work/release.pub" -rawin \
  -in "$work/SHA256SUMS" -sigfile "$work/SHA256SUMS.sig" >/dev/null 2>&1 \
  || die "the release's signature does not verify: SHA256SUMS was not signed by the agv-server release key. Nothing was installed"
(cd "$work" && grep " $archive\$" SHA256SUMS | sha256sum -c --status) \
  || die "$archive does not match its SHA-256 in the signed SHA256SUMS. Nothing was installed"
say "signature and checksum verified"

tar -xzf "$work/$archive" -C "$work"
[ -x "$work/agv-server" ] || die "the archive holds no agv-server binary"
"$work/agv-server" version >/dev/null 2>&1 || die "the downloaded binary does not run on this machine"

if ! id agv >/dev/null 2>&1; then
  as_root useradd --system --home-dir "$DATA_DIR" --shell /usr/sbin/nologin agv 2>/dev/null \
    || as_root adduser --system --home "$DATA_DIR" --shell /usr/sbin/nologin --group agv
fi
as_root mkdir -p "$DATA_DIR" "$PREFIX/bin" /etc/agv-server
as_root chown agv "$DATA_DIR"
as_root chmod 0750 "$DATA_DIR"
if [ -x "$PREFIX/bin/agv-server" ]; then
  as_root cp "$PREFIX/bin/agv-server" "$PREFIX/bin/agv-server.prev"
fi
as_root install -m 0755 "$work/agv-server" "$PREFIX/bin/agv-server"

if have_systemd; then
  unit="$work/agv-server.service"
  if [ -f "$work/agv-server.service" ]; then :; else
    fetch "$FROM/agv-server.service" "$unit" || die "cannot download the systemd unit"
  fi
  as_root install -m 0644 "$unit" "$UNIT_DIR/agv-server.service"
  as_root systemctl daemon-reload
  as_root systemctl enable --now agv-server.service
  started="started as the agv-server service (journalctl -u agv-server shows its log and the first-run setup URL)"
else
  started="not started: this machine has no systemd; run: AGV_DATA=$DATA_DIR $PREFIX/bin/agv-server"
fi

installed=$("$PREFIX/bin/agv-server" version)
say ""
say "$installed installed in $PREFIX/bin, data in $DATA_DIR; $started."
say "Next:"
say "  1. set the upstream key: echo 'AGV_UPSTREAM_API_KEY=sk-…' | sudo tee -a /etc/agv-server/env"
say "  2. create a tenant and a key: sudo -u agv AGV_DATA=$DATA_DIR agv-server tenant create Acme"
say "  3. point your OpenAI client at http://<this host>:8080/v1"
