"""Checks that need more than one node, each run from the vantage point that matters."""

from __future__ import annotations

import configparser
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from oqcluster.rules import shared_engine_dir
from oqcluster.verify.context import Context
from oqcluster.verify.outside import refused_from_outside
from oqcluster.verify.remote import LISTENER, Node
from oqcluster.verify.results import ENGINE_RELEASE_FIX, CheckResult, failed, json_object, passed

CONFIG_FILE = "openquake.cfg"
LISTEN_SECONDS = 30
PARALLEL_WORKERS = 16  # workers checked at once per check (Node caps the sessions per host)
# openquake.cfg values every node must share (section, key).
AGREEING_KEYS = (
    ("distribution", "oq_distribute"),
    ("dbserver", "host"), ("dbserver", "port"), ("dbserver", "receiver_host"),
    ("dbserver", "receiver_ports"), ("dbserver", "authkey"),
    ("zworkers", "host_cores"), ("zworkers", "ctrl_port"),
    ("directory", "shared_dir"),
)
FIREWALL_FIX = "re-run `ansible-playbook site.yml -i INV --tags firewall`"


# A connection refused from another node does not prove that nothing listens: the firewall
# may answer with a reset. So every port is first probed on the node itself (loopback is
# never filtered), then from the other side; only then is a refusal blamed on the firewall.


def dbserver_reachable(ctx: Context) -> Iterator[CheckResult]:
    """The dbserver listens on the master, and each worker gets through to it."""
    port, master = ctx.setting("oq_dbserver_port"), ctx.master
    local = master.probe(master.address, [port])[port]
    if local != "open":
        yield failed(master.name, f"dbserver listens on {master.address}:{port}", "open",
                     local, "re-run site.yml --tags services (starts it); on "
                     f"{master.name}: journalctl -u openquake-dbserver")
        return
    yield passed(master.name, f"dbserver listens on {master.address}:{port}", "open")
    yield from _from_workers(ctx, port, f"reaches master {master.address}:{port} (dbserver)")


def receiver_ports_reachable(ctx: Context) -> Iterator[CheckResult]:
    """Each worker gets through to a result receiver on the master (a temporary listener)."""
    first, last = ctx.setting("oq_receiver_port_first"), ctx.setting("oq_receiver_port_last")
    master = ctx.master
    check = f"reaches master {master.address}:{first}-{last} (result receivers)"
    port, pid = _listen_on_a_receiver_port(ctx, first, last)
    if port is None:
        yield failed(master.name, f"a receiver port of {first}-{last} can listen", "a free port",
                     "none could be bound", f"free a port of {first}-{last} on {master.name}")
        return
    try:
        yield from _from_workers(ctx, port, check)
    finally:
        if pid:
            master.run("kill %s", pid)


def _listen_on_a_receiver_port(ctx: Context, first: int, last: int) -> tuple[int | None, str]:
    """(port, pid): a port of the range that accepts connections on the master right now."""
    master = ctx.master
    for port in range(first, last + 1):
        if master.probe(master.address, [port])[port] == "open":
            return port, ""  # a live calculation's receiver: as good as ours
        started = master.run(
            f"nohup {master.python} -c %s %s %s %s >/dev/null 2>&1 </dev/null & echo $!",
            LISTENER, master.address, port, LISTEN_SECONDS,
        )
        pid = started.stdout.strip()
        if _wait_open(master, port):
            return port, pid
        if pid:
            master.run("kill %s", pid)
    return None, ""


def _wait_open(node: Node, port: int, attempts: int = 10) -> bool:
    for _ in range(attempts):
        if node.probe(node.address, [port], timeout=1.0)[port] == "open":
            return True
        time.sleep(0.2)
    return False


def per_worker(
    ctx: Context, check: Callable[[Node], Iterable[CheckResult]], skip_master: bool = False
) -> Iterator[CheckResult]:
    """`check` on every worker at once (they are independent), results in worker order."""
    workers = [w for w in ctx.workers if not (skip_master and w.name == ctx.master.name)]
    if not workers:
        return
    with ThreadPoolExecutor(max_workers=min(PARALLEL_WORKERS, len(workers))) as pool:
        for results in pool.map(lambda worker: list(check(worker)), workers):
            yield from results


