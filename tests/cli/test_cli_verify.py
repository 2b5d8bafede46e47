"""`oqcluster verify` on this machine through testinfra's real ansible backend.

The inventory's hosts use `ansible_connection: local`, so every check really runs (commands,
TCP connections, pytest on the packaged node tests) against this machine, which is not a
provisioned node: the tests assert what passes, what fails and what the report says.
"""

from __future__ import annotations

import json
import socket
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_cases import ROOT
from freeports import free_port, free_port_block

from oqcluster.cli import main
from oqcluster.inventory import Inventory
from oqcluster.nodetests import test_cluster_clocks as clock_checks
from oqcluster.nodetests import test_cluster_config as config_checks
from oqcluster.nodetests import test_cluster_nfs as nfs_checks
from oqcluster.nodetests import test_cluster_ports as port_checks
from oqcluster.nodetests import test_cluster_ssh as ssh_checks
from oqcluster.nodetests import test_cluster_workerpools as pool_checks
from oqcluster.nodetests.cluster import READ_ONLY_ENV, WORKERS_ENV
from oqcluster.project import find_project
from oqcluster.verify import outside, report, smoke_openquake
from oqcluster.verify.context import Context, build_context
from oqcluster.verify.nodes import CLUSTER_TESTS, run_node_tests
from oqcluster.verify.results import CheckResult, Status
from oqcluster.verify.smoke import read_demo_outcome

MISSING_USER = "oqverify-nosuchuser"


@pytest.fixture
def listener() -> Iterator[int]:
    """A port on 127.0.0.1 that accepts connections."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server.getsockname()[1]


def local_inventory(directory: Path, dbserver_port: int, ctrl_port: int) -> Path:
    """Two loopback nodes; the receiver and webui ports are free ones on both addresses (a
    fixed port another process holds made the outside check open no listener there)."""
    receivers = free_port_block(3, ("127.0.0.1", "127.0.0.2"))
    inventory = directory / "hosts.yml"
    inventory.write_text(f"""
all:
  vars:
    ansible_connection: local
    oq_authkey: verify-test-authkey-0123456789abcdefghijkl
    oq_user: {MISSING_USER}
    oq_dbserver_port: {dbserver_port}
    oq_ctrl_port: {ctrl_port}
    oq_receiver_port_first: {receivers}
    oq_receiver_port_last: {receivers + 1}
    oq_webui_port: {receivers + 2}
  children:
    master: {{hosts: {{m1: {{oq_address: 127.0.0.1}}}}}}
    workers: {{hosts: {{w1: {{oq_address: 127.0.0.2}}}}}}
