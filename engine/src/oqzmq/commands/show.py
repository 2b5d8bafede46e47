"""``oqz show TOPIC ID``: print something about a calculation.

Topics are registered in :data:`SHOW_TOPICS` as ``name -> "module:function"``; the function
takes ``(calc_id: int | None, args)`` and returns an exit code (None id = latest calculation).
Add yours (e.g. ``"log": "oqzmq.commands.show_log:show_log"``) with one line.
"""

from __future__ import annotations

import argparse
import importlib

import numpy as np

from oqzmq.config import load_config
from oqzmq.datastore import find_calculation
from oqzmq.monitor import read_performance

SHOW_TOPICS: dict[str, str] = {
    "performance": "oqzmq.commands.show:show_performance",
    "log": "oqzmq.commands.calcs:show_log_topic",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("show", help="show something about a calculation")
    parser.add_argument("topic", choices=sorted(SHOW_TOPICS))
    parser.add_argument("calc_id", nargs="?", type=int, help="calculation id (default: latest)")
    parser.add_argument("--follow", "-f", action="store_true",
                        help="log: keep printing until the calculation ends")
    parser.set_defaults(handler=run_show)


def run_show(args: argparse.Namespace) -> int:
    module, _, function = SHOW_TOPICS[args.topic].partition(":")
    return int(getattr(importlib.import_module(module), function)(args.calc_id, args))


def show_performance(calc_id: int | None, args: argparse.Namespace) -> int:
    path = find_calculation(load_config(), calc_id)
    performance, task_info = read_performance(path)
    print(f"performance of {path}")
    print(f"{'operation':<32} {'time_sec':>10} {'memory_mb':>10} {'counts':>8} "
          f"{'bytes':>12} {'nresults':>8}")
    for row in np.sort(performance, order="time_sec")[::-1]:
        print(f"{row['operation'].decode():<32} {row['time_sec']:>10.3f} "
              f"{row['memory_mb']:>10.1f} {row['counts']:>8} {row['bytes']:>12} "
              f"{row['nresults']:>8}")
    if len(task_info):
        hosts, counts = np.unique(task_info["host"], return_counts=True)
        print("tasks per host: " + ", ".join(
            f"{h.decode()}={c}" for h, c in zip(hosts, counts, strict=True)))
        slowest = task_info[np.argmax(task_info["time_sec"])]
        print(f"slowest task: #{slowest['task_no']} on {slowest['host'].decode()} "
              f"({slowest['time_sec']:.3f}s)")
    return 0
