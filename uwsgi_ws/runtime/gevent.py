"""Adapter for uWSGI's gevent loop engine (``--gevent N``).

uWSGI does not monkey-patch: everything here uses gevent's own primitives, so
a wait blocks one greenlet, never the worker.
"""

from __future__ import annotations

import select
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


class Waiter:
    """Waits for one fd (one per connection; not shared). Built on gevent's poll,
    which uses libev watchers: no select() and its 1024-fd ceiling."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._poll = gevent.select.poll()
        self._mask = 0

    def wait(self, read: bool, write: bool, timeout: Optional[float]) -> Tuple[bool, bool]:
        mask = (select.POLLIN if read else 0) | (select.POLLOUT if write else 0)
        if mask != self._mask:
            if self._mask:
                self._poll.modify(self._fd, mask)
            else:
                self._poll.register(self._fd, mask)
            self._mask = mask
        events = self._poll.poll(None if timeout is None else timeout * 1000)
        if not events:
            return False, False
        ev = events[0][1]
        err = bool(ev & (select.POLLERR | select.POLLHUP | select.POLLNVAL))
        return bool(ev & select.POLLIN) or (err and read), bool(ev & select.POLLOUT) or (err and write)


def cooperate() -> None:
    """Let other greenlets run (long loops call this now and then)."""
    gevent.sleep(0)


def poller() -> "gevent.select.poll":
    return gevent.select.poll()
