"""The worker side of broadcast: this worker's connections, their channels, and
the waker task that fans new ring entries out to them.

One hub per worker process. Its waker (a thread in the threads model, a
greenlet under gevent) sleeps on the worker's wake socket (`wakeup`), then
copies every new ring entry once and writes the ready-made frame to each
subscribed connection without blocking (`Connection.enqueue_frame`); what a
socket does not take now stays in that connection's outbound buffer and the
waker flushes it when the socket is writable. A connection whose buffer
would pass its `write_limit` is a slow consumer: it is closed with 1013 and
counted, and the others never wait for it.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import sys
from collections import defaultdict
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple

from . import metrics, wakeup

if os.environ.get("UWSGI_WS_PURE") == "1":
    _send_many = None
else:
    try:  # the optional native helper (built by setup.py when a compiler is there)
        from ._speedups import send_many as _send_many
    except ImportError:
        _send_many = None
from .mule import channel_bytes
from .protocol import TRY_AGAIN_LATER
from .sharedarea import FLAG_REMOTE, BroadcastRing, Lapped, RingError

#: Close code for a connection that cannot keep up with broadcasts (or whose
#: worker was lapped by the ring): "try again later".
SLOW_CONSUMER = TRY_AGAIN_LATER
_CHUNK = 256  # connections written between yields to other greenlets
_FALLBACK_POLL = 0.5  # seconds: re-check the ring even without a wake-up
LAST_SCAN = 65536  # ring entries looked through for "the last n messages" of a channel
_BATCH_BYTES = 64 * 1024  # at most this much of consecutive frames in one write to a connection


def _local_entries(batch: List[Any], channel: str) -> List[Any]:
    """The entries of `channel` in `batch` that this instance published (replayable:
    a bridged entry carries another instance's seq)."""
    return [e for e in batch if e.channel == channel and not e.flags & FLAG_REMOTE]


class Hub:
    """Connections of this worker and their broadcast channels.

    `attach`/`detach`/`subscribe`/`unsubscribe` may be called from any thread
    or greenlet of the worker; the fan-out runs in the hub's own waker task.
    """

    def __init__(self, runtime: Any, ring: BroadcastRing) -> None:
        self._rt = runtime
        self.ring = ring
        self._lock = runtime.Lock()
        self._all: Set[Any] = set()
        self._channels: Dict[str, Set[Any]] = defaultdict(set)
        self._epoch = ring.epoch
        self._last = ring.write_seq
        self._pending: Set[Any] = set()  # connections with unflushed output
        self._wake = wakeup.bind_worker_socket()
        self._catch_ups: List[Tuple[Any, List[Tuple[str, Optional[int]]], Callable[..., None], List[bytes]]] = []
        self._kick_r, self._kick_w = socket.socketpair()
        self._kick_r.setblocking(False)
        self._kick_w.setblocking(False)
        self.delivered = 0
        self.slow_consumers = 0
        self.lapped = 0
        self._metrics = metrics.local()
        self._task = runtime.spawn(self._run)

    @classmethod
    def for_worker(cls, runtime: Any) -> Optional["Hub"]:
        """This worker's hub, or None when broadcast is unavailable (no uWSGI, no
        sharedarea, or a model without background tasks)."""
        if not runtime.HAS_TASKS:
            return None
        try:
            import uwsgi  # noqa: F401

            ring = BroadcastRing.from_sharedarea()
        except (ImportError, RingError):
            return None
        return cls(runtime, ring)

    # -- membership -----------------------------------------------------------

    def attach(self, conn: Any) -> None:
        conn.hub = self
        with self._lock:
            self._all.add(conn)

    def detach(self, conn: Any) -> None:
        with self._lock:
            conn.hub_detached = True  # a catch_up still queued for it subscribes nothing
            self._all.discard(conn)
            for channel in list(conn.channels):
                self._remove(conn, channel)
            self._pending.discard(conn)

    @contextlib.contextmanager
    def _subscription(self, conn: Any, channel: str) -> Iterator[None]:
        try:
            yield
        finally:
            self.unsubscribe(conn, channel)

    def subscribe(self, conn: Any, channel: str) -> Any:
        """Add `conn` to `channel` now; the returned context manager removes it on exit."""
        if not isinstance(channel, str) or not channel:
            raise ValueError("a channel is a non-empty str")
        channel_bytes(channel)  # ValueError: not UTF-8 (lone surrogates) or over 255 bytes
        with self._lock:
            conn.channels.add(channel)
            self._channels[channel].add(conn)
        return self._subscription(conn, channel)

    def unsubscribe(self, conn: Any, channel: str) -> None:
        with self._lock:
            self._remove(conn, channel)

    def _remove(self, conn: Any, channel: str) -> None:
        conn.channels.discard(channel)
        members = self._channels.get(channel)
        if members is not None:
            members.discard(conn)
            if not members:
                del self._channels[channel]

    def catch_up(self, conn: Any, channels: List[Tuple[str, Optional[int]]],
                 done: Callable[[Dict[str, Any]], None], preface: List[bytes] = ()) -> None:
        """Subscribe `conn` to each (channel, after_seq) of `channels` at one point of
        the ring, in the waker task: every entry of the channel after `after_seq` up to
        that point is enqueued to `conn` first (the replay), every later one by the
        live fan-out, so nothing is sent twice or skipped. `after_seq` None: live only;
        negative, -n: the last n entries of the channel still in the ring (looking
        back at most LAST_SCAN entries). `preface`: frames enqueued before the replay
        (what the history had up to the `after_seq` given).

        `done(result)` then runs in the waker task with {channel: ("ok", last_seq) or
        ("lapped", min_seq)} (lapped: entries after `after_seq` are gone; the channel
        is subscribed live anyway). Any thread or greenlet may call this;
        it never blocks. `conn` needs `channels`, `connected`, `enqueue_frame`,
        `pending_output` and `fail_slow_consumer` (a Connection, or an SSE stream).
        """
        with self._lock:
            self._catch_ups.append((conn, list(channels), done, list(preface)))
        try:
            self._kick_w.send(b"x")
        except OSError:  # the pair's buffer is full: the waker is already due to run
            pass

    def _run_catch_ups(self) -> None:
        with self._lock:
            todo, self._catch_ups = self._catch_ups, []
        boundary = self._last
        for conn, channels, done, preface in todo:
            result: Dict[str, Any] = {}
            replay: List[Any] = []
            for channel, after in channels:
                if after is not None and after < 0:
                    replay.extend(self._read_last(channel, -after, boundary))
                    result[channel] = ("ok", boundary)
                elif after is not None and after < boundary:
                    try:
                        entries = self._read_channel(channel, after + 1, boundary)
                    except Lapped:
                        result[channel] = ("lapped", self.ring.min_seq)
                        entries = None
                    if entries is not None:
                        replay.extend(entries)
                        result[channel] = ("ok", boundary)
                else:
                    result[channel] = ("ok", boundary)
                with self._lock:
                    if getattr(conn, "hub_detached", False):
                        continue
                    conn.channels.add(channel)
                    self._channels[channel].add(conn)
            replay.sort(key=lambda e: e.seq)
            for frame in [*preface, *(e.frame for e in replay)]:
                if not conn.enqueue_frame(frame, 1):
                    if conn.connected:
                        conn.fail_slow_consumer(SLOW_CONSUMER, "slow consumer: the replay is over write_limit")
                    break
            if conn.pending_output:
                with self._lock:
                    self._pending.add(conn)
            try:
                done(result)
            except Exception:
                import traceback

                traceback.print_exc(file=sys.stderr)

    def _read_last(self, channel: str, n: int, last: int) -> List[Any]:
        """The last `n` entries of `channel` up to `last` still in the ring, looking
        back at most LAST_SCAN entries."""
        out: List[Any] = []
        stop = max(1, last - LAST_SCAN + 1)
        while last >= stop and len(out) < n:
            first = max(stop, last - 1023, self.ring.min_seq)
            if first > last:
                break
            try:
                batch = self.ring.read_range(first, last)
            except Lapped:
                break
            out[:0] = _local_entries(batch, channel)
            last = first - 1
        return out[-n:]

    def _read_channel(self, channel: str, first: int, last: int) -> List[Any]:
        """The entries of `channel` in first..last; Lapped if `first` is gone."""
        out = []
        while first <= last:
            batch = self.ring.read_range(first, min(last, first + 1023))
            if not batch:
                break
            out.extend(_local_entries(batch, channel))
            first = batch[-1].seq + 1
        return out

    # -- the waker task ---------------------------------------------------------

    def _run(self) -> None:
        poller = self._rt.poller()
        wake_fd = self._wake.fileno()
        poller.register(wake_fd, select.POLLIN)
        kick_fd = self._kick_r.fileno()
        poller.register(kick_fd, select.POLLIN)
        watched: Set[int] = set()
        while True:
            try:
                events = poller.poll(_FALLBACK_POLL * 1000)
                for fd, _ in events:
                    if fd == wake_fd:
                        wakeup.drain(self._wake)
                    elif fd == kick_fd:
                        wakeup.drain(self._kick_r)
                self._deliver()
                watched = self._flush_pending(poller, watched)
            except Exception:  # keep the worker's broadcast alive; report the bug
                import traceback

                traceback.print_exc(file=sys.stderr)

    def _flush_pending(self, poller: Any, watched: Set[int]) -> Set[int]:
        with self._lock:
            pending = list(self._pending)
        now_watched = set()
        for conn in pending:
            if conn.flush():
                with self._lock:
                    self._pending.discard(conn)
            else:
                now_watched.add(conn.fd)
        for fd in watched - now_watched:
            poller.unregister(fd)
        for fd in now_watched - watched:
            poller.register(fd, select.POLLOUT)
        return now_watched

    def _deliver(self) -> None:
        ring = self.ring
        epoch = ring.epoch
        if epoch != self._epoch:
            # The ring was formatted after this worker started: read it from the start.
            self._epoch, self._last = epoch, 0
        while True:
            if self._catch_ups:  # here every entry up to self._last went out, none after
                self._run_catch_ups()
            last = ring.write_seq
            if last <= self._last:
                return
            self._metrics.lag(last - self._last)
            try:
                entries = ring.read_range(self._last + 1, min(last, self._last + 4096))
            except Lapped:
                self._lapped()
                continue
            if not entries:  # defensive: read_range raises Lapped rather than return []
                return
            self._fan_out(entries)
            self._last = entries[-1].seq

    def _fan_out(self, entries: List[Any]) -> None:
        # Consecutive entries of one channel go out as one write per connection, at
        # most _BATCH_BYTES at a time (or one frame): a connection takes a whole batch
        # into an empty outbound buffer, so a bigger one would slip past write_limit.
        i = 0
        while i < len(entries):
            channel = entries[i].channel
            j = i + 1
            size = len(entries[i].frame)
            while (j < len(entries) and entries[j].channel == channel
                   and size + len(entries[j].frame) <= _BATCH_BYTES):
                size += len(entries[j].frame)
                j += 1
            data = entries[i].frame if j == i + 1 else b"".join(e.frame for e in entries[i:j])
            with self._lock:
                targets = list(self._all if not channel else self._channels.get(channel, ()))
            for start in range(0, len(targets), _CHUNK):
                if start:
                    # Let request handlers (publishes) run: what they publish meanwhile
                    # joins the next batch, which goes out in one write per connection.
                    self._rt.cooperate()
                self._write_all(targets[start:start + _CHUNK], data, j - i)
            i = j

    def _write_all(self, targets: List[Any], data: bytes, count: int) -> None:
        """Write `data` (`count` messages) to each target without blocking."""
        delivered = slow = 0
        if _send_many is not None:
            ready, fds, rest = [], [], []
            for conn in targets:
                if conn.fanout_acquire():
                    conn.messages_sent += count  # under the connection's write lock
                    ready.append(conn)
                    fds.append(conn.fd)
                else:
                    rest.append(conn)
            try:
                for index, result in _send_many(fds, data):
                    conn = ready[index]
                    conn.fanout_rest(data, result)
                    if conn.pending_output:
                        with self._lock:
                            self._pending.add(conn)
            finally:
                for conn in ready:
                    conn.fanout_release()
            delivered = len(ready)
            targets = rest
        for conn in targets:
            if conn.enqueue_frame(data, count):
                delivered += 1
                if conn.pending_output:
                    with self._lock:
                        self._pending.add(conn)
            elif conn.connected:
                slow += 1
                conn.fail_slow_consumer(SLOW_CONSUMER, "slow consumer: too far behind the broadcasts")
        self.delivered += delivered * count
        self.slow_consumers += slow
        self._metrics.fanout(delivered * count, delivered * len(data), slow, slow * count)

    def _lapped(self) -> None:
        """This worker fell behind the ring: its connections missed messages."""
        self.lapped += 1
        with self._lock:
            victims = [c for c in self._all if c.connected]
        for conn in victims:
            conn.fail_slow_consumer(SLOW_CONSUMER, "missed broadcasts: the server fell behind")
        missed = max(0, self.ring.min_seq - 1 - self._last)
        self._metrics.add2(metrics.LAPPED, 1, metrics.DROPPED_LAPPED, missed * len(victims))
        self._last = self.ring.min_seq - 1
        print(f"uwsgi_ws: worker {os.getpid()} was lapped by the broadcast ring; "
              f"closed {len(victims)} connection(s) with {SLOW_CONSUMER}", file=sys.stderr, flush=True)
