#!/bin/sh
# Builds a release of agv-server for this machine's target and signs it:
#   dist/agv-server-<target>.tar.gz   the binary and the systemd unit
#   dist/SHA256SUMS                   SHA-256 of every file in dist/
#   dist/SHA256SUMS.sig               Ed25519 signature of SHA256SUMS (openssl pkeyutl -rawin)
#   dist/install.sh, dist/agv-server.service
#
#   AGV_RELEASE_KEY=/secure/release.key packaging/release.sh
#
# The key is an Ed25519 private key in PEM (openssl genpkey -algorithm ed25519); its public
# half is packaging/release-signing.pub and is built into install.sh. Keep the private key
# off this repository.
set -eu
cd "$(dirname "$0")/.."

key="${AGV_RELEASE_KEY:-}"
if [ -z "$key" ] || [ ! -f "$key" ]; then
  echo "error: set AGV_RELEASE_KEY to the release signing key (PEM)" >&2
  exit 1
fi

target=$(rustc -vV | sed -n 's/^host: //p')
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
echo "building agv-server $version for $target" >&2
cargo build --release --locked --bin agv-server

rm -rf dist && mkdir -p dist/stage
cp target/release/agv-server packaging/agv-server.service dist/stage/
tar -czf "dist/agv-server-$target.tar.gz" -C dist/stage agv-server agv-server.service
rm -rf dist/stage
cp install.sh packaging/agv-server.service dist/
(cd dist && sha256sum -- * > SHA256SUMS)
openssl pkeyutl -sign -inkey "$key" -rawin -in dist/SHA256SUMS -out dist/SHA256SUMS.sig
openssl pkeyutl -verify -pubin -inkey packaging/release-signing.pub -rawin \
  -in dist/SHA256SUMS -sigfile dist/SHA256SUMS.sig >/dev/null \
  || { echo "error: the key does not match packaging/release-signing.pub" >&2; exit 1; }
echo "dist/ holds agv-server $version for $target, signed" >&2
ls -l dist >&2