""")
    return inventory


def context(inventory: Path) -> Context:
    return build_context(str(inventory), Inventory([str(inventory)], find_project().defaults),
                         None)


def test_ports_are_probed_from_the_workers_and_from_the_master(
    project_root: Path, tmp_path: Path, listener: int
) -> None:
    closed = free_port()
    ctx = context(local_inventory(tmp_path, dbserver_port=listener, ctrl_port=closed))

    dbserver = list(port_checks.dbserver_reachable(ctx))
    receivers = list(port_checks.receiver_ports_reachable(ctx))
    workerpool = list(port_checks.workerpools_reachable(ctx))

    assert [(r.host, r.status) for r in dbserver] == [("m1", Status.PASS), ("w1", Status.PASS)]
    assert [(r.host, r.status, r.found) for r in receivers] == [("w1", Status.PASS, "open")]
    assert [(r.host, r.status, r.found) for r in workerpool] == [("w1", Status.FAIL, "refused")]
    assert workerpool[0].check == f"workerpool listens on 127.0.0.2:{closed}"
    assert "oqz workers start" in workerpool[0].fix


def test_a_dbserver_that_does_not_listen_is_blamed_on_the_master(
    project_root: Path, tmp_path: Path
) -> None:
    ctx = context(local_inventory(tmp_path, dbserver_port=free_port(), ctrl_port=free_port()))

    [result] = port_checks.dbserver_reachable(ctx)

    assert (result.host, result.status, result.found) == ("m1", Status.FAIL, "refused")
    assert "openquake-dbserver" in result.fix


def test_ssh_check_reports_the_missing_account(project_root: Path, tmp_path: Path) -> None:
    ctx = context(local_inventory(tmp_path, free_port(), free_port()))

    [result] = ssh_checks.ssh_master_to_workers(ctx)

    assert result.status == Status.FAIL
    assert MISSING_USER in result.found


def test_verify_refuses_a_bad_inventory(
    project_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["verify", "-i", str(ROOT / "tests/inventories/zero-cores")])

    assert code == 1
    assert "not verifying" in capsys.readouterr().err


@pytest.mark.slow
def test_verify_reports_json_and_junit_and_fails(
    project_root: Path, tmp_path: Path, listener: int, capsys: pytest.CaptureFixture[str]
) -> None:
    inventory = local_inventory(tmp_path, dbserver_port=listener, ctrl_port=free_port())
    junit = tmp_path / "verify.xml"

    code = main(["verify", "-i", str(inventory), "--limit", "w1", "--json",
                 "--junit", str(junit), "--no-smoke"])

    data = json.loads(capsys.readouterr().out)
    assert code == 1
    assert data["ok"] is False
    by_check = {(r["host"], r["check"]): r for r in data["results"]}
    user = by_check[("w1", "user has the fixed uid and group")]
    assert (user["status"], user["expected"], user["found"]) == (
        "fail", f"user {MISSING_USER}", "no such user")
    assert "--tags config" in user["fix"]
    assert by_check[("w1", "master services run enabled in the openquake slice")][
        "status"] == "not_applicable"  # w1 is not the master
    assert not any(host == "m1" and "uid" in check for host, check in by_check)  # --limit
    suites = {s.get("name"): s for s in ET.parse(junit).getroot().iter("testsuite")}
    assert int(suites["w1"].get("failures", "0")) >= 1
    failure = next(case.find("failure") for case in suites["w1"].iter("testcase")
                   if case.find("failure") is not None)
    assert "fix: " in (failure.text or "")
    smoke = by_check[("cluster", "smoke calculation")]  # --no-smoke: not checked, not passed
    assert (smoke["status"], smoke["security"]) == ("not_checked", False)


def test_smoke_reads_tasks_per_address_from_the_json_of_run_demo() -> None:
    stdout = json.dumps({"calc_id": 3, "status": "complete", "datastore": "/d/calc_3.hdf5",
                         "tasks_per_host": {"10.0.0.11": 3, "fe80::2": 5}}, indent=2)

    outcome = read_demo_outcome(stdout)

    assert outcome is not None and outcome["tasks_per_host"] == {"10.0.0.11": 3, "fe80::2": 5}
    assert read_demo_outcome("calculation 3 done\ntasks/host: 10.0.0.11: 3\n") is None
    assert read_demo_outcome('{"calc_id": 3}') is None  # not the outcome of a calculation


def test_summary_line_says_broken_when_anything_failed() -> None:
    from oqcluster.verify.results import failed, passed

    results = [passed("a", "x"), failed("b", "y", "open", "timeout", "open the port")]

    assert report.summary_line(results, 1.0).startswith("cluster BROKEN: 1 passed, 1 failed")
    assert report.summary_line(results[:1], 1.0).startswith("cluster OK")


def test_verify_never_generates_the_cluster_secret(
    project_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inventory = local_inventory(tmp_path, free_port(), free_port())
    inventory.write_text(inventory.read_text().replace("    oq_authkey:", "    #oq_authkey:"))

    code = main(["verify", "-i", str(inventory)])

    assert code == 2
    err = capsys.readouterr().err
    assert "credentials/oq_authkey" in err
    assert "is not on this control node" in err
    assert not (tmp_path / "credentials").exists()


def test_table_shows_problems_and_smoke_counts_and_folds_the_passes() -> None:
    from rich.console import Console

    from oqcluster.verify.results import failed, passed

    results = [
        passed("m", "user has the fixed uid and group"),
        passed("m", "smoke calculation (oqz run demo, 8 tasks, zmq)", "10.0.0.2: 8"),
        CheckResult("m", "worker trusts the masters key", Status.NOT_APPLICABLE,
                    found="not here"),
        failed("w", "workerpool listens on 10.0.0.2:1909", "open", "refused",
               "oqz workers start"),
        passed("w", "no swap is active"),
    ]
    console = Console(record=True, width=120)

    report.print_table(console, results, verbose=False)

    text = console.export_text()
    assert "smoke calculation" in text and "10.0.0.2: 8" in text
    assert "1 more checks" in text and "not for this node" in text
    assert "fix: oqz workers start" in text
    assert "user has the fixed uid" not in text


def test_missing_secret_names_the_file_and_leaves_nothing_behind(
    project_root: Path, tmp_path: Path
) -> None:
    inventory = local_inventory(tmp_path, free_port(), free_port())
    with_key = Inventory([str(inventory)], find_project().defaults)
    inventory.write_text(inventory.read_text().replace("    oq_authkey:", "    #oq_authkey:"))
    generated = Inventory([str(inventory)], find_project().defaults)

    missing = generated.missing_secret("m1")

    assert with_key.missing_secret("m1") is None
    assert missing is not None and missing.parent == tmp_path / "credentials"
    assert not (tmp_path / "credentials").exists()


def test_an_unreachable_node_is_one_error_and_leaves_the_checks(
    project_root: Path, tmp_path: Path
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from oqcluster.verify.runner import reachability

    inventory = local_inventory(tmp_path, free_port(), free_port())
    inventory.write_text(inventory.read_text().replace(
        "w1: {oq_address: 127.0.0.2}",
        "w1: {oq_address: 127.0.0.2, ansible_host: 127.0.0.1, ansible_port: 9, "
        "ansible_connection: ssh}",
    ))
    ctx = context(inventory)

    with ThreadPoolExecutor() as pool:
        [result] = reachability(ctx, pool)

    assert (result.host, result.check, result.status) == ("w1", "reachable", Status.ERROR)
    assert "Connection refused" in result.found
    assert "-m ping" in result.fix
    assert ctx.workers == [] and "w1" not in ctx.selected


def test_shared_dir_check_reads_back_and_catches_a_writable_share(
    project_root: Path, tmp_path: Path
) -> None:
    import getpass

    shared = tmp_path / "shared"
    shared.mkdir()
    inventory = local_inventory(tmp_path, free_port(), free_port())
    inventory.write_text(inventory.read_text()
                         .replace(f"oq_user: {MISSING_USER}", f"oq_user: {getpass.getuser()}")
                         .replace("  children:", f"    oq_shared_dir: {shared}\n  children:"))
    ctx = context(inventory)

    results = {r.check: r for r in nfs_checks.shared_dir_visible(ctx)}

    assert results[f"sees the master's {shared}"].status == Status.PASS
    writable = results["cannot write the shared dir (read-only export)"]
    assert (writable.host, writable.status, writable.found) == ("w1", Status.FAIL,
                                                                "write succeeded")
    assert "read-only" in writable.fix
    assert list(shared.iterdir()) == []  # the probe files are gone


def test_users_datastore_check_reads_back_what_the_user_wrote(
    project_root: Path, tmp_path: Path
) -> None:
    import getpass

    me = getpass.getuser()
    shared = tmp_path / "shared"
    oqdata = shared / me / "oqdata"
    oqdata.mkdir(parents=True)
    inventory = local_inventory(tmp_path, free_port(), free_port())
    inventory.write_text(inventory.read_text()
                         .replace(f"oq_user: {MISSING_USER}", f"oq_user: {me}")
                         .replace("  children:", f"    oq_shared_dir: {shared}\n"
                                  f"    oq_users_list: [{{name: {me}}}]\n  children:"))
    ctx = context(inventory)

    results = list(nfs_checks.users_oqdata_visible(ctx, me))

    assert [(r.host, r.check, r.status) for r in results] == [
        ("w1", f"{me} reads a cluster user's datastore {oqdata}", Status.PASS)]
    assert list(oqdata.iterdir()) == []  # the probe file is gone

    oqdata.rmdir()  # the user cannot write there: named on the master, nothing read
    [missing] = nfs_checks.users_oqdata_visible(ctx, me)
    assert (missing.host, missing.check, missing.status) == (
        "m1", f"{me} writes in {oqdata}", Status.FAIL)
    assert "re-run site.yml --tags users" in missing.fix


def test_config_agreement_names_the_one_node_that_differs(
    project_root: Path, tmp_path: Path
) -> None:
    inventory = local_inventory(tmp_path, free_port(), free_port())
    hosts = {"m1": "same-key", "w1": "other-key", "w2": "same-key"}
    text = inventory.read_text().replace(
        "    workers: {hosts: {w1: {oq_address: 127.0.0.2}}}",
        "    workers: {hosts: {w1: {oq_address: 127.0.0.2}, w2: {oq_address: 127.0.0.3}}}",
    )
    for name, key in hosts.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "openquake.cfg").write_text(
            f"[dbserver]\nhost = 127.0.0.1\nport = 1908\nauthkey = {key}\n")
        text = text.replace(f"{name}: {{oq_address:",
                            f"{name}: {{oq_config_dir: {tmp_path / name}, oq_address:")
    inventory.write_text(text)
    ctx = context(inventory)

    results = {r.host: r for r in config_checks.config_agrees(ctx)}

    assert {name: r.status for name, r in results.items()} == {
        "m1": Status.PASS, "w1": Status.FAIL, "w2": Status.PASS}
    assert results["w1"].found == "differs in [dbserver] authkey"
    assert "--limit w1" in results["w1"].fix


def test_clock_check_passes_clocks_that_agree_and_names_the_worker_ahead(
    project_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both loopback nodes read this machine's clock: they agree. Then the worker's reading
    is moved 3 x the limit ahead (as a worker without a time service drifts): it is named."""
    ctx = context(local_inventory(tmp_path, free_port(), free_port()))

    [agreeing] = clock_checks.clocks_agree(ctx)

    read = clock_checks.clock_offset
    monkeypatch.setattr(clock_checks, "clock_offset", lambda node: (
        read(node) if node.name == "m1" else (3 * clock_checks.LIMIT, 0.01)))
    [ahead] = clock_checks.clocks_agree(ctx)

    assert (agreeing.host, agreeing.status) == ("w1", Status.PASS), agreeing
    assert (ahead.host, ahead.status) == ("w1", Status.FAIL), ahead
    assert ahead.found.startswith("+") and "chrony" in ahead.fix


