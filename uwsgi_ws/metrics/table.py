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
from typing import Any, Dict, List, Optional, Tuple

from ..exceptions import ConfigError

log = logging.getLogger("uwsgi_ws.metrics")

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
PUBLISHED = 5  # broadcasts appended to the ring, counted by whoever appended them (publisher or broadcast mule)
DELIVERED = 6  # broadcast messages written or queued to a connection
DROPPED_SLOW = 7  # broadcast messages not delivered: the connection was too slow
DROPPED_LAPPED = 8  # broadcast messages not delivered: the worker was lapped by the ring
DROPPED_MULE = 9  # publish requests the mule could not append (invalid, too big)
SLOW_CLOSES = 10  # connections closed with 1013 for being too slow
LAPPED = 11  # times a worker fell a whole ring behind
QUEUE_FULL = 12  # publishes that waited for the mule (no answer within 0.5 s, or a retry while it respawned)
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


class MetricsError(ConfigError):
    """The metrics table cannot be set up as configured; the message says what to change."""


def required_pages(workers: int, mules: int) -> int:
    """Size, in uWSGI sharedarea pages of 4 KiB, of a table for that many workers and mules."""
    size = HEADER_SIZE + (1 + workers + mules) * ROW_BYTES
    return -(-size // 4096)


def close_code_index(code: Optional[int]) -> int:
    """The CLOSE_CODES bucket of a close code (standard codes keep their own)."""
    text = str(code)
    if text in CLOSE_CODE_INDEX:
        return CLOSE_CODE_INDEX[text]
    if code is not None and 3000 <= code <= 3999:
        return CLOSE_CODE_INDEX["3xxx"]
    if code is not None and 4000 <= code <= 4999:
        return CLOSE_CODE_INDEX["4xxx"]
    return CLOSE_CODE_INDEX["other"]


#: A CLOSE_CODES label -> its index in a row's close counters (`close_code_index`).
CLOSE_CODE_INDEX = {name: i for i, name in enumerate(CLOSE_CODES)}
#: A CLOSED_BY label ("client", "server", ...) -> its index within a close code's counters.
CLOSED_BY_INDEX = {name: i for i, name in enumerate(CLOSED_BY)}


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


def uwsgi_api() -> Any:
    """The uwsgi module, None outside uWSGI (`uwsgi_ws._uwsgi` is the one importer)."""
    from .. import _uwsgi

    return _uwsgi.api() if _uwsgi.available() else None


def _create_table() -> Table:
    from .. import settings

    uwsgi = uwsgi_api()
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
            "metrics are counted per process: uwsgi_ws was first imported after the fork "
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


def local_open() -> Optional[Recorder]:
    """This process's Recorder if `local` already made it, else None: for threads uWSGI
    did not start, which must not call uWSGI's API (`local` may, the first time)."""
    rec = _recorder
    return rec if rec is not None and rec.pid == os.getpid() else None


def local() -> Recorder:
    """This process's Recorder (one getpid per call: keep the result, e.g. per connection)."""
    global _recorder
    pid = os.getpid()
    rec = _recorder
    if rec is not None and rec.pid == pid:
        return rec
    tbl = table()
    uwsgi = uwsgi_api()
    row = tbl.row_of(uwsgi.worker_id(), uwsgi.mule_id()) if uwsgi is not None else 0
    with _table_lock:
        if _recorder is None or _recorder.pid != pid:
            _recorder = Recorder(tbl, row, pid)
        return _recorder
