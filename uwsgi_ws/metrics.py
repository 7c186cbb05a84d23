"""Instance-wide metrics: u64 counters in memory shared by every process of the
uWSGI instance, one row per process, summed by whoever reads them.

Why a table of rows: each worker and each mule writes only its own row, so a
count is one integer add under a lock private to the process (no lock shared
between processes, no message to a collector), and a reader (the Prometheus
view, the stats mirror) sums the rows, which gives exact totals for the whole
instance. The broadcast fan-out counts once per batch, never per delivery.

Where the table lives:

- by default, an anonymous shared mapping (`mmap`) created when this module is
  imported in the uWSGI master, i.e. while the app loads, before the workers
  and mules are forked (uWSGI's default; `lazy-apps: false` in conf/);
- with the instance setting ``metrics-sharedarea`` (placeholder
  ``uwsgi-ws-metrics-sharedarea=<id>``, or ``UWSGI_WS_METRICS_SHAREDAREA``), uWSGI
  sharedarea `id` (needed with `lazy-apps`, where each worker loads the app
  after the fork). Size it with `required_pages()` (64 pages: about 40
  workers and mules).

Byte layout (little-endian):

    offset  size  field
    0       8     magic b"UWSMETR1"
    8       4     layout version (1)
    12      4     rows            number of rows
    16      4     numproc         worker rows are 1..numproc, mule rows follow
    20      44    reserved
    64      ROW_BYTES x rows

    row (ROW_BYTES = 6144): COUNTERS u64 slots, then LABELS label entries
      slot 0                     pid of the process that owns the row
      slots 1..255               counters (the slot constants below)
      label entry (64 bytes):    length u8 | kind u8 | name (62 bytes, UTF-8)

Row 0 is for processes without a row of their own (the master, spoolers, mules
past the last mule row): its counts are best effort (several processes may add
at once). Row w (1..numproc) is worker w; row numproc + m is mule m.

A label entry names a route (kind 1) or a rejection reason (kind 2); its
number `i` indexes the per-label slots UPGRADES + i (upgrades accepted for a
route, rejections for a reason) and CLOSED + i (connections of the route
closed). Only the row's owner claims entries; it writes the name, then the
kind, then the length (the commit), so a reader never sees half a name.

When a new process takes over a row (a respawned worker), it keeps the
counters (totals never go back) and sets CLOSED = UPGRADES for its routes: the
connections of the dead process are gone. Readers count open connections only
in rows whose pid is the live worker's.
"""

from __future__ import annotations

import _thread
import logging
import mmap
import os
import struct
import time
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Tuple

log = logging.getLogger("uwsgi_ws")

MAGIC = b"UWSMETR1"
VERSION = 1
HEADER = struct.Struct("<8sIII")
HEADER_SIZE = 64
COUNTERS = 256
LABELS = 64
LABEL_BYTES = 64
LABEL_NAME_MAX = LABEL_BYTES - 2
ROW_BYTES = COUNTERS * 8 + LABELS * LABEL_BYTES
MAX_MULES = 16  # mule rows of the default (mmap) table

# -- counter slots of a row ----------------------------------------------------
PID = 0
MESSAGES_IN = 1  # data messages received (complete, reassembled)
MESSAGES_OUT = 2  # data messages sent, broadcast deliveries included
BYTES_IN = 3  # bytes read from the sockets (frames of every kind)
BYTES_OUT = 4  # bytes written or queued to the sockets (frames of every kind)
PUBLISHED = 5  # broadcasts appended to the ring (the broadcast mule)
DELIVERED = 6  # broadcast messages written or queued to a connection
DROPPED_SLOW = 7  # broadcast messages not delivered: the connection was too slow
DROPPED_LAPPED = 8  # broadcast messages not delivered: the worker was lapped by the ring
DROPPED_MULE = 9  # publish requests the mule could not append (invalid, too big)
SLOW_CLOSES = 10  # connections closed with 1013 for being too slow
LAPPED = 11  # times a worker fell a whole ring behind
QUEUE_FULL = 12  # publish retries: uwsgi.mule_msg refused (the mule's queue was full)
PUBLISH_FAILED = 13  # publish() calls that raised PublishError
LAG_MAX = 14  # largest ring lag seen (messages)
LAG_SUM = 15
LAG_COUNT = 16
LAG_BUCKETS = 17  # LAG_BOUNDS + one +Inf bucket, non-cumulative counts
LAG_BOUNDS: Tuple[int, ...] = (0,) + tuple(1 << i for i in range(17))  # 0, 1, 2, 4 ... 65536
HISTORY_QUERIES = 36  # history requests answered (the broadcast mule)
HISTORY_REPLAYED = 37  # broadcasts sent from the history (resume, `last`)
HISTORY_MESSAGES = 38  # gauge: event broadcasts the history keeps now
HISTORY_BYTES = 39  # gauge: their bytes
CLOSES = 40  # CLOSE_CODES x CLOSED_BY counters
CLOSE_CODES: Tuple[str, ...] = tuple(str(c) for c in (1000, 1001, 1002, 1003, 1005, 1006, 1007, 1008,
                                                       1009, 1010, 1011, 1012, 1013, 1014, 1015)) + (
    "3xxx", "4xxx", "other")
