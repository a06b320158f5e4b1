#!/bin/sh
# Builds a release of agv-server for Linux on x86_64 and aarch64 and signs it. install.sh and
# `agv-server update` both read exactly these files, from a GitHub release, a mirror URL or
# a directory (air-gapped sites: copy the directory over):
#   dist/agv-server-<target>.tar.gz   per target: the binary and the systemd unit
#   dist/VERSION                      the version (read by `agv-server update`)
#   dist/SHA256SUMS                   SHA-256 of every file in dist/
#   dist/SHA256SUMS.sig               Ed25519 signature of SHA256SUMS (openssl pkeyutl -rawin)
#   dist/install.sh, dist/agv-server.service
#
#   AGV_RELEASE_KEY=/secure/release.key packaging/release.sh
#
# The key is an Ed25519 private key in PEM (openssl genpkey -algorithm ed25519); its public
# half is packaging/release-signing.pub and is built into install.sh. Keep the private key
# off this repository.
#   AGV_RELEASE_TARGETS="T …"      the targets to pack [default: x86_64-unknown-linux-gnu
#                                  aarch64-unknown-linux-gnu; with AGV_RELEASE_BINARY: this
#                                  machine's target only]
#   AGV_RELEASE_PROFILE=P          the cargo profile binaries are built with [default: dist,
#                                  whole-program LTO, ~15 min per target on 2 cores; release
#                                  builds several times faster, for trial runs]
#   AGV_RELEASE_BINARY=FILE        pack this already built binary for this machine's target
#                                  instead of building it
#   AGV_RELEASE_BINARY_<TARGET>=FILE  the same for one target, named as cargo names its
#                                  variables, e.g. AGV_RELEASE_BINARY_AARCH64_UNKNOWN_LINUX_GNU
#   AGV_RELEASE_DIR=DIR            write the release there instead of dist/ (must be absent
#                                  or empty)
#   AGV_RELEASE_PUBKEY_FILE=FILE   the public key the signature is checked against
#                                  [default: packaging/release-signing.pub]
#
# A target of another architecture than this machine's is linked with Debian's cross
# toolchain: `apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross` on x86_64
# (`gcc-x86-64-linux-gnu libc6-dev-amd64-cross` on aarch64) and `rustup target add <target>`.
# CC_<target>, AR_<target> and CARGO_TARGET_<TARGET>_LINKER, when set, are used instead.
# Every binary is checked before it is packed: an ELF file for its target's architecture,
# at Cargo.toml's version (asked with `agv-server version` when it runs here; otherwise
# found in its HTTP user agent, agv-server/<version>).
set -eu