def _from_workers(ctx: Context, port: int, check: str) -> Iterator[CheckResult]:
    def probe(worker: Node) -> Iterator[CheckResult]:
        state = worker.probe(ctx.master.address, [port])[port]
        if state == "open":
            yield passed(worker.name, check, "open")
        else:
            yield failed(worker.name, check, "open", f"{state} (it is open on the master)",
                         f"allow {port}/tcp from {worker.address} in {ctx.master.name}'s "
                         f"firewall: {FIREWALL_FIX}")

    yield from per_worker(ctx, probe, skip_master=True)


def workerpools_reachable(ctx: Context) -> Iterator[CheckResult]:
    """Each worker's workerpool listens, and the master gets through to it."""
    port = ctx.setting("oq_ctrl_port")

    def probe(worker: Node) -> Iterator[CheckResult]:
        local = worker.probe(worker.address, [port])[port]
        if local != "open":
            yield failed(worker.name, f"workerpool listens on {worker.address}:{port}", "open",
                         local, f"on {ctx.master.name} as {ctx.setting('oq_user')}: "
                         "oqz workers start (then oqz workers status)")
            return
        check = f"master reaches {worker.address}:{port} (workerpool)"
        if worker.name == ctx.master.name:
            yield passed(worker.name, check, "open (same node)")
            return
        state = ctx.master.probe(worker.address, [port])[port]
        if state == "open":
            yield passed(worker.name, check, "open")
        else:
            yield failed(worker.name, check, "open", f"{state} (it is open on the worker)",
                         f"allow {port}/tcp from {ctx.master.address} in {worker.name}'s "
                         f"firewall: {FIREWALL_FIX}")

    yield from per_worker(ctx, probe)


def workerpools_answer(ctx: Context) -> Iterator[CheckResult]:
    """Each workerpool answers the master's authenticated ping (`oqz workers status`).

    An open port is not enough: a pool started with another authkey listens but ignores
    the master, and calculations then wait for it in vain.
    """
    user, master = ctx.setting("oq_user"), ctx.master
    out = master.run_as(user, "OQ_CONFIG_FILE=%s %s workers status --json",
                        _config_path(master), f"{ctx.setting('oq_venv_dir')}/bin/oqz")
    states = read_workers_status(out.stdout)
    check = "workerpool answers the master (authenticated ping)"
    if states is None:
        found = out.text or f"oqz exit code {out.rc}"
        for worker in ctx.workers:
            yield failed(worker.name, check, "the JSON of oqz workers status --json", found,
                         f"if oqz names no other problem: {ENGINE_RELEASE_FIX}")
        return
    for worker in ctx.workers:
        state = states.get(worker.address)
        if state is None:
            yield failed(worker.name, check, "a status for " + worker.address,
                         f"statuses for {', '.join(states) or 'no host'}",
                         f"on {master.name} as {user}: oqz workers status (is {worker.address} "
                         "in [zworkers] host_cores?)")
        elif state.startswith("not running"):
            yield failed(worker.name, check, "running", state,
                         _pool_fix(worker.name, master.name, user, state))
        else:
            yield passed(worker.name, check, state)


def _pool_fix(worker: str, master: str, user: str, state: str) -> str:
    start = f"then on {master} as {user}: oqz workers start"
    if "authenticated" in state:  # listening, deaf to the master: started with an old authkey
        return (f"the pool on {worker} runs with an old authkey and ignores stop requests: "
                f"end its oqzmq.workerpool process (user {user}) on {worker}, {start}")
    if "closed" in state:  # refused from the master: no pool, or the worker's firewall
        return (f"if `master reaches ...(workerpool)` fails for {worker} too, its firewall "
                f"rejects the master: {FIREWALL_FIX}; otherwise the pool is not running: "
                + start.removeprefix("then "))
    return start.removeprefix("then ")


def read_workers_status(stdout: str) -> dict[str, str] | None:
    """{address: "N of M processes busy" | "not running: why"} from what `oqz workers status
    --json` printed; None when it printed no such JSON."""
    status = json_object(stdout)
    if status is None or not isinstance(status.get("workerpools"), list):
        return None
    return {pool["host"]: _pool_state(pool) for pool in status["workerpools"]}


def _pool_state(pool: dict[str, Any]) -> str:
    if not pool["answers"]:
        return f"not running: {pool['why']}"
    return f"{pool['running']} of {pool['total']} processes busy"


def ssh_master_to_workers(ctx: Context) -> Iterator[CheckResult]:
    """The engine's account on the master logs in to each worker: no prompt, pinned host key."""
    user = ctx.setting("oq_user")

    def login(worker: Node) -> Iterator[CheckResult]:
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

    yield from per_worker(ctx, login)