#: Who sent the first close frame; "none": neither side did (the transport was lost).
CLOSED_BY: Tuple[str, ...] = ("server", "client", "none")
UPGRADES = 96  # per label
CLOSED = UPGRADES + LABELS  # per label

KIND_ROUTE = 1
KIND_REASON = 2
OTHER_LABEL = "(other)"  # the last label entry when a row has no free one

assert LAG_BUCKETS + len(LAG_BOUNDS) + 1 <= CLOSES
assert CLOSES + len(CLOSE_CODES) * len(CLOSED_BY) <= UPGRADES
assert CLOSED + LABELS <= COUNTERS


class MetricsError(Exception):
    """The metrics table cannot be set up as configured; the message says what to change."""


def required_pages(workers: int, mules: int) -> int:
    """Size, in uWSGI sharedarea pages of 4 KiB, of a table for that many workers and mules."""
    size = HEADER_SIZE + (1 + workers + mules) * ROW_BYTES
    return -(-size // 4096)


def close_code_index(code: Optional[int]) -> int:
    """The CLOSE_CODES bucket of a close code (standard codes keep their own)."""
    text = str(code)
    if text in _CODE_INDEX:
        return _CODE_INDEX[text]
    if code is not None and 3000 <= code <= 3999:
        return _CODE_INDEX["3xxx"]
    if code is not None and 4000 <= code <= 4999:
        return _CODE_INDEX["4xxx"]
    return _CODE_INDEX["other"]


_CODE_INDEX = {name: i for i, name in enumerate(CLOSE_CODES)}
_BY_INDEX = {name: i for i, name in enumerate(CLOSED_BY)}


def _lag_bucket(lag: int) -> int:
    if lag <= 0:
        return 0
    return min(1 + (lag - 1).bit_length(), len(LAG_BOUNDS))


# -- the table -----------------------------------------------------------------


class Table:
    """The counter rows over `buf` (a writable byte memoryview)."""

    def __init__(self, buf: memoryview, numproc: int, shared: bool, where: str) -> None:
        self.buf = buf.cast("B") if buf.format != "B" else buf
        rows = (len(self.buf) - HEADER_SIZE) // ROW_BYTES
        if rows < 2 + numproc:
            raise MetricsError(
                f"{where} has {len(self.buf)} bytes: the metrics table of {numproc} worker(s) and "
                f"one mule needs {required_pages(numproc, 1)} pages of 4 KiB (required_pages() in "
                "uwsgi_ws/metrics.py): raise that --sharedarea"
            )
        self.rows = rows
        self.numproc = numproc
        self.shared = shared
        self.where = where
        magic, version, _, _ = HEADER.unpack_from(self.buf, 0)
        if magic != MAGIC or version != VERSION:  # a fresh (zeroed) area: every process writes the same
            HEADER.pack_into(self.buf, 0, b"\0" * 8, VERSION, rows, numproc)
            self.buf[0:8] = MAGIC

    def counters(self, row: int) -> memoryview:
        start = HEADER_SIZE + row * ROW_BYTES
        return self.buf[start:start + COUNTERS * 8].cast("Q")

    def labels(self, row: int) -> List[Tuple[int, int, str]]:
        """(index, kind, name) of the row's committed label entries."""
        base = HEADER_SIZE + row * ROW_BYTES + COUNTERS * 8
        buf = self.buf
        out = []
        for i in range(LABELS):
            at = base + i * LABEL_BYTES
            length = buf[at]
            if length:
                out.append((i, buf[at + 1], bytes(buf[at + 2:at + 2 + length]).decode("utf-8", "replace")))
        return out

    def write_label(self, row: int, index: int, kind: int, name: bytes) -> None:
        at = HEADER_SIZE + row * ROW_BYTES + COUNTERS * 8 + index * LABEL_BYTES
        self.buf[at + 2:at + 2 + len(name)] = name
        self.buf[at + 1] = kind
        self.buf[at] = len(name)  # commit

    def row_of(self, worker_id: int, mule_id: int) -> int:
        if worker_id > 0:
            row = worker_id
        elif mule_id > 0:
            row = self.numproc + mule_id
        else:
            return 0
        return row if row < self.rows else 0


def _uwsgi_api() -> Any:
    """The uwsgi module, None outside uWSGI (`uwsgi_ws._uwsgi` is the one importer)."""
    from . import _uwsgi

    return _uwsgi.api() if _uwsgi.available() else None


def _create_table() -> Table:
    from . import settings

    uwsgi = _uwsgi_api()
    if uwsgi is None:  # plain Python (tests, the Flask dev server): this process only
        size = HEADER_SIZE + 3 * ROW_BYTES
        return Table(memoryview(bytearray(size)), 1, False, "a private table (not under uWSGI)")
    numproc = int(getattr(uwsgi, "numproc", 1) or 1)
    area = settings.get("metrics-sharedarea")
    if area is not None:
        try:
            view = uwsgi.sharedarea_memoryview(int(area))
        except Exception as exc:
            view = None
            detail = f" ({exc})"
        else:
            detail = ""
        if view is None:
            raise MetricsError(
                f"uwsgi-ws-metrics-sharedarea={area} but there is no uWSGI sharedarea {area}{detail}: "
                f"add one more --sharedarea {required_pages(numproc, 2)} (sharedareas are numbered "
                "from 0 in the order of the options; the broadcast ring is 0)"
            )
        return Table(view, numproc, True, f"sharedarea {area}")
    size = HEADER_SIZE + (1 + numproc + MAX_MULES) * ROW_BYTES
    mapping = mmap.mmap(-1, size)  # anonymous and MAP_SHARED: forks share it
    forked = uwsgi.worker_id() > 0 or uwsgi.mule_id() > 0
    if forked:
        log.warning(
            "uwsgi_ws: metrics are counted per process: uwsgi_ws was first imported after the fork "
            "(lazy-apps?); set the placeholder uwsgi-ws-metrics-sharedarea to a sharedarea id for "
            "instance-wide totals"
        )
    return Table(memoryview(mapping), numproc, not forked, "the shared metrics mapping")


_table: Optional[Table] = None
_table_lock = _thread.allocate_lock()


def table() -> Table:
    """The instance's table (created at the first call: call it before the fork)."""
    global _table
    if _table is None:
        with _table_lock:
            if _table is None:
                _table = _create_table()
    return _table


# -- writing: one Recorder per process -------------------------------------------


class Recorder:
    """This process's row. Thread-safe: every add takes a lock private to the
    process (cheap: no other process ever contends for it)."""

    def __init__(self, tbl: Table, row: int, pid: int) -> None:
        self.table = tbl
        self.row = row
        self.pid = pid
        self.v = tbl.counters(row)
        self._lock = _thread.allocate_lock()
        self._labels: Dict[Tuple[int, str], int] = {}
        for index, kind, name in tbl.labels(row):
            self._labels[(kind, name)] = index
        if self.v[PID] != pid and row != 0:
            # A new process in this row: its predecessor's connections are closed.
            for (kind, _), index in self._labels.items():
                if kind == KIND_ROUTE:
                    self.v[CLOSED + index] = self.v[UPGRADES + index]
        self.v[PID] = pid

    def add(self, slot: int, n: int = 1) -> None:
        with self._lock:
            self.v[slot] += n

    def set2(self, slot_a: int, a: int, slot_b: int, b: int) -> None:
        """Set two gauges of this process's row."""
        with self._lock:
            v = self.v
            v[slot_a] = a
            v[slot_b] = b

    def add2(self, slot_a: int, a: int, slot_b: int, b: int) -> None:
        with self._lock:
            v = self.v
            v[slot_a] += a
            v[slot_b] += b

    def fanout(self, messages: int, nbytes: int, slow: int, dropped: int) -> None:
        """One batch of the broadcast fan-out: messages delivered (connections x
        messages), their bytes, slow consumers closed, messages they lost."""
        with self._lock:
            v = self.v
            v[DELIVERED] += messages
            v[MESSAGES_OUT] += messages
            v[BYTES_OUT] += nbytes
            if slow:
                v[SLOW_CLOSES] += slow
                v[DROPPED_SLOW] += dropped

    def label(self, kind: int, name: str) -> int:
        """The label entry of (kind, name) in this row, claimed if new."""
        index = self._labels.get((kind, name))
        if index is not None:
            return index
        with self._lock:
            index = self._labels.get((kind, name))
            if index is not None:
                return index
            used = set(self._labels.values())
            free = [i for i in range(LABELS - 1) if i not in used]
            raw = name.encode("utf-8")[:LABEL_NAME_MAX].decode("utf-8", "ignore").encode("utf-8")
            if free:
                index = free[0]
                self.table.write_label(self.row, index, kind, raw)
            else:
                index = LABELS - 1
                if index not in used:
                    self.table.write_label(self.row, index, kind, OTHER_LABEL.encode())
            self._labels[(kind, name)] = index
            return index

    def lag(self, messages: int) -> None:
        """Record one ring-lag observation (single writer: the worker's hub)."""
        with self._lock:
            v = self.v
            v[LAG_BUCKETS + _lag_bucket(messages)] += 1
            v[LAG_SUM] += messages
            v[LAG_COUNT] += 1
            if messages > v[LAG_MAX]:
                v[LAG_MAX] = messages


_recorder: Optional[Recorder] = None


def local() -> Recorder:
    """This process's Recorder (one getpid per call: keep the result, e.g. per connection)."""
    global _recorder
    pid = os.getpid()
    rec = _recorder
    if rec is not None and rec.pid == pid:
        return rec
    tbl = table()
    uwsgi = _uwsgi_api()
    row = tbl.row_of(uwsgi.worker_id(), uwsgi.mule_id()) if uwsgi is not None else 0
    with _table_lock:
        if _recorder is None or _recorder.pid != pid:
            _recorder = Recorder(tbl, row, pid)
        return _recorder


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
    slot = CLOSES + close_code_index(code) * len(CLOSED_BY) + _BY_INDEX.get(by, 2)
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
        log.exception("uwsgi_ws: could not count a rejected upgrade")
    if log.isEnabledFor(logging.INFO):
        log.info("websocket upgrade rejected route=%s status=%s reason=%s%s", route, status, reason,
                 f": {message}" if message else "",
                 extra={"uwsgi_ws": {"route": route, "status": status, "reason": reason, "message": message}})


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
    uwsgi = _uwsgi_api()
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
    private = _uwsgi_api() is None  # outside uWSGI: row 0 is this process, and it is alive
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
    ("uwsgi_ws_broadcasts_published_total", "counter", "Broadcast messages appended to the ring by the mule.",
     PUBLISHED),
    ("uwsgi_ws_broadcasts_delivered_total", "counter",
     "Broadcast messages written or queued to a subscribed connection.", DELIVERED),
    ("uwsgi_ws_slow_consumer_closes_total", "counter",
     "Connections closed with 1013 because they could not keep up with broadcasts.", SLOW_CLOSES),
    ("uwsgi_ws_ring_lapped_total", "counter", "Times a worker fell a whole broadcast ring behind.", LAPPED),
    ("uwsgi_ws_publish_queue_full_total", "counter",
     "Publish retries because the broadcast mule's queue was full (uwsgi.mule_msg refused).", QUEUE_FULL),
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

#: uWSGI metric name -> (type, how to get it from a Snapshot). Declare them with
#: conf/metrics.yaml (`enable-metrics` and one `metric:` line each).
UWSGI_METRICS: Dict[str, Tuple[str, Any]] = {
    "uwsgi_ws_connections_open": ("gauge", lambda s: sum(s.open.values())),
    "uwsgi_ws_upgrades_accepted_total": ("counter", lambda s: sum(s.accepted.values())),
    "uwsgi_ws_upgrades_rejected_total": ("counter", lambda s: sum(s.rejected.values())),
    "uwsgi_ws_connections_closed_total": ("counter", lambda s: sum(s.closes.values())),
    **{name: (kind, (lambda slot: lambda s: s.totals[slot])(slot)) for name, kind, _, slot in _SIMPLE},
    "uwsgi_ws_broadcasts_dropped_total": ("counter", lambda s: sum(s.totals[slot] for _, slot in _DROPPED)),
    "uwsgi_ws_ring_lag_max_messages": ("gauge", lambda s: s.lag_max),
    "uwsgi_ws_ring_lag_p99_messages": ("gauge", lambda s: s.lag_quantile(0.99)),
}


def mirror_enabled() -> bool:
    """True when uWSGI runs with --enable-metrics (the stats server then shows metrics)."""
    uwsgi = _uwsgi_api()
    return bool(uwsgi is not None and (getattr(uwsgi, "opt", {}) or {}).get("enable-metrics"))


def mirror_to_uwsgi(snap: Optional[Snapshot] = None) -> int:
    """Copy the instance totals into uWSGI metrics of the same names (those declared
    with --metric); returns how many were set. Counters only move up (metric_set_max),
    so two mirrors at once never make one go back."""
    uwsgi = _uwsgi_api()
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
    uwsgi = _uwsgi_api()

    local()
    while True:
        mirror_to_uwsgi()
        uwsgi.mule_get_msg(signals=True, farms=False, timeout=int(MIRROR_INTERVAL))


if _uwsgi_api() is not None:
    table()  # in the master while the app loads: the mapping is then inherited by every fork
