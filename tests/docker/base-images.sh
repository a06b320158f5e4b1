#!/usr/bin/env bash
# Makes the base images that packaging/Dockerfile names, when the Docker daemon does not
# have them and cannot pull them (a machine without access to an image registry):
#
#   debian:bookworm-slim  Debian bookworm (debootstrap --variant=minbase) from the Debian
#                         mirror apt is configured with, imported with `docker import`;
#   rust:1.95-bookworm    that image plus gcc, make and the C headers (apt, inside a
#                         container) and this machine's Rust 1.95 toolchain, trusting this
#                         machine's CA bundle (crates.io may be reached through a proxy
#                         that presents its own certificate).
#
# An image that is already present is left alone, so reruns cost nothing. Where a registry
# is reachable, the images are pulled instead. Needs root (debootstrap), a Docker daemon,
# debootstrap and a rustup toolchain 1.95.
#
#   bash tests/docker/base-images.sh
set -euo pipefail

DEBIAN_IMAGE=debian:bookworm-slim
RUST_IMAGE=rust:1.95-bookworm
RUST_TOOLCHAIN=1.95.0-x86_64-unknown-linux-gnu
CA_BUNDLE=${AGV_DOCKER_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

try_pull() {
  echo "pulling $1"
  timeout 300 docker pull -q "$1" >/dev/null 2>&1
}

# The Debian mirror apt uses here (deb822 sources or sources.list), else Debian's own.
debian_mirror() {
  local uri
  uri=$(grep -hs -m1 -E '^URIs:\s*https?://' /etc/apt/sources.list.d/*.sources \
      | awk '{print $2}' | grep -v -- '-security' | head -n 1 || true)
  if [ -z "$uri" ]; then
    uri=$(grep -hs -E '^deb\s+https?://' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
        | awk '{print $2}' | grep -v -- '-security' | head -n 1 || true)
  fi
  echo "${uri:-http://deb.debian.org/debian}"
}

make_debian() {
  local mirror root
  mirror=$(debian_mirror)
  root=$(mktemp -d /tmp/agv-debootstrap.XXXXXX)
  # shellcheck disable=SC2064  # expand $root now: it is local to this function
  trap "rm -rf '$root'" RETURN
  echo "making $DEBIAN_IMAGE with debootstrap from $mirror (a few minutes)"
  debootstrap --variant=minbase bookworm "$root" "$mirror" >"$root.log" 2>&1 || {
    tail -n 20 "$root.log" >&2
    echo "debootstrap failed (log above)" >&2
    return 1
  }
  rm -f "$root.log"
  printf 'deb %s bookworm main\ndeb %s bookworm-updates main\n' "$mirror" "$mirror" \
    >"$root/etc/apt/sources.list"
  # As in Debian's official slim image: no documentation, no apt caches.
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/*
  tar -C "$root" --numeric-owner -c . \
    | docker import --change 'CMD ["bash"]' --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' - "$DEBIAN_IMAGE" >/dev/null
}

make_rust() {
  local toolchain ctx
  toolchain="${RUSTUP_HOME:-$HOME/.rustup}/toolchains/$RUST_TOOLCHAIN"
  if [ ! -x "$toolchain/bin/cargo" ]; then
    echo "no Rust toolchain $RUST_TOOLCHAIN at $toolchain" >&2
    return 1
  fi
  ctx=$(mktemp -d /tmp/agv-rust-image.XXXXXX)
  # shellcheck disable=SC2064  # expand $ctx now: it is local to this function
  trap "rm -rf '$ctx'" RETURN
  echo "making $RUST_IMAGE from $DEBIAN_IMAGE and the toolchain at $toolchain"
  # The compiler and the host's standard library only: no documentation, no other targets.
  mkdir -p "$ctx/rust/lib/rustlib"
  cp -aL "$toolchain/bin" "$toolchain/libexec" "$ctx/rust/" 2>/dev/null || cp -aL "$toolchain/bin" "$ctx/rust/"
  find "$toolchain/lib" -maxdepth 1 -type f -exec cp -aL {} "$ctx/rust/lib/" \;
  cp -aL "$toolchain/lib/rustlib/x86_64-unknown-linux-gnu" "$toolchain/lib/rustlib/etc" "$ctx/rust/lib/rustlib/"
  cp -L "$CA_BUNDLE" "$ctx/ca-certificates.crt"
  cat >"$ctx/Dockerfile" <<EOF
FROM $DEBIAN_IMAGE
RUN apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \\
      ca-certificates gcc g++ libc6-dev make perl pkg-config git \\
 && rm -rf /var/lib/apt/lists/*
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY rust /usr/local/rust
ENV CARGO_HOME=/usr/local/cargo \\
    PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \\
    CARGO_HTTP_CAINFO=/etc/ssl/certs/ca-certificates.crt
RUN mkdir -p /usr/local/cargo/bin && cargo --version && rustc --version
EOF
  docker build -q -t "$RUST_IMAGE" "$ctx" >/dev/null
}

if ! have_image "$DEBIAN_IMAGE"; then
  try_pull "$DEBIAN_IMAGE" || make_debian
fi
echo "$DEBIAN_IMAGE: $(docker image inspect -f '{{.Id}}' "$DEBIAN_IMAGE")"
if ! have_image "$RUST_IMAGE"; then
  try_pull "$RUST_IMAGE" || make_rust
fi
echo "$RUST_IMAGE: $(docker image inspect -f '{{.Id}}' "$RUST_IMAGE")"
