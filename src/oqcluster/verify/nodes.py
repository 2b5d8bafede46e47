"""Node and cluster checks: the packaged node test modules, run by pytest.

A pytest run costs CPU (Python, Ansible, the inventory read twice) while its remote
commands mostly wait: hosts are split among at most one run per CPU (see split_hosts),
the runs go in parallel, each result names its host. The cross-node tests (marker
`cluster`: the test_cluster_* modules) run in one more pytest run of their own, on the
master, beside the others; each of their outcomes names the node it concerns (a JUnit
property, expect.RESULTS_PROPERTY).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path

from oqcluster import nodetests
from oqcluster.nodetests.expect import RESULTS_PROPERTY, UNCHECKED_ENV, parse
from oqcluster.verify.remote import ensure_ansible_on_path
from oqcluster.verify.results import CheckResult, Status, from_skip_reason

NODETESTS = Path(nodetests.__file__).parent
TIMEOUT_SECONDS = 300
PARAMETERS = re.compile(r"\[(?P<params>.*)\]$")
NODE_TESTS = "not cluster"  # pytest -m: the checks of each node, run on its own
CLUSTER_TESTS = "cluster"  # pytest -m: the cross-node checks, run once from the master


def split_hosts(hosts: Sequence[str], jobs: int) -> list[list[str]]:
    """`hosts` dealt round-robin into at most min(jobs, CPUs) groups, one pytest run each."""
    runs = max(1, min(jobs, os.cpu_count() or 1, len(hosts)))
    return [list(hosts[index::runs]) for index in range(runs) if hosts[index::runs]]


def node_test_command(
    inventory: str, hosts: Sequence[str], junit: Path, marker: str = NODE_TESTS
) -> list[str]:
    return [
        sys.executable, "-m", "pytest", str(NODETESTS),
        "--hosts=" + ",".join(f"ansible://{host}" for host in hosts),
        f"--ansible-inventory={inventory}",
        f"--junitxml={junit}", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
        "-m", marker,
    ]


def run_node_tests(
    inventory: str, hosts: Sequence[str], project_root: Path,
    vault_password_file: str | None = None, marker: str = NODE_TESTS,
    extra_env: Mapping[str, str] | None = None,
) -> list[CheckResult]:
    """The node test modules selected by `marker` against `hosts` in one pytest run, as
    CheckResults named after the tests (or after a cross-node test's outcomes), each on
    its host."""
    ensure_ansible_on_path()
    # a check that cannot run here says so with a skip that verify reports as "not checked"
    # (run by hand or by Molecule, the node tests fail such a security check instead)
    env = {**os.environ, "OQCLUSTER_PROJECT": str(project_root), UNCHECKED_ENV: "report",
           **(extra_env or {})}
    if vault_password_file:  # the node tests load the inventory as ansible.cfg would say
        env["ANSIBLE_VAULT_PASSWORD_FILE"] = str(Path(vault_password_file).resolve())
    with tempfile.TemporaryDirectory(prefix="oqcluster-verify-") as tmp:
        junit = Path(tmp) / "junit.xml"
        started = time.monotonic()
        try:
            run = subprocess.run(
                node_test_command(inventory, hosts, junit, marker), cwd=project_root, env=env,
                capture_output=True, text=True, timeout=TIMEOUT_SECONDS, check=False,
            )
        except subprocess.TimeoutExpired:
            return [_broken(host, f"no answer within {TIMEOUT_SECONDS}s", started)
                    for host in hosts]
        if not junit.exists():
            return [_broken(host, _tail(run.stdout + run.stderr), started) for host in hosts]
        return results_from_junit(hosts, junit.read_text())


def results_from_junit(hosts: Sequence[str], xml: str) -> list[CheckResult]:
    """A result per test case, on the host of its `[ansible://HOST...]` parameter; a
    cross-node test's outcomes instead, each on the node it names."""
    results = []
    for case in ET.fromstring(xml).iter("testcase"):
        recorded = recorded_results(case)
        if recorded is not None:
            results += recorded
        else:
            results.append(_result(_case_host(case.get("name", ""), hosts), case))
    return results


def recorded_results(case: ET.Element) -> list[CheckResult] | None:
    """The outcomes a cross-node test recorded (expect.expect_each), None when it recorded
    none (a plain test, or one that broke before it could: then its failure counts)."""
    for prop in case.iter("property"):
        if prop.get("name") == RESULTS_PROPERTY:
            return [CheckResult(**{**item, "status": Status(item["status"])})
                    for item in json.loads(prop.get("value", "[]"))]
    return None


def _case_host(test_name: str, hosts: Sequence[str]) -> str:
    match = PARAMETERS.search(test_name)
    params = match["params"] if match else ""
    candidates = [host for host in hosts if params.startswith(f"ansible://{host}")]
    # the longest name wins: "w1" is a prefix of "w1-big" too
    return max(candidates, key=len) if candidates else (hosts[0] if len(hosts) == 1 else "?")


def _result(host: str, case: ET.Element) -> CheckResult:
    name = check_name(case.get("name", "?"), host)
    seconds = float(case.get("time", "0") or 0)
    for tag, status in (("failure", Status.FAIL), ("error", Status.ERROR)):
        element = case.find(tag)
        if element is not None:
            text = f"{element.get('message', '')}\n{element.text or ''}"
            parts = parse(text)
            if parts is None:
                return CheckResult(host, name, status, found=_tail(text), seconds=seconds,
                                   fix="run the node tests with -v to see the traceback")
            expected, found, fix = parts
            return CheckResult(host, name, status, expected, found, fix, seconds)
    skipped = case.find("skipped")
    if skipped is not None:  # not for this node, or not checked (the reason says which)
        return from_skip_reason(host, name, skipped.get("message", ""))
    return CheckResult(host, name, Status.PASS, seconds=seconds)


def check_name(test_name: str, host: str) -> str:
    """`test_slice_has_a_memory_cap[ansible://m1-openquake.slice]` -> readable words."""
    match = PARAMETERS.search(test_name)
    base = PARAMETERS.sub("", test_name).removeprefix("test_").replace("_", " ")
    if not match:
        return base
    extra = match["params"].removeprefix(f"ansible://{host}").removeprefix("-")
    return f"{base} ({extra})" if extra else base


def _broken(host: str, found: str, started: float) -> CheckResult:
    return CheckResult(host, "node tests", Status.ERROR, "the node tests to run", found,
                       "is the host reachable? ansible -i INV -m ping " + host,
                       time.monotonic() - started)


def _tail(text: str, lines: int = 4) -> str:
    return " | ".join(text.strip().splitlines()[-lines:]) or "no output"
