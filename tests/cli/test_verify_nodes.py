"""verify's node checks: hosts split among pytest runs, results back on their hosts."""

from __future__ import annotations

from oqcluster.verify import nodes
from oqcluster.verify.results import Status

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest">
<testcase classname="t" name="test_no_swap_is_active[ansible://w1]" time="0.1"/>
<testcase classname="t" name="test_no_swap_is_active[ansible://w1-big]" time="0.1">
  <failure message="expected: no active swap | found: /dev/sda2 | fix: swapoff -a"/>
</testcase>
<testcase classname="t" name="test_slice_has_a_memory_cap[ansible://w1-big-openquake.slice]"
          time="0.1"/>
</testsuite></testsuites>
"""


def test_hosts_are_dealt_into_at_most_one_run_per_cpu(monkeypatch) -> None:
    monkeypatch.setattr(nodes.os, "cpu_count", lambda: 2)

    assert nodes.split_hosts(["m", "w1", "w2"], jobs=8) == [["m", "w2"], ["w1"]]
    assert nodes.split_hosts(["m", "w1", "w2"], jobs=1) == [["m", "w1", "w2"]]
    assert nodes.split_hosts(["m"], jobs=8) == [["m"]]


def test_one_run_for_several_hosts_names_each_result_by_its_host() -> None:
    results = nodes.results_from_junit(["w1", "w1-big"], JUNIT)

    assert [(r.host, r.check, r.status) for r in results] == [
        ("w1", "no swap is active", Status.PASS),
        ("w1-big", "no swap is active", Status.FAIL),
        ("w1-big", "slice has a memory cap (openquake.slice)", Status.PASS),
    ]
    assert results[1].found == "/dev/sda2"
    assert nodes.node_test_command("inv", ["w1", "w1-big"], nodes.Path("j.xml"))[4] == (
        "--hosts=ansible://w1,ansible://w1-big")


def test_a_multi_line_found_stays_parseable() -> None:
    from oqcluster.nodetests.expect import message, parse

    text = message("a read", "nfs-cat: failed\nNFS4ERR_NOENT\n", "re-run site.yml --tags nfs")

    assert parse(text) == ("a read", "nfs-cat: failed; NFS4ERR_NOENT", "re-run site.yml --tags nfs")
