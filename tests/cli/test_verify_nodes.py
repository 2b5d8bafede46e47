"""verify's node checks: hosts split among pytest runs, results back on their hosts."""

from __future__ import annotations

import json

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


def _recorded_case(results: list) -> str:
    from xml.sax.saxutils import quoteattr

    from oqcluster.nodetests.expect import RESULTS_PROPERTY

    value = quoteattr(json.dumps([r.as_dict() for r in results]))
    return f"""<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest">
<testcase classname="t" name="test_workers_reach_the_dbserver_port[ansible://m1]" time="2.0">
  <properties><property name="{RESULTS_PROPERTY}" value={value}/></properties>
  <failure message="w2: reaches master ...">w2: reaches master ...</failure>
</testcase>
<testcase classname="t" name="test_workers_host_keys_are_pinned[ansible://m1]" time="0.5"/>
</testsuite></testsuites>
"""


def test_a_cross_node_tests_outcomes_land_on_the_nodes_they_name() -> None:
    from oqcluster.verify.results import failed, not_checked, passed

    outcomes = [passed("m1", "dbserver listens on 10.0.0.1:1908", "open"),
                passed("w1", "reaches master 10.0.0.1:1908 (dbserver)", "open"),
                failed("w2", "reaches master 10.0.0.1:1908 (dbserver)", "open", "timeout",
                       "allow 1908/tcp"),
                not_checked("w3", "ssh", "no ssh", "install it", security=True)]

    results = nodes.results_from_junit(["m1"], _recorded_case(outcomes))

    assert results == [*outcomes, nodes.CheckResult("m1", "workers host keys are pinned",
                                                    Status.PASS, seconds=0.5)]
    command = nodes.node_test_command("inv", ["m1"], nodes.Path("j.xml"), nodes.CLUSTER_TESTS)
    assert command[-2:] == ["-m", "cluster"]
    assert nodes.node_test_command("inv", ["m1"], nodes.Path("j.xml"))[-2:] == [
        "-m", "not cluster"]


class _Item:
    def __init__(self) -> None:
        self.user_properties: list[tuple[str, str]] = []


def test_expect_each_records_every_outcome_and_fails_on_any_failure(monkeypatch) -> None:
    import pytest

    from oqcluster.nodetests.expect import RESULTS_PROPERTY, UNCHECKED_ENV, expect_each
    from oqcluster.verify.results import failed, not_checked, passed

    good = passed("w1", "reaches master", "open")
    bad = failed("w2", "reaches master", "open", "timeout", "allow 1908/tcp")
    unchecked = not_checked("w3", "ssh pinned", "no ssh client", "install it", security=True)
    monkeypatch.delenv(UNCHECKED_ENV, raising=False)

    item = _Item()
    with pytest.raises(pytest.fail.Exception) as failure:
        expect_each(item, [good, bad])
    assert str(failure.value) == (
        "w2: reaches master: expected: open | found: timeout | fix: allow 1908/tcp")
    [(name, value)] = item.user_properties
    assert name == RESULTS_PROPERTY and [r["host"] for r in json.loads(value)] == ["w1", "w2"]

    expect_each(_Item(), [good])  # all passed: the test passes
    with pytest.raises(pytest.fail.Exception):  # Molecule, by hand: unproven security fails
        expect_each(_Item(), [good, unchecked])
    monkeypatch.setenv(UNCHECKED_ENV, "report")  # verify: reported as not checked
    with pytest.raises(pytest.skip.Exception, match="not checked: w3: no ssh client"):
        expect_each(_Item(), [good, unchecked])
