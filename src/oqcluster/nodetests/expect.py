"""Assertions that say what was expected, what was found and what fixes it."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import pytest

from oqcluster.verify.results import NOT_CHECKED_PREFIX, SECURITY_TAG, CheckResult, Status

SEPARATOR = " | "
# `oqcluster verify` sets it to "report": a check that cannot run is skipped with a reason
# verify turns into "not checked". Otherwise (pytest by hand, Molecule's verifier) a security
# check that cannot run FAILS: nothing unproven passes.
UNCHECKED_ENV = "OQCLUSTER_UNCHECKED"
# A cross-node test's outcome per (node, check), as JSON in this property of its JUnit test
# case: verify reports each on its node's line (verify.nodes), not one line for the test.
RESULTS_PROPERTY = "oqcluster-results"
PATTERN = re.compile(r"expected: (?P<expected>.*?) \| found: (?P<found>.*?) \| fix: (?P<fix>.*)")


def expect(condition: bool, expected: object, found: object, fix: str) -> None:
    assert condition, message(expected, found, fix)


def expect_each(item: pytest.Item, results: Iterable[CheckResult]) -> None:
    """A cross-node test's outcomes, one per (node, check): recorded for verify's report,
    and the test fails when any did not pass (with each one's expected | found | fix).

    A not-checked security outcome fails under Molecule or pytest by hand, as not_checked()
    does; under `oqcluster verify` it is reported as not checked."""
    results = list(results)
    item.user_properties.append((RESULTS_PROPERTY, json.dumps([r.as_dict() for r in results])))
    report = os.environ.get(UNCHECKED_ENV) == "report"
    unchecked = [r for r in results if r.status == Status.NOT_CHECKED]
    bad = [r for r in results if r.status in (Status.FAIL, Status.ERROR)] + [
        r for r in unchecked if r.security and not report]
    if bad:
        pytest.fail("\n".join(f"{r.host}: {r.check}: {message(r.expected, r.found, r.fix)}"
                               for r in bad), pytrace=False)
    if unchecked:
        pytest.skip(f"{NOT_CHECKED_PREFIX}{unchecked[0].host}: {unchecked[0].found}"
                    f"{SEPARATOR}fix: {unchecked[0].fix}")


def not_checked(why: str, fix: str, security: bool) -> None:
    """This check applies here but cannot run (a tool is missing, ...): never a pass.

    For a check that does not apply to this node, use pytest.skip(reason) instead."""
    if security and os.environ.get(UNCHECKED_ENV) != "report":
        pytest.fail(message("this security check to run", f"not checked: {why}", fix))
    pytest.skip(f"{NOT_CHECKED_PREFIX}{SECURITY_TAG if security else ''}{why}{SEPARATOR}fix: {fix}")


def message(expected: object, found: object, fix: str) -> str:
    """One line (verify parses it line by line): a multi-line `found` is joined with '; '."""
    found = "; ".join(line.strip() for line in str(found).splitlines() if line.strip())
    return SEPARATOR.join((f"expected: {expected}", f"found: {found}", f"fix: {fix}"))


def parse(text: str) -> tuple[str, str, str] | None:
    """(expected, found, fix) from a failure text that contains an expect() message."""
    for line in text.splitlines():
        match = PATTERN.search(line)
        if match:
            fix = match["fix"].strip().rstrip("\"'")  # pytest.fail() quotes its message
            return match["expected"].strip(), match["found"].strip(), fix
    return None


def as_root(host: Any) -> AbstractContextManager[Any]:
    """Run the block's commands as root: directly when connected as root, else with sudo."""
    return nullcontext() if _login(host) == "root" else host.sudo()


_logins: dict[int, str] = {}


def _login(host: Any) -> str:
    """The connection's user, asked once per host (each question is a remote command)."""
    if id(host) not in _logins:
        _logins[id(host)] = host.user().name
    return _logins[id(host)]
