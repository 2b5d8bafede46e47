#!/usr/bin/env python3
"""Mutation check of `oqcluster verify` on a running cluster (by default the demo cluster).

For each guarded property in turn: break it on the node (as root, through Ansible), run
`oqcluster verify --json`, require that the checks meant for that property name it (and
nothing unrelated is named), run the fix verify printed for it (a `site.yml --tags ...`
run: it must report the broken host changed), then run verify again: it must pass.

    make mutation                            # the demo cluster (inventories/local)
    make mutation MUTATION_ARGS="--only firewall-table-deleted,shared-dir-mode"
    .venv/bin/python scripts/mutation.py -i inventories/local --list

It BREAKS the cluster it is pointed at (then heals it): never aim it at a cluster that is
computing. The mutations know the demo's backends (nftables on every node, NFS-Ganesha);
`--list` says what each one does.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
GANESHA = "/etc/ganesha/ganesha.conf"
RESTART_GANESHA = "systemctl restart nfs-ganesha && sleep 3"


@dataclass(frozen=True)
class Mutation:
    name: str
    hosts: str  # "master", "w1", "w2" or "all"
    breaks: str  # shell command run as root on those hosts
    caught_by: tuple[str, ...]  # "host | check" regexes verify must name ({master}, {w1}, ...)
    also: tuple[str, ...] = ()  # what the same break may name besides (its consequences)
    what: str = ""


NFS_CHECKS = ("listed workers read the exports", "exports are read only",
              "exports squash root", "an unlisted client is refused")

MUTATIONS: tuple[Mutation, ...] = (
    Mutation("firewall-table-deleted", "w1", "nft delete table inet oqcluster",
             (r"{master} \| workerpool port refuses other workers$",),
             what="the worker's nftables table deleted (its unit still active)"),
    Mutation("firewall-unit-stopped", "w1", "systemctl stop oqcluster-firewall.service",
             (r"{master} \| workerpool port refuses other workers$",),
             what="oqcluster-firewall.service stopped (its ExecStop deletes the table)"),
    Mutation("firewall-master-rule-dropped", "w1",
             "nft -a list chain inet oqcluster input | "
             "grep -E 'tcp dport {w1_ctrl} ip6? saddr .* accept' | sed 's/.*# handle //' | "
             "while read -r h; do nft delete rule inet oqcluster input handle $h; done",
             (r"{w1} \| master reaches {w1_addr}:{w1_ctrl} \(workerpool\)$",),
             (r"{w1} \| workerpool answers the master",
              r"{master} \| workerpool port refuses other workers$"),
             what="the worker's rule that lets the master in dropped at runtime"),
    Mutation("firewall-master-flushed", "master", "nft flush chain inet oqcluster input",
             (r"{master} \| master serves nfs and the webui on its cluster address$",),
             what="the master's table flushed: 2049 (Ganesha on every address) open to all"),
    Mutation("dbserver-stopped", "master", "systemctl stop openquake-dbserver",
             (r"{master} \| master services run enabled in the openquake slice$",
              r"{master} \| dbserver listens on "),
             (r"\| workerpool answers the master",),
             what="the dbserver unit stopped"),
    Mutation("shared-dir-mode", "master", "chmod 0755 {shared_dir}",
             (r"{master} \| master shared dir is setgid and private$",
              r"{master} \| exports squash root$"),
             what="shared dir mode 0755 (not setgid, world-readable)"),
    Mutation("nfs-server-stopped", "master", "systemctl stop nfs-ganesha",
             (*(rf"{{master}} \| {check}$" for check in NFS_CHECKS),
              r"{master} \| exports refuse nfsv3$",
              r"{master} \| master serves nfs and the webui on its cluster address$"),
             what="NFS-Ganesha stopped: no export served"),
    Mutation("nfsv3-on", "master",
             f"sed -i 's/Protocols = 4;/Protocols = 3, 4;/' {GANESHA} && {RESTART_GANESHA}",
             (r"{master} \| exports refuse nfsv3$",),
             # with rpcbind masked (NFSv4 needs none) a Ganesha asked for v3 may not serve
             (*(rf"{{master}} \| {check}$" for check in NFS_CHECKS),
              r"{master} \| master serves nfs and the webui on its cluster address$"),
             what="NFSv3 switched on in ganesha.conf"),
    Mutation("export-to-anyone", "master",
             f"sed -i 's/Clients = .*;/Clients = *;/' {GANESHA} && {RESTART_GANESHA}",
             (r"{master} \| an unlisted client is refused$",),
             what="exports open to every client"),
    Mutation("export-writable", "master",
             f"sed -i 's/Access_Type = RO;/Access_Type = RW;/' {GANESHA} && {RESTART_GANESHA}",
             (r"{master} \| exports are read only$",),
             what="exports writable"),
    Mutation("export-no-root-squash", "master",
             f"sed -i 's/Squash = Root_Squash;/Squash = No_Root_Squash;/' {GANESHA} && "
             f"{RESTART_GANESHA}",
             (r"{master} \| exports squash root$",),
             what="exports without root squash"),
    Mutation("nfs-client-removed", "all", "apt-get remove -y -q libnfs-utils",
             tuple(rf"{{master}} \| {check}$" for check in NFS_CHECKS),
             what="verify's userspace NFS client removed from every node (checks not run)"),
    Mutation("master-key-removed", "w2", ": > {home}/.ssh/authorized_keys",
             (r"{w2} \| {user}@master ssh {w2_addr} \(BatchMode, pinned host key\)$",
              r"{w2} \| worker trusts the masters key$"),
             what="the master's key removed from a worker's authorized_keys"),
    Mutation("host-key-unpinned", "master", "sed -i '/^{w1_addr}[ ,]/d' {home}/.ssh/known_hosts",
             (r"{master} \| workers host keys are pinned$",
              r"{w1} \| {user}@master ssh {w1_addr} \(BatchMode, pinned host key\)$"),
             what="a worker's host key no longer pinned on the master"),
    Mutation("authkey-changed", "w2",
             "sed -i 's/^authkey *=.*/authkey = changed-by-the-mutation-check/' "
             "{config_dir}/openquake.cfg",
             (r"{w2} \| config is the inventory rendering$",
              r"{w2} \| {config_dir}/openquake.cfg agrees with the cluster$"),
             what="another authkey in a worker's openquake.cfg"),
    Mutation("memory-cap-changed", "w1",
             "sed -i 's/^MemoryMax=.*/MemoryMax=50%/' /etc/systemd/system/openquake.slice && "
             "systemctl daemon-reload",
             (r"{w1} \| slice has a memory cap \(openquake.slice\)$",
              r"{w1} \| openquake slice memory cap is in the kernel$"),
             what="openquake.slice MemoryMax 50% instead of the inventory's share"),
    Mutation("swap-line-enabled", "w1",
             "echo '/oqcluster-mutation.swap none swap sw 0 0' >> /etc/fstab",
             (r"{w1} \| no swap line is enabled in fstab$",),
             what="an enabled swap line in /etc/fstab"),
)


@dataclass
class Outcome:
    mutation: Mutation
    caught: bool = False
    healed: bool = False
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False, **kwargs)


def cluster_facts(inventory: str) -> dict[str, str]:
    """Host names, addresses and settings the mutations' commands and regexes need."""
    sys.path.insert(0, str(ROOT / "src"))
    from oqcluster.inventory import Inventory
    from oqcluster.project import find_project

    data = Inventory([inventory], find_project().defaults).cluster_data()
    master = data.masters[0]
    workers = [w for w in data.workers if w != master]
    if len(workers) < 2:
        raise SystemExit("the mutation check needs a master and two other workers")
    oq = dict(data.hosts[master].values)
    facts = {"master": master, "w1": workers[0], "w2": workers[1],
             "shared_dir": oq["oq_shared_dir"], "home": oq["oq_home"], "user": oq["oq_user"],
             "config_dir": oq["oq_config_dir"]}
    for key in ("w1", "w2"):
        values = data.hosts[facts[key]]
        facts[f"{key}_addr"] = values.address()
        facts[f"{key}_ctrl"] = str(values.values["oq_ctrl_port"])
    return facts


