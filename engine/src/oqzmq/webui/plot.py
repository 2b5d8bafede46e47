"""Geometry of the task timing chart: one bar per task, height = seconds, colour = host.

Drawn as inline SVG by the template: no JavaScript plotting library, nothing to download.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

WIDTH = 900
HEIGHT = 240
MARGIN_LEFT = 56
MARGIN_BOTTOM = 28
MAX_BARS = 2_000
PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    color: str
    title: str


@dataclass
class Chart:
    width: int = WIDTH
    height: int = HEIGHT
    left: int = MARGIN_LEFT
    bottom: int = HEIGHT - MARGIN_BOTTOM
    max_seconds: float = 0.0
    bars: list[Bar] = field(default_factory=list)
    hosts: dict[str, str] = field(default_factory=dict)
    ticks: list[tuple[float, str]] = field(default_factory=list)
    shown: int = 0
    total: int = 0


def task_chart(tasks: list[dict[str, Any]]) -> Chart:
    """Bars for the (first MAX_BARS) tasks, in task order, with a y axis in seconds."""
    chart = Chart(total=len(tasks))
    shown = sorted(tasks, key=lambda t: (t["name"], t["task_no"]))[:MAX_BARS]
    if not shown:
        return chart
    chart.shown = len(shown)
    chart.max_seconds = max(t["duration"] for t in shown) or 1.0
    plot_height = chart.bottom - 8
    slot = (chart.width - chart.left - 8) / len(shown)
    for index, task in enumerate(shown):
        color = chart.hosts.setdefault(task["host"], PALETTE[len(chart.hosts) % len(PALETTE)])
        height = plot_height * task["duration"] / chart.max_seconds
        chart.bars.append(
            Bar(
                x=round(chart.left + index * slot, 2),
                y=round(chart.bottom - height, 2),
                width=round(max(slot * 0.8, 0.5), 2),
                height=round(height, 2),
                color=color,
                title=f"task {task['task_no']} ({task['name']}) on {task['host']}: "
                f"{task['duration']:.3f} s",
            )
        )
    chart.ticks = [
        (round(chart.bottom - plot_height * f, 2), f"{chart.max_seconds * f:.3g} s")
        for f in (0.0, 0.5, 1.0)
    ]
    return chart
