"""Adapter for uWSGI async cores (``--async N --ugreen``).

There are no background tasks: a core runs only while its request handler
runs, so the connection does its protocol work inline (``HAS_TASKS`` is
False). Waiting is ``uwsgi.wait_fd_read``/``wait_fd_write`` then
``uwsgi.suspend()``; cores are cooperative, so locks never contend.
"""

from __future__ import annotations

import collections
import math
import queue
import threading
from typing import Callable, NoReturn, Optional, Tuple

from .. import _uwsgi

uwsgi = _uwsgi.api()  # this adapter is loaded only inside uWSGI, for its async cores

NAME = "async"
HAS_TASKS = False
Empty = queue.Empty


class Lock:
    """Cooperative cores never run at the same time: nothing to exclude."""

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return True

    def release(self) -> None:
        return None


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
    """Waits for one fd with uWSGI's async API: `wait_fd_read`/`wait_fd_write`, then
    `uwsgi.suspend()`. One direction at a time; timeouts are whole seconds
    (uWSGI's API takes int seconds), rounded up."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def wait(self, read: bool, write: bool, timeout: Optional[float]) -> Tuple[bool, bool]:
        seconds = 0 if timeout is None else max(1, math.ceil(timeout))
        if read:
            uwsgi.wait_fd_read(self._fd, seconds)
        else:
            uwsgi.wait_fd_write(self._fd, seconds)
        uwsgi.suspend()
        ready = uwsgi.ready_fd() == self._fd
        return (ready and read), (ready and not read)


def sleep(seconds: float) -> None:
    """uWSGI's async sleep: suspends this core only (whole seconds, rounded up)."""
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
