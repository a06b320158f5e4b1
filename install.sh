#!/bin/sh
# Installs agv-server on Linux: fetches a release for this machine (GitHub, a mirror's URL or
# a directory written by packaging/release.sh), checks its SHA-256 against the release's
# SHA256SUMS and that file's Ed25519 signature, installs the binary, creates the `agv`
# service user, the data directory, the settings directory and the systemd unit, starts the
# service when systemd runs, and prints the next steps.
#
#   curl -fsSL https://github.com/agv-server/agv-server/releases/latest/download/install.sh | sudo sh
#   sh install.sh --help
#
# Tested end to end by tests/api/install.rs (in a private mount namespace).
set -eu

REPO_URL="https://github.com/agv-server/agv-server/releases"
PREFIX="${AGV_PREFIX:-/usr/local}"
DATA_DIR="${AGV_DATA_DIR:-/var/lib/agv-server}"
UNIT_DIR="${AGV_UNIT_DIR:-/etc/systemd/system}"
CONFIG_DIR="${AGV_CONFIG_DIR:-/etc/agv-server}"
VERSION=""
FROM="${AGV_RELEASE_URL:-}"
ACTION="install"
PURGE=0
START=1

RELEASE_PUBKEY='-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAZGb5KMtND6TlI9FwoVJxG1AUIL4dkvAzcDW2LpBSw5Y=
-----END PUBLIC KEY-----'

usage() {
  cat <<'EOF'
Usage: install.sh [options]             install or upgrade agv-server
       install.sh --uninstall [--purge] remove it

  --version V        install version V instead of the latest (with --from: check that the
                     mirror holds V)
  --from SOURCE      where the release files are, instead of GitHub (air-gapped sites): a
                     mirror's http(s):// URL, or a directory holding them (a path or a
                     file:// URL), as packaging/release.sh writes them [env: AGV_RELEASE_URL]
  --prefix DIR       the binary goes to DIR/bin/agv-server [env: AGV_PREFIX] [default: /usr/local]
  --data-dir DIR     the data directory, owned by the agv user, mode 0750
                     [env: AGV_DATA_DIR] [default: /var/lib/agv-server]
  --config-dir DIR   holds `env`, the service's settings (AGV_* variables), mode 0640
                     [env: AGV_CONFIG_DIR] [default: /etc/agv-server]
  --unit-dir DIR     where agv-server.service goes [env: AGV_UNIT_DIR] [default: /etc/systemd/system]
  --no-start         install the unit but do not enable or start it
  --uninstall        stop and remove the service and the binary; the data, the settings and
                     the agv user are kept
  --purge            with --uninstall: also delete the data directory, the settings
                     directory and the agv user
  -h, --help         this help

The release's SHA256SUMS must be signed by the agv-server release key (built in; the PEM
public key in AGV_RELEASE_PUBKEY_FILE overrides it). Without systemd running the unit is
installed all the same and the script prints how to run the server by hand.
EOF
}

say() { printf '%s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
usage_error() { say "error: $*"; usage >&2; exit 2; }

need_value() { [ "$1" -ge 2 ] || usage_error "$2 needs a value"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --version) need_value $# "$1"; VERSION="${2#v}"; shift 2 ;;
    --from) need_value $# "$1"; FROM="$2"; shift 2 ;;
    --prefix) need_value $# "$1"; PREFIX="$2"; shift 2 ;;
    --data-dir) need_value $# "$1"; DATA_DIR="$2"; shift 2 ;;
    --config-dir) need_value $# "$1"; CONFIG_DIR="$2"; shift 2 ;;
    --unit-dir) need_value $# "$1"; UNIT_DIR="$2"; shift 2 ;;
    --no-start) START=0; shift ;;
    --uninstall) ACTION="uninstall"; shift ;;
    --purge) PURGE=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage_error "unknown option '$1'" ;;
  esac
done
[ "$PURGE" = 0 ] || [ "$ACTION" = "uninstall" ] || usage_error "--purge only goes with --uninstall"

