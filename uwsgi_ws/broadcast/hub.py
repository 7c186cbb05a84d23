"""The worker side of broadcast: this worker's subscribers, their channels, and
the waker task that fans new ring entries out to them.

One hub per worker process. Its waker (a thread in the threads model, a
greenlet under gevent) sleeps on the worker's wake socket (`wakeup`), then
copies every new ring entry once and hands the ready-made frames to each
subscribed `Subscriber` without blocking; what a socket does not take now
stays in that subscriber's outbound buffer and the waker flushes it when the
socket is writable. A subscriber whose buffer would pass its limit is a slow
consumer: it is closed with 1013 and counted, and the others never wait for it.

The hub knows a subscriber only through the `Subscriber` protocol below (a
WebSocket `Connection`, an SSE stream, a Socket.IO session...), as
centrifuge's hub knows a client only as a Transport. Membership (which
subscriber is on which channel) is the hub's own state.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
from collections import defaultdict
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    Iterator,
    List,
    NamedTuple,
    Optional,
    Protocol,
    Sequence,
    Set,
    Tuple,
    Union,
)

from .. import metrics, settings
from ..deflate import DeflateOptions, SharedDeflater
from ..log import get as _logger
from . import wakeup
from .publish import channel_bytes
from .ring import FLAG_REMOTE, BroadcastRing, Entry, Lapped

if TYPE_CHECKING:
    from ..runtime.base import Runtime

log = _logger(__name__)

_send_many: Optional[Callable[[List[int], bytes], List[Tuple[int, int]]]] = None
if not settings.get("pure"):
    try:  # the optional native helper (built by setup.py when a compiler is there)
        from .._speedups import send_many as _send_many
    except ImportError:
        pass

#: Close code for a subscriber that cannot keep up with broadcasts (or whose
#: worker was lapped by the ring): 1013 "try again later" (RFC 6455 section 7.4.1, IANA registry).
SLOW_CONSUMER = 1013
_CHUNK = 256  # subscribers written between yields to other greenlets
_FALLBACK_POLL: float = settings.get("fallback-poll")  # seconds: re-check the ring even without a wake-up
LAST_SCAN = 65536  # ring entries looked through for "the last n messages" of a channel
_BATCH_BYTES = 64 * 1024  # at most this much of consecutive frames in one write to a subscriber


class Batch(NamedTuple):
    """Consecutive ring entries of one channel, handed to a subscriber at once.

    `data` is their frames back to back (what a WebSocket writes as is);
    `entries` give each message's seq, channel, flags and frame (what an SSE
    stream or a Socket.IO session reads); `epoch` is the ring's. `compressed`:
    `data` holds permessage-deflate frames made once for every subscriber whose
    `shared_deflate()` equals theirs (see `Hub` on compression); `entries` stay plain."""

    entries: Sequence[Entry]
    data: bytes
    epoch: int
    compressed: bool = False


class Subscriber(Protocol):
    """What the hub may ask of a subscriber. Every method is called from the hub's
    waker task and must never block."""

    def deliver(self, batch: Batch) -> bool:
        """Take `batch` (write what the transport takes now, queue the rest).
        Returns False, taking nothing, when closed or past its buffer limit."""

    def begin_direct(self) -> int:
        """Optional fast path: the fd to write `batch.data` to right now (its write
        lock held until `end_direct`), or -1 to be given `deliver` instead."""

    def end_direct(self, batch: Batch, result: int) -> None:
        """After the direct write: `result` is the bytes sent or -errno."""

    def flush(self) -> bool:
        """Write what is queued as far as the transport takes it now; True when empty."""

    def fail_slow(self, code: int, reason: str) -> None:
        """Close: it cannot keep up (or missed messages); never blocks."""

    @property
    def pending_output(self) -> int:
        """Bytes (or items) queued and not yet written."""

    @property
    def connected(self) -> bool:
        """True while it can take data."""

    def fileno(self) -> int:
        """The fd to watch for writability while `flush` returns False; -1: none."""

    # Optional: `shared_deflate() -> Optional[DeflateOptions]`: the permessage-deflate
    # settings whose shared frames (deflate.SharedDeflater) this subscriber takes as
    # they are, or None (plain frames). Subscribers without it get plain frames.


class QueueSubscriber:
    """A base for subscribers without a socket of their own, which take every batch
    through `deliver` (SSE streams, presence, Socket.IO's listener, the test client's
    cursor): no direct path, nothing pending, nothing to flush or watch. A subclass
    defines `deliver` and `connected`; it overrides `fail_slow` when losing messages
    means something to it (by default, nothing to close)."""

    #: Nothing is ever queued on the hub's side.
    pending_output = 0

    def begin_direct(self) -> int:
        """-1: no direct path, the hub calls `deliver`."""
        return -1

    def end_direct(self, batch: Batch, result: int) -> None:
        """Never called: `begin_direct` is always -1."""

    def flush(self) -> bool:
        """True: nothing is pending."""
        return True

    def fail_slow(self, code: int, reason: str) -> None:
        """Nothing to close."""

    def fileno(self) -> int:
        """-1: no fd to watch."""
        return -1


class After(NamedTuple):
    """Recover every message of the channel after `seq` (resume), then live."""

    seq: int


class Last(NamedTuple):
    """First the channel's last `n` messages, then live."""

    n: int


