#!/usr/bin/env bash
# Runs inside the debootstrapped root (chroot) to make it a bootable VM disk for
# molecule/kernel: booted by QEMU with -kernel/-initrd (no boot loader), root on
# /dev/vda. Each VM's name, addresses and the control node's ssh key come from
# the kernel command line (see oqvm-boot below), so one image serves every node.
set -euo pipefail

cat > /etc/apt/sources.list <<SOURCES
deb ${OQ_IMAGE_MIRROR} bookworm main
deb ${OQ_IMAGE_MIRROR} bookworm-updates main
deb ${OQ_IMAGE_SECURITY_MIRROR} bookworm-security main
SOURCES
# Fresh package lists in the image: the roles refresh them only when older than a day.
apt-get update -qq

cat > /etc/fstab <<'FSTAB'
# <file system> <mount point> <type> <options> <dump> <pass>
LABEL=oqroot / ext4 errors=remount-ro 0 1
FSTAB

# Ansible and the testinfra checks log in as root with the control node's key (sshd's
# default PermitRootLogin prohibit-password), as with the container scenario's root.
passwd --lock root >/dev/null

# Name resolution through QEMU's user-mode network (its built-in DNS forwarder).
rm -f /etc/resolv.conf
echo 'nameserver 10.0.2.3' > /etc/resolv.conf
cat > /etc/hosts <<'HOSTS'
127.0.0.1 localhost
::1 localhost ip6-localhost ip6-loopback
HOSTS
rm -f /etc/hostname

# Per-VM settings from the kernel command line, read at every boot (a reboot
# inside QEMU keeps the command line):
#   systemd.hostname=NAME        (systemd itself)
#   oq.natmac=MAC                NIC on QEMU's user-mode network: 10.0.2.15, ssh forwarded
#   oq.mac=MAC oq.addr=IP/PREFIX NIC on the private cluster network: static address
#   oq.sshkey=BASE64             the control node's ed25519 public key for root
cat > /usr/local/sbin/oqvm-boot <<'SCRIPT'
#!/bin/sh
set -eu
for word in $(cat /proc/cmdline); do
    case $word in
        systemd.hostname=*) name=${word#*=} ;;
        oq.natmac=*) natmac=${word#*=} ;;
        oq.mac=*) mac=${word#*=} ;;
        oq.addr=*) addr=${word#*=} ;;
        oq.sshkey=*) key=${word#*=} ;;
    esac
done
mkdir -p /run/systemd/network
if [ -n "${natmac:-}" ]; then
    # QEMU's user-mode network is always 10.0.2.0/24: static, no DHCP round trip
    printf '[Match]\nMACAddress=%s\n\n[Network]\nAddress=10.0.2.15/24\nGateway=10.0.2.2\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n' \
        "$natmac" > /run/systemd/network/20-nat.network
fi
if [ -n "${mac:-}" ] && [ -n "${addr:-}" ]; then
    printf '[Match]\nMACAddress=%s\n\n[Network]\nAddress=%s\nLinkLocalAddressing=no\n' \
        "$mac" "$addr" > /run/systemd/network/10-cluster.network
fi
if [ -n "${name:-}" ]; then
    echo "$name" > /etc/hostname
fi
if [ -n "${key:-}" ]; then
    install -d -m 0700 /root/.ssh
    echo "ssh-ed25519 $key control-node" > /root/.ssh/authorized_keys
    chmod 0600 /root/.ssh/authorized_keys
fi
SCRIPT
chmod 0755 /usr/local/sbin/oqvm-boot
cat > /etc/systemd/system/oqvm-boot.service <<'UNIT'
[Unit]
Description=Per-VM settings from the kernel command line (molecule/kernel)
DefaultDependencies=no
After=local-fs.target
Before=systemd-networkd.service ssh.service network-pre.target
Wants=network-pre.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/oqvm-boot
RemainAfterExit=yes

[Install]
WantedBy=sysinit.target
UNIT
systemctl enable oqvm-boot.service systemd-networkd.service ssh.service >/dev/null
systemctl enable systemd-networkd-wait-online.service >/dev/null

# Under QEMU's software CPU on a busy machine a boot can take minutes: systemd's default
# 90 s start timeout and networkd-wait-online's 2 minutes would fail units that are merely slow.
mkdir -p /etc/systemd/system.conf.d /etc/systemd/system/systemd-networkd-wait-online.service.d
cat > /etc/systemd/system.conf.d/oqvm-timeouts.conf <<'CONF'
[Manager]
DefaultTimeoutStartSec=900s
CONF
cat > /etc/systemd/system/systemd-networkd-wait-online.service.d/timeout.conf <<'UNIT'
[Service]
ExecStart=
ExecStart=/lib/systemd/systemd-networkd-wait-online --timeout=900
UNIT

# Periodic jobs that would compete with the tests for the (software) CPU, or hold the dpkg
# lock while site.yml installs packages (apt-daily fires soon after a first boot).
systemctl mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service \
    man-db.timer fstrim.timer dpkg-db-backup.timer >/dev/null 2>&1

# The NFS server is the master's, and site.yml turns it on there (the package enables it).
systemctl disable nfs-server.service >/dev/null 2>&1

# Each VM gets its own ssh host keys and machine-id at first boot.
rm -f /etc/ssh/ssh_host_* /etc/machine-id /var/lib/dbus/machine-id
: > /etc/machine-id
mkdir -p /etc/systemd/system/ssh.service.d
# ed25519 and ecdsa only: an RSA key takes long to generate under the software CPU
cat > /etc/ssh/sshd_config.d/oqvm-hostkeys.conf <<'CONF'
HostKey /etc/ssh/ssh_host_ed25519_key
HostKey /etc/ssh/ssh_host_ecdsa_key
CONF
cat > /etc/systemd/system/ssh.service.d/hostkeys.conf <<'UNIT'
[Service]
ExecStartPre=
ExecStartPre=/bin/sh -c 'for t in ed25519 ecdsa; do [ -s /etc/ssh/ssh_host_$${t}_key ] || ssh-keygen -q -t $$t -N "" -f /etc/ssh/ssh_host_$${t}_key; done'
ExecStartPre=/usr/sbin/sshd -t
UNIT

apt-get clean
rm -rf /var/cache/apt/*.bin