# The paths end up in the systemd unit: absolute, and nothing systemd or sed would read
# specially (spaces, quotes, %, |, &, backslash).
check_dir() {
  case "$2" in
    /) usage_error "$1 cannot be /" ;;
    /*) ;;
    *) usage_error "$1 must be an absolute path, not '$2'" ;;
  esac
  case "$2" in
    *[[:space:]]*|*[\"\'%\|\&\\]*) usage_error "$1 '$2' holds a space or one of \" ' % | & \\; choose another path" ;;
  esac
}
check_dir --prefix "$PREFIX"
check_dir --data-dir "$DATA_DIR"
check_dir --config-dir "$CONFIG_DIR"
check_dir --unit-dir "$UNIT_DIR"
case "$VERSION" in
  *[!0-9A-Za-z.+-]*) usage_error "--version takes a version such as 1.2.3, not '$VERSION'" ;;
esac
PREFIX="${PREFIX%/}"; DATA_DIR="${DATA_DIR%/}"; CONFIG_DIR="${CONFIG_DIR%/}"; UNIT_DIR="${UNIT_DIR%/}"
BIN="$PREFIX/bin/agv-server"
UNIT="$UNIT_DIR/agv-server.service"

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else
    command -v sudo >/dev/null 2>&1 || die "run as root (or install sudo)"
    sudo "$@"
  fi
}

# systemd's own test (sd_booted): it runs as the init system when /run/systemd/system exists.
have_systemd() { [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; }

if [ "$ACTION" = "uninstall" ]; then
  if have_systemd; then
    as_root systemctl disable --now agv-server.service 2>/dev/null || true
  fi
  as_root rm -f "$UNIT" "$BIN" "$BIN.prev"
  if have_systemd; then as_root systemctl daemon-reload || true; fi
  if [ "$PURGE" = 1 ]; then
    as_root rm -rf "$DATA_DIR" "$CONFIG_DIR"
    if id agv >/dev/null 2>&1; then
      as_root userdel agv 2>/dev/null || as_root deluser agv 2>/dev/null \
        || die "the agv user could not be deleted; delete it with: userdel agv"
    fi
    say "agv-server removed, with its data ($DATA_DIR), its settings ($CONFIG_DIR) and the agv user"
  else
    say "agv-server removed ($BIN, $UNIT); its data is kept in $DATA_DIR and its settings in $CONFIG_DIR (install.sh --uninstall --purge deletes them and the agv user)"
  fi
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

if [ -z "$FROM" ]; then
  if [ -z "$VERSION" ]; then FROM="$REPO_URL/latest/download"; else FROM="$REPO_URL/download/v$VERSION"; fi
fi
FROM="${FROM%/}"
# A URL is downloaded from; anything else is a directory holding the release files.
case "$FROM" in
  http://*|https://*) local_dir="" ;;
  file://localhost/*) local_dir="${FROM#file://localhost}" ;;
  file://*) local_dir="${FROM#file://}" ;;
  *) local_dir="$FROM" ;;
esac
if [ -n "$local_dir" ] && [ ! -d "$local_dir" ]; then
  die "--from $FROM is neither an http(s):// URL nor a directory. Nothing was installed"
fi
archive="agv-server-${target}.tar.gz"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
# Puts the release file $1 into $work, or stops.
fetch() {
  if [ -n "$local_dir" ]; then
    cp "$local_dir/$1" "$work/$1" || die "cannot read $local_dir/$1. Nothing was installed"
  elif command -v curl >/dev/null 2>&1; then
    curl -fsSL -o "$work/$1" "$FROM/$1" || die "cannot download $FROM/$1. Nothing was installed"
  elif command -v wget >/dev/null 2>&1; then
    wget -q -O "$work/$1" "$FROM/$1" || die "cannot download $FROM/$1. Nothing was installed"
  else
    die "curl or wget is needed to download from $FROM"
  fi
}
say "fetching $archive from $FROM"
fetch "$archive"
fetch SHA256SUMS
fetch SHA256SUMS.sig

if [ -n "${AGV_RELEASE_PUBKEY_FILE:-}" ]; then
  [ -r "$AGV_RELEASE_PUBKEY_FILE" ] || die "AGV_RELEASE_PUBKEY_FILE=$AGV_RELEASE_PUBKEY_FILE cannot be read"
  cp "$AGV_RELEASE_PUBKEY_FILE" "$work/release.pub"
else
  printf '%s\n' "$RELEASE_PUBKEY" > "$work/release.pub"
fi
openssl pkeyutl -verify -pubin -inkey "$work/release.pub" -rawin \
  -in "$work/SHA256SUMS" -sigfile "$work/SHA256SUMS.sig" >/dev/null 2>&1 \
  || die "the release's signature does not verify: SHA256SUMS was not signed by the agv-server release key. Nothing was installed"
grep -q "^[0-9a-f]\{64\}  $archive\$" "$work/SHA256SUMS" \
  || die "the signed SHA256SUMS lists no $archive. Nothing was installed"
(cd "$work" && grep "^[0-9a-f]\{64\}  $archive\$" SHA256SUMS | sha256sum -c --status) \
  || die "$archive does not match its SHA-256 in the signed SHA256SUMS (damaged or tampered download). Nothing was installed"
say "signature and checksum verified"

mkdir "$work/x"
tar -xzf "$work/$archive" -C "$work/x" || die "cannot unpack $archive. Nothing was installed"
if [ ! -f "$work/x/agv-server" ] || [ ! -x "$work/x/agv-server" ]; then
  die "the archive holds no agv-server binary. Nothing was installed"
fi
[ -f "$work/x/agv-server.service" ] || die "the archive holds no agv-server.service. Nothing was installed"
got=$("$work/x/agv-server" version 2>/dev/null) || die "the downloaded binary does not run on this machine. Nothing was installed"
got="${got#agv-server }"
if [ -n "$VERSION" ] && [ "$got" != "$VERSION" ]; then
  die "$FROM holds agv-server $got, not the requested $VERSION. Nothing was installed"
fi

# The unit names the default paths; point it at the chosen ones.
sed -e "s|/usr/local/bin|$PREFIX/bin|g" \
    -e "s|/var/lib/agv-server|$DATA_DIR|g" \
    -e "s|/etc/agv-server|$CONFIG_DIR|g" \
    -e "s|/etc/systemd/system|$UNIT_DIR|g" \
    "$work/x/agv-server.service" > "$work/agv-server.service"

if ! id agv >/dev/null 2>&1; then
  nologin=/bin/false
  for f in /usr/sbin/nologin /sbin/nologin; do
    if [ -x "$f" ]; then nologin="$f"; break; fi
  done
  if command -v useradd >/dev/null 2>&1; then
    as_root useradd --system --user-group --no-create-home --home-dir "$DATA_DIR" --shell "$nologin" agv \
      || die "cannot create the service user agv (useradd failed)"
  elif command -v adduser >/dev/null 2>&1; then
    as_root adduser --system --group --no-create-home --home "$DATA_DIR" --shell "$nologin" agv \
      || die "cannot create the service user agv (adduser failed)"
  else
    die "cannot create the service user agv: neither useradd nor adduser is installed"
  fi
  say "created the service user agv"
fi
group=$(id -gn agv)
as_root mkdir -p "$DATA_DIR" "$PREFIX/bin" "$CONFIG_DIR" "$UNIT_DIR"
as_root chown "agv:$group" "$DATA_DIR"
as_root chmod 0750 "$DATA_DIR"
as_root chown "root:$group" "$CONFIG_DIR"
as_root chmod 0750 "$CONFIG_DIR"
if [ ! -e "$CONFIG_DIR/env" ]; then
  as_root touch "$CONFIG_DIR/env"
  as_root chown "root:$group" "$CONFIG_DIR/env"
  as_root chmod 0640 "$CONFIG_DIR/env"
fi
if [ -x "$BIN" ]; then
  as_root cp -p "$BIN" "$BIN.prev"
fi
as_root install -m 0755 "$work/x/agv-server" "$BIN"
as_root install -m 0644 "$work/agv-server.service" "$UNIT"

restart="sudo systemctl restart agv-server"
run_by_hand="sudo -u agv sh -c 'set -a; . $CONFIG_DIR/env; AGV_DATA=$DATA_DIR exec $BIN serve'"
if have_systemd; then
  as_root systemctl daemon-reload
  if [ "$START" = 1 ]; then
    as_root systemctl enable agv-server.service
    # restart, not start: an upgrade must replace the running process.
    as_root systemctl restart agv-server.service \
      || die "agv-server is installed but its service did not start; see: journalctl -u agv-server"
    started="started as the agv-server service (journalctl -u agv-server shows its log and the first-run setup URL)"
  else
    started="not started (--no-start); start it with: sudo systemctl enable --now agv-server"
  fi
else
  restart="stop and start it again"
  started="not started: systemd is not running on this machine. The unit is in $UNIT for when it is; run the server by hand with: $run_by_hand"
fi

installed=$("$BIN" version)
say ""
say "$installed installed as $BIN, data in $DATA_DIR, settings in $CONFIG_DIR/env, unit $UNIT;"
say "$started."
say "Next:"
say "  1. set the upstream key: echo 'AGV_UPSTREAM_API_KEY=sk-…' | sudo tee -a $CONFIG_DIR/env"
say "     then restart the server: $restart"
say "  2. create a tenant and a key: sudo -u agv AGV_DATA=$DATA_DIR $BIN tenant create Acme"
say "  3. point your OpenAI client at http://127.0.0.1:8080/v1 (other hosts: add AGV_LISTEN=0.0.0.0:8080"
say "     to $CONFIG_DIR/env, or put a TLS proxy in front; see the README)"