#: What to send before live delivery on one channel: nothing (None: live from now),
#: the messages after a seq, or the last n.
Recovery = Optional[Union[After, Last]]


class Recovered(NamedTuple):
    """The outcome of recovering one channel: `ok` True with `seq` the position live
    delivery continues from; `ok` False when messages were gone, `seq` then being the
    oldest one still kept (the channel is subscribed live anyway)."""

    ok: bool
    seq: int


Done = Callable[[Dict[str, Recovered]], None]


def _replayable(entries: Sequence[Entry], channel: str) -> List[Entry]:
    """The entries of `channel` this instance published (replayable: a bridged
    entry carries another instance's seq)."""
    return [e for e in entries if e.channel == channel and not e.flags & FLAG_REMOTE]


class Hub:
    """Subscribers of this worker and their broadcast channels.

    `attach`/`detach`/`subscribe`/`unsubscribe`/`recover` may be called from any
    thread or greenlet of the worker; the fan-out runs in the hub's own waker task.
    """

    def __init__(self, runtime: Runtime, ring: BroadcastRing, wake: Optional[socket.socket] = None) -> None:
        """`wake`: the socket whose readability wakes the waker (default: this
        worker's wake socket, `wakeup.bind_worker_socket`; the in-process
        broadcast, `local`, passes one end of a socket pair)."""
        self._rt = runtime
        self.ring = ring
        self._lock = runtime.Lock()
        self._member: Dict[Subscriber, Set[str]] = {}  # attached subscriber -> its channels
        self._channels: Dict[str, Set[Subscriber]] = defaultdict(set)
        self._epoch = ring.epoch
        self._last = ring.write_seq
        self._pending: Set[Subscriber] = set()  # subscribers with unflushed output
        self._wake = wake if wake is not None else wakeup.bind_worker_socket()
        self._ops: List[Tuple[Subscriber, List[Tuple[str, Recovery]], Optional[Done], Sequence[Entry],
                              Optional[Callable[[], None]]]] = []
        self._kick_r, self._kick_w = socket.socketpair()
        self._kick_r.setblocking(False)
        self._kick_w.setblocking(False)
        self.delivered = 0
        self.slow_consumers = 0
        self.lapped = 0
        #: Broadcast messages compressed by this worker (once per message and parameter set).
        self.compressions = 0
        self._deflaters: Dict[DeflateOptions, SharedDeflater] = {}
        # Attached subscribers that take shared permessage-deflate frames -> their options,
        # read once at attach (negotiated in the handshake, fixed for the connection's life):
        # the fan-out asks nothing per subscriber while no subscriber has any.
        self._deflate: Dict[Subscriber, DeflateOptions] = {}
        self._metrics = metrics.local()
        self._task = runtime.spawn(self._run)

    @property
    def reached(self) -> int:
        """The ring seq up to which the fan-out has handed every entry out (the point a
        recovery queued now starts live delivery from). Any thread; no lock (one int)."""
        return self._last

    # -- membership -----------------------------------------------------------

    def attach(self, sub: Subscriber) -> None:
        """`sub` may now be subscribed (every connection of the worker receives
        broadcasts published with channel None)."""
        shared = getattr(sub, "shared_deflate", None)
        options = shared() if shared is not None else None
        with self._lock:
            self._member.setdefault(sub, set())
            if options is not None:
                self._deflate[sub] = options

    def detach(self, sub: Subscriber) -> None:
        """`sub` leaves every channel; recoveries still queued for it do nothing. Idempotent."""
        with self._lock:
            channels = self._member.pop(sub, None)
            for channel in channels or ():
                self._remove(sub, channel)
            self._pending.discard(sub)
            self._deflate.pop(sub, None)

    def count(self, channel: Optional[str]) -> int:
        """Subscribers of `channel` in this worker (None: every attached one)."""
        with self._lock:
            return len(self._member) if channel is None else len(self._channels.get(channel, ()))

    def channels(self, sub: Subscriber) -> Set[str]:
        """A copy of the channels `sub` receives."""
        with self._lock:
            return set(self._member.get(sub, ()))

    def subscribe(self, sub: Subscriber, channel: str) -> Any:
        """Add `sub` to `channel` now; returns a context manager that removes it on exit.

        Raises:
            ValueError: an empty name, not UTF-8, or over 255 bytes.
            RuntimeError: `sub` is not attached (its connection closed).
        """
        if not isinstance(channel, str) or not channel:
            raise ValueError("a channel is a non-empty str")
        channel_bytes(channel)
        with self._lock:
            member = self._member.get(sub)
            if member is None:
                raise RuntimeError("this connection is closed: it can no longer subscribe")
            member.add(channel)
            self._channels[channel].add(sub)
        return self._subscription(sub, channel)

    @contextlib.contextmanager
    def _subscription(self, sub: Subscriber, channel: str) -> Iterator[None]:
        try:
            yield
        finally:
            self.unsubscribe(sub, channel)

    def unsubscribe(self, sub: Subscriber, channel: str, ordered: bool = False) -> None:
        """Remove `sub` from `channel`: now, or with `ordered` after every recovery
        queued before this call (so a join then a leave end up left)."""
        if ordered:
            self._queue(sub, [], None, (), lambda: self.unsubscribe(sub, channel))
            return
        with self._lock:
            self._remove(sub, channel)

    def _remove(self, sub: Subscriber, channel: str) -> None:
        member = self._member.get(sub)
        if member is not None:
            member.discard(channel)
        members = self._channels.get(channel)
        if members is not None:
            members.discard(sub)
            if not members:
                del self._channels[channel]

    def recover(self, sub: Subscriber, channels: Sequence[Tuple[str, Recovery]], done: Optional[Done] = None,
                preface: Sequence[Entry] = ()) -> None:
        """Subscribe attached `sub` to each (channel, recovery) at one point of the ring, in
        the waker task: what the recovery asks for up to that point is handed to `sub`
        first, every later message by the live fan-out, so nothing is sent twice or
        skipped. `preface`: entries handed over before the replay (what the history had).
        `After(seq)` replays from the ring; `Last(n)` takes the channel's last n still in
        the ring (looking back at most LAST_SCAN entries).

        `done(result)` then runs in the waker task with {channel: Recovered}. Never blocks.
        """
        self._queue(sub, list(channels), done, list(preface), None)

    def _queue(self, sub: Subscriber, channels: List[Tuple[str, Recovery]], done: Optional[Done],
               preface: Sequence[Entry], then: Optional[Callable[[], None]]) -> None:
        with self._lock:
            self._ops.append((sub, channels, done, preface, then))
        try:
            self._kick_w.send(b"x")
        except OSError:  # the pair's buffer is full: the waker is already due to run
            pass

    def _run_ops(self) -> None:
        with self._lock:
            todo, self._ops = self._ops, []
        boundary = self._last
        for sub, channels, done, preface, then in todo:
            if then is not None:
                then()
                continue
            result: Dict[str, Recovered] = {}
            replay: List[Entry] = []
            for channel, recovery in channels:
                result[channel] = Recovered(True, boundary)
                if isinstance(recovery, Last):
                    replay.extend(self._read_last(channel, recovery.n, boundary))
                elif isinstance(recovery, After) and recovery.seq < boundary:
                    try:
                        replay.extend(self._read_channel(channel, recovery.seq + 1, boundary))
                    except Lapped:
                        result[channel] = Recovered(False, self.ring.min_seq)
                with self._lock:
                    member = self._member.get(sub)
                    if member is None:  # detached meanwhile: subscribe nothing
                        continue
                    member.add(channel)
                    self._channels[channel].add(sub)
            replay.sort(key=lambda e: e.seq)
            entries = [*preface, *replay]
            if entries:
                batch = Batch(entries, b"".join(e.frame for e in entries), self._epoch)
                if not sub.deliver(batch) and sub.connected:
                    sub.fail_slow(SLOW_CONSUMER, "slow consumer: the replay is over write_limit")
            if sub.pending_output:
                with self._lock:
                    self._pending.add(sub)
            if done is not None:
                try:
                    done(result)
                except Exception:
                    log.exception("a recovery callback failed")

    def _read_last(self, channel: str, n: int, last: int) -> List[Entry]:
        """The last `n` entries of `channel` up to `last` still in the ring, looking
        back at most LAST_SCAN entries."""
        out: List[Entry] = []
        stop = max(1, last - LAST_SCAN + 1)
        while last >= stop and len(out) < n:
            first = max(stop, last - 1023, self.ring.min_seq)
            if first > last:
                break
            try:
                batch = self.ring.read_range(first, last)
            except Lapped:
                break
            out[:0] = _replayable(batch, channel)
            last = first - 1
        return out[-n:]

    def _read_channel(self, channel: str, first: int, last: int) -> List[Entry]:
        """The entries of `channel` in first..last; Lapped if `first` is gone."""
        return _replayable(list(self.ring.scan(first, last)), channel)

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
                        wakeup.take(self._wake)
                    elif fd == kick_fd:
                        wakeup.take(self._kick_r)
                self._deliver()
                watched = self._flush_pending(poller, watched)
            except Exception:  # keep the worker's broadcast alive; report the bug
                log.exception("the broadcast hub's waker failed (it goes on)")

    def _flush_pending(self, poller: Any, watched: Set[int]) -> Set[int]:
        if not self._pending and not watched:  # the usual pass: every socket took its batch
            return watched
        with self._lock:
            pending = list(self._pending)
        now_watched = set()
        for sub in pending:
            if sub.flush():
                with self._lock:
                    self._pending.discard(sub)
            else:
                fd = sub.fileno()
                if fd >= 0:
                    now_watched.add(fd)
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
            if self._ops:  # here every entry up to self._last went out, none after
                self._run_ops()
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

    def _fan_out(self, entries: List[Entry]) -> None:
        # Consecutive entries of one channel go out as one write per subscriber, at
        # most _BATCH_BYTES at a time (or one frame): a subscriber takes a whole batch
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
            group = entries[i:j]
            data = group[0].frame if j == i + 1 else b"".join(e.frame for e in group)
            plain = Batch(group, data, self._epoch)
            with self._lock:
                targets = list(self._member if not channel else self._channels.get(channel, ()))
            for batch, subset in self._variants(plain, targets):
                for start in range(0, len(subset), _CHUNK):
                    if start:
                        # Let request handlers (publishes) run: what they publish meanwhile
                        # joins the next batch, which goes out in one write per subscriber.
                        self._rt.cooperate()
                    self._write_all(subset[start:start + _CHUNK], batch)
            i = j

    def _variants(self, batch: Batch, targets: List[Subscriber]) -> List[Tuple[Batch, List[Subscriber]]]:
        """Split `targets` by the compressed copy they take: the plain batch, and one
        batch per permessage-deflate parameter set present, compressed here once.

        Compression (issue 15) happens at fan-out, once per worker, message and
        parameter set: the ring keeps plain frames only (SSE, the Redis bridge, the
        history and resume read them as they are), and a worker compresses only
        what its own subscribers negotiated. Each message is compressed without
        context takeover (deflate.SharedDeflater), so the same bytes are valid on
        every connection of the set."""
        deflate = self._deflate
        if not deflate:
            return [(batch, targets)]
        groups: Dict[Optional[DeflateOptions], List[Subscriber]] = {}
        for sub in targets:
            groups.setdefault(deflate.get(sub), []).append(sub)
        if len(groups) == 1 and None in groups:
            return [(batch, targets)]
        out = []
        for options, subset in groups.items():
            if options is None:
                out.append((batch, subset))
                continue
            deflater = self._deflaters.get(options)
            if deflater is None:
                deflater = self._deflaters[options] = SharedDeflater(options)
            before = deflater.compressions
            frames_ = [deflater.compress_frame(e.frame) for e in batch.entries]
            self.compressions += deflater.compressions - before
            if all(f is None for f in frames_):
                out.append((batch, subset))  # all under min_size or incompressible: plain
                continue
            data = b"".join(f if f is not None else e.frame for f, e in zip(frames_, batch.entries))
            out.append((Batch(batch.entries, data, batch.epoch, True), subset))
        return out

    def _write_all(self, targets: List[Subscriber], batch: Batch) -> None:
        """Hand `batch` to each target without blocking."""
        count = len(batch.entries)
        delivered = slow = 0
        pending: List[Any] = []
        if _send_many is not None:
            ready, fds, rest = [], [], []
            for sub in targets:
                fd = sub.begin_direct()
                if fd >= 0:
                    ready.append(sub)
                    fds.append(fd)
                else:
                    rest.append(sub)
            # send_many returns only the exceptions: (index, bytes sent) or (index, -errno).
            try:
                short = dict(_send_many(fds, batch.data))
            except BaseException:
                short = dict.fromkeys(range(len(ready)), -errno.EAGAIN)  # nothing known sent: queue it all
                raise
            finally:
                size = len(batch.data)
                if short:
                    for index, sub in enumerate(ready):
                        sub.end_direct(batch, short.get(index, size))
                else:  # every socket took it all (the usual case): no lookup per subscriber
                    for sub in ready:
                        sub.end_direct(batch, size)
            # Only a short write leaves output behind (begin_direct found the buffer empty).
            pending.extend(ready[i] for i in short if ready[i].pending_output)
            delivered = len(ready)
            targets = rest
        for sub in targets:
            if sub.deliver(batch):
                delivered += 1
                if sub.pending_output:
                    pending.append(sub)
            elif sub.connected:
                slow += 1
                sub.fail_slow(SLOW_CONSUMER, "slow consumer: too far behind the broadcasts")
        if pending:
            with self._lock:
                self._pending.update(pending)
        self.delivered += delivered * count
        self.slow_consumers += slow
        self._metrics.fanout(delivered * count, delivered * len(batch.data), slow, slow * count)

    def _lapped(self) -> None:
        """This worker fell behind the ring: its subscribers missed messages."""
        self.lapped += 1
        with self._lock:
            victims = [s for s in self._member if s.connected]
        for sub in victims:
            sub.fail_slow(SLOW_CONSUMER, "missed broadcasts: the server fell behind")
        missed = max(0, self.ring.min_seq - 1 - self._last)
        self._metrics.add2(metrics.LAPPED, 1, metrics.DROPPED_LAPPED, missed * len(victims))
        self._last = self.ring.min_seq - 1
        log.warning("worker %d was lapped by the broadcast ring; closed %d connection(s) with %d",
                    os.getpid(), len(victims), SLOW_CONSUMER)
