"""The conditions under which uWSGI recycles a worker without telling it by a signal
our adapters can watch (uWSGI 2.0, read from its source):

- ``--max-requests`` (plus ``--max-requests-delta`` per worker id), ``--reload-on-rss``,
  ``--reload-on-as``: the worker checks them itself at the end of each request
  (core/utils.c, uwsgi_close_request) and takes its graceful path (goodbye_cruel_world;
  under gevent from C, plugins/gevent/gevent.c uwsgi_gevent_gbcw, with no signal), but
  only once it has lived ``--min-worker-lifetime`` seconds (default 10, core/init.c):
  ``end_of_request - last_spawn >= min_worker_lifetime``, in microseconds, ``last_spawn``
  being the master's whole-second clock at the fork (``uwsgi.workers[i].last_spawn``).
  A younger worker keeps serving, and is recycled at the end of its first request once
  that age is reached: closing our WebSockets (1012) ends their requests and is that end.
- ``--max-worker-lifetime`` (plus ``--max-worker-lifetime-delta``): the master checks
  ``uwsgi_now() - last_spawn > lifetime`` in whole seconds (core/master_checks.c), sets
  the worker's ``manage_next_request`` to 0 and sends it SIGWINCH, a no-op wake-up. Nothing
  else happens: a worker holding requests (our WebSockets) waits for them with no deadline,
  and once they end it still does not exit (gevent: the loop goes on accepting; threads:
  the threads waiting in accept are never woken). So at that same instant the worker
  sends itself SIGHUP: uWSGI's own graceful path (core/uwsgi.c gracefully_kill, gevent's
  py_uwsgi_gevent_graceful) stops accepting, our SIGHUP hook closes the WebSockets with
  1012, and the worker exits with the reload code; the master respawns it.

`limits` reads this worker's thresholds, `reached` tests them with uWSGI's formulas, and
`watch` polls them every `CHECK` seconds in a task of the worker.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Callable, NamedTuple, Optional

from .. import _uwsgi

#: Seconds between two checks.
CHECK = 0.5

#: uWSGI's default ``--min-worker-lifetime`` (core/init.c), seconds.
MIN_LIFETIME = 10

#: `reached`'s answers: uWSGI recycles the worker at the end of its next request (our
#: closes end requests), or the master marked it for max-worker-lifetime (we must go).
RECYCLE = "recycle"
LIFETIME = "lifetime"


class Limits(NamedTuple):
    max_requests: int  # this worker's (0: none)
    rss: int  # bytes (0: none)
    vsz: int  # bytes (0: none)
    lifetime: int  # whole seconds from the worker's spawn (0: none)
    min_lifetime: int = MIN_LIFETIME  # seconds before max-requests/rss/as may recycle the worker


def _number(name: str, default: int = 0) -> int:
    value = _uwsgi.option(name)
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        return default


def limits() -> Optional[Limits]:
    """This worker's recycle limits (uWSGI's options, per worker id), None when none is set."""
    index = max(_uwsgi.worker_id() - 1, 0)
    max_requests = _number("max-requests")
    if max_requests:
        max_requests += index * _number("max-requests-delta")
    lifetime = _number("max-worker-lifetime")
    if lifetime:
        lifetime += index * _number("max-worker-lifetime-delta")
    found = Limits(max_requests, _number("reload-on-rss") << 20, _number("reload-on-as") << 20, lifetime,
                   _number("min-worker-lifetime", MIN_LIFETIME))
    return found if any(found[:4]) else None


def spawned_at() -> int:
    """This process's start, whole epoch seconds (a fallback for an uWSGI whose
    ``uwsgi.workers()`` has no ``last_spawn``): its start in clock ticks since boot
    (/proc/self/stat, field 22) against the time since boot (/proc/uptime, centiseconds),
    both precise where /proc/stat's ``btime`` is whole seconds (up to 1 s early)."""
    with open("/proc/self/stat") as stat:
        ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as uptime:
        since_boot = float(uptime.read().split()[0])
    return int(time.time() - (since_boot - ticks / os.sysconf("SC_CLK_TCK")))


_PAGE = os.sysconf("SC_PAGE_SIZE")


def reached(found: Limits, delta_requests: Optional[int], last_spawn: int, now: float) -> Optional[str]:
    """Whether uWSGI is recycling (or about to recycle) this worker, by uWSGI's rules.

    Args:
        found: this worker's limits.
        delta_requests: requests since the worker's spawn, or None when unknown.
        last_spawn: the worker's spawn, whole epoch seconds (``uwsgi.workers()[i]["last_spawn"]``).
        now: ``time.time()``.

    Returns:
        `LIFETIME` when the master marks the worker for ``--max-worker-lifetime`` (whole
        seconds: ``int(now) - last_spawn > lifetime``, core/master_checks.c); `RECYCLE`
        when a request ending now would recycle it (max-requests, reload-on-rss/-as, the
        worker at least ``min_lifetime`` old: core/utils.c uwsgi_close_request); else None.
    """
    if found.lifetime and int(now) - last_spawn > found.lifetime:
        return LIFETIME
    if now - last_spawn < found.min_lifetime:
        return None
    if found.max_requests and delta_requests is not None and delta_requests >= found.max_requests:
        return RECYCLE
    if found.rss or found.vsz:
        with open("/proc/self/statm") as statm:
            vsz, rss = (int(n) * _PAGE for n in statm.read().split()[:2])
        if (found.rss and rss >= found.rss) or (found.vsz and vsz >= found.vsz):
            return RECYCLE
    return None


def watch(found: Limits, sleep: Callable[[float], None], callback: Callable[[], None]) -> None:
    """Check `found` every CHECK seconds (waiting with the model's `sleep`); once a limit is
    reached, call `callback` (the close of every WebSocket with 1012) and return. For
    `LIFETIME` the worker first sends itself SIGHUP, so uWSGI's graceful path runs and the
    worker is replaced (the master alone never makes it go; our SIGHUP hook then calls
    `callback` too: it must run once however often it is called).

    Runs in a task of the worker (thread or greenlet), after uWSGI installed its SIGHUP
    handler (the stop hooks are installed then: `uwsgi_ws.shutdown.prepare`).
    ``uwsgi.workers()`` reads shared memory only, callable from a thread or greenlet of ours.
    """
    index = _uwsgi.worker_id() - 1
    fallback: Optional[int] = None
    while True:
        sleep(CHECK)
        worker = _uwsgi.api().workers()[index]
        last_spawn = worker.get("last_spawn")
        if not last_spawn:
            if fallback is None:
                fallback = spawned_at()
            last_spawn = fallback
        delta = worker.get("delta_requests") if found.max_requests else None
        why = reached(found, delta, int(last_spawn), time.time())
        if why == LIFETIME:  # uWSGI's graceful path first (it stops accepting), whose hook closes
            os.kill(os.getpid(), signal.SIGHUP)
            sleep(CHECK)  # then the close, should the hook not have run
        if why is not None:
            callback()
            return
