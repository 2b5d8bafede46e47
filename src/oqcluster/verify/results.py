"""What a check found: one `CheckResult` per (host, check)."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import asdict, dataclass


class Status(enum.StrEnum):
    PASS = "pass"
    FAIL = "fail"
    ERROR = "error"  # the check itself could not run (host unreachable, command missing)
    SKIP = "skip"


@dataclass(frozen=True)
class CheckResult:
    host: str
    check: str
    status: Status
    expected: str = ""
    found: str = ""
    fix: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status in (Status.PASS, Status.SKIP)

    def as_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["status"] = str(self.status)
        return data


def passed(host: str, check: str, found: str = "", seconds: float = 0.0) -> CheckResult:
    return CheckResult(host, check, Status.PASS, found=found, seconds=seconds)


def failed(host: str, check: str, expected: str, found: str, fix: str) -> CheckResult:
    return CheckResult(host, check, Status.FAIL, expected=expected, found=found, fix=fix)


def all_ok(results: Iterable[CheckResult]) -> bool:
    return all(result.ok for result in results)
