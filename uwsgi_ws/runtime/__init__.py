"""Concurrency-model adapters: one module per uWSGI model, each with the same shape.

The shape is the `base.Runtime` protocol: locks, events, queues, tasks, fd
waiters, a poller, `sleep`, and the graceful-stop hook of the model. Model
checks live here and nowhere else.
"""

from __future__ import annotations

from typing import cast

from .. import _uwsgi
from ..log import get as _logger
from . import _stoppipe  # noqa: F401  (snapshots the master's pipes at import, before the fork)
from .base import Runtime

__all__ = ["Runtime", "detect", "load"]


def detect() -> str:
    """The model of the running uWSGI instance, from its options ("threads" outside uWSGI)."""
    return _uwsgi.model()


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
