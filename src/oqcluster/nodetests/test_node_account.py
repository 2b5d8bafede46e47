"""The openquake account: same uid/gid on every node, so NFS ownership matches."""

from __future__ import annotations

from typing import Any

from oqcluster.nodetests.expect import expect

FIX = "re-run ansible-playbook site.yml -i INV --tags config (the oq_common role)"


def test_group_has_the_fixed_gid(host: Any, oq: dict[str, Any]) -> None:
    group = host.group(oq["oq_group"])
    expect(group.exists, f"group {oq['oq_group']}", "no such group", FIX)
    expect(group.gid == oq["oq_gid"], f"gid {oq['oq_gid']}", f"gid {group.gid}",
           f"renumber the group to oq_gid on this node ({FIX})")


def test_user_has_the_fixed_uid_and_group(host: Any, oq: dict[str, Any]) -> None:
    user = host.user(oq["oq_user"])
    expect(user.exists, f"user {oq['oq_user']}", "no such user", FIX)
    expect(user.uid == oq["oq_uid"], f"uid {oq['oq_uid']}", f"uid {user.uid}",
           f"renumber the user to oq_uid on this node ({FIX})")
    expect(user.group == oq["oq_group"], f"primary group {oq['oq_group']}",
           f"primary group {user.group}", FIX)
