"""Checks that need more than one node, each run from the vantage point that matters."""

from __future__ import annotations

import configparser
import secrets
from collections.abc import Callable, Iterator

from oqcluster.verify.context import Context
from oqcluster.verify.remote import Node
from oqcluster.verify.results import CheckResult, failed, passed

CONFIG_FILE = "openquake.cfg"
REACHABLE = ("open", "refused")  # refused: the packet got through the firewall, nobody listens
# openquake.cfg values every node must share (section, key).
AGREEING_KEYS = (
    ("distribution", "oq_distribute"),
    ("dbserver", "host"), ("dbserver", "port"), ("dbserver", "receiver_host"),
    ("dbserver", "receiver_ports"), ("dbserver", "authkey"),
    ("zworkers", "host_cores"), ("zworkers", "ctrl_port"),
    ("directory", "shared_dir"),
)
FIREWALL_FIX = "re-run `ansible-playbook site.yml -i INV --tags firewall`"


def dbserver_reachable(ctx: Context) -> Iterator[CheckResult]:
    """Each worker connects to the master's dbserver port (the dbserver must listen)."""
    port = ctx.setting("oq_dbserver_port")
    check = f"reaches master {ctx.master.address}:{port} (dbserver)"
    for worker in ctx.workers:
        state = worker.probe(ctx.master.address, [port])[port]
        if state == "open":
            yield passed(worker.name, check, "open")
        elif state == "refused":
            yield failed(worker.name, check, "open", "connection refused: nothing listens",
                         f"on {ctx.master.name}: systemctl status openquake-dbserver; "
                         "start it with systemctl start openquake-dbserver")
        else:
            yield failed(worker.name, check, "open", state,
                         f"allow {port}/tcp from {worker.address} on {ctx.master.name}: "
                         + FIREWALL_FIX)


def receiver_ports_reachable(ctx: Context) -> Iterator[CheckResult]:
    """Each worker gets through the master's firewall on the receiver range's first and last."""
    first, last = ctx.setting("oq_receiver_port_first"), ctx.setting("oq_receiver_port_last")
    check = f"reaches master {ctx.master.address}:{first}-{last} (result receivers)"
    for worker in ctx.workers:
        states = worker.probe(ctx.master.address, sorted({first, last}))
        blocked = {port: state for port, state in states.items() if state not in REACHABLE}
        if not blocked:
            yield passed(worker.name, check, "not filtered")
        else:
            found = ", ".join(f"{port}: {state}" for port, state in blocked.items())
            yield failed(worker.name, check, "open or refused (not filtered)", found,
                         f"allow {first}-{last}/tcp from {worker.address} on "
                         f"{ctx.master.name}: " + FIREWALL_FIX)


def workerpools_reachable(ctx: Context) -> Iterator[CheckResult]:
    """The master connects to each worker's workerpool control port."""
    port = ctx.setting("oq_ctrl_port")
    for worker in ctx.workers:
        check = f"master reaches {worker.address}:{port} (workerpool)"
        state = ctx.master.probe(worker.address, [port])[port]
        if state == "open":
            yield passed(worker.name, check, "open")
        elif state == "refused":
            yield failed(worker.name, check, "open", "connection refused: no workerpool runs",
                         f"on {ctx.master.name} as {ctx.setting('oq_user')}: oqz workers start")
        else:
            yield failed(worker.name, check, "open", state,
                         f"allow {port}/tcp from {ctx.master.address} on {worker.name}: "
                         + FIREWALL_FIX)


def ssh_master_to_workers(ctx: Context) -> Iterator[CheckResult]:
    """The engine's account on the master logs in to each worker: no prompt, pinned host key."""
    user = ctx.setting("oq_user")
    for worker in ctx.workers:
        check = f"{user}@master ssh {worker.address} (BatchMode, pinned host key)"
        out = ctx.master.run_as(
            user, "ssh -o BatchMode=yes -o StrictHostKeyChecking=yes -o ConnectTimeout=5 "
            "%s true", worker.address,
        )
        if out.rc == 0:
            yield passed(worker.name, check, "logged in")
        else:
            yield failed(worker.name, check, "exit 0 without prompt", out.text or f"rc {out.rc}",
                         _ssh_fix(out.text))


