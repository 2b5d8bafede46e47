"""Node checks: the packaged node test modules, one pytest run per host, in parallel."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from oqcluster import nodetests
from oqcluster.nodetests.expect import parse
from oqcluster.verify.remote import ensure_ansible_on_path
from oqcluster.verify.results import CheckResult, Status

NODETESTS = Path(nodetests.__file__).parent
TIMEOUT_SECONDS = 300
PARAMETERS = re.compile(r"\[(?P<params>.*)\]$")


def node_test_command(inventory: str, host: str, junit: Path) -> list[str]:
    return [
        sys.executable, "-m", "pytest", str(NODETESTS),
        f"--hosts=ansible://{host}", f"--ansible-inventory={inventory}",
        f"--junitxml={junit}", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
    ]


def run_node_tests(
    inventory: str, host: str, project_root: Path, vault_password_file: str | None = None
) -> list[CheckResult]:
    """The node test modules against one host, as CheckResults named after the tests."""
    ensure_ansible_on_path()
    env = {**os.environ, "OQCLUSTER_PROJECT": str(project_root)}
    if vault_password_file:  # the node tests load the inventory as ansible.cfg would say
        env["ANSIBLE_VAULT_PASSWORD_FILE"] = str(Path(vault_password_file).resolve())
    with tempfile.TemporaryDirectory(prefix="oqcluster-verify-") as tmp:
        junit = Path(tmp) / "junit.xml"
        started = time.monotonic()
        try:
            run = subprocess.run(
                node_test_command(inventory, host, junit), cwd=project_root, env=env,
                capture_output=True, text=True, timeout=TIMEOUT_SECONDS, check=False,
            )
        except subprocess.TimeoutExpired:
            return [_broken(host, f"no answer within {TIMEOUT_SECONDS}s", time.monotonic())]
        if not junit.exists():
            return [_broken(host, _tail(run.stdout + run.stderr), started)]
        return results_from_junit(host, junit.read_text())


def results_from_junit(host: str, xml: str) -> list[CheckResult]:
    results = []
    for case in ET.fromstring(xml).iter("testcase"):
        results.append(_result(host, case))
    return results


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
    if skipped is not None:
        return CheckResult(host, name, Status.SKIP, found=skipped.get("message", ""))
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
