"""``oqz run demo``: run the bundled demo calculation (the cluster smoke test and benchmark)."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from oqzmq.config import DISTRIBUTE_MODES, load_config
from oqzmq.demo import SIZES, DemoResult, run_demo
from oqzmq.errors import UserError
from oqzmq.logs import calculation

CALCULATIONS = ("demo",)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run", help="run a calculation (the bundled 'demo' PSHA)",
        description="Run the demo hazard calculation; results go to the datastore "
                    "<shared_dir>/<user>/oqdata/calc_<id>.hdf5.",
    )
    parser.add_argument("calculation", help=f"what to run: {', '.join(CALCULATIONS)}")
    parser.add_argument("--size", choices=SIZES, default="small",
                        help="preset: " + ", ".join(f"{k}={v[0]} sources x {v[1]} sites, "
                                                    f"{v[2]} tasks" for k, v in SIZES.items()))
    parser.add_argument("--sources", type=int, help="override the number of sources")
    parser.add_argument("--sites", type=int, help="override the number of sites")
    parser.add_argument("--tasks", type=int, help="override the number of tasks")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--task-memory-mb", type=int, default=0, metavar="MB",
                        help="every task holds MB more memory (written) while it computes: "
                             "to try the workers' memory limits (results unchanged)")
    parser.add_argument("--distribute", choices=DISTRIBUTE_MODES,
                        help="override OQ_DISTRIBUTE / [distribution] oq_distribute")
    parser.add_argument("--calc-id", type=int,
                        help="use this calculation id (only with OQ_DATABASE=none: otherwise "
                             "the dbserver numbers calculations)")
    parser.add_argument("--json", action="store_true",
                        help="print the outcome as JSON (calc_id, checksum, tasks_per_host...)")
    parser.set_defaults(handler=run_calculation)


def run_calculation(args: argparse.Namespace) -> int:
    if args.calculation not in CALCULATIONS:
        raise UserError(f"unknown calculation {args.calculation!r}: available: "
                        f"{', '.join(CALCULATIONS)}")
    for name in ("sources", "sites", "tasks"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name} must be at least 1 (got {value})")
    if args.task_memory_mb < 0:
        raise UserError(f"--task-memory-mb must be 0 or more (got {args.task_memory_mb})")
    config = load_config()
    if os.environ.get("OQ_DATABASE") == "none":  # no records at all: engine tests, benchmarks
        result = run_demo(config, args.size, args.seed, args.distribute, args.calc_id,
                          args.sources, args.sites, args.tasks, args.task_memory_mb)
    else:
        if args.calc_id is not None:
            raise UserError("--calc-id needs OQ_DATABASE=none: the dbserver numbers the "
                            "calculations it records")
        description = _description(args)
        with calculation(config, description, calculation_mode="demo") as calc:
            result = run_demo(config, args.size, args.seed, args.distribute, calc.id,
                              args.sources, args.sites, args.tasks, args.task_memory_mb)
            calc.set_datastore(result.path)
    distribute = args.distribute or config.distribute
    if args.json:
        print(json.dumps(_outcome(result, distribute), indent=2))
    else:
        _print_outcome(result, distribute)
    return 0


def _outcome(result: DemoResult, distribute: str) -> dict[str, Any]:
    """What ``oqz run demo --json`` prints: the outcome of a completed calculation."""
    return {
        "calc_id": result.calc_id,
        "status": "complete",
        "distribute": distribute,
        "seconds": round(result.seconds, 3),
        "datastore": str(result.path),
        "checksum": result.checksum,
        "max_poe": result.max_poe,
        "tasks": sum(result.tasks_per_host.values()),
        "tasks_per_host": dict(sorted(result.tasks_per_host.items())),
        "reruns": result.moves,
        "dealt_to_rejoined": result.dealt,
    }


def _print_outcome(result: DemoResult, distribute: str) -> None:
    hosts = ", ".join(f"{host}: {n}" for host, n in sorted(result.tasks_per_host.items()))
    print(f"calculation {result.calc_id} done in {result.seconds:.2f}s "
          f"(distribute={distribute})")
    print(f"datastore:  {result.path}")
    print(f"checksum:   {result.checksum} (hazard curves; same seed -> same value in every mode)")
    print(f"max PoE:    {result.max_poe:.4f} in 50 years")
    print(f"tasks/host: {hosts}")
    if result.moves:
        print(f"re-runs:    {result.moves} (tasks lost with a worker or host; why: the log, "
              "and task_retries in the datastore)")
    if result.dealt:
        print(f"rejoined:   {result.dealt} queued tasks dealt to a workerpool that answered "
              "again (task_retries, attempt 0)")


def _description(args: argparse.Namespace) -> str:
    """What the calculation list shows: the preset, or the exact size when overridden."""
    if args.sources is None and args.sites is None and args.tasks is None:
        return f"demo {args.size} (seed {args.seed})"
    sources, sites, tasks = (given or preset for given, preset in zip(
        (args.sources, args.sites, args.tasks), SIZES[args.size], strict=True))
    return f"demo {sources} sources x {sites} sites, {tasks} tasks (seed {args.seed})"
