#!/usr/bin/env bash
# A local stand-in for the official Ray base image, built from Debian's packages with debootstrap
# and buildah: a test and air-gap aid for building deploy/Dockerfile.* where rayproject/ray cannot
# be pulled. It is NOT a replacement for the official image (no conda, no Ray preinstalled, no
# CUDA); real deployments build FROM rayproject/ray.
#
# It is shaped like the official image only where lushpo's Dockerfiles and manifests rely on it:
#   - Python 3.11 (Debian bookworm's) with pip and venv, first on PATH, in a folder the `ray` user
#     owns, so the Dockerfiles' `pip install` as uid 1000 works as it does on /home/ray/anaconda3;
#   - a `ray` user with uid 1000, gid 100 (users) and HOME /home/ray;
#   - bash, CA certificates and procps (`ray start` and the RayJob entrypoint use them).
#
#   deploy/standin-base.sh [IMAGE]      (default localhost/lushpo-standin-base:bookworm; as root)
#
# Then:  buildah bud --isolation chroot --build-arg BASE_IMAGE=IMAGE -f deploy/Dockerfile.cpu .
set -euo pipefail

IMAGE="${1:-localhost/lushpo-standin-base:bookworm}"
SUITE=bookworm
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PYTHON_HOME=/home/ray/anaconda3 # the official image's Python prefix, so PATH and ownership match

for tool in debootstrap buildah; do
  command -v "$tool" >/dev/null || { echo "standin-base: $tool is not installed (apt-get install $tool)" >&2; exit 2; }
done
[ "$(id -u)" = 0 ] || { echo "standin-base: debootstrap needs root" >&2; exit 2; }

work="$(mktemp -d "${TMPDIR:-/tmp}/lushpo-standin.XXXXXX")"
container=""
cleanup() {
  [ -n "$container" ] && buildah rm "$container" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

rootfs="$work/rootfs"
debootstrap --variant=minbase \
  --include=python3,python3-pip,python3-venv,ca-certificates,procps,bash \
  "$SUITE" "$rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1 \
  || { tail -20 "$work/debootstrap.log" >&2; echo "standin-base: debootstrap failed" >&2; exit 1; }

# The `ray` user and its Python: a venv owned by uid 1000 at the official image's prefix.
chroot "$rootfs" useradd --uid 1000 --gid 100 --create-home --home-dir /home/ray --shell /bin/bash ray
chroot "$rootfs" python3 -m venv "$PYTHON_HOME"
chroot "$rootfs" chown -R 1000:100 /home/ray
# What debootstrap leaves that an image does not need: apt lists, caches, docs.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/usr/share/doc/* \
  "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*

container="$(buildah from scratch)"
mountpoint="$(buildah mount "$container")"
cp -a "$rootfs"/. "$mountpoint"/
buildah umount "$container" >/dev/null
buildah config \
  --env "PATH=$PYTHON_HOME/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
  --env HOME=/home/ray \
  --user 1000:100 --workingdir /home/ray --cmd /bin/bash \
  --label org.opencontainers.image.description="lushpo test stand-in for rayproject/ray (Debian $SUITE)" \
  "$container"
buildah commit --quiet "$container" "$IMAGE" >/dev/null
echo "$IMAGE"
