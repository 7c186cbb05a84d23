"""Say goodbye to this worker's WebSockets whenever uWSGI stops the worker.

- A reload (``uwsgi --reload``, a touched vassal, chain reload,
  ``--max-requests``, ``--reload-on-rss``/``-as``, ``--max-worker-lifetime``):
  close 1012 (service restart; the client reconnects at once), with the
  closing handshake, instead of holding the connections until
  ``worker-reload-mercy`` runs out and the master kills the worker (a reset).
- A full shutdown (SIGINT, ``--stop``, SIGTERM with ``--die-on-term``): close
  1001 (going away), queued without waiting: the worker exits right after.

How a worker learns it must stop depends on the model: each runtime adapter
provides `on_graceful_stop` and `on_shutdown` (`uwsgi_ws.runtime`, which says
how per model). This module only keeps the set of open connections (`track`,
`untrack`: any thread or greenlet) and installs the hooks at the worker's
first connection. When the model cannot tell, one line is logged:
connections then end as uWSGI ends them.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Set

from .log import get as _logger
from .protocol import GOING_AWAY, SERVICE_RESTART

log = _logger(__name__)
_lock = threading.Lock()  # never held across a yield: safe in every model
_open: Set[Any] = set()
_installed_pid = 0
_stopping = False


def track(conn: Any, runtime: Any) -> None:
    """`conn` is open in this worker; installs the stop hook at the first call per process."""
    global _installed_pid
    pid = os.getpid()
    if _installed_pid != pid:
        with _lock:
            if _installed_pid != pid:
                _open.clear()  # the master's (never any) or a parent's
                _installed_pid = pid
                if runtime.HAS_TASKS and not runtime.on_graceful_stop(lambda: _going_away(runtime)):
                    log.warning("worker %d cannot watch for a graceful stop (uWSGI's loop_stop_pipe not "
                                "found): its WebSockets will not get close 1012 on reload", pid)
                if runtime.HAS_TASKS and not runtime.on_shutdown(_shutting_down):
                    log.warning("worker %d cannot see a full shutdown coming (the optional native helper "
                                "uwsgi_ws._speedups is not built): its WebSockets will not get close 1001", pid)
    with _lock:
        _open.add(conn)
    if _stopping:  # the worker was already told to stop: this one goes too
        runtime.spawn(_close, conn)


def untrack(conn: Any) -> None:
    with _lock:
        _open.discard(conn)


def _going_away(runtime: Any) -> None:
    """Start the closing handshake of every open connection, without waiting."""
    global _stopping
    _stopping = True
    with _lock:
        conns = list(_open)
    for conn in conns:
        runtime.spawn(_close, conn)


def _shutting_down() -> None:
    """The worker exits now: queue close 1001 on every open connection, wait for nothing."""
    global _stopping
    _stopping = True
    with _lock:
        conns = list(_open)
    for conn in conns:
        try:
            conn.close_nowait(GOING_AWAY, "server shutting down")
        except Exception:
            pass


def _close(conn: Any) -> None:
    try:
        conn.close(SERVICE_RESTART, "server restarting")
    except Exception:  # already closed, socket gone: nothing to say goodbye to
        pass
