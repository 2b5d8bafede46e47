"""The fixed cost of one Starmap (a task group): wall time and master CPU per Starmap of 4 tiny
tasks, many Starmaps in a row, in one process.

A calculation opens a Starmap per task group, so this cost is paid per group, not per task;
it is what issue 20's zmq handshake added to short calculations. Run it with the engine to
measure on the path, e.g. against an older commit's engine (alternate the two)::

    PYTHONPATH=engine/src .cache/bench-venv/bin/python bench/starmaps.py --mode zmq
    git worktree add /tmp/old b2448bf
    PYTHONPATH=/tmp/old/engine/src .cache/bench-venv/bin/python bench/starmaps.py --mode zmq
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import workloads  # noqa: E402

from engine import Mapper, oqzmq_backend, with_pools, write_configs  # noqa: E402


def per_starmap(mapper: Mapper, starmaps: int) -> tuple[float, float]:
    """Wall and process CPU time (ms) per Starmap of 4 tiny tasks."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(starmaps):
        if sorted(mapper(workloads.tiny, [(i,) for i in range(4)])) != [0, 1, 2, 3]:
            raise SystemExit("wrong results")
    return ((time.perf_counter() - wall) / starmaps * 1000,
            (time.process_time() - cpu) / starmaps * 1000)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("zmq", "processpool"), default="zmq")
    parser.add_argument("--starmaps", type=int, default=200, help="Starmaps per repeat")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    config = write_configs(Path(tempfile.mkdtemp(prefix="oqz-starmaps-")), 2)[0]

    def make() -> tuple[Mapper, Callable[[], None]]:
        return oqzmq_backend(args.mode, config)

    mapper, close = with_pools(config, make) if args.mode == "zmq" else make()
    try:
        list(mapper(workloads.tiny, [(i,) for i in range(100)]))  # workers started, imports done
        runs = [per_starmap(mapper, args.starmaps) for _ in range(args.repeat)]
    finally:
        close()
    walls, cpus = [w for w, _ in runs], [c for _, c in runs]
    print(f"{args.mode}: per Starmap of 4 tiny tasks, {args.repeat} x {args.starmaps}: wall "
          f"median {statistics.median(walls):.2f} ms ({min(walls):.2f}-{max(walls):.2f}), "
          f"master CPU median {statistics.median(cpus):.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