def _ssh_fix(error: str) -> str:
    if "Host key verification failed" in error:
        return "pin the worker's host key in the master's known_hosts: re-run site.yml --tags ssh"
    if "Permission denied" in error:
        return ("put the master's openquake public key in the worker's authorized_keys: "
                "re-run site.yml --tags ssh")
    return "check sshd on the worker and the network between them; re-run site.yml --tags ssh"


def shared_dir_visible(ctx: Context) -> Iterator[CheckResult]:
    """A file the master writes in shared_dir is seen unchanged, and read-only, by workers."""
    user = ctx.setting("oq_user")
    shared_dir = shared_engine_dir(ctx.setting("oq_shared_dir"), user)
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
        yield from per_worker(ctx, lambda worker: _shared_file_on_worker(worker, user, path, token),
                              skip_master=True)
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
    """openquake.cfg values that must be equal on every node are equal.

    The reference for each key is the value most nodes have (the master's on a tie), so a
    single node with a different authkey is named, not every other node.
    """
    nodes = ctx.nodes
    with ThreadPoolExecutor(max_workers=PARALLEL_WORKERS) as pool:
        read = list(pool.map(lambda node: _read_config(node, _config_path(node)), nodes))
    configs = dict(zip((node.name for node in nodes), read, strict=True))
    parsed = {name: c for name, c in configs.items() if not isinstance(c, str)}
    reference = _reference_values(parsed, ctx.master.name)
    for node in nodes:
        config, check = configs[node.name], f"{_config_path(node)} agrees with the cluster"
        if isinstance(config, str):
            yield failed(node.name, check, "a readable openquake.cfg", config,
                         "re-run site.yml --tags config")
            continue
        differing = [f"[{section}] {key}" for (section, key), value in reference.items()
                     if config.get(section, key, fallback=None) != value]
        if differing:
            yield failed(node.name, check, "the values the other nodes have",
                         "differs in " + ", ".join(differing),
                         "re-render it from the inventory: ansible-playbook site.yml -i INV "
                         f"--tags config --limit {node.name}")
        else:
            yield passed(node.name, check, "same values")


def _config_path(node: Node) -> str:
    return f"{node.settings.get('oq_config_dir', '/etc/openquake')}/{CONFIG_FILE}"


def _reference_values(
    configs: dict[str, configparser.ConfigParser], master: str
) -> dict[tuple[str, str], str | None]:
    reference: dict[tuple[str, str], str | None] = {}
    for section, key in AGREEING_KEYS:
        values = {name: c.get(section, key, fallback=None) for name, c in configs.items()}
        counts = Counter(values.values()).most_common()
        tie = len(counts) > 1 and counts[0][1] == counts[1][1]
        if counts:
            reference[(section, key)] = values.get(master) if tie else counts[0][0]
    return reference


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


ClusterCheck = Callable[[Context], Iterator[CheckResult]]
CLUSTER_CHECKS: tuple[tuple[str, ClusterCheck], ...] = (
    ("ports: workers to master", dbserver_reachable),
    ("ports: receivers", receiver_ports_reachable),
    ("ports: master to workers", workerpools_reachable),
    ("workerpools answer", workerpools_answer),
    ("ports: outside the cluster", refused_from_outside),
    ("ssh: master to workers", ssh_master_to_workers),
    ("shared dir", shared_dir_visible),
    ("openquake.cfg agreement", config_agrees),
)
# The bundled engine's pools run between calculations and answer `oqz workers status`; the
# real engine starts its pools for each calculation (its smoke run proves they start).
BUNDLED_ENGINE_ONLY = frozenset({workerpools_reachable, workerpools_answer})
# Checks that leave a trace for a moment (a file in shared_dir, a listening socket):
# `verify --read-only` skips them, as it skips the smoke calculation.
WRITING_CHECKS = frozenset({receiver_ports_reachable, shared_dir_visible, refused_from_outside})
# Checks that guard security (firewall allow-lists, ssh host-key pinning, authentication):
# one that could not run fails verify unless --allow-unchecked. (The shared dir's
# read-only-ness is proven over NFS by the node tests, so --read-only leaves none of these out.)
SECURITY_CHECKS = frozenset({workerpools_reachable, workerpools_answer, ssh_master_to_workers,
                             refused_from_outside})


def cluster_checks(flavor: str) -> tuple[tuple[str, ClusterCheck], ...]:
    """The cluster checks that apply to a cluster of this engine flavor."""
    return tuple((label, check) for label, check in CLUSTER_CHECKS
                 if flavor == "oqzmq" or check not in BUNDLED_ENGINE_ONLY)