def verify(inventory: str) -> tuple[int, list[dict[str, Any]]]:
    """verify's exit code and its problems (failed, errors, not checked; the smoke
    calculation is left out with --no-smoke, so its not-checked line is not one)."""
    out = run([str(BIN / "oqcluster"), "verify", "-i", inventory, "--json", "--no-smoke"])
    try:
        results = json.loads(out.stdout)["results"]
    except (json.JSONDecodeError, KeyError) as error:
        raise SystemExit(f"verify gave no JSON (exit {out.returncode}): "
                         f"{out.stderr[-2000:]}") from error
    problems = [r for r in results if r["status"] not in ("pass", "not_applicable")
                and not (r["host"] == "cluster" and r["check"] == "smoke calculation")]
    return out.returncode, problems


def named(problem: dict[str, Any]) -> str:
    return f"{problem['host']} | {problem['check']}"


def fix_command(fix: str, inventory: str) -> list[str] | None:
    """The site.yml run a fix names ("re-run site.yml --tags nfs ..."), or None."""
    match = re.search(r"site\.yml(?:\s+-i\s+\S+)?((?:\s+--(?:tags|limit)\s+[\w,.-]+)*)", fix)
    if not match:
        return None
    return [str(BIN / "ansible-playbook"), "site.yml", "-i", inventory,
            *shlex.split(match[1])]


