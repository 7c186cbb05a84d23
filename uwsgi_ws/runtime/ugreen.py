"""Adapter for uWSGI async cores (``--async N --ugreen``).

There are no background tasks: a core runs only while its request handler
runs, so the connection does its protocol work inline (``HAS_TASKS`` is
False). Waiting is ``uwsgi.wait_fd_read``/``wait_fd_write`` then
``uwsgi.suspend()``; cores are cooperative, so they never contend for a lock.

Threads the app starts (``threading.Thread``). uWSGI's async API belongs to the
worker's main thread, where the cores run: ``uwsgi.suspend()`` from another
thread swaps that thread into the main thread's loop context (uWSGI 2.0.31
reads the current request from a global in this model), and the next request
the loop starts there aborts the worker ("Fatal Python error:
PyEval_RestoreThread ... the current Python thread state is NULL"), or, once
the thread's wait was over, the worker's next connection hung in its handshake
(the cores' contexts left as the thread had swapped them). And
uWSGI's Python plugin keeps the GIL while a core is suspended in its loop, so
no other thread runs until the core wakes up: a thread's `send` waited for
the client's next message. Hence:

- a caller that is not the worker's main thread (`_in_core`) waits with a
  plain ``select.poll``/``time.sleep`` (GIL released), never uWSGI's API;
- while any other Python thread is alive in the worker (`_threads_alive`), a
  core waits the same way (the GIL released, so those threads run; the
  worker's loop waits meanwhile: this model serves one connection per worker
  at a time anyway, and a request arriving then waits in the listen queue
  instead of starting a second core);
- locks are real ``threading`` locks (a core never contends for one with
  another core: one connection at a time; with a thread it may, and blocks
  with the GIL released until the thread lets go).
"""

from __future__ import annotations

import collections
import math
import queue
import select
import threading
import time
from typing import Callable, NoReturn, Optional, Tuple

from .. import _uwsgi
from ._poll import PollWaiter

uwsgi = _uwsgi.api()  # this adapter is loaded only inside uWSGI, for its async cores

NAME = "async"
HAS_TASKS = False
Empty = queue.Empty


#: A real lock: cores never contend for one (one connection per worker at a time),
#: but a thread the app started may hold it (`threading.Lock`: blocks the caller,
#: GIL released, until the holder lets go).
Lock = threading.Lock


def _in_core() -> bool:
    """True in the worker's main thread, where uWSGI runs the async cores (and
    outside uWSGI); False in a thread the app started."""
    return not _uwsgi.available() or _uwsgi.in_uwsgi_thread()


def _threads_alive() -> bool:
    """Whether another Python thread of this worker may want the GIL (a core
    suspended in uWSGI's loop keeps it: see the module docstring)."""
    return threading.active_count() > 1


def _uwsgi_waits() -> bool:
    """Whether the caller may wait through uWSGI's async API (a core, no other thread)."""
    return _in_core() and not _threads_alive()


class Event:
    def __init__(self) -> None:
        self._flag = False

    def set(self) -> None:
        self._flag = True

    def clear(self) -> None:
        self._flag = False

    def is_set(self) -> bool:
        return self._flag

    def wait(self, timeout: Optional[float] = None) -> bool:
        return self._flag


class Queue:
    """A plain deque with the queue.Queue names the connection uses (no blocking)."""

    def __init__(self) -> None:
        self._items: collections.deque[object] = collections.deque()

    def put(self, item: object) -> None:
        self._items.append(item)

    def get_nowait(self) -> object:
        if not self._items:
            raise Empty
        return self._items.popleft()

    def qsize(self) -> int:
        return len(self._items)


def spawn(fn: Callable[..., object], *args: object) -> NoReturn:
    raise RuntimeError("uWSGI async cores cannot run background tasks")


class Waiter:
    """Waits for one fd. In a core with no other thread alive: uWSGI's async API,
    `wait_fd_read`/`wait_fd_write` then `uwsgi.suspend()` (one direction at a
    time; timeouts are whole seconds, uWSGI's API takes int seconds, rounded up).
    In a thread the app started, or in a core while such a thread is alive: a
    plain ``select.poll`` (both directions, millisecond timeouts, the GIL
    released; a core blocks the worker's loop meanwhile). One user at a time."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def wait(self, read: bool, write: bool, timeout: Optional[float]) -> Tuple[bool, bool]:
        """Block until ready or `timeout` seconds (None: forever); returns (readable, writable)."""
        if not _uwsgi_waits():
            return PollWaiter(self._fd, select.poll()).wait(read, write, timeout)
        seconds = 0 if timeout is None else max(1, math.ceil(timeout))
        if read:
            uwsgi.wait_fd_read(self._fd, seconds)
        else:
            uwsgi.wait_fd_write(self._fd, seconds)
        uwsgi.suspend()
        ready = uwsgi.ready_fd() == self._fd
        return (ready and read), (ready and not read)


def sleep(seconds: float) -> None:
    """In a core with no other thread alive, uWSGI's async sleep: suspends this core
    only (whole seconds, rounded up). Otherwise `time.sleep` (the GIL released: in a
    core, the worker's loop waits too; see `Waiter`)."""
    if not _uwsgi_waits():
        time.sleep(seconds)
        return
    uwsgi.async_sleep(max(1, math.ceil(seconds)))
    uwsgi.suspend()


def current_task() -> object:
    """The calling OS thread's identifier (uWSGI's cores switch on the main thread)."""
    return threading.get_ident()


def auto_worker_limit() -> Optional[int]:
    """None: no default limit in this model."""
    return None


def at_worker_start(install: Callable[[], None]) -> None:
    """Nothing to install early: this model has no stop hooks (uWSGI's graceful path
    ends an async worker at once)."""


def on_graceful_stop(callback: Callable[[], None]) -> bool:
    """Async cores: uWSGI exits the worker at once on SIGHUP; nothing to wait for."""
    return False


def on_shutdown(callback: Callable[[], None]) -> bool:
    """Async cores: uWSGI exits the worker at once; nothing runs before."""
    return False


def cooperate() -> None:
    """Nothing to do: there is no background work to interleave with."""


def poller() -> NoReturn:
    raise RuntimeError("uWSGI async cores cannot run the broadcast waker")


class FdWatcher:
    """Async cores: nothing runs between a handler's waits, so nothing watches; a
    connection is read only while its handler waits in `receive` (or `close`)."""

    watched = 0

    def watch(self, client: object, read: bool, write: bool, deadline: Optional[float]) -> None:
        return None

    def unwatch(self, client: object) -> None:
        return None

    def forget(self, client: object) -> None:
        return None


_fd_watcher = FdWatcher()


def fd_watcher() -> FdWatcher:
    """The no-op watcher of async cores."""
    return _fd_watcher
