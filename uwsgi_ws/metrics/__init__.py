"""Instance-wide metrics: what the package counts, and the questions others ask.

The counters live in a table in shared memory, one row per process
(`uwsgi_ws.metrics.table`, which documents the layout); `export` reads them
(Prometheus text, the uWSGI stats mirror). Here: the events the package
reports (`opened`, `closed`, `rejected`) and `open_connections`, the query the
connection limits ask (`uwsgi_ws.access`), so no other module decodes the
table's slots.
"""

from __future__ import annotations

# ruff: noqa: F405  (the slot constants come from .table)
import logging
import time
from typing import Any, Dict, NamedTuple, Optional

from .export import (
    CONTENT_TYPE,
    MIRROR_INTERVAL,
    Snapshot,
    mirror_enabled,
    mirror_to_uwsgi,
    prometheus_text,
    run,
    snapshot,
)
from .table import *  # noqa: F403  (the slot constants, Table, Recorder, table, local, MetricsError, ...)
from .table import CLOSED_BY_INDEX, KIND_REASON, KIND_ROUTE, Recorder, local, local_open, table, uwsgi_api

log = logging.getLogger("uwsgi_ws.metrics")

__all__ = [
    "BYTES_IN",
    "BYTES_OUT",
    "CLOSED",
    "CLOSES",
    "CONTENT_TYPE",
    "COUNTERS",
    "DELIVERED",
    "DROPPED_LAPPED",
    "DROPPED_MULE",
    "DROPPED_SLOW",
    "HEADER",
    "HEADER_SIZE",
    "HISTORY_BYTES",
    "HISTORY_MESSAGES",
    "HISTORY_QUERIES",
    "HISTORY_REPLAYED",
    "KIND_REASON",
    "KIND_ROUTE",
    "LABELS",
    "LABEL_BYTES",
    "LABEL_NAME_MAX",
    "LAG_BUCKETS",
    "LAG_COUNT",
    "LAG_MAX",
    "LAG_SUM",
    "LAPPED",
    "MAGIC",
    "MAX_MULES",
    "MESSAGES_IN",
    "MESSAGES_OUT",
    "MIRROR_INTERVAL",
    "OTHER_LABEL",
    "PID",
    "PUBLISHED",
    "PUBLISH_FAILED",
    "QUEUE_FULL",
    "ROW_BYTES",
    "SLOW_CLOSES",
    "UPGRADES",
    "VERSION",
    "MetricsError",
    "Opened",
    "Recorder",
    "Snapshot",
    "Table",
    "bridge_state",
    "close_code_index",
    "closed",
    "local",
    "local_open",
    "mirror_enabled",
    "mirror_to_uwsgi",
    "open_connections",
    "opened",
    "prometheus_text",
    "rejected",
    "required_pages",
    "run",
    "snapshot",
    "table",
]


def open_connections(exclude_worker: int) -> int:
    """Open WebSockets of every live worker of the instance but `exclude_worker`, read
    from the table (upgrades minus closes per route, in rows whose pid is the live
    worker's). Takes no lock; blocks nowhere; 0 outside uWSGI."""
    uwsgi = uwsgi_api()
    if uwsgi is None:
        return 0
    tbl = table()
    total = 0
    for worker in uwsgi.workers():
        wid, pid = worker.get("id", 0), worker.get("pid", 0)
        if wid == exclude_worker or not pid or not 1 <= wid <= tbl.numproc:
            continue
        values = tbl.counters(wid)
        if values[PID] != pid:
            continue
        for index, kind, _ in tbl.labels(wid):
            if kind == KIND_ROUTE:
                total += values[UPGRADES + index] - values[CLOSED + index]
    return int(total)


def bridge_state() -> Optional[Dict[str, Any]]:
    """The Redis bridge of this instance as the broadcast mule reports it in the ring
    header (`uwsgi_ws.broadcast.bridge_stats`), or None when no ``redis-url`` is set.

    Returns:
        ``{"out_state", "in_state"}`` ("connected", "unreachable", "not started", "off"),
        ``pending`` (local messages not pushed to Redis yet), ``inbound``/``missed``
        (other instances' messages received / never read), ``late``, ``not_bridged``,
        ``last_id`` (the last stream entry read), ``instance``; or ``{"error": str}``
        when the ring cannot be read here.

    Reads shared memory only (no Redis, no lock); any worker; never raises.
    """
    from .. import settings

    try:
        if not settings.get("redis-url"):
            return None
    except Exception:
        return None
    try:
        from ..broadcast import bridge_stats  # here: the broadcast's hub imports this module

        raw = bridge_stats()
    except Exception as exc:  # no ring in this process (outside uWSGI, no sharedarea)
        return {"error": f"{type(exc).__name__}: {exc}"}
    pending = int(raw["local_total"]) - int(raw["out"]) - int(raw["not_bridged"])
    keep = ("out_state", "in_state", "inbound", "missed", "late", "not_bridged", "last_id", "instance")
    state: Dict[str, Any] = {name: raw[name] for name in keep}
    state["pending"] = max(0, pending)
    return state


# -- the events the package reports ------------------------------------------------


class Opened(NamedTuple):
    recorder: Recorder
    label: int
    route: str
    started: float


def opened(route: str) -> Opened:
    """An upgrade was accepted on `route` (the Flask rule); pass the result to `closed`."""
    rec = local()
    label = rec.label(KIND_ROUTE, route)
    rec.add(UPGRADES + label)
    return Opened(rec, label, route, time.monotonic())


def closed(token: Opened, conn: Any) -> None:
    """The connection of `token` is closed: count its close code and log one line."""
    rec = token.recorder
    code = conn.close_code
    by = conn.closed_by
    slot = CLOSES + close_code_index(code) * len(CLOSED_BY) + CLOSED_BY_INDEX.get(by, 2)
    rec.add2(CLOSED + token.label, 1, slot, 1)
    if log.isEnabledFor(logging.INFO):
        duration = time.monotonic() - token.started
        fields = {"route": token.route, "duration": round(duration, 6), "messages_in": conn.messages_received,
                  "messages_out": conn.messages_sent, "close_code": code, "closed_by": by,
                  "close_reason": conn.close_reason}
        log.info("websocket closed route=%s duration=%.3fs messages_in=%d messages_out=%d code=%s by=%s%s",
                 token.route, duration, conn.messages_received, conn.messages_sent, code, by,
                 f" reason={conn.close_reason!r}" if conn.close_reason else "",
                 extra={"uwsgi_ws": fields})


def rejected(reason: str, message: str = "", route: Optional[str] = None, status: Optional[int] = None) -> None:
    """An upgrade request was refused: count it under `reason` (a short token such
    as "version", "origin", "auth", "limit") and log it with the message.

    For every check that refuses a handshake; thread-safe, never raises.
    """
    try:
        rec = local()
        rec.add(UPGRADES + rec.label(KIND_REASON, reason))
    except Exception:  # counting must never turn a refusal into a 500
        log.exception("could not count a rejected upgrade")
    if log.isEnabledFor(logging.INFO):
        log.info("websocket upgrade rejected route=%s status=%s reason=%s%s", route, status, reason,
                 f": {message}" if message else "",
                 extra={"uwsgi_ws": {"route": route, "status": status, "reason": reason, "message": message}})


if uwsgi_api() is not None:
    table()  # in the master while the app loads: the mapping is then inherited by every fork
