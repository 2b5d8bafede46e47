"""Exceptions shared by the engine's modules."""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix (bad argument, service not running); shown without traceback."""


class TaskError(RuntimeError):
    """A task failed: the message names the task, the host and carries the remote traceback."""


class WorkerLost(TaskError):
    """A worker process or a whole workerpool vanished while running tasks."""


class ResultTooLarge(Exception):
    """A task's result (or one yielded part) is over ``[zworkers] max_message_mb``."""


class PortsExhausted(UserError):
    """Every receiver port of ``[dbserver] receiver_ports`` is taken by a live calculation."""


class MessageError(UserError):
    """An authentic message that is not what its receiver expects: another release of the
    engine on the other end (see :mod:`oqzmq.protocol`)."""
