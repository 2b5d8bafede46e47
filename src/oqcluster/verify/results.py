"""What a check found: one `CheckResult` per (host, check).

Four outcomes, never merged: passed, failed (or an error: the check broke), not checked (it
should have run here and could not, with the reason) and not for this node (it does not
apply here). A `security` check that was not checked makes the verdict fail unless the
user allows it (`verify --allow-unchecked`): exports, firewall, ssh pinning, authentication
unproven are not secure.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

# What fixes an engine on the nodes that does not print the JSON this release reads.
ENGINE_RELEASE_FIX = ("re-run `ansible-playbook site.yml -i INV`: the nodes must run the engine "
                      "of this release of oqcluster")
# The skip reasons of the node tests say which of the two skips they are (expect.py).
NOT_CHECKED_PREFIX = "not checked: "
SECURITY_TAG = "[security] "


class Status(enum.StrEnum):
    PASS = "pass"
    FAIL = "fail"
    ERROR = "error"  # the check itself broke (host unreachable, traceback)
    NOT_CHECKED = "not_checked"  # it applies here but could not run: the reason is in found
    NOT_APPLICABLE = "not_applicable"  # not for this node (a master-only check on a worker)


@dataclass(frozen=True)
class CheckResult:
    host: str
    check: str
    status: Status
    expected: str = ""
    found: str = ""
    fix: str = ""
    seconds: float = 0.0
    security: bool = False  # guards security: unchecked, it fails verify

    @property
    def ok(self) -> bool:
        """Passed, or not for this node: nothing left unproven."""
        return self.status in (Status.PASS, Status.NOT_APPLICABLE)

    def blocks(self, allow_unchecked: bool = False) -> bool:
        """Does this result make verify fail?"""
        if self.status in (Status.FAIL, Status.ERROR):
            return True
        return self.status == Status.NOT_CHECKED and self.security and not allow_unchecked

    def as_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["status"] = str(self.status)
        return data


def passed(host: str, check: str, found: str = "", seconds: float = 0.0,
           security: bool = False) -> CheckResult:
    return CheckResult(host, check, Status.PASS, found=found, seconds=seconds,
                       security=security)


def failed(host: str, check: str, expected: str, found: str, fix: str,
           security: bool = False) -> CheckResult:
    return CheckResult(host, check, Status.FAIL, expected=expected, found=found, fix=fix,
                       security=security)


def not_checked(host: str, check: str, why: str, fix: str = "",
                security: bool = False) -> CheckResult:
    return CheckResult(host, check, Status.NOT_CHECKED, expected="the check to run",
                       found=why, fix=fix, security=security)


def from_skip_reason(host: str, check: str, reason: str) -> CheckResult:
    """A node test's skip: `not checked: [security] why` or any other reason (not for
    this node)."""
    reason = reason.strip()
    if not reason.startswith(NOT_CHECKED_PREFIX):
        return CheckResult(host, check, Status.NOT_APPLICABLE, found=reason)
    why = reason.removeprefix(NOT_CHECKED_PREFIX)
    security = why.startswith(SECURITY_TAG)
    why = why.removeprefix(SECURITY_TAG)
    fix = ""
    if " | fix: " in why:
        why, fix = why.split(" | fix: ", 1)
    return not_checked(host, check, why, fix, security)


def verdict(results: Iterable[CheckResult], allow_unchecked: bool = False) -> bool:
    """True when verify may exit 0."""
    return not any(result.blocks(allow_unchecked) for result in results)


def all_ok(results: Iterable[CheckResult]) -> bool:
    """Every check passed or did not apply (nothing failed, nothing left unchecked)."""
    return all(result.ok for result in results)


def last_lines(text: str, lines: int = 3) -> str:
    """The end of a command's output, on one line, for a result's `found`."""
    return " | ".join(text.strip().splitlines()[-lines:]) or "no output"


def json_object(stdout: str) -> dict[str, Any] | None:
    """The JSON object an `oqz ... --json` command printed, None when it printed none."""
    try:
        value = json.loads(stdout)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
