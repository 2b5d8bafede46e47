#!/usr/bin/env bash
# Start and stop the VMs of the real-kernel scenario (used by create.yml and destroy.yml).
#
#   vmctl.sh up STATE_DIR IMAGE_DIR NAME INDEX SSH_PORT CLUSTER_ADDR/PREFIX MEMORY_MB PUBKEY [FWD]
#   vmctl.sh down STATE_DIR
#
# Every file lives in STATE_DIR: the vde_switch of the private cluster network
# (vde.ctl, vde.pid), and per VM a qcow2 overlay of the cached image (NAME.qcow2),
# its pid file (NAME.pid) and serial console log (NAME.console). NIC0 is QEMU's
# user-mode network (NAT: package mirror, ssh forwarded from 127.0.0.1:SSH_PORT, and
# FWD, a comma-separated HOSTPORT:GUESTPORT list, also from 127.0.0.1), NIC1 the vde
# network between the VMs. QEMU runs with the software CPU (TCG) under
# `nice -n $OQ_VM_NICE` (default 10). `down` stops exactly the processes whose pid
# files are in STATE_DIR (and any process still holding a file there), then removes it.
set -euo pipefail

NICE=${OQ_VM_NICE:-10}
CPUS=${OQ_VM_CPUS:-1}

die() { echo "ERROR: $*" >&2; exit 1; }

# pid from PIDFILE if that process is alive and was started on STATE_DIR's files
live_pid() {
    local pidfile=$1 state=$2 pid
    [[ -s $pidfile ]] || return 1
    pid=$(<"$pidfile")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    grep -qsF "$state/" "/proc/$pid/cmdline" || return 1
    echo "$pid"
}

switch_up() {
    local state=$1
    live_pid "$state/vde.pid" "$state" >/dev/null && return
    rm -rf "$state/vde.ctl"
    nice -n "$NICE" vde_switch --sock "$state/vde.ctl" --daemon --pidfile "$state/vde.pid" \
        --mgmt "$state/vde.mgmt" >/dev/null
    for _ in $(seq 1 50); do
        [[ -S $state/vde.ctl/ctl ]] && return
        sleep 0.1
    done
    die "vde_switch did not create $state/vde.ctl (is vde2 installed? make host-deps)"
}

port_free() {
    ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

vm_up() {
    local state=$1 image=$2 name=$3 index=$4 port=$5 addr=$6 memory=$7 pubkey=$8 fwd=${9:-}
    local natmac clustermac append key hostfwd pair
    [[ -f $image/disk.qcow2 && -f $image/vmlinuz && -f $image/initrd.img ]] ||
        die "no VM image in $image: run molecule/images/vm/build.sh"
    mkdir -p "$state"
    switch_up "$state"
    if live_pid "$state/$name.pid" "$state" >/dev/null; then
        echo "$name: already running"
        return
    fi
    hostfwd="hostfwd=tcp:127.0.0.1:$port-:22"
    for pair in ${fwd//,/ }; do
        [[ $pair =~ ^[0-9]+:[0-9]+$ ]] || die "forward $pair of $name is not HOSTPORT:GUESTPORT"
        hostfwd+=",hostfwd=tcp:127.0.0.1:${pair%%:*}-:${pair##*:}"
    done
    for pair in "$port:22" ${fwd//,/ }; do
        port_free "${pair%%:*}" || die "127.0.0.1:${pair%%:*} is in use: stop what listens there, or change the ports of $name in molecule/kernel/molecule.yml"
    done
    key=$(awk '{print $2}' "$pubkey")
    [[ $(awk '{print $1}' "$pubkey") == ssh-ed25519 && -n $key ]] || die "$pubkey is not an ed25519 public key"
    natmac=$(printf '52:54:00:00:00:%02x' "$index")
    clustermac=$(printf '52:54:00:77:00:%02x' "$index")
    [[ -f $state/$name.qcow2 ]] ||
        qemu-img create -q -f qcow2 -F qcow2 -b "$image/disk.qcow2" "$state/$name.qcow2"
    append="root=LABEL=oqroot rw console=ttyS0 quiet net.ifnames=0 modprobe.blacklist=floppy"
    append+=" systemd.hostname=$name"
    append+=" oq.natmac=$natmac oq.mac=$clustermac oq.addr=$addr oq.sshkey=$key"
    # -kernel/-initrd/-append survive reboots inside the guest: a reboot keeps the settings
    nice -n "$NICE" qemu-system-x86_64 \
        -name "$name" -machine pc -accel tcg,tb-size=256 -cpu max -smp "$CPUS" -m "$memory" \
        -display none -monitor none -serial "file:$state/$name.console" \
        -daemonize -pidfile "$state/$name.pid" \
        -kernel "$image/vmlinuz" -initrd "$image/initrd.img" -append "$append" \
        -drive "file=$state/$name.qcow2,if=virtio,format=qcow2,cache=unsafe" \
        -object rng-random,filename=/dev/urandom,id=rng0 -device virtio-rng-pci,rng=rng0 \
        -netdev "user,id=nat,$hostfwd" \
        -device "virtio-net-pci,netdev=nat,mac=$natmac" \
        -netdev "vde,id=cluster,sock=$state/vde.ctl" \
        -device "virtio-net-pci,netdev=cluster,mac=$clustermac"
    echo "$name: started (pid $(<"$state/$name.pid"), ssh 127.0.0.1:$port, cluster $addr)"
}

down() {
    local state=$1 pidfile pid pids=() proc
    [[ -d $state ]] || return 0
    for pidfile in "$state"/*.pid; do
        [[ -e $pidfile ]] || continue
        pid=$(live_pid "$pidfile" "$state") && pids+=("$pid")
    done
    # a process that lost its pid file but still runs on this directory's files
    for proc in /proc/[0-9]*; do
        pid=${proc#/proc/}
        [[ $pid != "$$" ]] || continue
        if grep -qsF "$state/" "$proc/cmdline" && ! printf '%s\n' "${pids[@]}" | grep -qx "$pid"; then
            # only qemu and vde processes (not a shell that merely mentions the path)
            case $(cat "$proc/comm" 2>/dev/null) in
                qemu-system-x86*|vde_switch) pids+=("$pid") ;;
            esac
        fi
    done
    if ((${#pids[@]})); then
        kill -TERM "${pids[@]}" 2>/dev/null || true
        for _ in $(seq 1 50); do
            local alive=()
            for pid in "${pids[@]}"; do
                [[ -d /proc/$pid ]] && alive+=("$pid")
            done
            ((${#alive[@]})) || break
            sleep 0.2
        done
        for pid in "${pids[@]}"; do
            [[ -d /proc/$pid ]] && kill -KILL "$pid" 2>/dev/null
        done
        for pid in "${pids[@]}"; do
            for _ in $(seq 1 50); do [[ -d /proc/$pid ]] || break; sleep 0.1; done
            [[ -d /proc/$pid ]] && die "process $pid ($(cat "/proc/$pid/comm" 2>/dev/null)) did not stop"
        done
        echo "stopped ${#pids[@]} process(es): ${pids[*]}"
    fi
    rm -rf "$state"
}

case ${1:-} in
    up) shift; (($# == 8 || $# == 9)) || die "usage: $0 up STATE_DIR IMAGE_DIR NAME INDEX SSH_PORT ADDR/PREFIX MEMORY_MB PUBKEY [HOSTPORT:GUESTPORT,...]"; vm_up "$@" ;;
    down) shift; (($# == 1)) || die "usage: $0 down STATE_DIR"; down "$1" ;;
    *) die "usage: $0 up ...|down STATE_DIR" ;;
esac
