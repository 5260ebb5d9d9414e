#!/usr/bin/env bash
# Build the CPU image from the production Dockerfile, on a machine with podman and no registry:
# the base is the debootstrapped Debian (base-image.sh), torch is the CPU wheel from pip's local
# wheel folder, and pip reaches PyPI through the host's CA bundle. Both are mounted into the
# build only (podman build -v), so neither lands in a layer.
#   container/build.sh [IMAGE]      default IMAGE: localhost/sdturbo:cpu
# Environment: BUILD_CONTEXT (default: the repository; a `git worktree` snapshot works too),
# TORCH_VERSION (default 2.13.0+cpu), CONTAINERS_CONF (default container/containers.conf).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(dirname "$HERE")"
IMAGE="${1:-localhost/sdturbo:cpu}"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$HERE/containers.conf}"

"$HERE/base-image.sh"

# pip's own settings on this host (`python3 -m pip config list`): `cert` is the CA bundle that PyPI's TLS
# chain verifies against here, `find-links` the folder holding the CPU torch wheel.
pip_setting() { python3 -m pip config list 2>/dev/null | sed -n "s/^[^=]*\.$1='\(.*\)'$/\1/p" | head -n1; }
ca_bundle="$(pip_setting cert)"
ca_bundle="${ca_bundle:-/etc/ssl/certs/ca-certificates.crt}"
wheels="$(pip_setting find-links)"

args=(
  --build-arg BASE_IMAGE=localhost/debian:bookworm
  --build-arg "TORCH_VERSION=${TORCH_VERSION:-2.13.0+cpu}"
  --build-arg TORCH_INDEX_URL=https://pypi.org/simple
  --build-arg SDTURBO_DEVICE=cpu
  --build-arg PIP_CERT=/etc/host-ca.crt
  -v "$ca_bundle:/etc/host-ca.crt:ro"
)
if [ -n "$wheels" ] && [ -d "$wheels" ]; then
  args+=(--build-arg "PIP_FIND_LINKS=$wheels" -v "$wheels:$wheels:ro")
fi

# --network=host: the default bridge (netavark) fails on these machines. --format docker:
# the OCI format ignores SHELL (pipefail), as Docker and ECR images do not.
podman build --pull=never --network=host --layers --format docker "${args[@]}" \
  -f "$REPO/Dockerfile" -t "$IMAGE" "${BUILD_CONTEXT:-$REPO}"

# A rebuild leaves the previous image untagged; drop those of this project only.
podman image prune --force --filter label=org.opencontainers.image.title=sdturbo >/dev/null
