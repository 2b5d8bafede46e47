"""The workerpool's task batches: split and forwarded without decoding, nothing lost or added."""

from __future__ import annotations

import numpy as np
import pytest
from oqzmq import protocol
from oqzmq.auth import as_view
from oqzmq.workerpool import (
    PREFETCH_MAX,
    PREFETCH_MIN,
    Batch,
    BatchQueue,
    prefetch_depth,
)


def task_args(task_no: int) -> tuple[object, ...]:
    """Small arguments, and every third task a 160 kB array (its own zmq frame on the wire)."""
    if task_no % 3 == 1:
        return (task_no, np.full(20_000, float(task_no)))
    return (task_no, "x" * task_no)


def encoded_batch(task_nos: list[int], token: str = "t") -> tuple[Batch, list[list[bytes]]]:
    """A batch as the pool receives it, and each task's frames as the master pickled them."""
    frames = [protocol.dumps(task_args(n)) for n in task_nos]
    _, layout, *data = protocol.encode("meta", [f for task in frames for f in task])
    batch = Batch(token, "tcp://127.0.0.1:1", b"func", list(task_nos), [len(f) for f in frames],
                  np.frombuffer(layout, dtype=np.int64).reshape(-1, 3),
                  [as_view(d) for d in data])
    return batch, [[bytes(as_view(f)) for f in task] for task in frames]


def forwarded(batch: Batch) -> list[list[bytes]]:
    """What a worker decodes from the batch as the pool sends it: each task's frames."""
    layout, data = batch.encoded()
    body = protocol.decode_body(memoryview(layout), [as_view(d) for d in data])
    tasks, offset = [], 0
    for count in batch.nframes:
        tasks.append([bytes(frame) for frame in body[offset:offset + count]])
        offset += count
    return tasks


@pytest.mark.parametrize("count", range(1, 9))
def test_a_split_batch_forwards_exactly_the_frames_of_its_tasks(count: int) -> None:
    batch, expected = encoded_batch(list(range(10, 19)))
    head, tail = batch.split(count)
    assert head.task_nos == list(range(10, 10 + count))
    assert tail.task_nos == list(range(10 + count, 19))
    assert forwarded(head) == expected[:count]
    assert forwarded(tail) == expected[count:]
    for part, tasks in ((head, expected[:count]), (tail, expected[count:])):
        _, data = part.encoded()  # nothing of the other part's tasks travels with it
        assert sum(as_view(d).nbytes for d in data) == sum(len(f) for t in tasks for f in t)


def test_split_parts_split_again() -> None:
    batch, expected = encoded_batch(list(range(7)))
    _, rest = batch.split(2)
    middle, last = rest.split(3)
    assert forwarded(middle) == expected[2:5]
    assert forwarded(last) == expected[5:]


def test_the_queue_hands_out_tasks_in_order_and_counts_them() -> None:
    queue = BatchQueue()
    queue.append(encoded_batch([0, 1, 2], "a")[0])
    queue.append(encoded_batch([3, 4], "b")[0])
    assert len(queue) == 5
    first = queue.take(2)
    assert first.task_nos == [0, 1] and len(queue) == 3
    assert queue.take(5).task_nos == [2]  # never more than the first batch holds
    queue.prepend([first])
    assert [b.task_nos for b in queue] == [[0, 1], [3, 4]] and len(queue) == 4
    queue.drop(3)
    assert [b.task_nos for b in queue] == [[4]] and len(queue) == 1
    queue.remove("b")
    assert len(queue) == 0 and not list(queue)


def test_the_queue_releases_the_last_queued_tasks_of_one_calculation() -> None:
    queue = BatchQueue()
    a1, expected = encoded_batch([0, 1, 2], "a")
    queue.append(a1)
    queue.append(encoded_batch([10, 11], "b")[0])
    queue.append(encoded_batch([3, 4], "a")[0])
    assert queue.release("a", 3) == [2, 3, 4]  # from the end, in queue order
    assert [(b.token, b.task_nos) for b in queue] == [("a", [0, 1]), ("b", [10, 11])]
    assert len(queue) == 4
    assert forwarded(next(iter(queue))) == expected[:2]  # what stays is intact
    assert queue.release("a", 5) == [0, 1]  # no more than it holds
    assert queue.release("c", 1) == []
    assert [b.task_nos for b in queue] == [[10, 11]] and len(queue) == 2


def test_prefetch_depth_follows_the_task_duration() -> None:
    assert prefetch_depth(1e-6) == PREFETCH_MAX  # tiny tasks: many per message
    assert PREFETCH_MIN < prefetch_depth(0.002) < PREFETCH_MAX
    assert prefetch_depth(1.0) == PREFETCH_MIN  # long tasks: none hoarded
