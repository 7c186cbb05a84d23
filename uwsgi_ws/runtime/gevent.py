"""Adapter for uWSGI's gevent loop engine (``--gevent N``).

uWSGI does not monkey-patch: everything here uses gevent's own primitives, so
a wait blocks one greenlet, never the worker.
"""

from __future__ import annotations

from typing import Callable, Optional

import gevent
import gevent.event
import gevent.lock
import gevent.queue
import gevent.select

from ._poll import PollWaiter

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


def Waiter(fd: int) -> PollWaiter:
    """Waits for one fd (one per connection; not shared). gevent's poll uses libev
    watchers: no select() and its 1024-fd ceiling."""
    return PollWaiter(fd, gevent.select.poll())


def sleep(seconds: float) -> None:
    """Block the calling greenlet only."""
    gevent.sleep(seconds)


_watchers: list = []  # kept: a collected signal watcher stops watching


def on_graceful_stop(callback: Callable[[], None]) -> bool:
    """The master sends the worker SIGHUP, which uWSGI's gevent loop handles with a
    gevent signal watcher (it stops accepting, then waits for the running requests).
    libev runs every watcher of a signal, so a second one tells us too."""
    import signal

    _watchers.append(gevent.signal_handler(signal.SIGHUP, callback))
    return True


def cooperate() -> None:
    """Let other greenlets run (long loops call this now and then)."""
    gevent.sleep(0)


def poller() -> "gevent.select.poll":
    return gevent.select.poll()
