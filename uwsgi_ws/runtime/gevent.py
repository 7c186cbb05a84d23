"""Adapter for uWSGI's gevent loop engine (``--gevent N``).

uWSGI does not monkey-patch: everything here uses gevent's own primitives, so
a wait blocks one greenlet, never the worker.
"""

from __future__ import annotations

import collections
import os
import select
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

import gevent
import gevent.event
import gevent.hub
import gevent.lock
import gevent.queue

from . import _recycle, _watch

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
    """Waits for one fd on the hub with one libev io watcher (and a timer when a
    timeout is given) made for the wait: nothing kept between waits, nothing
    like gevent.select.poll's per-call result set, event and Timeout. One user
    at a time; blocks the calling greenlet only."""

    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def wait(self, read: bool, write: bool, timeout: Optional[float]) -> Tuple[bool, bool]:
        """Block until ready or `timeout` seconds (None: forever); returns (readable, writable)."""
        hub = gevent.get_hub()
        loop = hub.loop
        waiter = gevent.hub.Waiter(hub)
        io = loop.io(self._fd, (1 if read else 0) | (2 if write else 0))
        io.start(waiter.switch, pass_events=True)
        timer = None
        if timeout is not None:
            timer = loop.timer(max(0.0, timeout))
            timer.start(waiter.switch, 0)
        try:
            events = waiter.get()
        finally:
            io.stop()
            if timer is not None:
                timer.stop()
        return bool(events & 1), bool(events & 2)


def sleep(seconds: float) -> None:
    """Block the calling greenlet only."""
    gevent.sleep(seconds)


def current_task() -> object:
    """The calling greenlet (a foreign OS thread has greenlets of its own)."""
    return gevent.getcurrent()


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


def auto_worker_limit() -> Optional[int]:
    """The worker's cores (``--gevent N``) less an eighth of them (at least 2), kept for
    plain HTTP: with every core held by a WebSocket, uWSGI 2.0's accept loop spins
    ("async queue is full") and health checks go unanswered. None without the option."""
    from .. import _uwsgi

    try:
        cores = int(_uwsgi.option("gevent") or 0)
    except ValueError:
        return None
    if cores <= 0:
        return None
    return max(1, cores - max(2, cores // 8))


def at_worker_start(install: Callable[[], None]) -> None:
    """A greenlet spawned from uWSGI's post-fork hook (or the app's import in the
    worker, under lazy-apps) runs in the loop's first iteration, after uWSGI mapped
    SIGHUP, SIGINT and SIGTERM to the loop and before any request is read."""
    spawn(install)


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


class Poller:
    """`select.poll`'s interface (register, modify, unregister, poll) on libev io
    watchers kept while registered, for one waiting greenlet (the broadcast hub).
    gevent.select.poll makes a watcher per fd, a result set, an Event and a
    Timeout on every call; this makes a Waiter (and a timer with a timeout)."""

    def __init__(self) -> None:
        self._loop = gevent.get_hub().loop
        self._io: Dict[int, Any] = {}
        self._ready: Dict[int, int] = {}
        self._stopped: List[int] = []  # reported since the last poll(): restarted by it
        self._waiter: Any = None

    def register(self, fd: Any, eventmask: int = select.POLLIN | select.POLLPRI | select.POLLOUT) -> None:
        fd = fd if isinstance(fd, int) else fd.fileno()
        old = self._io.pop(fd, None)
        if old is not None:
            old.stop()
        flags = (1 if eventmask & (select.POLLIN | select.POLLPRI) else 0) | (2 if eventmask & select.POLLOUT else 0)
        io = self._loop.io(fd, flags)
        io.start(self._on_io, fd, pass_events=True)
        self._io[fd] = io

    modify = register

    def unregister(self, fd: Any) -> None:
        """Raises KeyError when `fd` is not registered (as select.poll does)."""
        fd = fd if isinstance(fd, int) else fd.fileno()
        self._io.pop(fd).stop()
        self._ready.pop(fd, None)

    def _on_io(self, events: int, fd: int) -> None:  # in the hub
        # One report per fd and poll() call: a writable socket would otherwise call
        # back at every loop iteration until the next poll() (the hub's fan-out
        # cooperates between chunks); poll() starts it again.
        io = self._io.get(fd)
        if io is not None:
            io.stop()
            self._stopped.append(fd)
        self._ready[fd] = self._ready.get(fd, 0) | (select.POLLIN if events & 1 else 0) | (
            select.POLLOUT if events & 2 else 0)
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.switch(None)

    def poll(self, timeout: Optional[float] = None) -> List[Tuple[int, int]]:
        """Ready (fd, events) pairs; waits up to `timeout` milliseconds (None or < 0: forever)."""
        if self._stopped:
            for fd in self._stopped:
                io = self._io.get(fd)
                if io is not None and not io.active:
                    io.start(self._on_io, fd, pass_events=True)
            self._stopped.clear()
        if not self._ready and timeout != 0:
            waiter = self._waiter = gevent.hub.Waiter()
            timer = None
            if timeout is not None and timeout >= 0:
                timer = self._loop.timer(timeout / 1000.0)
                timer.start(waiter.switch, None)
            try:
                waiter.get()
            finally:
                self._waiter = None
                if timer is not None:
                    timer.stop()
        ready = list(self._ready.items())
        self._ready.clear()
        return ready


def poller() -> Poller:
    return Poller()


class FdWatcher(_watch.WatcherBase):
    """The worker's fd watcher on the gevent hub: one libev io watcher per armed
    fd (no greenlet), and one greenlet that runs the clients' callbacks."""

    def __init__(self) -> None:
        super().__init__()
        self._loop = gevent.get_hub().loop
        self._ready: Deque[Tuple[Any, bool, bool]] = collections.deque()
        self._event = gevent.event.Event()
        self._task = gevent.spawn(self._run)

    def _arm(self, client: Any, read: bool, write: bool) -> Any:
        io = self._loop.io(client.fileno(), (1 if read else 0) | (2 if write else 0))
        io.start(self._on_io, client, io, pass_events=True)
        return io

    def _disarm(self, client: Any, registration: Any) -> None:
        registration.stop()

    def _wake(self) -> None:
        self._event.set()

    def _on_io(self, events: int, client: Any, io: Any) -> None:
        # In the hub: nothing that blocks; hand the client to the watcher's greenlet.
        if self._fired(client, io, bool(events & 1), bool(events & 2)):
            self._ready.append((client, bool(events & 1), bool(events & 2)))
            self._event.set()

    def _run(self) -> None:
        ready = self._ready
        while True:
            self._event.wait(self._timeout())
            self._event.clear()
            while ready:
                client, readable, writable = ready.popleft()
                self._call(client, readable, writable)
            for client in self._expired():
                self._call(client, False, False)


_fd_watcher: Optional[FdWatcher] = None
_fd_watcher_pid = 0


def fd_watcher() -> FdWatcher:
    """This worker's fd watcher (started at the first call in each process)."""
    global _fd_watcher, _fd_watcher_pid
    if _fd_watcher is None or _fd_watcher_pid != os.getpid():
        _fd_watcher, _fd_watcher_pid = FdWatcher(), os.getpid()
    return _fd_watcher
