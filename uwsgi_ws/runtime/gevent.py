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

from . import _recycle
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


_watchers: list[object] = []  # kept: a collected signal watcher stops watching


def on_graceful_stop(callback: Callable[[], None]) -> bool:
    """Two ways, per uWSGI's gevent loop (plugins/gevent/gevent.c, 2.0):

    - the master sends the worker SIGHUP (``uwsgi --reload``, a touched vassal, chain
      reload, max-worker-lifetime), which the loop handles with a gevent signal watcher;
      libev runs every watcher of a signal, so a second one tells us too;
    - the worker recycles itself at the end of a request (``--max-requests``,
      ``--reload-on-rss``, ``--reload-on-as``: core/utils.c uwsgi_close_request), and the
      loop's graceful path runs with no signal; ``--max-worker-lifetime`` sends only a
      no-op SIGWINCH. A greenlet checks the same conditions every `_recycle.CHECK`
      seconds (`uwsgi_ws.runtime._recycle`).
    """
    import signal

    fired: list[bool] = []

    def once() -> None:
        if not fired:
            fired.append(True)
            callback()

    _watchers.append(gevent.signal_handler(signal.SIGHUP, once))
    limits = _recycle.limits()
    if limits is not None:
        gevent.spawn(_recycle.watch, limits, gevent.sleep, once)
    return True


def on_shutdown(callback: Callable[[], None]) -> bool:
    """The loop maps SIGINT and SIGTERM to gevent signal watchers too (it stops, then the
    worker exits): a watcher of ours runs `callback` in the same loop iteration."""
    import signal

    for signum in (signal.SIGINT, signal.SIGTERM):
        _watchers.append(gevent.signal_handler(signum, callback))
    return True


def cooperate() -> None:
    """Let other greenlets run (long loops call this now and then)."""
    gevent.sleep(0)


def poller() -> gevent.select.poll:
    return gevent.select.poll()
