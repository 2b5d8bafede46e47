"""Benchmark the dbserver and the webui as they run in production (separate processes).

    .venv/bin/python bench/dbserver.py [--clients 1,4] [--seconds 10] [--calcs 1000] [--json]

1. The webui with N calculations recorded: response time of /v1/calc/list and of the HTML
   list page, for the default page (100) and for all N at once, served by `oqz webui start`.
2. Calculations per minute: each client process runs complete calculation lifecycles against
   a real `oqz dbserver start` over authenticated zmq: create, executing, one batch of 20 log
   records, 16 task timings, complete (5 round trips, as `oqz run` does for a short run).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

LOG_BATCH = 20
TASKS = 16


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_config(directory: Path) -> Path:
    path = directory / "openquake.cfg"
    path.write_text(
        "[distribution]\noq_distribute = no\n\n"
        f"[dbserver]\nmulti_user = false\nfile = {directory / 'db.sqlite3'}\n"
        f"listen = 127.0.0.1\nhost = 127.0.0.1\nport = {free_port()}\n"
        f"authkey = {secrets.token_urlsafe(32)}\n"
    )
    return path


def start_service(argv: list[str], env: dict[str, str], ready: str) -> subprocess.Popen:
    """Start an `oqz` service and wait until its readiness line shows up in its log."""
    process = subprocess.Popen(
        [sys.executable, "-m", "oqzmq.cli", *argv], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    assert process.stderr is not None
    deadline = time.monotonic() + 30
    for line in process.stderr:
        if ready in line:
            return process
        if time.monotonic() > deadline:
            break
    process.kill()
    raise RuntimeError(f"{' '.join(argv)} did not start")


def lifecycles(config_path: str, seconds: float, queue: Any) -> None:
    """One client process: as many full calculation lifecycles as fit in `seconds`."""
    os.environ["OQ_CONFIG_FILE"] = config_path
    from oqzmq.config import load_config
    from oqzmq.dbserver import DbClient

    records = [[time.time(), "INFO", "bench:1", f"log line {i}"] for i in range(LOG_BATCH)]
    tasks = [
        {"task_no": i, "name": "hazard", "host": "10.0.0.2", "duration": 1.0, "nbytes": 10,
         "memory_mb": 50.0}
        for i in range(TASKS)
    ]
    done = 0
    with DbClient(load_config()) as client:
        deadline = time.monotonic() + seconds
        started = time.monotonic()
        while time.monotonic() < deadline:
            calc = client.call("create_calc", description="bench", calculation_mode="bench")
            client.call("set_status", calc_id=calc["id"], status="executing")
            client.call("add_logs", calc_id=calc["id"], records=records)
            client.call("add_tasks", calc_id=calc["id"], tasks=tasks)
            client.call("set_status", calc_id=calc["id"], status="complete")
            done += 1
        queue.put((done, time.monotonic() - started))


def calcs_per_minute(config_path: Path, clients: int, seconds: float) -> float:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    workers = [
        context.Process(target=lifecycles, args=(str(config_path), seconds, queue))
        for _ in range(clients)
    ]
    for worker in workers:
        worker.start()
    results = [queue.get(timeout=seconds + 60) for _ in workers]
    for worker in workers:
        worker.join()
    total = sum(done for done, _ in results)
    elapsed = max(spent for _, spent in results)
    return total / elapsed * 60


def fill(config_path: Path, count: int) -> int:
    os.environ["OQ_CONFIG_FILE"] = str(config_path)
    from oqzmq.config import load_config
    from oqzmq.dbserver import DbClient

    with DbClient(load_config()) as client:
        have = client.call("list_calcs", limit=0)["total"]
        for i in range(have, count):
            calc = client.call("create_calc", description=f"bench calculation {i}")
            client.call("set_status", calc_id=calc["id"], status="executing")
            client.call("set_status", calc_id=calc["id"], status="complete")
        return int(client.call("list_calcs", limit=0)["total"])


def response_times(url: str, repeat: int) -> dict[str, float]:
    timings = []
    size = 0
    for _ in range(repeat):
        started = time.perf_counter()
        with urllib.request.urlopen(url, timeout=60) as response:
            size = len(response.read())
        timings.append(time.perf_counter() - started)
    timings.sort()
    return {
        "median_ms": statistics.median(timings) * 1000,
        "p95_ms": timings[max(0, int(len(timings) * 0.95) - 1)] * 1000,
        "bytes": size,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="1,4", help="client process counts (1,4)")
    parser.add_argument("--seconds", type=float, default=10.0, help="per client count (10)")
    parser.add_argument("--calcs", type=int, default=1000, help="recorded for the webui (1000)")
    parser.add_argument("--repeat", type=int, default=20, help="requests per URL (20)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    results: dict[str, Any] = {"machine": f"{os.cpu_count()} cores", "lifecycle": {}, "webui": {}}
    with tempfile.TemporaryDirectory(prefix="oqz-bench-") as tmp:
        config_path = write_config(Path(tmp))
        env = {k: v for k, v in os.environ.items() if not k.startswith("OQ_")}
        env["OQ_CONFIG_FILE"] = str(config_path)
        dbserver = start_service(["dbserver", "start"], env, "listening on")
        webui = None
        try:
            recorded = fill(config_path, args.calcs)
            port = free_port()
            webui = start_service(["webui", "start", "--port", str(port)], env, "webui on")
            time.sleep(1.0)  # uvicorn logs before it binds
            base = f"http://127.0.0.1:{port}"
            for name, path in [
                ("api, 100 newest", "/v1/calc/list"),
                (f"api, all {recorded}", f"/v1/calc/list?limit={recorded}"),
                ("html, 100 newest", "/"),
                (f"html, all {recorded}", f"/?limit={recorded}"),
            ]:
                response_times(base + path, 2)  # warm up
                results["webui"][name] = response_times(base + path, args.repeat)
            results["recorded"] = recorded
            for clients in (int(c) for c in args.clients.split(",")):
                rate = calcs_per_minute(config_path, clients, args.seconds)
                results["lifecycle"][clients] = rate
        finally:
            for process in (webui, dbserver):
                if process is not None:
                    process.send_signal(signal.SIGTERM)
                    process.wait(20)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"dbserver lifecycles ({LOG_BATCH} log records + {TASKS} task timings each), "
          f"{results['machine']}:")
    for clients, rate in results["lifecycle"].items():
        print(f"  {clients} client process(es): {rate:,.0f} calculations/minute")
    print(f"webui with {results['recorded']} calculations recorded ({args.repeat} requests):")
    for name, figures in results["webui"].items():
        print(f"  {name:<22} median {figures['median_ms']:7.1f} ms   p95 "
              f"{figures['p95_ms']:7.1f} ms   {figures['bytes']:>9,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
