"""Reading the metrics: the instance totals (`snapshot`), the Prometheus text
format (`prometheus_text`), the copy into uWSGI's own metrics (the stats server:
`mirror_to_uwsgi`) and the mule that makes that copy without the broadcast mule
(``--mule=uwsgi_ws.metrics:run``). The table and its layout: `table`."""

from __future__ import annotations

# ruff: noqa: F405  (the slot constants come from .table)
import logging
import os
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Tuple

from .table import *  # noqa: F403  (the slot constants, Table, table, local)
from .table import CLOSE_CODE_INDEX, CLOSED_BY_INDEX, uwsgi_api  # noqa: F401

log = logging.getLogger("uwsgi_ws.metrics")

# -- reading -------------------------------------------------------------------


class Snapshot(NamedTuple):
    """Instance totals, summed over the rows."""

    totals: Dict[int, int]  # scalar slot -> sum
    lag_buckets: List[int]  # non-cumulative, len(LAG_BOUNDS) + 1
    lag_max: int
    open: Dict[Tuple[str, int], int]  # (route, worker id) -> open connections (live workers)
    accepted: Dict[str, int]  # route -> upgrades accepted
    rejected: Dict[str, int]  # reason -> upgrades refused
    closes: Dict[Tuple[str, str], int]  # (code, by) -> connections closed
    workers: List[int]  # live worker ids
    shared: bool

    def lag_quantile(self, q: float) -> int:
        """Upper bound of the lag bucket holding quantile `q` (the max if past the last bound)."""
        count = sum(self.lag_buckets)
        if not count:
            return 0
        need = q * count
        seen = 0
        for bound, n in zip(LAG_BOUNDS, self.lag_buckets):
            seen += n
            if seen >= need:
                return min(bound, self.lag_max)
        return self.lag_max


_SCALARS = (MESSAGES_IN, MESSAGES_OUT, BYTES_IN, BYTES_OUT, PUBLISHED, DELIVERED, DROPPED_SLOW,
            DROPPED_LAPPED, DROPPED_MULE, SLOW_CLOSES, LAPPED, QUEUE_FULL, PUBLISH_FAILED, LAG_SUM, LAG_COUNT,
            HISTORY_QUERIES, HISTORY_REPLAYED, HISTORY_MESSAGES, HISTORY_BYTES)


def _live_workers() -> Dict[int, int]:
    """worker id -> pid of the workers alive now ({0: this pid} outside uWSGI)."""
    uwsgi = uwsgi_api()
    if uwsgi is None:
        return {0: os.getpid()}
    try:
        return {w["id"]: w["pid"] for w in uwsgi.workers() if w.get("pid")}
    except Exception:
        return {}


def snapshot() -> Snapshot:
    """Sum every row now. Any process may call it; it takes no lock (each value is
    read whole; a row being written reads as just before or just after the add)."""
    tbl = table()
    live = _live_workers()
    private = uwsgi_api() is None  # outside uWSGI: row 0 is this process, and it is alive
    totals = dict.fromkeys(_SCALARS, 0)
    buckets = [0] * (len(LAG_BOUNDS) + 1)
    lag_max = 0
    open_: Dict[Tuple[str, int], int] = {}
    accepted: Dict[str, int] = {}
    rejected_: Dict[str, int] = {}
    closes: Dict[Tuple[str, str], int] = {}
    routes = set()
    for row in range(tbl.rows):
        values = tbl.counters(row).tolist()
        if not values[PID]:
            continue
        for slot in _SCALARS:
            totals[slot] += values[slot]
        for i in range(len(buckets)):
            buckets[i] += values[LAG_BUCKETS + i]
        lag_max = max(lag_max, values[LAG_MAX])
        for ci, code in enumerate(CLOSE_CODES):
            for bi, by in enumerate(CLOSED_BY):
                n = values[CLOSES + ci * len(CLOSED_BY) + bi]
                if n:
                    closes[(code, by)] = closes.get((code, by), 0) + n
        worker = row if 1 <= row <= tbl.numproc else 0
        alive = (worker != 0 and live.get(worker) == values[PID]) or (private and row == 0)
        for index, kind, name in tbl.labels(row):
            if kind == KIND_ROUTE:
                routes.add(name)
                accepted[name] = accepted.get(name, 0) + values[UPGRADES + index]
                if alive:
                    key = (name, worker)
                    open_[key] = open_.get(key, 0) + values[UPGRADES + index] - values[CLOSED + index]
            elif kind == KIND_REASON:
                rejected_[name] = rejected_.get(name, 0) + values[UPGRADES + index]
    workers = sorted(w for w in live if w)
    for route in routes:  # every route x live worker has a value, 0 included
        for worker in workers:
            open_.setdefault((route, worker), 0)
    return Snapshot(totals, buckets, lag_max, open_, accepted, rejected_, closes, workers, tbl.shared)


