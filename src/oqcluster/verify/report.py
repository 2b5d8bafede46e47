"""The verify report: a table grouped by host, a summary line, JSON and JUnit XML."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from oqcluster.verify.results import CheckResult, Status

STYLE = {Status.PASS: "green", Status.FAIL: "bold red", Status.ERROR: "bold magenta",
         Status.SKIP: "dim"}
SMOKE_WORD = "smoke calculation"  # its rows carry the tasks per worker: always shown
MARK = {Status.PASS: "✓ pass", Status.FAIL: "✗ FAIL", Status.ERROR: "! ERROR",
        Status.SKIP: "- skip"}


def by_host(results: Sequence[CheckResult]) -> dict[str, list[CheckResult]]:
    groups: dict[str, list[CheckResult]] = defaultdict(list)
    for result in results:
        groups[result.host].append(result)
    return dict(groups)


def counts(results: Sequence[CheckResult]) -> dict[str, int]:
    return {str(status): sum(r.status == status for r in results) for status in Status}


def summary_line(results: Sequence[CheckResult], seconds: float) -> str:
    c = counts(results)
    verdict = "cluster OK" if c["fail"] == 0 and c["error"] == 0 else "cluster BROKEN"
    return (f"{verdict}: {c['pass']} passed, {c['fail']} failed, {c['error']} errors, "
            f"{c['skip']} skipped in {seconds:.1f}s")


def print_table(console: Console, results: Sequence[CheckResult], verbose: bool) -> None:
    """Per host: every problem, the smoke calculation's task counts, and a passed count.

    With `verbose`, every check with what it found (skipped ones too).
    """
    table = Table(show_lines=False, expand=False)
    for column in ("host", "check", "result", "details"):
        table.add_column(column, style="bold" if column == "host" else None)
    for host, host_results in by_host(results).items():
        rows = _rows(host_results, verbose)
        for index, (check, result, details) in enumerate(rows):
            table.add_row(escape(host) if index == 0 else "", check, result, details,
                          end_section=index == len(rows) - 1)
    console.print(table)


def _rows(results: Sequence[CheckResult], verbose: bool) -> list[tuple[str, str, str]]:
    shown = [r for r in results if verbose or not r.ok or SMOKE_WORD in r.check]
    rows = [
        (escape(r.check), f"[{STYLE[r.status]}]{MARK[r.status]}[/]", _details(r, verbose))
        for r in shown
    ]
    if not verbose:
        hidden = [r for r in results if r not in shown]
        passed = sum(r.status == Status.PASS for r in hidden)
        skipped = len(hidden) - passed
        if hidden:
            note = f"{skipped} skipped (not for this node)" if skipped else ""
            label = f"{passed} more checks" if rows else f"{passed} checks"
            rows.append((label, f"[green]{MARK[Status.PASS]}[/]", note))
    return rows


def _details(result: CheckResult, verbose: bool) -> str:
    if result.ok:
        return escape(result.found)
    lines = []
    if result.expected:
        lines.append(f"expected: {escape(result.expected)}")
    lines.append(f"found: {escape(result.found)}")
    if result.fix:
        lines.append(f"[cyan]fix:[/] {escape(result.fix)}")
    return "\n".join(lines)


def to_json(results: Sequence[CheckResult], seconds: float) -> str:
    return json.dumps(
        {"ok": all(r.ok for r in results), "seconds": round(seconds, 2),
         "counts": counts(results), "results": [r.as_dict() for r in results]},
        indent=2,
    )


def write_junit(path: Path, results: Sequence[CheckResult]) -> None:
    """One <testsuite> per host, one <testcase> per check."""
    suites = ET.Element("testsuites", name="oqcluster verify")
    for host, host_results in by_host(results).items():
        c = counts(host_results)
        suite = ET.SubElement(
            suites, "testsuite", name=host, tests=str(len(host_results)),
            failures=str(c["fail"]), errors=str(c["error"]), skipped=str(c["skip"]),
        )
        for result in host_results:
            _junit_case(suite, host, result)
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(suites).write(path, encoding="utf-8", xml_declaration=True)


def _junit_case(suite: ET.Element, host: str, result: CheckResult) -> None:
    case = ET.SubElement(suite, "testcase", classname=host, name=result.check,
                         time=f"{result.seconds:.3f}")
    text = f"expected: {result.expected}\nfound: {result.found}\nfix: {result.fix}"
    if result.status == Status.FAIL:
        ET.SubElement(case, "failure", message=result.found).text = text
    elif result.status == Status.ERROR:
        ET.SubElement(case, "error", message=result.found).text = text
    elif result.status == Status.SKIP:
        ET.SubElement(case, "skipped", message=result.found)