die() { echo "error: $*" >&2; exit 1; }
caller="$PWD"
# Paths given relative to the caller's directory, made absolute after the cd below.
abs() { case "$1" in /*) printf '%s' "$1" ;; *) printf '%s/%s' "$caller" "$1" ;; esac; }
# x86_64-unknown-linux-gnu → X86_64_UNKNOWN_LINUX_GNU (cargo's spelling in variable names)
upper() { printf '%s' "$1" | tr 'a-z-' 'A-Z_'; }

key="${AGV_RELEASE_KEY:-}"
if [ -z "$key" ] || [ ! -f "$key" ]; then
  die "set AGV_RELEASE_KEY to the release signing key (PEM)"
fi
key=$(abs "$key")
out="${AGV_RELEASE_DIR:-}"
[ -z "$out" ] || out=$(abs "$out")
pub="${AGV_RELEASE_PUBKEY_FILE:-}"
[ -z "$pub" ] || pub=$(abs "$pub")
profile="${AGV_RELEASE_PROFILE:-dist}"

cd "$(dirname "$0")/.."
[ -n "$pub" ] || pub="$PWD/packaging/release-signing.pub"
host=$(rustc -vV | sed -n 's/^host: //p')
[ -n "$host" ] || die "cannot tell this machine's target from 'rustc -vV'"
if [ -n "${AGV_RELEASE_TARGETS:-}" ]; then
  targets="$AGV_RELEASE_TARGETS"
elif [ -n "${AGV_RELEASE_BINARY:-}" ]; then
  targets="$host"
else
  targets="x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu"
fi
for t in $targets; do
  case "$t" in
    x86_64-unknown-linux-gnu|aarch64-unknown-linux-gnu) ;;
    *) die "no release for $t: install.sh and agv-server update know x86_64-unknown-linux-gnu and aarch64-unknown-linux-gnu" ;;
  esac
done
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
if [ -z "$out" ]; then
  out="$PWD/dist"
  rm -rf "$out"
elif [ -e "$out" ] && [ -n "$(ls -A "$out")" ]; then
  die "AGV_RELEASE_DIR=$out is not empty; give an empty or new directory"
fi

# The prebuilt binary for target $1, if one was given.
prebuilt() {
  given=$(printenv "AGV_RELEASE_BINARY_$(upper "$1")" || true)
  if [ -z "$given" ] && [ "$1" = "$host" ]; then given="${AGV_RELEASE_BINARY:-}"; fi
  [ -n "$given" ] || return 0
  [ -f "$given" ] || die "the binary given for $1 ($given) is not a file"
  abs "$given"
}

# Where cargo puts the binary for target $1.
built() {
  dir="$profile"
  [ "$dir" != dev ] || dir=debug
  printf '%s' "${CARGO_TARGET_DIR:-$PWD/target}/$1/$dir/agv-server"
}

# Builds agv-server for target $1 with the chosen profile.
build() {
  t="$1"
  if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -qx "$t"; then
    die "the Rust standard library for $t is not installed: rustup target add $t"
  fi
  set -- cargo build --profile "$profile" --locked --bin agv-server --target "$t"
  arch="${t%%-*}"
  if [ "$arch" != "${host%%-*}" ]; then
    gcc="$arch-linux-gnu-gcc"
    low=$(printf '%s' "$t" | tr '-' '_')
    for pair in "CARGO_TARGET_$(upper "$t")_LINKER=$gcc" "CC_$low=$gcc" "AR_$low=$arch-linux-gnu-ar"; do
      if [ -z "$(printenv "${pair%%=*}" || true)" ]; then
        case "$arch" in
          aarch64) pkgs="gcc-aarch64-linux-gnu libc6-dev-arm64-cross" ;;
          *) pkgs="gcc-x86-64-linux-gnu libc6-dev-amd64-cross" ;;
        esac
        command -v "${pair#*=}" >/dev/null 2>&1 \
          || die "building for $t needs the cross toolchain ${pair#*=}: apt-get install $pkgs"
        set -- "$pair" "$@"
      fi
    done
    set -- env "$@"
  fi
  echo "building agv-server $version for $t (profile $profile): $*" >&2
  "$@" >&2 || die "the build for $t failed"
}

# Dies unless $2 is an agv-server $version binary for target $1.
check_binary() {
  t="$1" binary="$2"
  if [ ! -f "$binary" ] || [ ! -x "$binary" ]; then die "$binary ($t) is not an executable file"; fi
  # The ELF magic and e_machine (bytes 18-19, little-endian): 3e00 x86_64, b700 aarch64.
  head=$(od -An -tx1 -N20 "$binary" | tr -d ' \n')
  case "$t" in
    x86_64-*) machine=3e00 ;;
    aarch64-*) machine=b700 ;;
  esac
  case "$head" in
    7f454c46*) ;;
    *) die "$binary is not an ELF binary, so not one for $t" ;;
  esac
  [ "$(printf '%s' "$head" | cut -c37-40)" = "$machine" ] \
    || die "$binary is not built for $t (its ELF machine differs)"
  if got=$("$binary" version 2>/dev/null); then
    [ "$got" = "agv-server $version" ] || die "$binary says '$got', but Cargo.toml is at $version"
  elif [ "$t" = "$host" ]; then
    die "$binary does not run"
  else
    grep -qaF "agv-server/$version" "$binary" \
      || die "$binary ($t) is not agv-server $version (it cannot run here, and its user agent names another version)"
  fi
}

# Every binary is built and checked before anything is written.
for t in $targets; do
  binary=$(prebuilt "$t")
  if [ -z "$binary" ]; then
    build "$t"
    binary=$(built "$t")
  fi
  check_binary "$t" "$binary"
done
mkdir -p "$out/stage"
for t in $targets; do
  binary=$(prebuilt "$t")
  [ -n "$binary" ] || binary=$(built "$t")
  install -m 0755 "$binary" "$out/stage/agv-server"
  install -m 0644 packaging/agv-server.service "$out/stage/agv-server.service"
  tar --owner=0 --group=0 --numeric-owner -czf "$out/agv-server-$t.tar.gz" \
    -C "$out/stage" agv-server agv-server.service
  echo "packed $binary as agv-server-$t.tar.gz" >&2
done
rm -rf "$out/stage"
cp install.sh packaging/agv-server.service "$out/"
printf '%s\n' "$version" > "$out/VERSION"
(cd "$out" && sha256sum -- * > SHA256SUMS)
openssl pkeyutl -sign -inkey "$key" -rawin -in "$out/SHA256SUMS" -out "$out/SHA256SUMS.sig"
openssl pkeyutl -verify -pubin -inkey "$pub" -rawin \
  -in "$out/SHA256SUMS" -sigfile "$out/SHA256SUMS.sig" >/dev/null \
  || die "the key does not match $pub"
echo "$out holds agv-server $version for $targets, signed" >&2
ls -l "$out" >&2
