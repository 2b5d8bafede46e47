"""systemd runs the node, and none of the units the roles install or use has failed."""

from __future__ import annotations

from typing import Any

from oqcluster.nodetests.expect import expect

# units the roles install or configure (a failed unit elsewhere is the site's business)
CLUSTER_UNITS = ("openquake*", "oqcluster*", "nfs*", "rpc*", "ssh*", "nftables*", "firewalld*",
                 "ufw*", "*.mount", "*.swap")


def test_systemd_is_pid_1(host: Any) -> None:
    comm = host.file("/proc/1/comm").content_string.strip()
    expect(comm == "systemd", "systemd as PID 1 (the roles manage units)", comm,
           "boot the node with systemd")


def test_no_cluster_unit_failed(host: Any) -> None:
    listed = host.run("systemctl list-units --failed --no-legend --plain %s",
                      " ".join(CLUSTER_UNITS))
    failed = [line.split()[0] for line in listed.stdout.splitlines() if line.strip()]
    expect(not failed, "no failed unit of the cluster", ", ".join(failed),
           f"journalctl -u {failed[0] if failed else 'UNIT'}; re-run site.yml")