# -- Prometheus text format ---------------------------------------------------------


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(**pairs: Any) -> str:
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in pairs.items()) + "}"


#: (name, type, help, snapshot slot) of the unlabelled counters.
_SIMPLE = (
    ("uwsgi_ws_messages_received_total", "counter", "WebSocket data messages received.", MESSAGES_IN),
    ("uwsgi_ws_messages_sent_total", "counter",
     "WebSocket data messages sent (broadcast deliveries included).", MESSAGES_OUT),
    ("uwsgi_ws_received_bytes_total", "counter", "Bytes read from WebSocket connections (all frames).", BYTES_IN),
    ("uwsgi_ws_sent_bytes_total", "counter",
     "Bytes written or queued to WebSocket connections (all frames).", BYTES_OUT),
    ("uwsgi_ws_broadcasts_published_total", "counter",
     "Broadcast messages appended to the ring (by the publishing process or the broadcast mule).", PUBLISHED),
    ("uwsgi_ws_broadcasts_delivered_total", "counter",
     "Broadcast messages written or queued to a subscribed connection.", DELIVERED),
    ("uwsgi_ws_slow_consumer_closes_total", "counter",
     "Connections closed with 1013 because they could not keep up with broadcasts.", SLOW_CLOSES),
    ("uwsgi_ws_ring_lapped_total", "counter", "Times a worker fell a whole broadcast ring behind.", LAPPED),
    ("uwsgi_ws_publish_queue_full_total", "counter",
     "Publishes that had to wait for the broadcast mule (no answer within 0.5 s, or a retry while it respawned).",
     QUEUE_FULL),
    ("uwsgi_ws_publish_failures_total", "counter", "publish() calls that raised PublishError.", PUBLISH_FAILED),
    ("uwsgi_ws_history_queries_total", "counter",
     "Requests the broadcast history answered (resume beyond the ring, last messages on join).", HISTORY_QUERIES),
    ("uwsgi_ws_history_replayed_total", "counter", "Broadcasts sent from the history.", HISTORY_REPLAYED),
    ("uwsgi_ws_history_messages", "gauge", "Event broadcasts the history keeps now (uwsgi-ws-history per room).",
     HISTORY_MESSAGES),
    ("uwsgi_ws_history_bytes", "gauge", "Bytes the history keeps now (at most uwsgi-ws-history-size).",
     HISTORY_BYTES),
)
_DROPPED = (("slow_consumer", DROPPED_SLOW), ("lapped", DROPPED_LAPPED), ("mule_rejected", DROPPED_MULE))


