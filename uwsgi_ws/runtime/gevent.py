"""Adapter for uWSGI's gevent loop engine (``--gevent N``).

uWSGI does not monkey-patch: everything here uses gevent's own primitives, so
a wait blocks one greenlet, never the worker.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import gevent
import gevent.event
import gevent.lock
import gevent.queue
import gevent.select

NAME = "gevent"
HAS_TASKS = True

Lock = gevent.lock.Semaphore
Event = gevent.event.Event
Queue = gevent.queue.Queue
Empty = gevent.queue.Empty


class Task:
    def __init__(self, fn: Callable[..., object], *args: object) -> None:
        self._greenlet = gevent.spawn(fn, *args)

    def join(self, timeout: Optional[float] = None) -> None:
        self._greenlet.join(timeout)


def spawn(fn: Callable[..., object], *args: object) -> Task:
    return Task(fn, *args)


def wait(fd: int, read: bool, write: bool, timeout: Optional[float]) -> Tuple[bool, bool]:
    r, w, _ = gevent.select.select([fd] if read else [], [fd] if write else [], [], timeout)
    return bool(r), bool(w)


def cooperate() -> None:
    """Let other greenlets run (long loops call this now and then)."""
    gevent.sleep(0)


def poller() -> "gevent.select.poll":
    return gevent.select.poll()