def hosts_of(mutation: Mutation, facts: dict[str, str]) -> str:
    if mutation.hosts == "all":
        return ",".join((facts["master"], facts["w1"], facts["w2"]))
    return facts[mutation.hosts]


def check_one(mutation: Mutation, inventory: str, facts: dict[str, str]) -> Outcome:
    outcome, started = Outcome(mutation), time.monotonic()
    hosts = hosts_of(mutation, facts)
    command = mutation.breaks.format(**facts)
    broke = run([str(BIN / "ansible"), hosts, "-i", inventory, "-b", "-m",
                 "ansible.builtin.shell", "-a", command])
    if broke.returncode != 0:
        outcome.notes.append(f"breaking failed: {broke.stdout[-500:]}")
        return outcome
    code, problems = verify(inventory)
    wanted = [re.compile("^" + regex.format(**{k: re.escape(v) for k, v in facts.items()}))
              for regex in mutation.caught_by]
    allowed = wanted + [re.compile(regex.format(**{k: re.escape(v) for k, v in facts.items()}))
                        for regex in mutation.also]
    names = [named(p) for p in problems]
    missed = [w.pattern for w in wanted if not any(w.search(n) for n in names)]
    unexpected = [n for n in names if not any(a.search(n) for a in allowed)]
    outcome.caught = code == 1 and not missed and not unexpected
    if missed:
        outcome.notes.append(f"not named: {missed}")
    if unexpected:
        outcome.notes.append(f"named but unrelated: {unexpected}")
    if code != 1:
        outcome.notes.append(f"verify exited {code}")
    meant = next((p for p in problems if wanted and wanted[0].search(named(p))), None)
    fix = fix_command(meant["fix"], inventory) if meant else None
    if fix is None:  # verify named no fix that heals it: not caught, heal it anyway
        outcome.caught = False
        outcome.notes.append(f"no site.yml run in the fix: {meant and meant['fix']!r}")
        fix = [str(BIN / "ansible-playbook"), "site.yml", "-i", inventory]
    healed = run(fix)
    changed = {host: int(n) for host, n in re.findall(r"^(\S+)\s+:.*?changed=(\d+)",
                                                      healed.stdout, re.M)}
    broken_hosts = hosts.split(",")
    if healed.returncode != 0:
        outcome.notes.append(f"the fix failed: {healed.stdout[-800:]}")
    elif not all(changed.get(h, 0) > 0 for h in broken_hosts):
        outcome.notes.append(f"the fix reported no change on {broken_hosts}: {changed}")
    code, problems = verify(inventory)
    outcome.healed = healed.returncode == 0 and code == 0 and not problems and all(
        changed.get(h, 0) > 0 for h in broken_hosts)
    if problems:
        outcome.notes.append(f"after the fix verify still names {[named(p) for p in problems]}")
    outcome.notes.insert(0, f"fix: {' '.join(fix[1:])}")
    outcome.seconds = time.monotonic() - started
    return outcome


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-i", "--inventory", default="inventories/local")
    parser.add_argument("--only", help="comma-separated mutation names")
    parser.add_argument("--list", action="store_true", help="list the mutations and stop")
    args = parser.parse_args()
    chosen = [m for m in MUTATIONS if not args.only or m.name in args.only.split(",")]
    if args.list:
        for m in MUTATIONS:
            print(f"{m.name:30} {m.hosts:7} {m.what}")
        return 0
    facts = cluster_facts(args.inventory)
    code, problems = verify(args.inventory)
    if code != 0:
        print(f"the cluster does not pass verify before any mutation: "
              f"{[named(p) for p in problems]}")
        return 2
    outcomes = []
    for mutation in chosen:
        outcome = check_one(mutation, args.inventory, facts)
        outcomes.append(outcome)
        verdict = "OK " if outcome.caught and outcome.healed else "BAD"
        print(f"{verdict} {mutation.name:30} caught={outcome.caught} healed={outcome.healed} "
              f"({outcome.seconds:.0f}s)", flush=True)
        for note in outcome.notes:
            print(f"      {note}", flush=True)
    bad = [o.mutation.name for o in outcomes if not (o.caught and o.healed)]
    print(f"{len(outcomes) - len(bad)} of {len(outcomes)} mutations caught by their checks "
          f"and healed by their fixes" + (f"; not: {', '.join(bad)}" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
