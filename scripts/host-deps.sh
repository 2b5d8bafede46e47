#!/usr/bin/env bash
# Install the Debian/Ubuntu packages the control node needs for the demo and the
# tests, and make sure dockerd is running. Safe to run again: installs only what
# is missing. Needs root (or sudo).
set -euo pipefail

PACKAGES=(docker.io debootstrap python3-venv chromium qemu-system-x86 qemu-utils vde2)
SUDO=""
[[ $(id -u) -eq 0 ]] || SUDO="sudo"

missing_packages() {
    local pkg
    for pkg in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || echo "$pkg"
    done
}

install_packages() {
    local missing
    mapfile -t missing < <(missing_packages)
    if ((${#missing[@]})); then
        echo ">>> installing Debian packages: ${missing[*]}"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

start_dockerd() {
    if docker info >/dev/null 2>&1; then
        return
    fi
    if command -v systemctl >/dev/null && systemctl is-system-running >/dev/null 2>&1; then
        echo ">>> starting docker with systemctl"
        $SUDO systemctl start docker
    else
        # No systemd as PID 1 (CI sandboxes, WSL): run dockerd in the background.
        echo ">>> starting dockerd in the background (log: /var/log/dockerd.log)"
        $SUDO sh -c 'nohup dockerd >/var/log/dockerd.log 2>&1 &'
    fi
    for _ in $(seq 1 60); do
        docker info >/dev/null 2>&1 && return
        sleep 1
    done
    echo "ERROR: dockerd did not come up within 60 s; see /var/log/dockerd.log" >&2
    exit 1
}

install_packages
start_dockerd
