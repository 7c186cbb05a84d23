"""Say goodbye to this worker's WebSockets whenever uWSGI stops the worker.

- A reload (``uwsgi --reload``, a touched vassal, chain reload,
  ``--max-requests``, ``--reload-on-rss``/``-as``, ``--max-worker-lifetime``):
  close 1012 (service restart; the client reconnects at once), with the
  closing handshake, instead of holding the connections until
  ``worker-reload-mercy`` runs out and the master kills the worker (a reset).
- A full shutdown (SIGINT, ``--stop``, SIGTERM with ``--die-on-term``): close
  1001 (going away), queued without waiting: the worker exits right after. An
  upgrade under way (its 101 written or about to be, the connection not tracked
  yet: `upgrading`) is waited for, up to `UPGRADE_WAIT`, and closes with 1001 as
  soon as it is tracked, instead of being reset by the exit.

How a worker learns it must stop depends on the model: each runtime adapter
provides `on_graceful_stop` and `on_shutdown` (`uwsgi_ws.runtime`, which says
how per model). This module keeps the set of open connections (`track`,
`untrack`: any thread or greenlet) and installs the hooks once per worker
(`prepare`), early enough that no stop goes unseen, at whatever point of the
worker's life it comes:

- gevent: uWSGI's loop answers SIGHUP with its own graceful path (it stops
  accepting, then waits for the running requests: our WebSockets) whether or
  not a watcher of ours exists yet. Installed at the first connection, the
  watcher missed a SIGHUP that came while that connection was in its
  handshake: the worker then waited for it until worker-reload-mercy (NO
  MERCY, a reset, issue 12). So the hooks are installed when the worker's
  loop starts, before it accepts anything: a greenlet spawned from uWSGI's
  post-fork hook (`arm`, lazy-apps off), or at import in the worker (lazy-apps
  on), runs in the loop's first iteration, after uWSGI mapped SIGHUP to the
  loop and before any request is read.
- threads: uWSGI's C handler closes the write end of its loop_stop_pipe, which
  stays closed: a watcher installed later still sees the hang-up
  (`runtime._stoppipe`). The SIGINT/SIGTERM relay, though, must be in place
  before a full shutdown comes, or the worker exits at once and a connection
  whose handshake just ended is reset: a thread of ours installs the hooks as
  soon as uWSGI's own handlers are (`runtime.threads.at_worker_start`), and a
  worker's first upgrade installs them before its 101 if it comes first
  (`upgrading`).
- A new worker ignores SIGHUP from the fork until uWSGI installs its handler
  (it inherits ``signal(SIGHUP, SIG_IGN)`` from the master's start, core/uwsgi.c
  uwsgi_setup; uwsgi_worker_run installs ``gracefully_kill`` only after
  uwsgi_init_all_apps, i.e. after the whole app import under lazy-apps): a
  reload landing there was lost and the master killed the worker at
  worker-reload-mercy ("NO MERCY", its connections reset). From uWSGI's
  post-fork hook (or our import, under lazy-apps) a handler of ours notes such
  a SIGHUP; once uWSGI's handler is in place the worker sends itself SIGHUP
  again (`_redeliver`) and uWSGI's graceful path runs.
- Likewise a full shutdown (the master sends SIGINT to every worker) that lands
  while a worker is still in that start: Python's own SIGINT handler raised
  KeyboardInterrupt in the post-fork hook, the worker then started as if
  nothing had come and the master waited for it until worker-reload-mercy
  (the stop stalled; seen under load when one worker started late). SIGINT and
  SIGTERM are noted the same way and redelivered once uWSGI's handlers (and our
  relay) are in place: the worker's connections close with 1001 and it exits.

A connection that opens after the stop was seen is closed at once (1012).
What uWSGI alone loses (a SIGHUP between the fork and uWSGI's post-fork hook,
or before a lazy-apps import reaches uwsgi_ws; a master still starting ignores
SIGHUP too, core/master.c installs grace_them_all in master_loop) is bounded by
worker-reload-mercy: 10 s in the shipped configs.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager
from types import FrameType
from typing import Any, Callable, Iterator, Optional, Set

from . import _uwsgi, startup
from .exceptions import HandshakeRefused
from .log import get as _logger
from .protocol import GOING_AWAY, SERVICE_RESTART

log = _logger(__name__)
_lock = threading.Lock()  # never held across a yield: safe in every model
_open: Set[Any] = set()
_installed_pid = 0
_stopping = False
_shutting = False  # a full shutdown: connections tracked from now on close with 1001 at once
_upgrades = 0  # upgrades between the start of their 101 and `track` (`upgrading`)
_upgrades_done: Any = None  # the runtime Event a shutdown waits on while _upgrades > 0
_asked_pid = 0  # the pid in which a stop signal came before uWSGI's handler was installed
_asked: Set[int] = set()  # those signals (SIGHUP, SIGINT, SIGTERM), in that pid

#: Seconds a full shutdown waits for the upgrades under way to be tracked (their 101 may be
#: out: the client would see a reset instead of close 1001 if the worker exited first).
UPGRADE_WAIT = 1.0



def prepare(runtime: Any) -> None:
    """Install this worker's stop hooks (once per process; later calls return at once).

    Args:
        runtime: the model's adapter (`uwsgi_ws.runtime`).

    Never blocks; any thread or greenlet. Logs one warning per hook the model
    cannot provide (connections then end as uWSGI ends them). Outside uWSGI
    (``flask run``, the test client) it does nothing.
    """
    global _installed_pid
    pid = os.getpid()
    if _installed_pid == pid or not _uwsgi.available():  # flask run, the test client: uWSGI stops nothing
        return
    with _lock:
        if _installed_pid == pid:
            return
        _open.clear()  # the master's (never any) or a parent's
        _installed_pid = pid
        if runtime.HAS_TASKS and not runtime.on_graceful_stop(lambda: _going_away(runtime)):
            log.warning("worker %d cannot watch for a graceful stop (uWSGI's loop_stop_pipe not "
                        "found): its WebSockets will not get close 1012 on reload", pid)
        if runtime.HAS_TASKS and not runtime.on_shutdown(lambda: _shutting_down(runtime)):
            log.warning("worker %d cannot see a full shutdown coming (the optional native helper "
                        "uwsgi_ws._speedups is not built): its WebSockets will not get close 1001", pid)
    if _asked_pid == pid:
        _redeliver()


def track(conn: Any, runtime: Any) -> None:
    """`conn` is open in this worker: it gets a close frame when the worker stops.

    Args:
        conn: the open connection (`close`, `close_nowait`).
        runtime: the model's adapter; the stop hooks are installed if not yet (`prepare`).

    Never blocks; any thread or greenlet. A connection tracked after the stop
    was seen is closed at once (1012), in a task of its own.
    """
    prepare(runtime)
    with _lock:
        _open.add(conn)
        shutting = _shutting
    if shutting:  # the worker exits as soon as the upgrades under way are tracked
        _close_now(conn)
    elif _stopping:  # the worker was already told to stop: this one goes too
        runtime.spawn(_close, conn)


@contextmanager
def upgrading(runtime: Any) -> Iterator[None]:
    """Around an upgrade, from before its 101 is written until `track` (or a failure):
    a full shutdown meanwhile waits for it (up to `UPGRADE_WAIT`), so the connection
    gets close 1001 rather than a reset. Never blocks; any thread or greenlet.

    Args:
        runtime: the model's adapter; the stop hooks are installed first if not yet
            (`prepare`): no 101 goes out before the shutdown relay is in place, even in
            a worker's first milliseconds (a threaded worker's start installs them
            from a thread that polls for uWSGI's handlers: `Runtime.at_worker_start`).

    Raises:
        HandshakeRefused: 503 with ``Retry-After: 1`` (reason ``shutdown``) once a full
            shutdown has begun: the worker exits in a moment, a 101 now would be cut.
    """
    global _upgrades
    prepare(runtime)
    with _lock:
        if _shutting:
            raise HandshakeRefused(503, "503 Service Unavailable: this worker is shutting down; connect again",
                                   [("Retry-After", "1")], reason="shutdown")
        _upgrades += 1
    try:
        yield
    finally:
        with _lock:
            _upgrades -= 1
            done = _upgrades_done if _upgrades == 0 else None
        if done is not None:
            done.set()


def stopping() -> bool:
    """True once this worker was told to stop (a reload's SIGHUP, a shutdown): its
    connections are closing and the broadcast mule may be gone already."""
    return _stopping


def untrack(conn: Any) -> None:
    """`conn` is closed: forget it. Never blocks; any thread or greenlet."""
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


def _shutting_down(runtime: Any) -> None:
    """The worker exits when this returns: queue close 1001 on every open connection,
    then wait (up to `UPGRADE_WAIT`) for the upgrades under way, which close with 1001
    as `track` sees them. Runs in the model's shutdown task (`runtime.on_shutdown`)."""
    global _stopping, _shutting, _upgrades_done
    done = runtime.Event()
    with _lock:
        _stopping = _shutting = True
        conns = list(_open)
        if _upgrades:
            _upgrades_done = done
        else:
            done.set()
    for conn in conns:
        _close_now(conn)
    if not done.wait(UPGRADE_WAIT):
        log.warning("worker %d exits with an upgrade still under way after %.1f s: that client sees a reset",
                    os.getpid(), UPGRADE_WAIT)


def _close_now(conn: Any) -> None:
    """Queue close 1001 on `conn` without waiting (the worker exits right after)."""
    try:
        conn.close_nowait(GOING_AWAY, "server shutting down")
    except Exception:  # already closed, socket gone: nothing to say goodbye to
        pass


def _close(conn: Any) -> None:
    try:
        conn.close(SERVICE_RESTART, "server restarting")
    except Exception:  # already closed, socket gone: nothing to say goodbye to
        pass


# -- from the worker's start -------------------------------------------------------------


def _worker_runtime() -> Any:
    from . import runtime

    return runtime.load(runtime.detect())


def _at_worker_start() -> None:
    """In a worker, before its loop runs (uWSGI's post-fork hook, or the app's import
    under lazy-apps): a SIGHUP, SIGINT or SIGTERM from now until uWSGI installs its
    handlers is noted (`_note_signal`) instead of ignored (SIGHUP) or raised as
    KeyboardInterrupt (SIGINT); then the model installs the hooks as early as it can
    (`Runtime.at_worker_start`: under gevent in the loop's first iteration, before any
    request is read; under threads once uWSGI's own handlers are in place)."""
    if _uwsgi.worker_id() <= 0:  # a mule or a spooler: no WebSockets there
        return
    try:
        if threading.current_thread() is threading.main_thread():
            for signum in _NOTED:  # first: until uWSGI installs its own (core/uwsgi.c uwsgi_worker_run)
                signal.signal(signum, _note_signal)
        rt = _worker_runtime()
        rt.at_worker_start(lambda: prepare(rt))
    except Exception:  # never stop a worker from starting: the first connection installs them
        log.exception("uwsgi_ws: worker %d could not prepare its stop hooks at start", os.getpid())
    startup.check_inherited_threads()  # the master's threads this fork copied would stall every stop


def _chain_post_fork(fn: Callable[[], None]) -> None:
    """Run `fn` from uWSGI's post-fork hook (in each worker, mule and spooler, after the
    fork), keeping the hook already there (uwsgidecorators' chain when it is loaded)."""
    api = _uwsgi.api()
    decorators = sys.modules.get("uwsgidecorators")
    current = getattr(api, "post_fork_hook", None)
    if decorators is not None and current is getattr(decorators, "postfork_chain_hook", None):
        decorators.postfork_chain.append(fn)
        return

    def hook() -> None:
        fn()
        if current is not None:
            current()

    setattr(api, "post_fork_hook", hook)  # noqa: B010  (uWSGI reads it from its module)


#: The stop signals a starting worker notes (`_note_signal`) and redelivers (`_redeliver`).
_NOTED = (signal.SIGHUP, signal.SIGINT, signal.SIGTERM)


def _note_signal(signum: int, frame: Optional[FrameType]) -> None:
    """A stop signal before uWSGI's handler is installed (after the fork, while a lazy-apps
    worker imports the app: uWSGI ignores SIGHUP there, and Python's own SIGINT handler
    would raise KeyboardInterrupt in our post-fork hook): deliver it again once uWSGI's
    own handler is in place. Python runs it in the main thread at its next bytecode."""
    global _asked_pid
    pid = os.getpid()
    if _asked_pid != pid:
        _asked_pid = pid
        _asked.clear()
    if signum in _asked:
        return
    _asked.add(signum)
    what = "reload" if signum == signal.SIGHUP else "shut down"
    log.warning("worker %d was asked to %s while starting (loading the app): it does once it is ready", pid, what)
    if _installed_pid == pid:  # ready already (Python ran this late, at its next bytecode)
        _redeliver()


_redelivered = 0


def _redeliver() -> None:
    """Send this worker (once) the stop signal it received before uWSGI could handle it:
    the full shutdown's when one came (it supersedes a reload), else SIGHUP."""
    global _redelivered
    if _redelivered != os.getpid():
        _redelivered = os.getpid()
        asked = list(_asked)
        shutdown = [s for s in asked if s != signal.SIGHUP]
        os.kill(os.getpid(), shutdown[0] if shutdown else signal.SIGHUP)


def arm() -> None:
    """Arrange for the stop hooks to be installed when each worker starts (idempotent;
    called once at import).

    In the uWSGI master (lazy-apps off) it chains uWSGI's post-fork hook
    (``uwsgi.post_fork_hook``, keeping one already set; uwsgidecorators' chain when it
    is loaded: imported later, uwsgidecorators replaces the hook, and the first
    connection installs the hooks as before); in a worker (lazy-apps on) it starts at
    once (`_at_worker_start`). Outside uWSGI it does nothing. Never raises.
    """
    global _armed
    if _armed or not _uwsgi.available():
        return
    _armed = True
    if _uwsgi.worker_id() > 0:
        _at_worker_start()
    elif _uwsgi.mule_id() <= 0:
        _chain_post_fork(_at_worker_start)


_armed = False
arm()
