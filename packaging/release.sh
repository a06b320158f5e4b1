#!/bin/sh
# Builds a release of agv-server for this machine's target and signs it:
#   dist/agv-server-<target>.tar.gz   the binary and the systemd unit
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
#   AGV_RELEASE_BINARY=FILE        pack this already built binary (for this target) instead
#                                  of running `cargo build --release`
#   AGV_RELEASE_DIR=DIR            write the release there instead of dist/ (must be absent
#                                  or empty)
#   AGV_RELEASE_PUBKEY_FILE=FILE   the public key the signature is checked against
#                                  [default: packaging/release-signing.pub]
set -eu

die() { echo "error: $*" >&2; exit 1; }
# Paths given relative to the caller's directory, made absolute before the cd below.
abs() { case "$1" in /*) printf '%s' "$1" ;; *) printf '%s/%s' "$PWD" "$1" ;; esac; }

key="${AGV_RELEASE_KEY:-}"
if [ -z "$key" ] || [ ! -f "$key" ]; then
  die "set AGV_RELEASE_KEY to the release signing key (PEM)"
fi
key=$(abs "$key")
binary="${AGV_RELEASE_BINARY:-}"
if [ -n "$binary" ]; then
  if [ ! -f "$binary" ] || [ ! -x "$binary" ]; then
    die "AGV_RELEASE_BINARY=$binary is not an executable file"
  fi
  binary=$(abs "$binary")
fi
out="${AGV_RELEASE_DIR:-}"
[ -z "$out" ] || out=$(abs "$out")
pub="${AGV_RELEASE_PUBKEY_FILE:-}"
[ -z "$pub" ] || pub=$(abs "$pub")

cd "$(dirname "$0")/.."
[ -n "$pub" ] || pub="$PWD/packaging/release-signing.pub"
if [ -z "$out" ]; then
  out="$PWD/dist"
  rm -rf "$out"
elif [ -e "$out" ] && [ -n "$(ls -A "$out")" ]; then
  die "AGV_RELEASE_DIR=$out is not empty; give an empty or new directory"
fi

target=$(rustc -vV | sed -n 's/^host: //p')
[ -n "$target" ] || die "cannot tell this machine's target from 'rustc -vV'"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
if [ -z "$binary" ]; then
  echo "building agv-server $version for $target" >&2
  cargo build --release --locked --bin agv-server
  binary="$PWD/target/release/agv-server"
fi
got=$("$binary" version) || die "$binary does not run"
[ "$got" = "agv-server $version" ] || die "$binary says '$got', but Cargo.toml is at $version"

mkdir -p "$out/stage"
cp "$binary" "$out/stage/agv-server"
cp packaging/agv-server.service "$out/stage/"
tar -czf "$out/agv-server-$target.tar.gz" -C "$out/stage" agv-server agv-server.service
rm -rf "$out/stage"
cp install.sh packaging/agv-server.service "$out/"
printf '%s\n' "$version" > "$out/VERSION"
(cd "$out" && sha256sum -- * > SHA256SUMS)
openssl pkeyutl -sign -inkey "$key" -rawin -in "$out/SHA256SUMS" -out "$out/SHA256SUMS.sig"
openssl pkeyutl -verify -pubin -inkey "$pub" -rawin \
  -in "$out/SHA256SUMS" -sigfile "$out/SHA256SUMS.sig" >/dev/null \
  || die "the key does not match $pub"
echo "$out holds agv-server $version for $target, signed" >&2
ls -l "$out" >&2
