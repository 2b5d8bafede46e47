"""Where the CPU goes in oqzmq's zmq mode: CPU time per task of the master, the workerpool
and each worker process, on the tiny and large workloads of bench/engine.py.

Starts a local workerpool on 127.0.0.2 (one worker process per core), runs each workload a
few times through Starmap, and reads every process's user and system CPU time
(/proc/PID/stat, clock ticks: hence the many runs) before and after. Run it with
`make bench-profile` (the benchmark venv), on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])

import workloads  # noqa: E402

from engine import N_LARGE, N_TINY, write_configs  # noqa: E402

if TYPE_CHECKING:
    from oqzmq.config import Config

TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Usage:
    user: float  # CPU seconds
    system: float
    faults: int  # minor page faults (fresh memory touched for the first time)

    @property
    def cpu(self) -> float:
        return self.user + self.system

    def __sub__(self, other: Usage) -> Usage:
        return Usage(self.user - other.user, self.system - other.system,
                     self.faults - other.faults)


def usage(pid: int) -> Usage:
    # the command name (field 2) may hold spaces: count from the closing parenthesis
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return Usage(int(fields[11]) / TICK, int(fields[12]) / TICK, int(fields[7]))


def machine_idle() -> tuple[float, float]:
    """Seconds (summed over cores) this machine has been idle and stolen (by its hypervisor)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    idle, iowait, steal = int(fields[3]), int(fields[4]), int(fields[7])
    return (idle + iowait) / TICK, steal / TICK


def pool_processes(config: Config) -> dict[str, int]:
    """{role: pid} of the workerpool and its worker processes (from `inspect`)."""
    from oqzmq import launcher
    from oqzmq.protocol import InspectQuery

    reply = launcher.query_pools(config, InspectQuery())
    answer = next(iter(reply.values()))
    if answer is None:
        raise RuntimeError("the workerpool does not answer `inspect`")
    workers = sorted(answer.running)
    pool_pid = int(Path(f"/proc/{workers[0]}/stat").read_text().rpartition(")")[2].split()[1])
    roles = {"workerpool": pool_pid}
    roles.update({f"worker {n}": pid for n, pid in enumerate(workers, 1)})
    return roles


@dataclass
class Measured:
    wall: float
    idle: float  # CPU seconds of the whole machine
    stolen: float
    spent: dict[str, Usage]


def measure(run: Callable[[], None], pids: dict[str, int]) -> Measured:
    """Wall time of ``run``, the machine's idle and stolen time, and each process's CPU."""
    before = {role: usage(pid) for role, pid in pids.items()}
    idle, stolen = machine_idle()
    start = time.perf_counter()
    run()
    wall = time.perf_counter() - start
    idle_after, stolen_after = machine_idle()
    return Measured(wall, idle_after - idle, stolen_after - stolen,
                    {role: usage(pid) - before[role] for role, pid in pids.items()})


def report(title: str, measured: Measured, units: int, unit: str, scale: float) -> None:
    spent = measured.spent
    total = sum(u.cpu for u in spent.values())
    capacity = measured.wall * (os.cpu_count() or 1)
    print(f"\n{title}: {units} {unit}s in {measured.wall:.2f} s; these processes used "
          f"{total / capacity:.0%} of the machine's CPU time, idle {measured.idle / capacity:.0%}, "
          f"stolen by the hypervisor {measured.stolen / capacity:.0%}")
    suffix = "us" if scale == 1e6 else "ms"
    print(f"  {'process':<12} {'CPU/' + unit:>12} {'user':>10} {'system':>10} "
          f"{'faults/' + unit:>14}")
    for role, used in spent.items():
        cells = [f"{seconds / units * scale:>7.1f} {suffix}"
                 for seconds in (used.cpu, used.user, used.system)]
        cells.append(f"{used.faults / units:>12.0f}")
        print(f"  {role:<12} " + " ".join(f"{cell:>10}" for cell in cells))
    print(f"  {'all':<12} {total / units * scale:>7.1f} {suffix}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--tiny-runs", type=int, default=10, help="Starmaps of 5,000 tiny tasks")
    parser.add_argument("--large-runs", type=int, default=2, help="Starmaps of 20 x 50 MB")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="oqz-profile-") as tmp:
        config_path, _ = write_configs(Path(tmp), args.cores)
        os.environ["OQ_CONFIG_FILE"] = str(config_path)
        from oqzmq import launcher
        from oqzmq.config import load_config
        from oqzmq.parallel import Starmap
        from oqzmq.protocol import Stop

        config = load_config(config_path)
        if not all(r.ok for r in launcher.start_pools(config, "local", wait=30)):
            raise RuntimeError("the workerpool did not start")
        try:
            pids = {"master": os.getpid(), **pool_processes(config)}

            def tiny() -> None:
                for _ in range(args.tiny_runs):
                    total = sum(Starmap(workloads.tiny, [(i,) for i in range(N_TINY)],
                                        distribute="zmq", config=config))
                    assert total == N_TINY * (N_TINY - 1) // 2

            def large() -> None:
                for _ in range(args.large_runs):
                    for array in Starmap(workloads.large, [(i,) for i in range(N_LARGE)],
                                         distribute="zmq", config=config):
                        assert array.nbytes == workloads.LARGE_FLOATS * 8

            tiny()  # warm-up: imports, caches
            report("tiny", measure(tiny, pids), args.tiny_runs * N_TINY, "task", 1e6)
            report("large", measure(large, pids), args.large_runs * N_LARGE, "result", 1e3)
        finally:
            launcher.query_pools(config, Stop(), timeout=5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
