"""Adapter for uWSGI processes and threads (``--processes N --threads M``)."""

from __future__ import annotations

import queue
import select
import threading
import time
from typing import Callable, Optional

from ._poll import PollWaiter
from ._stoppipe import loop_stop_fd

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


def Waiter(fd: int) -> PollWaiter:
    """Waits for one fd (one per connection; not shared)."""
    return PollWaiter(fd, select.poll())


def sleep(seconds: float) -> None:
    """Block the calling thread."""
    time.sleep(seconds)


def on_graceful_stop(callback: Callable[[], None]) -> bool:
    """Watch uWSGI's loop_stop_pipe (`_stoppipe`) in a thread; False when not found."""
    fd = loop_stop_fd()
    if fd is None:
        return False

    def watch() -> None:
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLHUP)
        while not poller.poll():
            pass
        callback()

    spawn(watch)
    return True


def cooperate() -> None:
    """Nothing to do: threads are preempted, and every socket call releases the GIL."""


def poller() -> "select.poll":
    return select.poll()
