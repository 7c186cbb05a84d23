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


def wait(fd: int, read: bool, write: bool, timeout: Optional[float]) -> Tuple[bool, bool]:
    p = select.poll()
    mask = (select.POLLIN if read else 0) | (select.POLLOUT if write else 0)
    p.register(fd, mask)
    ms = None if timeout is None else max(0, int(timeout * 1000 + 0.999))
    events = p.poll(ms)
    if not events:
        return False, False
    ev = events[0][1]
    err = bool(ev & (select.POLLERR | select.POLLHUP | select.POLLNVAL))
    return bool(ev & select.POLLIN) or (err and read), bool(ev & select.POLLOUT) or (err and write)


def cooperate() -> None:
    """Nothing to do: threads are preempted, and every socket call releases the GIL."""


def poller() -> "select.poll":
    return select.poll()
