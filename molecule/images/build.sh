#!/usr/bin/env bash
# Build the Debian 12 systemd node image used by the Molecule scenarios and the
# demo cluster, with debootstrap (no registry needed), tagged by a hash of this
# recipe. An unchanged recipe reuses the cached image.
#
#   molecule/images/build.sh          build if missing, print the image name
#   OQCLUSTER_IMAGE=repo/img:tag ...  use that image instead (a public systemd
#                                     image, where a registry is reachable)
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
NAME=oqcluster/debian12-systemd
MIRROR=${OQ_IMAGE_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${OQ_IMAGE_SECURITY_MIRROR:-http://deb.debian.org/debian-security}

recipe_hash() {
    cat "$HERE/build.sh" "$HERE/packages.txt" "$HERE/setup-rootfs.sh" | sha256sum | cut -c1-12
}

build_image() {
    local tag=$1 include
    ROOTFS=$(mktemp -d /var/tmp/oqcluster-rootfs.XXXXXX)
    trap 'rm -rf "$ROOTFS"' EXIT
    local rootfs=$ROOTFS
    include=$(grep -v '^#' "$HERE/packages.txt" | paste -sd, -)
    echo ">>> debootstrap bookworm into $rootfs (about a minute)" >&2
    debootstrap --variant=minbase --include="$include" bookworm "$rootfs" "$MIRROR" >/dev/null
    cp "$HERE/setup-rootfs.sh" "$rootfs/tmp/setup-rootfs.sh"
    chroot "$rootfs" env OQ_IMAGE_MIRROR="$MIRROR" OQ_IMAGE_SECURITY_MIRROR="$SECURITY_MIRROR" \
        bash /tmp/setup-rootfs.sh >"$rootfs.log" 2>&1 || { cat "$rootfs.log" >&2; exit 1; }
    rm -f "$rootfs.log"
    rm -f "$rootfs/tmp/setup-rootfs.sh"
    echo ">>> importing $NAME:$tag" >&2
    tar -C "$rootfs" -c . | docker import \
        --change 'CMD ["/lib/systemd/systemd"]' --change 'ENV container=docker' - "$NAME:$tag" >/dev/null
}

remove_stale_tags() {
    local keep=$1 old
    for old in $(docker images --format '{{.Tag}}' "$NAME"); do
        if [[ $old != "$keep" && $old != current ]]; then
            docker rmi "$NAME:$old" >/dev/null 2>&1 || true  # still used by a container: keep
        fi
    done
}

main() {
    if [[ -n ${OQCLUSTER_IMAGE:-} ]]; then
        echo "$OQCLUSTER_IMAGE"
        return
    fi
    local tag
    tag=$(recipe_hash)
    if ! docker image inspect "$NAME:$tag" >/dev/null 2>&1; then
        build_image "$tag"
    fi
    docker tag "$NAME:$tag" "$NAME:current"
    remove_stale_tags "$tag"
    echo "$NAME:$tag"
}

main "$@"
