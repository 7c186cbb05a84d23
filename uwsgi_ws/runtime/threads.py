"""Adapter for uWSGI processes and threads (``--processes N --threads M``)."""

from __future__ import annotations

import os
import queue
import select
import signal
import threading
import time
from typing import Any, Callable, Dict, Optional, Tuple

from .. import _threadstart
from . import _recycle, _watch
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
        self._thread = _threadstart.start(fn, *args, name=getattr(fn, "__name__", "uwsgi_ws"))

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


def current_task() -> object:
    """The calling thread's identifier."""
    return threading.get_ident()


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


#: Seconds a threaded worker's start waits for uWSGI's own signal handlers (an app's import
#: under lazy-apps included) before leaving the stop hooks to its first upgrade.
READY_WAIT = 120.0


def auto_worker_limit() -> Optional[int]:
    """None: a threaded worker's connections are bounded by its threads; the next one
    waits in the listen backlog, and uWSGI's accept loop does not spin."""
    return None


def at_worker_start(install: Callable[[], None]) -> None:
    """uWSGI's SIGHUP, SIGINT and SIGTERM handlers are in place once the worker's
    loop_stop_pipe exists (core/uwsgi.c: uwsgi_ignition makes it after
    uwsgi_unix_signal(...)), and the stop hooks must come after them (the SIGINT relay
    replaces uWSGI's handler for a while): a thread of ours polls for the pipe, then runs
    `install`. (A worker's first upgrade installs them too, if it comes first.)"""
    _threadstart.start(_install_when_ready, install, name="uwsgi_ws-stop-hooks")


def _install_when_ready(install: Callable[[], None]) -> None:
    deadline = time.monotonic() + READY_WAIT
    while loop_stop_fd() is None:
        if time.monotonic() > deadline:
            return  # the first upgrade installs them (and says what it cannot find)
        time.sleep(0.02)  # a one-off wait at a worker's start: nothing to wake us
    install()


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


class FdWatcher(_watch.WatcherBase):
    """The worker's fd watcher: one thread waiting in epoll (one-shot registrations)
    and running the clients' callbacks."""

    def __init__(self) -> None:
        super().__init__()
        self._epoll = select.epoll()
        self._fds: Dict[int, Tuple[Any, object]] = {}  # fd -> (client, registration)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._epoll.register(self._wake_r, select.EPOLLIN)
        spawn(self._run)

    def _arm(self, client: Any, read: bool, write: bool) -> Any:
        fd = client.fileno()
        mask = (select.EPOLLIN if read else 0) | (select.EPOLLOUT if write else 0) | select.EPOLLONESHOT
        registration = object()
        self._fds[fd] = (client, registration)  # before the kernel can report it to _run
        self._epoll.register(fd, mask)
        return registration

    def _disarm(self, client: Any, registration: Any) -> None:
        fd = client.fileno()
        self._fds.pop(fd, None)
        try:
            self._epoll.unregister(fd)
        except OSError:  # closed under us: the kernel dropped it already
            pass

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:  # a wake-up is pending already
            pass

    def _run(self) -> None:
        rmask = select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP
        wmask = select.EPOLLOUT | select.EPOLLERR | select.EPOLLHUP
        while True:
            timeout = self._timeout()
            for fd, ev in self._epoll.poll(-1 if timeout is None else timeout):
                if fd == self._wake_r:
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
                    continue
                entry = self._fds.get(fd)
                if entry is None:
                    continue
                client, registration = entry
                readable, writable = bool(ev & rmask), bool(ev & wmask)
                if self._fired(client, registration, readable, writable):
                    self._call(client, readable, writable)
            for client in self._expired():
                self._call(client, False, False)


_fd_watcher: Optional[FdWatcher] = None
_fd_watcher_pid = 0
_fd_watcher_lock = threading.Lock()


def fd_watcher() -> FdWatcher:
    """This worker's fd watcher (started at the first call in each process)."""
    global _fd_watcher, _fd_watcher_pid
    with _fd_watcher_lock:
        if _fd_watcher is None or _fd_watcher_pid != os.getpid():
            _fd_watcher, _fd_watcher_pid = FdWatcher(), os.getpid()
        return _fd_watcher
