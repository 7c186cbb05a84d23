"""Start-up diagnostics: the traps a new deployment falls into, said once when the app loads.

`check()` runs from `WebSocket.init_app`, in the process that imports the app:
the master before the fork (uWSGI's default, ``lazy-apps`` off), else each
worker. It reads the running instance's options (``uwsgi.opt``, plain data:
safe from any thread) and:

- stops the instance when ``gevent`` is configured but the gevent package is
  not importable: uWSGI's gevent loop imports it in every worker, which dies
  (``No module named 'gevent'``) and is respawned for ever. SystemExit with
  the fix (``pip install "uwsgi_ws[gevent]"``) ends the process that loads
  the app; under lazy-apps that is a worker, so the master is asked to stop
  first (SIGINT, uWSGI's shutdown).
- warns when the worker has no concurrency (no ``threads``, ``gevent`` or
  ``async``): one WebSocket holds the worker for its whole life and every
  other request, plain HTTP included, queues behind it.
- warns when uWSGI's ``http`` router runs without ``http-websockets``: the
  router (plugins/http/http.c, uWSGI 2.0) forwards the 101 but then drops
  every byte the client sends after its request headers (a request with no
  body, not switched to raw mode), so each WebSocket opens and hangs.
- says once that the optional C fan-out helper is not built (no compiler at
  install time) and the pure-Python path is used.

`check_model(name, model)` runs from the same place for each extension: a
class naming a model (``GeventWebSocket``: gevent) under a uWSGI of another
model (no ``--gevent``) is served with the instance's model (gevent's loop in
a threads worker would never run; blocking threads in a gevent worker would
stall every greenlet), and a warning names both ways out (`MODEL_MISMATCH`).

`check_upgrade(environ)` runs at each WebSocket handshake (the extension's
view, before the upgrade): a handshake that came through that router is
refused with HTTP 501 and the fix, logged once per worker.

Outside uWSGI (the development server, tests importing the app) both do
nothing. Log lines go to the ``uwsgi_ws.startup`` logger.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import threading
from typing import Any, List, Mapping, Optional

from . import _uwsgi, settings
from .exceptions import HandshakeRefused

logger = logging.getLogger("uwsgi_ws.startup")

#: The fix for gevent configured without the package, as said at start.
GEVENT_MISSING = (
    "uWSGI is configured for gevent (`gevent` option) but the gevent package is not installed "
    "in this Python: every worker would die at start (No module named 'gevent') and be respawned "
    "for ever. Install it: pip install \"uwsgi_ws[gevent]\" (or drop the gevent option and use "
    "threads: conf/threads.yaml). Stopping."
)
#: The warning for a worker that serves one request at a time.
NO_CONCURRENCY = (
    "this uWSGI worker serves one request at a time (no `threads`, `gevent` or `async` option): "
    "a WebSocket holds the worker for its whole life and every other request, plain HTTP "
    "included, waits behind it. Start uWSGI with --threads 16 (or --gevent 1000 with "
    "uwsgi_ws[gevent]), or include conf/threads.yaml or conf/gevent.yaml "
    "(`python -m uwsgi_ws conf` prints their directory)."
)
#: The router options of uWSGI's http plugin (each starts the same router, plugins/http).
ROUTER_OPTIONS = ("http", "https", "https2")
#: What the router sets in the environ of every request it forwards (plugins/http/http.c).
ROUTER_MARK = ("UWSGI_ROUTER", "http")
#: The fix for the http router without http-websockets, said at start, at the handshake and by `check`.
ROUTER_WITHOUT_WEBSOCKETS = (
    "uWSGI's `http` router runs without `http-websockets`: it forwards the 101 to the client, then drops "
    "every frame the client sends, so each WebSocket opens and hangs. Add `http-websockets: true` next to "
    "`http:` (--http-websockets on the command line; ini: `http-websockets = true`), or serve with "
    "`http-socket:` (directly or behind nginx/HAProxy)."
)
#: Said once when the optional native helper is not there.
PURE_PATH = ("the C fan-out helper (uwsgi_ws._speedups) is not built (no compiler at install time): "
             "broadcasts use the pure-Python path")

#: The fix for an extension class whose model is not the instance's, per class model:
#: how to start uWSGI in the class's model. {cls}, {model}, {running} are filled in.
MODEL_START = {
    "gevent": "--gevent 100 (app.run(gevent=100); conf/gevent.yaml)",
    "async": "--async 100 --ugreen (app.run(async=100, ugreen=True); conf/async.yaml)",
    "threads": "--threads 16 (app.run(threads=16); conf/threads.yaml)",
}
MODEL_MISMATCH = (
    "{cls} is for uWSGI's {model} model but this instance runs the {running} model: its WebSockets "
    "are served with {running}. Start uWSGI with {start}, or use WebSocket, which follows the "
    "instance's model."
)

#: The warning for threads a worker inherited from the master without py-call-osafterfork:
#: {threads} names them.
INHERITED_THREADS = (
    "this worker was forked from a master running Python thread(s) {threads} (started while the app was "
    "imported), and uWSGI runs without `py-call-osafterfork`: Python in the worker still counts them as "
    "running, and at exit waits for them for ever, so every stop and reload of this worker stalls until "
    "worker-reload-mercy (60 s by default) kills it. Add --py-call-osafterfork (YAML `py-call-osafterfork: "
    "true`; conf/broadcast.* and app.run() set it), or start such threads in the workers "
    "(uwsgidecorators' @postfork)."
)

_checked = False
_router_logged = False
_threads_checked = 0  # the pid `check_inherited_threads` ran in


def _gevent_configured() -> bool:
    return _uwsgi.has_option("gevent") or _uwsgi.option("loop") == "gevent"


def _concurrent() -> bool:
    if _gevent_configured() or _uwsgi.has_option("async") or _uwsgi.has_option("ugreen"):
        return True
    threads = _uwsgi.option("threads")
    try:
        return threads is not None and int(threads) > 1
    except ValueError:
        return True  # a placeholder uWSGI expanded oddly: not ours to judge


def _router_without_websockets() -> bool:
    """The instance runs the http router and has not told it to pass WebSockets through."""
    return any(_uwsgi.has_option(name) for name in ROUTER_OPTIONS) and not _uwsgi.flag("http-websockets")


def _stop(message: str) -> None:
    """Log `message` as critical and end the process loading the app (SystemExit)."""
    logger.critical(message)
    if _uwsgi.has_option("lazy-apps") or _uwsgi.has_option("lazy"):
        master = _uwsgi.masterpid()
        if master and master != os.getpid():
            os.kill(master, signal.SIGINT)  # a worker loads the app: stop the instance, not just it
    raise SystemExit("uwsgi_ws: " + message)


def check() -> None:
    """Diagnose the running uWSGI instance once per process (a no-op outside uWSGI).

    Blocking: no (reads options, looks a module up). Thread-safe: call it from
    the thread importing the app (it is, from `WebSocket.init_app`).
    Raises:
        SystemExit: gevent is configured but not installed (the message says
            what to install); the instance is stopping.
    """
    global _checked
    if _checked or not _uwsgi.available():
        return
    _checked = True
    if _gevent_configured() and importlib.util.find_spec("gevent") is None:
        _stop(GEVENT_MISSING)
    if not _concurrent():
        logger.warning(NO_CONCURRENCY)
    if _router_without_websockets():
        logger.warning(ROUTER_WITHOUT_WEBSOCKETS)
    if not settings.get("pure") and importlib.util.find_spec("uwsgi_ws._speedups") is None:
        logger.info(PURE_PATH)


def inherited_threads() -> List[threading.Thread]:
    """The non-daemon threads Python in this process counts as running but which do not
    exist in it: copies of the master's threads, left by a fork without
    ``PyOS_AfterFork_Child`` (uWSGI calls it only with ``--py-call-osafterfork``). A
    thread exists here when its native id is one of this process's tasks
    (/proc/self/task). Linux only (elsewhere: none). Never blocks; any thread."""
    try:
        tasks = set(os.listdir("/proc/self/task"))
    except OSError:
        return []
    return [t for t in threading.enumerate()
            if t is not threading.main_thread() and not t.daemon and getattr(t, "native_id", None) is not None
            and str(t.native_id) not in tasks]


def check_inherited_threads() -> None:
    """In a worker after the fork: warn (`INHERITED_THREADS`) when it inherited threads
    of the master that will hold its exit (`inherited_threads`). Once per process; a
    no-op outside uWSGI or with ``py-call-osafterfork``. Never raises."""
    global _threads_checked
    if _threads_checked == os.getpid() or not _uwsgi.available():
        return
    _threads_checked = os.getpid()
    try:
        if _uwsgi.flag("py-call-osafterfork"):
            return
        found = inherited_threads()
        if found:
            logger.warning(INHERITED_THREADS.format(threads=", ".join(repr(t.name) for t in found)))
    except Exception:  # a diagnostic: never in the way of a worker's start
        logger.debug("inherited threads check failed", exc_info=True)


def check_upgrade(environ: Mapping[str, Any]) -> None:
    """Refuse a WebSocket handshake that uWSGI's http router forwarded without
    ``http-websockets`` (it would open and hang); a no-op otherwise.

    The request is the router's when its environ carries ``UWSGI_ROUTER=http``
    and this instance runs the router (``http``/``https`` options): a request
    on the same instance's ``http-socket`` is served, and so is one from a
    router of another instance (whose options are not known here). Logs the
    fix once per process (worker).

    Args:
        environ: the handshake request's WSGI environ.
    Raises:
        HandshakeRefused: 501 with the fix (`ROUTER_WITHOUT_WEBSOCKETS`), reason "http_router".
    Blocking: no. Thread-safe: yes (the once-only log may, in a race, be said twice).
    """
    global _router_logged
    if environ.get(ROUTER_MARK[0]) != ROUTER_MARK[1] or not _router_without_websockets():
        return
    if not _router_logged:
        _router_logged = True
        logger.error("a WebSocket handshake came through the http router and was refused (501): "
                     + ROUTER_WITHOUT_WEBSOCKETS)
    raise HandshakeRefused(501, "this server cannot open WebSockets: " + ROUTER_WITHOUT_WEBSOCKETS,
                           reason="http_router")


def check_model(name: str, model: Optional[str]) -> None:
    """Warn when the extension class `name` names a concurrency `model` ("gevent",
    "async", "threads"; None: it follows the instance) other than the running
    instance's (`uwsgi_ws._uwsgi.model`). A no-op outside uWSGI or when they agree.

    Blocking: no. Thread-safe: yes (reads options, logs).
    """
    if model is None or not _uwsgi.available():
        return
    running = _uwsgi.model()
    if running != model:
        logger.warning(MODEL_MISMATCH.format(cls=name, model=model, running=running,
                                             start=MODEL_START.get(model, model)))
