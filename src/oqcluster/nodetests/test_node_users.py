"""The cluster users (role oq_users) and who the dbserver believes they are (issue 20).

On the master, for each user of oq_users_list: group openquake, <shared_dir>/<user>/oqdata
owned by the user (group openquake, 2750), with shared_dir /home /home itself unchanged
and each home only traversable by others, its dbserver key file (owner the user, 0600). And
the attack: the first listed user runs `LOGNAME=openquake USER=openquake oqz list` and must
see only its own calculations, while openquake (an admin) sees everyone's; it cannot abort
openquake's calculation nor stop the dbserver. Leaves two small records in the dbserver
(description "oqcluster verify: identity probe"), marked complete.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

import pytest

from oqcluster.nodetests.expect import as_root, expect

FIX = "re-run ansible-playbook site.yml -i INV --tags users (the oq_users role)"
PROBE = "oqcluster verify: identity probe"


def users(oq: dict[str, Any]) -> list[str]:
    return [str(item["name"]) for item in oq.get("oq_users_list") or []]


@pytest.fixture
def cluster_users(oq: dict[str, Any], master_only: None) -> list[str]:
    names = users(oq)
    if not names:
        pytest.skip("oq_users_list is empty: no cluster users to check")
    return names


def test_cluster_users_are_in_the_group_with_their_oqdata(
    host: Any, oq: dict[str, Any], cluster_users: list[str]
) -> None:
    for name in cluster_users:
        user = host.user(name)
        expect(user.exists, f"account {name}", "no such account", FIX)
        expect(oq["oq_group"] in user.groups, f"{name} in group {oq['oq_group']}",
               f"groups {user.groups}", FIX)
        with as_root(host):
            oqdata = host.file(f"{oq['oq_shared_dir']}/{name}/oqdata")
            found = (f"{oqdata.user}:{oqdata.group} {oqdata.mode:o}" if oqdata.is_directory
                     else "missing")
        wanted = f"{name}:{oq['oq_group']} 2750"
        expect(found == wanted, f"{oqdata.path} {wanted}", found, FIX)


def test_shared_home_is_not_loosened(
    host: Any, oq: dict[str, Any], cluster_users: list[str]
) -> None:
    """shared_dir /home (the manual's choice): /home keeps its owner and mode, each user's
    home lets others traverse it (the workers' openquake reads oqdata). The role only adds
    o+x; whether others may also list a home (useradd's 0755 under UMASK 022, 0700 with
    HOME_MODE) is the site's choice, so only o+x and no o+w are required."""
    if oq["oq_shared_dir"].rstrip("/") != "/home":
        pytest.skip(f"oq_shared_dir is {oq['oq_shared_dir']}, not /home")
    home = host.file("/home")
    found = f"{home.user}:{home.group} {home.mode:o}"
    expect(home.user == "root" and home.mode & 0o7022 == 0,
           "/home owned by root, no setgid, no group or other write", found,
           "restore it (chown root:root /home; chmod 0755 /home): the roles never change /home")
    for name in cluster_users:
        with as_root(host):
            user_home = host.file(f"/home/{name}")
            mode = user_home.mode if user_home.is_directory else None
        found = f"{mode:o}" if mode is not None else "missing"
        expect(mode is not None and bool(mode & 0o001) and not mode & 0o002,
               f"/home/{name}: others may traverse it (o+x) and not write it", found, FIX)


def identity_applies(oq: dict[str, Any]) -> None:
    if oq["oq_engine_flavor"] != "oqzmq" or not oq["oq_multi_user"]:
        pytest.skip("per-user dbserver keys: bundled engine with oq_multi_user only")


def test_cluster_users_have_their_dbserver_key_only_they_read(
    host: Any, oq: dict[str, Any], cluster_users: list[str]
) -> None:
    identity_applies(oq)
    for name in cluster_users:
        with as_root(host):
            key = host.file(f"{oq['oq_config_dir']}/users/{name}.key")
            found = f"{key.user} {key.mode:o}" if key.is_file else "missing"
        expect(found == f"{name} 600", f"{key.path} owner {name}, mode 0600", found, FIX)


class Oqz:
    """`oqz` on the master as a given account, with LOGNAME/USER claiming openquake."""

    def __init__(self, host: Any, oq: dict[str, Any]) -> None:
        self.host, self.oq = host, oq
        self.cfg = f"{oq['oq_config_dir']}/openquake.cfg"

    def run(self, user: str, *args: str) -> Any:
        claim = self.oq["oq_user"]
        command = (f"runuser -u {shlex.quote(user)} -- env LOGNAME={claim} USER={claim} "
                   f"OQ_CONFIG_FILE={self.cfg} {self.oq['oq_venv_dir']}/bin/oqz "
                   + " ".join(shlex.quote(arg) for arg in args))
        with as_root(self.host):
            return self.host.run(command)

    def python(self, user: str, code: str) -> Any:
        command = (f"runuser -u {shlex.quote(user)} -- env OQ_CONFIG_FILE={self.cfg} "
                   f"{self.oq['oq_venv_dir']}/bin/python -c {shlex.quote(code)}")
        with as_root(self.host):
            return self.host.run(command)

    def probe_calc(self, user: str) -> int:
        """A completed calculation record of `user` (no computation), its id. It names this
        process's host and pid: should the probe die half way, the dbserver marks it failed
        at once instead of letting it hold the serialize_jobs queue."""
        answer = self.python(user, (
            "import os, socket\n"
            "from oqzmq.config import load_config\n"
            "from oqzmq.dbserver import DbClient\n"
            "with DbClient(load_config()) as c:\n"
            f"    calc = c.call('create_calc', description={PROBE!r},\n"
            "                  host=socket.gethostname(), pid=os.getpid())\n"
            "    try:\n"
            "        c.call('set_status', calc_id=calc['id'], status='executing')\n"
            "        c.call('set_status', calc_id=calc['id'], status='complete')\n"
            "    except BaseException:\n"
            "        c.call('set_status', calc_id=calc['id'], status='failed')\n"
            "        raise\n"
            "    print(calc['id'])\n"))
        expect(answer.rc == 0, f"{user} records a calculation", answer.stderr.strip()[-300:],
               f"{user} needs its key ({FIX})")
        return int(answer.stdout.strip().splitlines()[-1])

    def listing(self, user: str) -> list[dict[str, Any]]:
        answer = self.run(user, "list", "--json", "--limit", "10000")
        expect(answer.rc == 0, f"`oqz list` as {user}", answer.stderr.strip()[-300:], FIX)
        return list(json.loads(answer.stdout)["calcs"])


@pytest.mark.writes  # a probe calculation in the dbserver, as each user
def test_logname_openquake_shows_a_user_only_its_own_calculations(
    host: Any, oq: dict[str, Any], cluster_users: list[str]
) -> None:
    identity_applies(oq)
    oqz, user, admin = Oqz(host, oq), cluster_users[0], oq["oq_user"]
    mine, theirs = oqz.probe_calc(user), oqz.probe_calc(admin)
    seen = oqz.listing(user)
    owners = {c["user_name"] for c in seen}
    fix = ("the dbserver must take the user from the request's user key, not from LOGNAME: "
           "install this oq-zmq-engine release on the master (re-run site.yml)")
    expect(owners == {user}, f"as {user} with LOGNAME={admin}: only {user}'s calculations",
           f"calculations of {sorted(owners)}", fix)
    expect(mine in {c["id"] for c in seen}, f"{user} sees its calculation {mine}",
           "not listed", FIX)
    everyone = oqz.listing(admin)
    expect({mine, theirs} <= {c["id"] for c in everyone},
           f"{admin} (admin) sees {user}'s {mine} and its own {theirs}",
           f"{len(everyone)} calculations of {sorted({c['user_name'] for c in everyone})}",
           f"{admin} must be in oq_admin_users ([dbserver] admins); {FIX}")
    aborted = oqz.run(user, "abort", str(theirs), "--wait", "1")
    expect(aborted.rc != 0 and f"belongs to {admin}" in aborted.stderr,
           f"`oqz abort {theirs}` as {user} refused (belongs to {admin})",
           f"exit {aborted.rc}: {(aborted.stdout + aborted.stderr).strip()[-300:]}", fix)
    stopped = oqz.run(user, "dbserver", "stop")
    expect(stopped.rc != 0 and "may stop the dbserver" in stopped.stderr,
           f"`oqz dbserver stop` as {user} refused",
           f"exit {stopped.rc}: {(stopped.stdout + stopped.stderr).strip()[-300:]}", fix)
    status = oqz.run(admin, "dbserver", "status")
    expect(status.rc == 0, "the dbserver still running", status.stderr.strip()[-300:],
           "systemctl start openquake-dbserver")
