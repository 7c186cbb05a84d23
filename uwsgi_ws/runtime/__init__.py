"""Concurrency-model adapters: one module per uWSGI model, each with the same shape.

Every adapter module provides:

- ``NAME``: "threads", "gevent" or "async";
- ``HAS_TASKS``: whether background tasks (threads, greenlets) can run beside a
  request handler. Without them (uWSGI async/ugreen cores) the connection does
  its protocol work inline, while the handler waits in ``receive``;
- ``Lock()``, ``Event()``, ``Queue()`` and ``Empty``: primitives that block the
  right thing (a thread, a greenlet);
- ``spawn(fn, *args) -> Task`` with ``Task.join(timeout)``;
- ``Waiter(fd)`` with ``wait(read, write, timeout) -> (readable, writable)``:
  block until the fd is ready or the timeout (seconds, None = forever) passes
  (one per connection: it keeps its registration between calls);
- ``cooperate()``: let other tasks run (long loops call it now and then);
- ``poller()``: an object with the ``select.poll`` interface for many fds.
"""

from __future__ import annotations

import logging
from types import ModuleType


def detect() -> str:
    """The model of the running uWSGI instance, from its options."""
    try:
        import uwsgi
    except ImportError:
        return "threads"
    opt = getattr(uwsgi, "opt", {}) or {}
    loop = getattr(uwsgi, "loop", None)
    if isinstance(loop, bytes):
        loop = loop.decode()
    if loop == "gevent" or "gevent" in opt:
        return "gevent"
    if "async" in opt or "ugreen" in opt:
        return "async"
    return "threads"


def load(name: str) -> ModuleType:
    """The adapter module for a model name ("threads", "gevent", "async")."""
    if name == "threads":
        from . import threads as mod
    elif name == "gevent":
        from . import gevent as mod
    elif name == "async":
        from . import ugreen as mod

        logging.getLogger("uwsgi_ws").warning(
            "uwsgi_ws: the async (ugreen) model serves one WebSocket per worker at a time: "
            "uWSGI >= 2.0.27 deadlocks a worker on overlapping requests there; use --gevent"
        )
    else:
        raise ValueError(f"unknown concurrency model {name!r}: use threads, gevent or async")
    return mod
