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

from oqcluster.verify.results import CheckResult, Status, verdict

STYLE = {Status.PASS: "green", Status.FAIL: "bold red", Status.ERROR: "bold magenta",
         Status.NOT_CHECKED: "bold yellow", Status.NOT_APPLICABLE: "dim"}
SMOKE_WORD = "smoke calculation"  # its rows carry the tasks per worker: always shown
MARK = {Status.PASS: "✓ pass", Status.FAIL: "✗ FAIL", Status.ERROR: "! ERROR",
        Status.NOT_CHECKED: "? NOT CHECKED", Status.NOT_APPLICABLE: "- n/a"}


def by_host(results: Sequence[CheckResult]) -> dict[str, list[CheckResult]]:
    groups: dict[str, list[CheckResult]] = defaultdict(list)
    for result in results:
        groups[result.host].append(result)
    return dict(groups)


def counts(results: Sequence[CheckResult]) -> dict[str, int]:
    return {str(status): sum(r.status == status for r in results) for status in Status}


def summary_line(results: Sequence[CheckResult], seconds: float,
                 allow_unchecked: bool = False) -> str:
    c = counts(results)
    unchecked_security = sum(r.status == Status.NOT_CHECKED and r.security for r in results)
    if not verdict(results, allow_unchecked):
        word = "cluster BROKEN" if c["fail"] or c["error"] else "cluster NOT PROVEN"
    elif c["not_checked"]:
        word = "cluster OK as far as checked"
    else:
        word = "cluster OK"
    allowed = " (allowed by --allow-unchecked)" if allow_unchecked and unchecked_security else ""
    return (f"{word}: {c['pass']} passed, {c['fail']} failed, {c['error']} errors, "
            f"{c['not_checked']} not checked ({unchecked_security} of them security checks"
            f"{allowed}), {c['not_applicable']} not for their node, in {seconds:.1f}s")


def print_table(console: Console, results: Sequence[CheckResult], verbose: bool) -> None:
    """Per host: every problem, the smoke calculation's task counts, and a passed count.

    Failed, errored and not-checked results always have a row of their own; with
    `verbose`, every check with what it found (those not for their node too).
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
        elsewhere = sum(r.status == Status.NOT_APPLICABLE for r in hidden)
        if passed:
            label = f"{passed} more checks" if rows else f"{passed} checks"
            rows.append((label, f"[green]{MARK[Status.PASS]}[/]", ""))
        if elsewhere:
            rows.append((f"{elsewhere} checks", f"[dim]{MARK[Status.NOT_APPLICABLE]}[/]",
                         "not for this node (they run on another one)"))
    return rows


def _details(result: CheckResult, verbose: bool) -> str:
    if result.ok:
        return escape(result.found)
    lines = ["[bold]security check[/]"] if result.security and \
        result.status == Status.NOT_CHECKED else []
    if result.expected:
        lines.append(f"expected: {escape(result.expected)}")
    lines.append(f"found: {escape(result.found)}")
    if result.fix:
        lines.append(f"[cyan]fix:[/] {escape(result.fix)}")
    return "\n".join(lines)


def to_json(results: Sequence[CheckResult], seconds: float,
            allow_unchecked: bool = False) -> str:
    """`ok`: verify's verdict (its exit code); `all_checked`: nothing was left unchecked."""
    return json.dumps(
        {"ok": verdict(results, allow_unchecked),
         "all_checked": not any(r.status == Status.NOT_CHECKED for r in results),
         "allow_unchecked": allow_unchecked, "seconds": round(seconds, 2),
         "counts": counts(results), "results": [r.as_dict() for r in results]},
        indent=2,
    )


def write_junit(path: Path, results: Sequence[CheckResult], allow_unchecked: bool = False) -> None:
    """One <testsuite> per host, one <testcase> per check.

    A check not for its node is <skipped>; a check not checked is an <error> when it guards
    security (unless allowed), else <skipped> with a "not checked:" message; each case has a
    property `outcome` with the status, so no reader has to guess."""
    suites = ET.Element("testsuites", name="oqcluster verify")
    for host, host_results in by_host(results).items():
        c = counts(host_results)
        suite = ET.SubElement(
            suites, "testsuite", name=host, tests=str(len(host_results)),
            failures=str(c["fail"]),
            errors=str(sum(r.status == Status.ERROR or _unchecked_error(r, allow_unchecked)
                           for r in host_results)),
            skipped=str(sum(r.status == Status.NOT_APPLICABLE or (
                r.status == Status.NOT_CHECKED and not _unchecked_error(r, allow_unchecked))
                for r in host_results)),
        )
        for result in host_results:
            _junit_case(suite, host, result, allow_unchecked)
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(suites).write(path, encoding="utf-8", xml_declaration=True)


def _unchecked_error(result: CheckResult, allow_unchecked: bool) -> bool:
    return result.status == Status.NOT_CHECKED and result.blocks(allow_unchecked)


def _junit_case(suite: ET.Element, host: str, result: CheckResult,
                allow_unchecked: bool) -> None:
    case = ET.SubElement(suite, "testcase", classname=host, name=result.check,
                         time=f"{result.seconds:.3f}")
    properties = ET.SubElement(case, "properties")
    ET.SubElement(properties, "property", name="outcome", value=str(result.status))
    ET.SubElement(properties, "property", name="security", value=str(result.security).lower())
    text = f"expected: {result.expected}\nfound: {result.found}\nfix: {result.fix}"
    if result.status == Status.FAIL:
        ET.SubElement(case, "failure", message=result.found).text = text
    elif result.status == Status.ERROR:
        ET.SubElement(case, "error", message=result.found).text = text
    elif _unchecked_error(result, allow_unchecked):
        ET.SubElement(case, "error", type="not checked",
                      message=f"not checked (security): {result.found}").text = text
    elif result.status == Status.NOT_CHECKED:
        ET.SubElement(case, "skipped", type="not checked",
                      message=f"not checked: {result.found}").text = text
    elif result.status == Status.NOT_APPLICABLE:
        ET.SubElement(case, "skipped", type="not for this node", message=result.found)
