"""Adapter for uWSGI processes and threads (``--processes N --threads M``)."""

from __future__ import annotations

import os
import queue
import select
import signal
import threading
import time
from typing import Callable, Optional

from . import _recycle
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
    """Watch uWSGI's loop_stop_pipe (`_stoppipe`: SIGHUP) in a thread, and the limits
    uWSGI recycles a worker by without a signal (`_recycle`: max-requests, reload-on-rss/as,
    max-worker-lifetime) in another. False when the pipe is not found."""
    fd = loop_stop_fd()
    if fd is None:
        return False
    fired = threading.Lock()

    def once() -> None:
        if fired.acquire(False):
            callback()

    def watch() -> None:
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLHUP)
        while not poller.poll():
            pass
        once()

    spawn(watch)
    limits = _recycle.limits()
    if limits is not None:
        spawn(_recycle.watch, limits, time.sleep, once)
    return True


def on_shutdown(callback: Callable[[], None]) -> bool:
    """uWSGI's SIGINT/SIGTERM handler of a threaded worker (end_me) exits at once, in C.
    The optional native helper relays the signal to a thread of ours instead, which runs
    `callback`, then gives uWSGI its handler back and raises the signal again (a second
    signal meanwhile goes straight to uWSGI). False without the helper."""
    try:
        from .._speedups import relay_signals, restore_signals
    except ImportError:
        return False
    read_fd, write_fd = os.pipe()
    relay_signals(write_fd, [signal.SIGINT, signal.SIGTERM])

    def watch() -> None:
        signum = os.read(read_fd, 1)[0]
        try:
            callback()
        finally:
            restore_signals()
            os.kill(os.getpid(), signum)

    spawn(watch)
    return True


def cooperate() -> None:
    """Nothing to do: threads are preempted, and every socket call releases the GIL."""


def poller() -> select.poll:
    return select.poll()