def test_workers_status_json_becomes_states_per_address() -> None:
    stdout = json.dumps({"workerpools": [
        {"host": "10.0.0.11", "answers": True, "running": 1, "total": 4, "queued": 0,
         "why": None},
        {"host": "10.0.0.12", "answers": False, "running": None, "total": None, "queued": None,
         "why": "port 1909 closed"},
    ]})

    assert pool_checks.read_workers_status(stdout) == {
        "10.0.0.11": "1 of 4 processes busy",
        "10.0.0.12": "not running: port 1909 closed",
    }
    assert pool_checks.read_workers_status("host running total queued\n") is None


def test_outside_check_is_not_checked_from_a_cluster_address(
    project_root: Path, tmp_path: Path, listener: int
) -> None:
    ctx = context(local_inventory(tmp_path, dbserver_port=listener, ctrl_port=free_port()))

    [result] = outside.refused_from_outside(ctx)  # verify runs on 127.0.0.1, the master

    assert result.status == Status.NOT_CHECKED and result.security
    assert "cluster address" in result.found and "outside the cluster" in result.fix


def test_outside_check_fails_every_port_that_answers_an_outsider(
    project_root: Path, tmp_path: Path, listener: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No firewall on loopback: every engine port answers, so every one must fail."""
    monkeypatch.setattr(outside, "control_address", lambda destination: "192.0.2.99")
    ctx = context(local_inventory(tmp_path, dbserver_port=listener, ctrl_port=free_port()))

    results = list(outside.refused_from_outside(ctx))

    assert [(r.host, r.status) for r in results] == [("m1", Status.FAIL)] * 3 + [
        ("w1", Status.FAIL)]
    assert all("open from 192.0.2.99" in r.found and "--tags firewall" in r.fix
               for r in results), results


def cross_node_results(
    inventory: Path, **env: str
) -> dict[tuple[str, str], CheckResult]:
    """The cross-node tests as verify runs them (`-m cluster` on the master), by (host, check)."""
    results = run_node_tests(str(inventory), ["m1"], ROOT, marker=CLUSTER_TESTS,
                             extra_env={WORKERS_ENV: "w1", **env})
    return {(r.host, r.check): r for r in results}


@pytest.mark.slow
def test_cross_node_tests_report_each_outcome_on_the_node_it_concerns(
    project_root: Path, tmp_path: Path, listener: int
) -> None:
    """verify's pytest run of the test_cluster_* modules: one result per (node, check) of a
    cross-node test, on that node; --read-only leaves the writing ones not checked."""
    closed = free_port()
    inventory = local_inventory(tmp_path, dbserver_port=listener, ctrl_port=closed)

    results = cross_node_results(inventory, **{READ_ONLY_ENV: "1"})

    assert results[("m1", f"dbserver listens on 127.0.0.1:{listener}")].status == Status.PASS
    reach = results[("w1", f"reaches master 127.0.0.1:{listener} (dbserver)")]
    assert (reach.status, reach.found) == (Status.PASS, "open")
    pool = results[("w1", f"workerpool listens on 127.0.0.2:{closed}")]
    assert (pool.status, pool.found) == (Status.FAIL, "refused")
    assert "oqz workers start" in pool.fix
    ssh = next(r for (host, check), r in results.items()
               if host == "w1" and check.endswith("(BatchMode, pinned host key)"))
    assert ssh.status == Status.FAIL and MISSING_USER in ssh.found
    for writing in ("workers reach a result receiver port",
                    "every worker reads what the master wrote in the shared dir"):
        unchecked = results[("m1", writing)]
        assert (unchecked.status, unchecked.security) == (Status.NOT_CHECKED, False)
        assert "--read-only" in unchecked.found
    assert not any(host == "m1" and "workerpool" in check and "listens" in check
                   for host, check in results)  # the worker's outcome is on the worker


@pytest.mark.slow
def test_the_bundled_engines_pool_checks_are_left_out_for_the_real_engine(
    project_root: Path, tmp_path: Path, listener: int
) -> None:
    inventory = local_inventory(tmp_path, dbserver_port=listener, ctrl_port=free_port())
    inventory.write_text(inventory.read_text().replace(
        "  children:", "    oq_engine_flavor: openquake\n  children:"))

    results = cross_node_results(inventory)

    for bundled_only in ("master reaches each workerpool port",
                         "workerpools answer the masters authenticated ping"):
        assert results[("m1", bundled_only)].status == Status.NOT_APPLICABLE
    assert not any("workerpool" in check and host == "w1" for host, check in results)
    assert results[("w1", f"reaches master 127.0.0.1:{listener} (dbserver)")].ok
    receivers = [r for (host, check), r in results.items() if "(result receivers)" in check]
    assert [r.host for r in receivers] == ["w1"]  # not --read-only: the writing checks ran


def test_the_real_engines_probe_report_is_the_last_json_line() -> None:
    text = 'Starting oq-zworkerpool\n{"hosts": ["w1", "w2"], "status": []}\n'
    assert smoke_openquake._last_json(text) == {"hosts": ["w1", "w2"], "status": []}
    assert smoke_openquake._last_json("Traceback ...\nValueError: x\n") is None


def _three_outcomes() -> list[CheckResult]:
    from oqcluster.verify.results import from_skip_reason, passed

    return [
        passed("m", "dbserver listens"),
        from_skip_reason("m", "exports refuse nfsv3", "not checked: [security] nfs-cat is "
                         "missing on m | fix: re-run site.yml --tags config"),
        from_skip_reason("w", "cpu profile", "not checked: perf is missing | fix: apt install"),
        from_skip_reason("w", "master services run", "only on the host of group master"),
    ]


def test_skip_reasons_become_not_checked_or_not_for_this_node() -> None:
    results = _three_outcomes()

    assert [r.status for r in results] == [Status.PASS, Status.NOT_CHECKED,
                                           Status.NOT_CHECKED, Status.NOT_APPLICABLE]
    assert [r.security for r in results] == [False, True, False, False]
    assert results[1].found == "nfs-cat is missing on m"
    assert results[1].fix == "re-run site.yml --tags config"
    assert not results[1].ok and results[3].ok


def test_an_unchecked_security_check_fails_verify_unless_allowed() -> None:
    from oqcluster.verify.results import verdict

    results = _three_outcomes()

    assert verdict(results) is False
    assert verdict(results, allow_unchecked=True) is True
    assert verdict([results[0], results[2], results[3]]) is True  # not security: reported only
    line = report.summary_line(results, 1.0)
    assert line.startswith("cluster NOT PROVEN: 1 passed, 0 failed, 0 errors, 2 not checked "
                           "(1 of them security checks), 1 not for their node")
    assert report.summary_line(results, 1.0, allow_unchecked=True).startswith(
        "cluster OK as far as checked")


def test_json_table_and_junit_keep_the_outcomes_apart(tmp_path: Path) -> None:
    from rich.console import Console

    results = _three_outcomes()

    data = json.loads(report.to_json(results, 1.0))
    assert data["ok"] is False and data["all_checked"] is False
    assert data["counts"] == {"pass": 1, "fail": 0, "error": 0, "not_checked": 2,
                              "not_applicable": 1}
    console = Console(record=True, width=160)
    report.print_table(console, results, verbose=False)
    text = console.export_text()
    assert text.count("NOT CHECKED") == 2 and "nfs-cat is missing on m" in text
    assert "security check" in text
    junit = tmp_path / "v.xml"
    report.write_junit(junit, results)
    cases = {c.get("name"): c for c in ET.parse(junit).getroot().iter("testcase")}
    assert cases["exports refuse nfsv3"].find("error") is not None
    assert "not checked" in cases["cpu profile"].find("skipped").get("message", "")
    assert cases["master services run"].find("skipped").get("type") == "not for this node"
    outcome = cases["exports refuse nfsv3"].find("properties/property[@name='outcome']")
    assert outcome is not None and outcome.get("value") == "not_checked"
    report.write_junit(junit, results, allow_unchecked=True)
    cases = {c.get("name"): c for c in ET.parse(junit).getroot().iter("testcase")}
    assert cases["exports refuse nfsv3"].find("skipped") is not None


def test_verify_tells_the_cross_node_run_its_workers_read_only_and_sessions(
    project_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from oqcluster.nodetests.cluster import SESSIONS_ENV, Cluster
    from oqcluster.verify import remote, runner

    inventory = local_inventory(tmp_path, free_port(), free_port())
    ctx = context(inventory)
    remote.limit_sessions(3)
    try:
        assert runner.cluster_env(ctx, read_only=True) == {
            WORKERS_ENV: "w1", SESSIONS_ENV: "3", READ_ONLY_ENV: "1"}
        ctx.workers = []  # none reached
        assert runner.cluster_env(ctx, read_only=False) == {WORKERS_ENV: "", SESSIONS_ENV: "3"}
    finally:
        remote.limit_sessions(remote.SESSIONS_PER_HOST)
    cluster = Cluster(str(inventory))
    monkeypatch.delenv(WORKERS_ENV, raising=False)
    assert cluster.probed_workers() == ["w1"]  # by hand, Molecule: every worker
    monkeypatch.setenv(WORKERS_ENV, "")
    assert cluster.probed_workers() == [] and cluster.remote_workers() == []
    assert [w.name for w in Cluster(str(inventory)).context().workers] == []
    assert cluster.workers == ["w1"]  # the allow-lists still know every worker
