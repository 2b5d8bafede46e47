#!/usr/bin/env bash
# Runs inside the debootstrapped root (chroot) to make it a container node:
# systemd as PID 1, sshd, no units that cannot work in a container.
set -euo pipefail

cat > /etc/apt/sources.list <<SOURCES
deb ${OQ_IMAGE_MIRROR} bookworm main
deb ${OQ_IMAGE_MIRROR} bookworm-updates main
deb ${OQ_IMAGE_SECURITY_MIRROR} bookworm-security main
SOURCES

# Units that need hardware, a console or a writable kernel: useless in a container.
systemctl mask \
    getty.target console-getty.service systemd-udevd.service systemd-udev-trigger.service \
    systemd-modules-load.service sys-kernel-config.mount sys-kernel-debug.mount \
    sys-kernel-tracing.mount systemd-firstboot.service systemd-remount-fs.service \
    >/dev/null
systemctl enable ssh.service >/dev/null

# Each container gets its own ssh host keys and machine-id at first boot.
rm -f /etc/ssh/ssh_host_* /etc/machine-id /var/lib/dbus/machine-id
: > /etc/machine-id
mkdir -p /etc/systemd/system/ssh.service.d
cat > /etc/systemd/system/ssh.service.d/hostkeys.conf <<'UNIT'
[Service]
ExecStartPre=
ExecStartPre=/usr/bin/ssh-keygen -A
ExecStartPre=/usr/sbin/sshd -t
UNIT

apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