def _ssh_fix(error: str) -> str:
    if "Host key verification failed" in error:
        return "pin the worker's host key in the master's known_hosts: re-run site.yml --tags ssh"
    if "Permission denied" in error:
        return ("put the master's openquake public key in the worker's authorized_keys: "
                "re-run site.yml --tags ssh")
    return "check sshd on the worker and the network between them; re-run site.yml --tags ssh"


def shared_dir_visible(ctx: Context) -> Iterator[CheckResult]:
    """A file the master writes in shared_dir is seen unchanged, and read-only, by workers."""
    user, shared_dir = ctx.setting("oq_user"), ctx.setting("oq_shared_dir")
    token = secrets.token_hex(16)
    path = f"{shared_dir}/.oqcluster-verify-{token[:8]}"
    wrote = ctx.master.run_as(user, "printf %s %s > %s", "%s", token, path)
    if wrote.rc != 0:
        yield failed(ctx.master.name, f"{user} writes in {shared_dir}", "written",
                     wrote.text or f"rc {wrote.rc}",
                     f"{shared_dir} must be owned by {user} with mode 2770: "
                     "re-run site.yml --tags nfs")
        return
    try:
        for worker in ctx.workers:
            if worker.name != ctx.master.name:
                yield from _shared_file_on_worker(worker, user, path, token)
    finally:
        ctx.master.run_as(user, "rm -f %s", path)


def _shared_file_on_worker(worker: Node, user: str, path: str, token: str) -> Iterator[CheckResult]:
    read = worker.run_as(user, "cat %s", path)
    check = f"sees the master's {path.rsplit('/', 1)[0]}"
    if read.rc == 0 and read.stdout == token:
        yield passed(worker.name, check, "same content")
    else:
        yield failed(worker.name, check, "the file the master just wrote, unchanged",
                     read.text or f"rc {read.rc}",
                     "mount the master's export here: re-run site.yml --tags nfs; "
                     "findmnt on the worker")
    probe = f"{path}.{worker.name}"
    wrote = worker.run_as(user, "touch %s", probe)
    check = "cannot write the shared dir (read-only export)"
    if wrote.rc != 0:
        yield passed(worker.name, check, "write refused")
    else:
        worker.run_as(user, "rm -f %s", probe)
        yield failed(worker.name, check, "write refused", "write succeeded",
                     "export and mount the shared dir read-only (ro): re-run site.yml --tags nfs")


def config_agrees(ctx: Context) -> Iterator[CheckResult]:
    """openquake.cfg values that must be equal on every node are equal to the master's."""
    path = f"{ctx.setting('oq_config_dir')}/{CONFIG_FILE}"
    configs = {node.name: _read_config(node, path) for node in ctx.nodes}
    reference = configs[ctx.master.name]
    for node in ctx.nodes:
        config = configs[node.name]
        check = f"{path} agrees with the master's"
        if isinstance(config, str) or isinstance(reference, str):
            problem = config if isinstance(config, str) else reference
            yield failed(node.name, check, "a readable openquake.cfg", str(problem),
                         "re-run site.yml --tags config")
            continue
        differing = [
            f"[{section}] {key}" for section, key in AGREEING_KEYS
            if config.get(section, key, fallback=None)
            != reference.get(section, key, fallback=None)
        ]
        if differing:
            yield failed(node.name, check, "same values as on the master",
                         "differs in " + ", ".join(differing),
                         f"re-render it from the inventory: ansible-playbook site.yml -i INV "
                         f"--tags config --limit {node.name}")
        else:
            yield passed(node.name, check, "same values")


def _read_config(node: Node, path: str) -> configparser.ConfigParser | str:
    out = node.run_as_root("cat %s", path)
    if out.rc != 0:
        return f"cannot read {path}: {out.text}"
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(out.stdout)
    except configparser.Error as error:
        return f"{path} does not parse: {error}"
    return parser


CLUSTER_CHECKS: tuple[tuple[str, Callable[[Context], Iterator[CheckResult]]], ...] = (
    ("ports: workers to master", dbserver_reachable),
    ("ports: receivers", receiver_ports_reachable),
    ("ports: master to workers", workerpools_reachable),
    ("ssh: master to workers", ssh_master_to_workers),
    ("shared dir", shared_dir_visible),
    ("openquake.cfg agreement", config_agrees),
)
