"""The conditions under which uWSGI recycles a worker without telling it by a signal
our adapters can watch (uWSGI 2.0, read from its source):

- ``--max-requests`` (plus ``--max-requests-delta`` per worker id), ``--reload-on-rss``,
  ``--reload-on-as``: the worker checks them itself at the end of each request
  (core/utils.c, uwsgi_close_request) and takes its graceful path; under gevent that
  path runs from C (plugins/gevent/gevent.c, uwsgi_gevent_gbcw) with no signal;
- ``--max-worker-lifetime`` (plus ``--max-worker-lifetime-delta``): the master marks the
  worker and sends it SIGWINCH, a no-op wake-up (core/master_checks.c); the worker
  then waits for its running requests (our WebSockets) with no deadline at all.

`Limits` holds this worker's thresholds and `reached` tests them with the same
formulas; an adapter polls it every `CHECK` seconds.
"""

from __future__ import annotations

import os
import time
from typing import Callable, NamedTuple, Optional

from .. import _uwsgi

#: Seconds between two checks.
CHECK = 0.5


class Limits(NamedTuple):
    max_requests: int  # this worker's (0: none)
    rss: int  # bytes (0: none)
    vsz: int  # bytes (0: none)
    lifetime: float  # seconds from the worker's start (0: none)


def _number(name: str) -> int:
    value = _uwsgi.option(name)
    try:
        return int(value) if value else 0
    except ValueError:
        return 0


def limits() -> Optional[Limits]:
    """This worker's recycle limits, None when none is set."""
    index = max(_uwsgi.worker_id() - 1, 0)
    max_requests = _number("max-requests")
    if max_requests:
        max_requests += index * _number("max-requests-delta")
    lifetime = _number("max-worker-lifetime")
    if lifetime:
        lifetime += index * _number("max-worker-lifetime-delta")
    found = Limits(max_requests, _number("reload-on-rss") << 20, _number("reload-on-as") << 20, float(lifetime))
    return found if any(found) else None


def _started_at() -> float:
    """This process's start (epoch seconds), from /proc: what uWSGI records as last_spawn."""
    with open("/proc/self/stat") as stat:
        ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/stat") as proc_stat:
        boot = next(int(line.split()[1]) for line in proc_stat if line.startswith("btime"))
    return boot + ticks / os.sysconf("SC_CLK_TCK")


_PAGE = os.sysconf("SC_PAGE_SIZE")


def reached(found: Limits, delta_requests: Optional[int], started: float) -> bool:
    """True when uWSGI is recycling (or is about to recycle) this worker.

    Args:
        found: this worker's limits.
        delta_requests: requests since the worker's spawn, or None when unknown.
        started: the worker's start, epoch seconds (`_started_at`).
    """
    if found.max_requests and delta_requests is not None and delta_requests >= found.max_requests:
        return True
    if found.lifetime and time.time() - started > found.lifetime:
        return True
    if found.rss or found.vsz:
        with open("/proc/self/statm") as statm:
            vsz, rss = (int(n) * _PAGE for n in statm.read().split()[:2])
        if (found.rss and rss >= found.rss) or (found.vsz and vsz >= found.vsz):
            return True
    return False


started_at = _started_at


def watch(found: Limits, sleep: Callable[[float], None], callback: Callable[[], None]) -> None:
    """Check `found` every CHECK seconds (waiting with the model's `sleep`) and call
    `callback` once a limit is reached; returns then. Runs in a task of the worker:
    ``uwsgi.workers()`` reads shared memory only, callable from a thread or greenlet of ours."""
    index = _uwsgi.worker_id() - 1
    started = _started_at()
    while True:
        sleep(CHECK)
        delta = _uwsgi.api().workers()[index]["delta_requests"] if found.max_requests else None
        if reached(found, delta, started):
            callback()
            return