def prometheus_text(snap: Optional[Snapshot] = None) -> str:
    """The metrics in the Prometheus text exposition format (version 0.0.4)."""
    s = snap or snapshot()
    out: List[str] = []

    def family(name: str, kind: str, help_: str, samples: Iterable[Tuple[str, Any]]) -> None:
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            out.append(f"{name}{labels} {value}")

    if not s.shared:
        out.append("# uwsgi_ws: these metrics are this process's only (see uwsgi_ws/metrics.py: lazy-apps)")
    family("uwsgi_ws_connections_open", "gauge", "WebSocket connections open now, per route and worker.",
           ((_labels(route=r, worker=w), n) for (r, w), n in sorted(s.open.items())))
    family("uwsgi_ws_upgrades_accepted_total", "counter", "WebSocket upgrades accepted, per route.",
           ((_labels(route=r), n) for r, n in sorted(s.accepted.items())))
    family("uwsgi_ws_upgrades_rejected_total", "counter", "WebSocket upgrade requests refused, per reason.",
           ((_labels(reason=r), n) for r, n in sorted(s.rejected.items())))
    family("uwsgi_ws_connections_closed_total", "counter",
           "WebSocket connections closed, per close code and the side that sent the first close frame.",
           ((_labels(code=c, by=b), n) for (c, b), n in sorted(s.closes.items())))
    for name, kind, help_, slot in _SIMPLE:
        family(name, kind, help_, (("", s.totals[slot]),))
    family("uwsgi_ws_broadcasts_dropped_total", "counter",
           "Broadcast messages not delivered: per connection for slow_consumer and lapped, "
           "per publish request for mule_rejected.",
           ((_labels(reason=r), s.totals[slot]) for r, slot in _DROPPED))
    cumulative, samples = 0, []
    for bound, n in zip(LAG_BOUNDS, s.lag_buckets):
        cumulative += n
        samples.append((_labels(le=bound), cumulative))
    samples.append((_labels(le="+Inf"), cumulative + s.lag_buckets[-1]))
    out.append("# HELP uwsgi_ws_ring_lag_messages Broadcast messages a worker was behind the ring "
               "when it started a delivery.")
    out.append("# TYPE uwsgi_ws_ring_lag_messages histogram")
    out.extend(f"uwsgi_ws_ring_lag_messages_bucket{labels} {value}" for labels, value in samples)
    out.append(f"uwsgi_ws_ring_lag_messages_sum {s.totals[LAG_SUM]}")
    out.append(f"uwsgi_ws_ring_lag_messages_count {s.totals[LAG_COUNT]}")
    family("uwsgi_ws_ring_lag_max_messages", "gauge", "Largest ring lag seen since the instance started.",
           (("", s.lag_max),))
    family("uwsgi_ws_ring_lag_p99_messages", "gauge",
           "99th percentile of the ring lag since the instance started (upper bound of its histogram bucket).",
           (("", s.lag_quantile(0.99)),))
    return "\n".join(out) + "\n"


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


# -- uWSGI's metrics subsystem (the stats server) --------------------------------------


def _total(slot: int) -> Any:
    """The getter of one counter's instance total in a Snapshot."""
    return lambda snap: snap.totals[slot]

#: uWSGI metric name -> (type, how to get it from a Snapshot). Declare them with
#: conf/metrics.yaml (`enable-metrics` and one `metric:` line each).
UWSGI_METRICS: Dict[str, Tuple[str, Any]] = {
    "uwsgi_ws_connections_open": ("gauge", lambda s: sum(s.open.values())),
    "uwsgi_ws_upgrades_accepted_total": ("counter", lambda s: sum(s.accepted.values())),
    "uwsgi_ws_upgrades_rejected_total": ("counter", lambda s: sum(s.rejected.values())),
    "uwsgi_ws_connections_closed_total": ("counter", lambda s: sum(s.closes.values())),
    **{name: (kind, _total(slot)) for name, kind, _, slot in _SIMPLE},
    "uwsgi_ws_broadcasts_dropped_total": ("counter", lambda s: sum(s.totals[slot] for _, slot in _DROPPED)),
    "uwsgi_ws_ring_lag_max_messages": ("gauge", lambda s: s.lag_max),
    "uwsgi_ws_ring_lag_p99_messages": ("gauge", lambda s: s.lag_quantile(0.99)),
}


def mirror_enabled() -> bool:
    """True when uWSGI runs with --enable-metrics (the stats server then shows metrics)."""
    uwsgi = uwsgi_api()
    return bool(uwsgi is not None and (getattr(uwsgi, "opt", {}) or {}).get("enable-metrics"))


def mirror_to_uwsgi(snap: Optional[Snapshot] = None) -> int:
    """Copy the instance totals into uWSGI metrics of the same names (those declared
    with --metric); returns how many were set. Counters only move up (metric_set_max),
    so two mirrors at once never make one go back."""
    uwsgi = uwsgi_api()
    if uwsgi is None:
        return 0
    s = snap or snapshot()
    done = 0
    for name, (kind, get) in UWSGI_METRICS.items():
        value = int(get(s))
        setter = uwsgi.metric_set_max if kind == "counter" else uwsgi.metric_set
        if setter(name, value):
            done += 1
    return done


MIRROR_INTERVAL = 1.0  # seconds between two copies into uWSGI metrics


def run() -> None:
    """A mule that copies the totals into uWSGI metrics every second, for instances
    without the broadcast mule (which does it itself): ``--mule=uwsgi_ws.metrics:run``."""
    uwsgi = uwsgi_api()

    local()
    while True:
        mirror_to_uwsgi()
        uwsgi.mule_get_msg(signals=True, farms=False, timeout=int(MIRROR_INTERVAL))
