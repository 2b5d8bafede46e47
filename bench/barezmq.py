"""The transport's ceiling: a bare zmq task farm with no authentication, no batching, no
monitoring - what oqzmq would move if it did nothing but pickle and send.

The master PUSHes one pickled (function, args) per task to N worker processes (spawn) and
PULLs their results, which come back as pickle-5 streams with out-of-band buffers (large
arrays are not copied into the stream). Workers import their functions from
``workloads.py``, like every other backend of the benchmark.
"""

from __future__ import annotations

import multiprocessing
import pickle
from collections.abc import Callable, Iterator
from typing import Any

import zmq


def worker(tasks_endpoint: str, results_endpoint: str) -> None:
    """Run tasks until terminated by :meth:`BareFarm.close`."""
    context = zmq.Context()
    tasks = context.socket(zmq.PULL)
    tasks.connect(tasks_endpoint)
    results = context.socket(zmq.PUSH)
    results.connect(results_endpoint)
    while True:
        func, args = pickle.loads(tasks.recv())
        buffers: list[pickle.PickleBuffer] = []
        stream = pickle.dumps(func(*args), protocol=5, buffer_callback=buffers.append)
        results.send_multipart([stream, *(b.raw() for b in buffers)], copy=False)


class BareFarm:
    def __init__(self, cores: int) -> None:
        self.context = zmq.Context()
        self.tasks = self.context.socket(zmq.PUSH)
        self.results = self.context.socket(zmq.PULL)
        tasks_port = self.tasks.bind_to_random_port("tcp://127.0.0.1")
        results_port = self.results.bind_to_random_port("tcp://127.0.0.1")
        spawn = multiprocessing.get_context("spawn")
        self.workers = [
            spawn.Process(target=worker, args=(f"tcp://127.0.0.1:{tasks_port}",
                                               f"tcp://127.0.0.1:{results_port}"))
            for _ in range(cores)
        ]
        for process in self.workers:
            process.start()

    def map(self, func: Callable[..., Any], allargs: list[tuple[Any, ...]]) -> Iterator[Any]:
        for args in allargs:
            self.tasks.send(pickle.dumps((func, args), protocol=5))
        for _ in allargs:
            stream, *buffers = self.results.recv_multipart(copy=False)
            yield pickle.loads(stream.buffer, buffers=[b.buffer for b in buffers])

    def close(self) -> None:
        for process in self.workers:
            process.terminate()
            process.join()
        self.context.destroy(linger=0)
