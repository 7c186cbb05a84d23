"""Adapter for uWSGI processes and threads (``--processes N --threads M``)."""

from __future__ import annotations

import queue
import select
import threading
from typing import Callable, Optional, Tuple

NAME = "threads"
HAS_TASKS = True

Lock = threading.Lock
Event = threading.Event
Queue = queue.Queue
Empty = queue.Empty


class Task:
    def __init__(self, fn: Callable[..., object], *args: object) -> None:
        self._thread = threading.Thread(target=fn, args=args, daemon=True, name=getattr(fn, "__name__", "uwsgi_ws"))
        self._thread.start()

    def join(self, timeout: Optional[float] = None) -> None:
        self._thread.join(timeout)


def spawn(fn: Callable[..., object], *args: object) -> Task:
    return Task(fn, *args)


class Waiter:
    """Waits for one fd to be readable and/or writable (one per connection; not shared)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._poll = select.poll()
        self._mask = 0

    def wait(self, read: bool, write: bool, timeout: Optional[float]) -> Tuple[bool, bool]:
        """Block until ready or `timeout` seconds (None: forever); returns (readable, writable)."""
        mask = (select.POLLIN if read else 0) | (select.POLLOUT if write else 0)
        if mask != self._mask:
            if self._mask:
                self._poll.modify(self._fd, mask)
            else:
                self._poll.register(self._fd, mask)
            self._mask = mask
        ms = None if timeout is None else max(0, int(timeout * 1000 + 0.999))
        events = self._poll.poll(ms)
        if not events:
            return False, False
        ev = events[0][1]
        err = bool(ev & (select.POLLERR | select.POLLHUP | select.POLLNVAL))
        return bool(ev & select.POLLIN) or (err and read), bool(ev & select.POLLOUT) or (err and write)


def cooperate() -> None:
    """Nothing to do: threads are preempted, and every socket call releases the GIL."""


def poller() -> "select.poll":
    return select.poll()
