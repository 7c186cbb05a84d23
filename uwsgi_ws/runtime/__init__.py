"""Concurrency-model adapters: one module per uWSGI model, each with the same shape.

The shape is the `base.Runtime` protocol: locks, events, queues, tasks, fd
waiters, a poller, `sleep`, and the graceful-stop hook of the model. Model
checks live here and nowhere else.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import cast

from .. import _uwsgi
from ..log import get as _logger
from . import _stoppipe  # noqa: F401  (snapshots the master's pipes at import, before the fork)
from .base import Runtime

__all__ = ["Runtime", "detect", "load", "primitives_library", "socket_module"]


def detect() -> str:
    """The model of the running uWSGI instance, from its options. Outside uWSGI:
    "gevent" when the caller runs in a gevent greenlet (gevent's pywsgi server, e.g.
    with gevent-websocket's handler: a threads runtime there would block gevent's
    hub), else "threads" (Werkzeug's development server, the test client).
    Non-blocking; never imports gevent."""
    if _uwsgi.available() or "gevent" not in sys.modules:
        return _uwsgi.model()
    gevent = sys.modules["gevent"]
    return "gevent" if isinstance(gevent.getcurrent(), gevent.Greenlet) else _uwsgi.model()


def load(name: str) -> Runtime:
    """The adapter for a model name ("threads", "gevent", "async").

    Raises:
        ValueError: an unknown name.
        ImportError: gevent is not installed (for "gevent").
    """
    import importlib

    modules = {"threads": "threads", "gevent": "gevent", "async": "ugreen"}
    if name not in modules:
        raise ValueError(f"unknown concurrency model {name!r}: use threads, gevent or async")
    mod = importlib.import_module(f"{__name__}.{modules[name]}")
    if name == "async":
        _logger(__name__).warning(
            "the async (ugreen) model serves one WebSocket per worker at a time: "
            "uWSGI >= 2.0.27 deadlocks a worker on overlapping requests there; use --gevent"
        )
    return cast(Runtime, mod)


def primitives_library(rt: Runtime) -> str:
    """The library whose primitives block only the calling task in `rt`'s model, by the
    name libraries with one driver per library use (python-engineio's ``async_mode``):
    "gevent" under gevent, "threading" under threads.

    Raises:
        ValueError: the model has no background tasks (uWSGI's async/ugreen cores,
            `Runtime.HAS_TASKS` false): such libraries need them.
    """
    if not rt.HAS_TASKS:
        raise ValueError(f"the {rt.NAME} model (uWSGI --async/--ugreen) runs no background tasks")
    return "gevent" if rt.NAME == "gevent" else "threading"


def socket_module(rt: Runtime) -> ModuleType:
    """The socket module whose blocking calls block only the calling task in `rt`'s
    model: ``gevent.socket`` under gevent (its greenlet waits, the worker's loop runs),
    ``socket`` otherwise. Raises ImportError under gevent without gevent installed."""
    if rt.NAME == "gevent":
        import gevent.socket

        return cast(ModuleType, gevent.socket)
    import socket

    return socket
