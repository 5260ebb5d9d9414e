#!/usr/bin/env bash
# Build localhost/debian:bookworm, the base of the CPU image, with debootstrap: no registry is
# reachable from these machines, so nothing can be pulled. The root filesystem tarball is cached
# in ~/.cache/sdturbo so a fresh podman store re-imports it in seconds instead of ~35 s.
set -euo pipefail
IMAGE=localhost/debian:bookworm  # build.sh passes this name as BASE_IMAGE
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
CACHE="${SDTURBO_CACHE:-$HOME/.cache/sdturbo}/debian-bookworm-minbase.tar"

if podman image exists "$IMAGE"; then
  exit 0
fi
if [ ! -s "$CACHE" ]; then
  mkdir -p "$(dirname "$CACHE")"
  root="$(mktemp -d)"
  trap 'rm -rf "$root" "$root.log"' EXIT
  debootstrap --variant=minbase bookworm "$root" "$MIRROR" >"$root.log" 2>&1 \
    || { tail -n 30 "$root.log" >&2; exit 1; }
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/archives/*.deb
  tar -C "$root" -cf "$CACHE.tmp" . && mv "$CACHE.tmp" "$CACHE"
fi
podman import --change 'CMD ["/bin/bash"]' "$CACHE" "$IMAGE" >&2
