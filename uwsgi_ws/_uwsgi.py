"""The one place the package touches uWSGI's Python API (the ``uwsgi`` module).

uWSGI injects ``uwsgi`` into the interpreters it runs; outside uWSGI (the
development server, tests, a cron job) it does not exist. Everything here
works in both cases: `available()` says which, and the readers return None
(or raise `NotUnderUwsgi` where an answer is required).

Thread-safety (uWSGI 2.0.x, reproduced): uWSGI's request API may only be
called from a thread or greenlet that uWSGI started; from a
``threading.Thread`` it raises, or under gevent kills the worker (SIGSEGV in
``mule_msg``, ``sharedarea_read``). Reading ``uwsgi.opt``, ``worker_id()``,
``masterpid()`` and ``numproc`` is plain data and safe everywhere; the
functions here that call into the request API say so.
"""

from __future__ import annotations

import os
import threading
from types import ModuleType
from typing import Optional

from .exceptions import UwsgiWsError

try:  # present only inside uWSGI
    import uwsgi as _api
except ImportError:  # pragma: no cover - depends on the process
    _api = None

_MAIN_THREAD = threading.main_thread()


class NotUnderUwsgi(UwsgiWsError, RuntimeError):
    """A uWSGI facility was needed outside uWSGI; the message says what to run."""


def available() -> bool:
    """True inside a uWSGI process (worker, mule, spooler, master)."""
    return _api is not None


def api() -> ModuleType:
    """The ``uwsgi`` module. Raises NotUnderUwsgi outside uWSGI."""
    if _api is None:
        raise NotUnderUwsgi("this needs uWSGI: run the app under uwsgi (or app.run())")
    module: ModuleType = _api
    return module


def option(name: str) -> Optional[str]:
    """The value of uWSGI option (or placeholder) `name` as text, the last one when
    repeated; None when unset, a bare flag, or outside uWSGI."""
    if _api is None:
        return None
    value = (getattr(_api, "opt", {}) or {}).get(name)
    if isinstance(value, (list, tuple)):
        value = value[-1] if value else None
    if isinstance(value, bytes):
        value = value.decode()
    return None if value in (None, True) else str(value)


def has_option(name: str) -> bool:
    """True when uWSGI option `name` was given (even as a bare flag)."""
    return _api is not None and name in (getattr(_api, "opt", {}) or {})


def flag(name: str) -> bool:
    """True when uWSGI option `name` is on: given bare (``--lazy-apps``) or with a true
    value (``lazy-apps: true``, ``1``, ``yes``, ``on``); False when unset or false."""
    if _api is None:
        return False
    value = (getattr(_api, "opt", {}) or {}).get(name)
    if isinstance(value, (list, tuple)):
        value = value[-1] if value else None
    if value is None:
        return False
    if value is True:
        return True
    text = value.decode() if isinstance(value, bytes) else str(value)
    return text.strip().lower() in ("", "1", "true", "yes", "on", "y", "t")


def model() -> str:
    """The concurrency model of the running instance: "gevent", "async" or "threads"
    (also outside uWSGI: the development server and tests use threads)."""
    if _api is None:
        return "threads"
    loop = getattr(_api, "loop", None)
    if isinstance(loop, bytes):
        loop = loop.decode()
    if loop == "gevent" or has_option("gevent"):
        return "gevent"
    if has_option("async") or has_option("ugreen"):
        return "async"
    return "threads"


def masterpid() -> int:
    """The master's pid (names the instance); 0 outside uWSGI or without --master."""
    return int(_api.masterpid()) if _api is not None else 0


def worker_id() -> int:
    """This worker's id (1..numproc); 0 in the master, a mule or outside uWSGI."""
    return int(_api.worker_id()) if _api is not None else 0


def mule_id() -> int:
    """This mule's id; 0 outside a mule."""
    return int(_api.mule_id()) if _api is not None else 0


def process() -> str:
    """Which process of the instance this is: "master" (the process whose pid is
    `masterpid()`: it loads the app, unless lazy-apps, then forks the others),
    "worker" (also the single process of an instance without --master, which loads
    the app as worker 1), "mule", "spooler" (any other process uWSGI forked: a
    spooler, a gateway, an external daemon), or "outside" (no uWSGI).
    Plain data, safe from any thread."""
    if _api is None:
        return "outside"
    if worker_id() > 0:
        return "worker"
    if mule_id() > 0:
        return "mule"
    master = masterpid()
    if master and master == os.getpid() and flag("master"):
        return "master"
    return "spooler" if master else "worker"


def numproc() -> int:
    """The number of workers of the instance (0 outside uWSGI)."""
    return int(getattr(_api, "numproc", 0)) if _api is not None else 0


def instance_address(kind: str, *parts: int) -> bytes:
    """An abstract Unix socket address private to this uWSGI instance:
    ``\\0uwsgi_ws-<kind>-<master pid>[-<part>...]`` (the master pid tells
    instances apart; abstract sockets vanish with their last holder).
    Raises NotUnderUwsgi outside uWSGI."""
    pid = masterpid() if _api is not None else 0
    if not pid:
        raise NotUnderUwsgi(f"the {kind} socket belongs to a uWSGI instance: run under uwsgi --master")
    return b"\0uwsgi_ws-%s-%d" % (kind.encode(), pid) + b"".join(b"-%d" % p for p in parts)


def in_uwsgi_thread() -> bool:
    """True when the caller may use uWSGI's request API: inside uWSGI, in a thread
    uWSGI started (its main thread or one of its ``--threads`` cores)."""
    if _api is None:
        return False
    current = threading.current_thread()
    return current is _MAIN_THREAD or type(current) is threading._DummyThread
