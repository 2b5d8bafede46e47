#!/usr/bin/env bash
# Build the Debian 12 VM image of the real-kernel scenario (molecule/kernel) with
# debootstrap, cached outside the repository by a hash of this recipe:
#   $OQCLUSTER_CACHE_DIR/vm/<hash>/{disk.qcow2,vmlinuz,initrd.img}
# (default cache dir: ${XDG_CACHE_HOME:-~/.cache}/oqcluster). An unchanged recipe
# reuses the cached image. Prints the image directory on stdout.
# Needs root (debootstrap, chroot, file ownership in the disk): sudo is used otherwise.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${OQCLUSTER_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/oqcluster}/vm
MIRROR=${OQ_IMAGE_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${OQ_IMAGE_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
DISK_SIZE=${OQ_VM_DISK_SIZE:-6G}
SUDO=""
[[ $(id -u) -eq 0 ]] || SUDO="sudo"

recipe_hash() {
    cat "$HERE/build.sh" "$HERE/packages.txt" "$HERE/setup-rootfs.sh" | sha256sum | cut -c1-12
}

need() {
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null || {
            echo "ERROR: $tool is missing: run 'make host-deps' (scripts/host-deps.sh)" >&2
            exit 1
        }
    done
}

# remove a build directory, unmounting what debootstrap may have left mounted in it
discard() {
    local tmp=$1 fs
    for fs in dev/pts dev sys proc; do
        if mountpoint -q "$tmp/rootfs/$fs" 2>/dev/null; then
            $SUDO umount -l "$tmp/rootfs/$fs"
        fi
    done
    $SUDO rm -rf "$tmp"
}

build_image() {
    local out=$1 tmp rootfs include
    tmp=$(mktemp -d "$CACHE/.build.XXXXXX")
    rootfs=$tmp/rootfs
    # shellcheck disable=SC2064  # expand now: the path is fixed
    trap "discard '$tmp'" EXIT
    include=$(grep -v -e '^#' -e '^$' "$HERE/packages.txt" | paste -sd, -)
    echo ">>> debootstrap bookworm with a kernel into $rootfs (about 4 minutes)" >&2
    $SUDO debootstrap --variant=minbase --include="$include" bookworm "$rootfs" "$MIRROR" \
        >"$tmp/debootstrap.log" 2>&1 || { tail -30 "$tmp/debootstrap.log" >&2; exit 1; }
    $SUDO cp "$HERE/setup-rootfs.sh" "$rootfs/tmp/setup-rootfs.sh"
    $SUDO chroot "$rootfs" env OQ_IMAGE_MIRROR="$MIRROR" OQ_IMAGE_SECURITY_MIRROR="$SECURITY_MIRROR" \
        bash /tmp/setup-rootfs.sh >"$tmp/setup.log" 2>&1 || { tail -30 "$tmp/setup.log" >&2; exit 1; }
    $SUDO rm -f "$rootfs/tmp/setup-rootfs.sh"
    echo ">>> kernel, initrd and a $DISK_SIZE ext4 disk (qcow2)" >&2
    $SUDO cp "$(readlink -f "$rootfs/vmlinuz")" "$tmp/vmlinuz"
    $SUDO cp "$(readlink -f "$rootfs/initrd.img")" "$tmp/initrd.img"
    $SUDO chmod 0644 "$tmp/vmlinuz" "$tmp/initrd.img"
    truncate -s "$DISK_SIZE" "$tmp/disk.raw"
    $SUDO mkfs.ext4 -q -L oqroot -d "$rootfs" "$tmp/disk.raw"
    qemu-img convert -O qcow2 "$tmp/disk.raw" "$tmp/disk.qcow2"
    rm -f "$tmp/disk.raw"
    $SUDO rm -rf "$rootfs" "$tmp"/*.log
    chmod 0755 "$tmp"
    mv "$tmp" "$out"
    trap - EXIT
}

remove_stale_images() {
    local keep=$1 dir
    for dir in "$CACHE"/*/; do
        dir=${dir%/}
        [[ -d $dir && $dir != "$keep" ]] || continue
        # an image still used by a running VM (its overlays point at it) stays
        if grep -qsF "$dir/" /proc/[0-9]*/cmdline; then
            continue
        fi
        rm -rf "$dir"
    done
}

main() {
    need debootstrap qemu-img mkfs.ext4
    mkdir -p "$CACHE"
    local out
    out=$CACHE/$(recipe_hash)
    if [[ ! -f $out/disk.qcow2 ]]; then
        build_image "$out"
    fi
    remove_stale_images "$out"
    echo "$out"
}

main "$@"
