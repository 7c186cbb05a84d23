"""Close this worker's WebSockets with 1012 (service restart) when uWSGI tells
the worker to stop gracefully (``uwsgi --reload``, SIGHUP to the master, a
touched reload file, max-requests...), instead of holding them until
``worker-reload-mercy`` runs out and the master kills the worker (a reset).

How a worker learns it must stop, per model (uWSGI 2.0.31):

- gevent: the master sends the worker SIGHUP, which uWSGI's gevent loop
  handles with a gevent signal watcher (it stops accepting, then waits for
  the running requests). libev runs every watcher of a signal, so a second
  one, `gevent.signal_handler(SIGHUP, ...)`, tells us too.
- threads: the worker's C handler for SIGHUP (`gracefully_kill`, also
  `goodbye_cruel_world`) closes the write end of `loop_stop_pipe`, a pipe the
  worker creates after the fork to stop its threads' accept loops. A task of
  ours polls the read end and sees the hang-up. A Python signal handler is no
  option: only the main thread may install one, uWSGI installs its own after
  the app's post-fork hooks, and it must keep running.

The pipe is found by elimination: a pipe whose two ends this worker holds and
that the master did not have when this module was imported (before the fork).
When that is not exactly one pipe, nothing is installed and one line is
logged: connections then end as uWSGI ends them.

Either way the hook is installed at the worker's first connection; `track`
and `untrack` keep the set of open connections (any thread or greenlet).
"""

from __future__ import annotations

import os
import select
import sys
import threading
from typing import Any, Optional, Set

from .protocol import SERVICE_RESTART

_lock = threading.Lock()  # never held across a yield: safe in every model
_open: Set[Any] = set()
_installed_pid = 0
_stopping = False
_watcher: Any = None  # the gevent signal watcher


def _pipe_inodes() -> Set[str]:
    """The "pipe:[inode]" links of this process's descriptors."""
    found = set()
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return found
    for name in names:
        try:
            link = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if link.startswith("pipe:"):
            found.add(link)
    return found


_inherited = _pipe_inodes()  # at import: in the uWSGI master, before the fork (lazy-apps off)


def _loop_stop_fd() -> Optional[int]:
    """The read end of the worker's loop_stop_pipe, or None if it cannot be told apart."""
    ends: dict = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{name}")
            with open(f"/proc/self/fdinfo/{name}") as info:
                flags = int(next(line for line in info if line.startswith("flags:")).split()[1], 8)
        except (OSError, StopIteration, ValueError):
            continue
        if link.startswith("pipe:") and link not in _inherited:
            ends.setdefault(link, []).append((int(name), flags & os.O_ACCMODE))
    candidates = [fds for fds in ends.values()
                  if sorted(mode for _, mode in fds) == [os.O_RDONLY, os.O_WRONLY]]
    if len(candidates) != 1:
        return None
    return next(fd for fd, mode in candidates[0] if mode == os.O_RDONLY)


def track(conn: Any, runtime: Any) -> None:
    """`conn` is open in this worker; installs the stop hook at the first call per process."""
    global _installed_pid
    pid = os.getpid()
    if _installed_pid != pid:
        with _lock:
            if _installed_pid != pid:
                _open.clear()  # the master's (never any) or a parent's
                _installed_pid = pid
                _install(runtime)
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


def _close(conn: Any) -> None:
    try:
        conn.close(SERVICE_RESTART, "server restarting")
    except Exception:  # already closed, socket gone: nothing to say goodbye to
        pass


def _install(runtime: Any) -> None:
    if runtime.NAME == "gevent":
        import signal

        import gevent

        global _watcher
        _watcher = gevent.signal_handler(signal.SIGHUP, _going_away, runtime)  # kept: a collected one stops
        return
    if runtime.NAME != "threads":
        return  # async cores: uWSGI exits the worker at once on SIGHUP, nothing to wait for
    fd = _loop_stop_fd()
    if fd is None:
        print(f"uwsgi_ws: worker {os.getpid()} cannot watch for a graceful stop (uWSGI's loop_stop_pipe "
              "not found): its WebSockets will not get close 1012 on reload", file=sys.stderr, flush=True)
        return

    def watch() -> None:
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLHUP)
        while not poller.poll():
            pass
        _going_away(runtime)

    runtime.spawn(watch)
