"""ssh from the master to the workers, from the master's run: the engine's account logs in
to each worker without a prompt against a pinned host key, and the pinned key is the
worker's own."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from oqcluster.nodetests.cluster import per_worker
from oqcluster.nodetests.expect import as_root, expect
from oqcluster.verify.context import Context
from oqcluster.verify.remote import Node
from oqcluster.verify.results import CheckResult, failed, passed


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
                         ssh_fix(out.text))

    yield from per_worker(ctx, login)


def ssh_fix(error: str) -> str:
    if "Host key verification failed" in error:
        return "pin the worker's host key in the master's known_hosts: re-run site.yml --tags ssh"
    if "Permission denied" in error:
        return ("put the master's openquake public key in the worker's authorized_keys: "
                "re-run site.yml --tags ssh")
    return "check sshd on the worker and the network between them; re-run site.yml --tags ssh"


@pytest.mark.usefixtures("on_master")
def test_master_logs_in_to_each_worker_over_ssh(across: Context, report: Any) -> None:
    report(ssh_master_to_workers(across))


@pytest.mark.usefixtures("on_master")
def test_workers_host_keys_are_pinned(cluster: Any) -> None:
    master = cluster.node(cluster.master)
    home = master.user(cluster.settings(cluster.master)["oq_user"]).home
    with as_root(master):
        known = master.file(f"{home}/.ssh/known_hosts").content_string.splitlines()
    for worker in cluster.remote_workers():
        key = cluster.node(worker).file("/etc/ssh/ssh_host_ed25519_key.pub").content_string
        wanted = " ".join(key.split()[:2])
        address = cluster.address(worker)
        pinned = [line for line in known if line.split(" ", 1)[0].split(",")[0] == address]
        expect(any(wanted in line for line in pinned),
               f"{worker}'s ed25519 host key pinned for {address}",
               pinned or "no entry", "re-run site.yml --tags ssh")
