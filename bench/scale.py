"""Provisioning at scale: 1 master + N workers in containers, reached over ssh like real hosts.

For each N (2, 4, 8, 16 by default; `--workers 2,4` to choose) the benchmark

  1. creates N+1 containers from the project's node image (systemd as PID 1, sshd), on their
     own docker network (172.30.40.0/24) and volumes, all named `oqs-*`;
  2. gives each a sudo user `deploy` with a public key generated for the run, and pins each
     container's own ssh host key in a known_hosts file (StrictHostKeyChecking=yes);
  3. writes an inventory (ansible_user deploy, ansible_become, ssh) into a temp directory
     (the cluster secret is generated into <inventory>/credentials/ as usual);
  4. times `ansible-playbook site.yml` (first converge), the same again (must report
     changed=0 on every host), `oqcluster verify`, and the demo calculation over all the
     workers (`oqz run demo` as openquake on the master, over ssh);
  5. removes the containers, the network and the volumes (also on failure or Ctrl-C).

Then it prints a table (N, first converge, re-run, verify, demo; the load average beside each)
and the slowest tasks (ansible.posix.profile_tasks) and writes every figure as JSON.

    make bench-scale SCALE_ARGS="--workers 2,4"
    python bench/scale.py --workers 2 --keep        # leave the cluster up (see --rerun, --clean)
    python bench/scale.py --rerun RUNDIR -e ANSIBLE_GATHERING=smart
                                                    # time a no-change re-run + verify again
    python bench/scale.py --clean                   # remove whatever a run left (oqs-* only)
    python bench/scale.py --workers 2,16 -e ANSIBLE_STRATEGY=mitogen_linear
                                                    # every ansible-playbook run with Mitogen

Figures depend on the machine and on what else runs on it: the load average is recorded
beside every figure, and the CPU time each step used (the whole machine's and the nodes'):
a step whose CPU time is close to cores x seconds was bound by this machine's CPU, which the
nodes share here, where real workers bring their own.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "oqs"
LABEL = "oqcluster.bench=scale"
NETWORK = f"{PREFIX}-net"
SUBNET = "172.30.40"
VOLUMES = {"shared": "/oq_shared", "opt": "/opt/openquake"}
IMAGE_BUILDER = ROOT / "molecule" / "images" / "build.sh"
USER = "deploy"
OQZ = "/opt/openquake/venv/bin/oqz"
CONFIG = "/etc/openquake/openquake.cfg"
# No docker --memory cap: systemd in the node resolves the roles' `MemoryMax=95%` against the
# container's cap, and verify (rightly, for a real host) expects 95 % of the host's RAM. The
# benchmark keeps the nodes small instead (one worker process each) and records their memory.
WORKER_CORES = 1
DEMO_TASKS_PER_WORKER = 4
RECAP = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)")
PROFILE = re.compile(r"^(.+?)\s-{3,}\s+(\d+\.\d+)s\s*$")


class BenchError(RuntimeError):
    """A step failed; the message says which and where its log is."""


@dataclass
class Phase:
    seconds: float
    load_before: float
    load_after: float
    ok: bool = True
    detail: str = ""
    cpu_s: float = 0.0  # CPU time of the whole machine (control node and nodes) in the step
    nodes_cpu_s: float | None = None  # of the nodes' containers alone (None: not readable)


@dataclass
class Result:
    workers: int
    phases: dict[str, Phase] = field(default_factory=dict)
    tasks_converge: list[tuple[str, float]] = field(default_factory=list)
    tasks_rerun: list[tuple[str, float]] = field(default_factory=list)
    recap_rerun: dict[str, dict[str, int]] = field(default_factory=dict)
    memory_mb: float | None = None


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def load() -> float:
    return round(os.getloadavg()[0], 2)


def machine_cpu_seconds() -> float:
    """Busy CPU time of the whole machine since boot (/proc/stat: all but idle and iowait)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    ticks = [int(f) for f in fields]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def nodes_cpu_seconds() -> float | None:
    """CPU time of the oqs-* containers since they started (their cgroups, v1 or v2)."""
    ids = docker("ps", "-q", "--no-trunc", "--filter", f"label={LABEL}", check=False).stdout
    total = 0.0
    for cid in ids.split():
        # cgroup v1 (docker's cgroupfs or systemd driver), then v2 (systemd driver)
        v1 = [Path(f"/sys/fs/cgroup/cpuacct/{parent}/cpuacct.usage")
              for parent in (f"docker/{cid}", f"system.slice/docker-{cid}.scope")]
        v2 = Path(f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/cpu.stat")
        usage = next((path for path in v1 if path.exists()), None)
        if usage is not None:
            total += int(usage.read_text()) / 1e9
        elif v2.exists() and (match := re.search(r"^usage_usec (\d+)", v2.read_text(), re.M)):
            total += int(match[1]) / 1e6
        else:
            return None
    return total


class CpuMeter:
    """CPU time used between start and stop, by the machine and by the nodes."""

    def __init__(self) -> None:
        self.machine, self.nodes = machine_cpu_seconds(), nodes_cpu_seconds()

    def stop(self, phase: Phase) -> None:
        phase.cpu_s = round(machine_cpu_seconds() - self.machine, 1)
        nodes = nodes_cpu_seconds()
        if nodes is not None and self.nodes is not None:
            phase.nodes_cpu_s = round(nodes - self.nodes, 1)


def cpu_text(phase: Phase) -> str:
    busy = phase.cpu_s / ((os.cpu_count() or 1) * phase.seconds) if phase.seconds else 0
    nodes = "" if phase.nodes_cpu_s is None else f", nodes {phase.nodes_cpu_s:.0f} s"
    return f"CPU {phase.cpu_s:.0f} s ({busy:.0%} of {os.cpu_count()} cores){nodes}"


def run(command: list[str], check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess:
    result = subprocess.run(command, text=True, capture_output=True, **kwargs)
    if check and result.returncode != 0:
        raise BenchError(f"`{shlex.join(command)}` failed ({result.returncode}): "
                         f"{(result.stderr or result.stdout).strip()[-800:]}")
    return result


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run(["docker", *args], check=check)


# --- the cluster's containers
def names(workers: int) -> list[str]:
    return [f"{PREFIX}-master"] + [f"{PREFIX}-worker{i}" for i in range(1, workers + 1)]


def address(index: int) -> str:
    return f"{SUBNET}.{10 + index}"


def close_ssh_masters(count: int = 32) -> None:
    """End the ssh master connections Ansible and verify keep (ansible.cfg's ControlPersist)
    to our addresses: the next cluster reuses the addresses, not the connections."""
    for index in range(count + 1):
        subprocess.run(["ssh", "-O", "exit", "-o", "ControlPath=~/.ansible/cp/%C",
                        "-l", USER, address(index)], capture_output=True)


def clean() -> None:
    """Remove every container, network and volume labelled by this benchmark."""
    close_ssh_masters()
    containers = docker("ps", "-aq", "--filter", f"label={LABEL}").stdout.split()
    if containers:
        docker("rm", "-f", *containers, check=False)
    for network in docker("network", "ls", "-q", "--filter", f"label={LABEL}").stdout.split():
        docker("network", "rm", network, check=False)
    for volume in docker("volume", "ls", "-q", "--filter", f"label={LABEL}").stdout.split():
        docker("volume", "rm", "-f", volume, check=False)


def create_cluster(image: str, workers: int) -> None:
    clean()
    docker("network", "create", "--label", LABEL, "--subnet", f"{SUBNET}.0/24", NETWORK)
    for volume in VOLUMES:
        docker("volume", "create", "--label", LABEL, f"{PREFIX}-{volume}")
    for index, name in enumerate(names(workers)):
        master = index == 0
        mounts = []
        for volume, path in VOLUMES.items():
            mounts += ["-v", f"{PREFIX}-{volume}:{path}" + ("" if master else ":ro")]
        docker(
            "run", "-d", "--name", name, "--hostname", name, "--label", LABEL,
            "--network", NETWORK, "--ip", address(index),
            "--cap-add", "SYS_ADMIN", "--cap-add", "NET_ADMIN", "--cap-add", "DAC_READ_SEARCH",
            "--security-opt", "apparmor=unconfined", "--security-opt", "seccomp=unconfined",
            "--cgroupns", "host", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
            "--tmpfs", "/run", "--tmpfs", "/run/lock", "--tmpfs", "/tmp",
            "--stop-signal", "SIGRTMIN+3", *mounts, image, "/lib/systemd/systemd",
        )


def wait_for_ssh(name: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while True:
        state = docker("exec", name, "systemctl", "is-system-running", check=False).stdout.strip()
        sshd = docker("exec", name, "systemctl", "is-active", "ssh", check=False).stdout.strip()
        if state in ("running", "degraded") and sshd == "active":
            return
        if time.monotonic() > deadline:
            raise BenchError(f"{name}: systemd {state!r}, ssh {sshd!r} after {timeout:.0f} s "
                             f"(docker exec {name} journalctl -b)")
        time.sleep(1)


def bootstrap(workdir: Path, workers: int) -> None:
    """What a fresh real host has: a sudo user reachable with our key, and host keys we pin."""
    key = workdir / "id_ed25519"
    if not key.exists():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "oqs-bench", "-f", str(key)])
    public = (workdir / "id_ed25519.pub").read_text().strip()
    script = (
        f"id {USER} >/dev/null 2>&1 || useradd -m -s /bin/bash {USER}; "
        f"echo '{USER} ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/{USER}; "
        f"chmod 0440 /etc/sudoers.d/{USER}; "
        f"install -d -m 0700 -o {USER} -g {USER} /home/{USER}/.ssh; "
        f"echo '{public}' > /home/{USER}/.ssh/authorized_keys; "
        f"chown {USER}:{USER} /home/{USER}/.ssh/authorized_keys; "
        f"chmod 0600 /home/{USER}/.ssh/authorized_keys"
    )
    known = []
    for index, name in enumerate(names(workers)):
        wait_for_ssh(name)
        docker("exec", name, "bash", "-c", script)
        host_key = docker("exec", name, "cat", "/etc/ssh/ssh_host_ed25519_key.pub").stdout.split()
        known.append(f"{address(index)} {host_key[0]} {host_key[1]}")
    (workdir / "known_hosts").write_text("\n".join(known) + "\n")
    for index in range(workers + 1):
        ssh(workdir, index, "true")


def ssh_options(workdir: Path) -> list[str]:
    return ["-o", f"UserKnownHostsFile={workdir / 'known_hosts'}",
            "-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes"]


def ssh(workdir: Path, index: int, command: str, check: bool = True) -> subprocess.CompletedProcess:
    return run(["ssh", "-i", str(workdir / "id_ed25519"), *ssh_options(workdir),
                "-o", "BatchMode=yes", f"{USER}@{address(index)}", command], check=check)


def write_inventory(workdir: Path, workers: int) -> Path:
    inventory = workdir / "inventory"
    (inventory / "group_vars").mkdir(parents=True, exist_ok=True)
    lines = ["---", "all:", "  children:", "    master:", "      hosts:",
             f"        {names(workers)[0]}:", f"          ansible_host: {address(0)}",
             f"          oq_address: {address(0)}", "    workers:", "      hosts:"]
    for index, name in enumerate(names(workers)[1:], start=1):
        lines += [f"        {name}:", f"          ansible_host: {address(index)}",
                  f"          oq_address: {address(index)}", f"          oq_cores: {WORKER_CORES}"]
    (inventory / "hosts.yml").write_text("\n".join(lines) + "\n")
    (inventory / "group_vars" / "all.yml").write_text(f"""---
# Generated by bench/scale.py: containers reached over ssh like real hosts.
ansible_user: {USER}
ansible_become: true
ansible_ssh_private_key_file: {workdir / 'id_ed25519'}
ansible_ssh_common_args: {' '.join(ssh_options(workdir))}
ansible_python_interpreter: /usr/bin/python3
# Container kernels have neither an NFS server nor an NFS client (as molecule/default).
oq_nfs_server_backend: ganesha
oq_nfs_client_fstab_only: true
""")
    return inventory


# --- the timed phases
def ansible_env(extra: dict[str, str]) -> dict[str, str]:
    return {
        **os.environ,
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_CALLBACKS_ENABLED": "ansible.posix.profile_tasks,ansible.posix.timer",
        "PROFILE_TASKS_TASK_OUTPUT_LIMIT": "40",
        "ANSIBLE_NOCOLOR": "1",
        **extra,
    }


def timed(name: str, result: Result, command: list[str], logfile: Path,
          env: dict[str, str]) -> tuple[Phase, str]:
    log(f"N={result.workers}: {name}: {shlex.join(command)} (log {logfile})")
    before, began, cpu = load(), time.monotonic(), CpuMeter()
    with logfile.open("w") as stream:  # streamed: `tail -f` it while it runs
        completed = subprocess.run(command, cwd=ROOT, env=env, stdout=stream,
                                   stderr=subprocess.STDOUT)
    phase = Phase(round(time.monotonic() - began, 1), before, load(),
                  ok=completed.returncode == 0)
    cpu.stop(phase)
    output = logfile.read_text()
    result.phases[name] = phase
    log(f"N={result.workers}: {name}: {phase.seconds} s, exit {completed.returncode}, "
        f"load {phase.load_before} -> {phase.load_after}, {cpu_text(phase)}")
    return phase, output


def recap(output: str) -> dict[str, dict[str, int]]:
    hosts = {}
    for line in output.splitlines():
        match = RECAP.match(line.strip())
        if match:
            ok, changed, unreachable, failed = (int(g) for g in match.groups()[1:])
            hosts[match.group(1)] = {"ok": ok, "changed": changed,
                                     "unreachable": unreachable, "failed": failed}
    return hosts


def slowest(output: str) -> list[tuple[str, float]]:
    """profile_tasks' closing summary (after the PLAY RECAP), slowest first."""
    tail = output.split("PLAY RECAP", 1)[-1]
    tasks = [(m.group(1).strip(), float(m.group(2)))
             for m in map(PROFILE.match, tail.splitlines()) if m]
    return sorted(tasks, key=lambda task: -task[1])


def playbook(name: str, result: Result, inventory: Path, workdir: Path,
             env: dict[str, str]) -> tuple[Phase, str]:
    command = [tool("ansible-playbook"), "site.yml", "-i", str(inventory)]
    phase, output = timed(name, result, command, workdir / f"{name}.log", env)
    hosts = recap(output)
    phase.detail = " ".join(f"{h}:ok={v['ok']},changed={v['changed']}" for h, v in hosts.items())
    if not phase.ok:
        raise BenchError(f"N={result.workers}: {name} failed, see {workdir / f'{name}.log'}")
    return phase, output


def converge_and_rerun(result: Result, inventory: Path, workdir: Path,
                       env: dict[str, str], first: bool = True) -> None:
    if first:
        _, output = playbook("converge", result, inventory, workdir, env)
        result.tasks_converge = slowest(output)
    phase, output = playbook("rerun", result, inventory, workdir, env)
    result.tasks_rerun = slowest(output)
    result.recap_rerun = recap(output)
    changed = {h: v["changed"] for h, v in result.recap_rerun.items() if v["changed"]}
    if changed or len(result.recap_rerun) != result.workers + 1:
        phase.ok = False
        raise BenchError(f"N={result.workers}: the no-change re-run changed {changed} "
                         f"(hosts in the recap: {len(result.recap_rerun)}); "
                         f"see {workdir / 'rerun.log'}")


def verify(result: Result, inventory: Path, workdir: Path, env: dict[str, str]) -> None:
    phase, _ = timed("verify", result, [tool("oqcluster"), "verify", "-i", str(inventory)],
                          workdir / "verify.log", env)
    if not phase.ok:
        raise BenchError(f"N={result.workers}: oqcluster verify failed, see "
                         f"{workdir / 'verify.log'}")


def demo(result: Result, workdir: Path) -> None:
    tasks = DEMO_TASKS_PER_WORKER * result.workers
    command = (f"sudo -u openquake env OQ_CONFIG_FILE={CONFIG} {OQZ} run demo --size small "
               f"--tasks {tasks} --distribute zmq --json")
    log(f"N={result.workers}: demo: {command}")
    before, began, cpu = load(), time.monotonic(), CpuMeter()
    completed = ssh(workdir, 0, command, check=False)
    phase = Phase(round(time.monotonic() - began, 1), before, load(),
                  ok=completed.returncode == 0)
    cpu.stop(phase)
    result.phases["demo"] = phase
    (workdir / "demo.log").write_text(completed.stdout + completed.stderr)
    outcome = last_json(completed.stdout)
    counts = (outcome or {}).get("tasks_per_host", {})
    idle = [address(i) for i in range(1, result.workers + 1) if not counts.get(address(i))]
    phase.detail = f"tasks per worker: {counts}"
    log(f"N={result.workers}: demo: {phase.seconds} s, {phase.detail}")
    if not phase.ok or idle:
        phase.ok = False
        raise BenchError(f"N={result.workers}: the demo failed or left workers idle {idle}; "
                         f"see {workdir / 'demo.log'}")


def last_json(text: str) -> dict[str, Any] | None:
    for start in [m.start() for m in re.finditer(r"^\{", text, re.M)][::-1]:
        try:
            return json.loads(text[start:])
        except json.JSONDecodeError:
            continue
    return None


def memory_mb(workers: int) -> float:
    """The resident memory of every process in the nodes (docker stats sees none: systemd, as
    PID 1 with the host's cgroup namespace, moves the processes out of docker's cgroup)."""
    total = 0
    for name in names(workers):
        rss = docker("exec", name, "ps", "-eo", "rss=", check=False).stdout.split()
        total += sum(int(kb) for kb in rss if kb.isdigit())
    return round(total / 1024)


def tool(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


# --- report
def table(results: list[Result]) -> str:
    columns = ("converge", "rerun", "verify", "demo")
    header = "| N workers | first converge s | no-change re-run s | verify s | demo s | memory MB |"
    lines = [header, "|---:|---:|---:|---:|---:|---:|"]
    for result in results:
        cells = []
        for column in columns:
            phase = result.phases.get(column)
            cells.append("-" if phase is None else
                         f"{phase.seconds:.0f}{'' if phase.ok else ' FAILED'} "
                         f"(load {phase.load_before:.1f})")
        lines.append(f"| {result.workers} | " + " | ".join(cells)
                     + f" | {result.memory_mb or '-'} |")
    lines += ["", "CPU time of each step: the whole machine (control node and nodes), "
              "the nodes alone", ""]
    lines += [f"| {r.workers} | {name} | {cpu_text(p)} |"
              for r in results for name, p in r.phases.items()]
    return "\n".join(lines)


def top_tasks(results: list[Result], count: int) -> str:
    out = []
    for result in results:
        for title, tasks in (("first converge", result.tasks_converge),
                             ("no-change re-run", result.tasks_rerun)):
            if tasks:
                out.append(f"\nN={result.workers}, {title}: the {count} slowest tasks")
                out += [f"  {seconds:7.1f} s  {name}" for name, seconds in tasks[:count]]
    return "\n".join(out)


def report(results: list[Result], output: Path, count: int, meta: dict[str, Any]) -> None:
    print(table(results))
    print(top_tasks(results, count))
    output.write_text(json.dumps({**meta, "results": [asdict(r) for r in results]}, indent=1))
    log(f"figures written to {output}")


# --- main
def parse_env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"-e {pair}: expected KEY=VALUE")
        env[key] = value
    return env


def bench_one(image: str, workers: int, base: Path, keep: bool, env: dict[str, str],
              results: list[Result]) -> None:
    result = Result(workers)
    results.append(result)
    workdir = base / f"n{workers}"
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        log(f"N={workers}: creating {workers + 1} containers ({PREFIX}-*, {SUBNET}.0/24)")
        began = time.monotonic()
        create_cluster(image, workers)
        bootstrap(workdir, workers)
        log(f"N={workers}: containers up and reachable over ssh in "
            f"{time.monotonic() - began:.0f} s")
        inventory = write_inventory(workdir, workers)
        converge_and_rerun(result, inventory, workdir, env)
        verify(result, inventory, workdir, env)
        demo(result, workdir)
        result.memory_mb = memory_mb(workers)
    finally:
        if keep:
            log(f"N={workers}: kept; inventory {workdir / 'inventory'}; "
                f"remove with: python bench/scale.py --clean")
        else:
            clean()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="2,4,8,16", help="numbers of workers (2,4,8,16)")
    parser.add_argument("--json", type=Path, default=Path("scale-results.json"),
                        help="where to write the figures (scale-results.json)")
    parser.add_argument("--top", type=int, default=15, help="slowest tasks shown per run (15)")
    parser.add_argument("--keep", action="store_true",
                        help="leave the last cluster and its run directory (then --clean)")
    parser.add_argument("--workdir", type=Path, help="run directory (default: a temp directory)")
    parser.add_argument("-e", "--env", action="append", default=[], metavar="KEY=VALUE",
                        help="environment for ansible and verify, e.g. ANSIBLE_GATHERING=smart")
    parser.add_argument("--rerun", type=Path, metavar="RUNDIR",
                        help="on a kept cluster (RUNDIR/n<N>): time a no-change re-run and verify")
    parser.add_argument("--no-verify", action="store_true", help="with --rerun: no verify")
    parser.add_argument("--clean", action="store_true", help="remove the benchmark's containers")
    args = parser.parse_args()

    if args.clean:
        clean()
        return 0
    env = ansible_env(parse_env(args.env))
    meta = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "uptime": run(["uptime"]).stdout.strip(), "env": parse_env(args.env),
            "cpus": os.cpu_count()}
    results: list[Result] = []

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)

    status = 0
    try:
        if args.rerun:
            workdir = max(args.rerun.glob("n*"), key=lambda p: p.stat().st_mtime)
            workers = int(workdir.name[1:])
            result = Result(workers)
            results.append(result)
            inventory = workdir / "inventory"
            converge_and_rerun(result, inventory, workdir, env, first=False)
            if not args.no_verify:
                verify(result, inventory, workdir, env)
        else:
            image = run(["bash", str(IMAGE_BUILDER)]).stdout.strip().splitlines()[-1]
            base = args.workdir or Path(tempfile.mkdtemp(prefix="oqs-bench-"))
            counts = [int(n) for n in args.workers.split(",")]
            for workers in counts:
                bench_one(image, workers, base, args.keep and workers == counts[-1], env,
                          results)
            log(f"logs, key and inventories in {base}")
    except BenchError as error:
        log(f"FAILED: {error}")
        status = 1
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        clean()
        status = 130
    report(results, args.json, args.top, meta)
    return status


if __name__ == "__main__":
    sys.exit(main())
