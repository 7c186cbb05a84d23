"""What every concurrency-model adapter provides: the `Runtime` protocol.

One adapter per uWSGI model (`threads`, `gevent`, `ugreen`), each a module of
the same shape, as websockets keeps ``sync/`` and ``asyncio/``. The rest of the
package uses only these names, so no model check lives outside ``runtime/``.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Protocol, Tuple, Type


class Waiter(Protocol):
    """Waits for one fd (one per user: it keeps its registration between calls)."""

    def wait(self, read: bool, write: bool, timeout: Optional[float]) -> Tuple[bool, bool]:
        """Block the calling thread or greenlet until the fd is readable and/or
        writable, or `timeout` seconds pass (None: forever). Returns (readable, writable)."""


class FdWatcher(Protocol):
    """The worker's one watcher of connections whose handler is busy elsewhere
    (`_watch`): one-shot watches, callbacks in the watcher's own task."""

    @property
    def watched(self) -> int:
        """Clients armed now."""

    def watch(self, client: Any, read: bool, write: bool, deadline: Optional[float]) -> None:
        """Arm one watch of `client.fileno()` for reading and/or writing, and a timer
        at `deadline` (`time.monotonic()`; None: none), replacing any armed one.
        Once ready or due it is disarmed and ``client.on_ready(readable, writable)``
        runs in the watcher's task. Never blocks; any thread or greenlet."""

    def unwatch(self, client: Any) -> None:
        """Disarm `client` (a no-op when not armed). Never blocks."""

    def forget(self, client: Any) -> None:
        """Disarm `client` and drop its timer: it is gone. Never blocks."""


class Task(Protocol):
    def join(self, timeout: Optional[float] = None) -> None:
        """Wait (at most `timeout` seconds) for the task to end."""


class Runtime(Protocol):
    """A concurrency-model adapter (a module of ``uwsgi_ws.runtime``)."""

    #: "threads", "gevent" or "async".
    NAME: str
    #: Whether background tasks (threads, greenlets) can run beside a request handler.
    #: Without them (uWSGI async/ugreen cores) a connection reads inline, in its handler.
    HAS_TASKS: bool
    #: The exception `Queue.get` raises on a timeout.
    Empty: Type[BaseException]

    def Lock(self) -> Any:
        """A lock blocking the right thing (a thread, a greenlet)."""

    def Event(self) -> Any:
        """An event (set, clear, is_set, wait(timeout))."""

    def Queue(self) -> Any:
        """A FIFO queue (put, get(timeout), get_nowait, qsize)."""

    def spawn(self, fn: Callable[..., object], *args: object) -> Task:
        """Run `fn(*args)` as a background task."""

    def Waiter(self, fd: int) -> Waiter:
        """A waiter for `fd`."""

    def fd_watcher(self) -> FdWatcher:
        """This worker's fd watcher (the same object for every call in a process)."""

    def cooperate(self) -> None:
        """Let other tasks run (long loops call it now and then)."""

    def sleep(self, seconds: float) -> None:
        """Block the calling thread or greenlet (never the whole worker)."""

    def current_task(self) -> object:
        """A token of the calling thread or greenlet, equal only for the same one: uWSGI's
        request API (the 101 of an upgrade) works only in the request's own task."""

    def poller(self) -> Any:
        """An object with the `select.poll` interface for many fds."""

    def on_graceful_stop(self, callback: Callable[[], None]) -> bool:
        """Run `callback` (in a task of the worker) once uWSGI tells this worker to
        stop gracefully. Returns False when this model cannot tell (then nothing
        is installed). Call once per worker process."""

    def auto_worker_limit(self) -> Optional[int]:
        """The default of ``max_connections_per_worker="auto"`` in this model (None:
        no limit), from the running uWSGI's options (`uwsgi_ws.admission`)."""

    def at_worker_start(self, install: Callable[[], None]) -> None:
        """In a new worker, before it serves anything (uWSGI's post-fork hook): run
        `install` (the stop hooks, `uwsgi_ws.shutdown`) as early as this model allows,
        after uWSGI's own signal handlers. Never blocks; never raises for `install`."""

    def on_shutdown(self, callback: Callable[[], None]) -> bool:
        """Run `callback` (it must not block: queue, don't wait) when uWSGI stops this
        worker for good (SIGINT, SIGTERM: a full shutdown), before the worker exits.
        Returns False when this model cannot tell. Call once per worker process."""
