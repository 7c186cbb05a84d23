"""The instance-wide broadcast, behind one face: this package::

    publish ──┬───────────────────────────► ring (sharedarea) ──► each worker's hub ──► subscribers
              │ plain, inside the instance:  (ring.py)            (hub.py, woken by wakeup.py
              │ the publisher appends it             ▲             from the publisher or the mule)
              │ under the writer lock (writer.py)    │
              └──► broadcast mule ───────────────────┘
                    (mule.py: lays the ring out and appends the rest, as writer.py lists)
                     │  └── history.py (per room, beyond the ring)
                     └───── redis.py (other instances, through a Redis Stream)

Modules outside ``uwsgi_ws/broadcast/`` use only the names of ``__all__`` below
(tests/test_structure.py checks it); they never see the ring, the hub, the
history or the bridge, as centrifuge's node sees storage only as a Broker:

- publish: `publish` (any process), `Broadcast.publish`; `channel_bytes` checks a
  channel name; `Data` is what a message may be (str: text, bytes: binary).
- subscribe: `Broadcast.attach`/`detach`, `subscribe`/`unsubscribe`, `channels`;
  a subscriber implements `Subscriber` (`QueueSubscriber`: one without a socket)
  and gets batches (`Batch`) of entries (`Entry`); `Message.of(entry)` reads one
  (its payload, what kind of message it is) without the ring's framing or flags.
- recover: `Broadcast.position`/`event_position` (a `Position`: epoch + seq), then
  `Broadcast.recover`/`resume` with a `Recovery` per channel (`After(seq)`,
  `Last(n)`) and a callback taking `Recovered` per channel.
- stats: `Broadcast.stats`, `Broadcast.subscriber_count`, `bridge_stats`.
- this process's broadcast: `for_process`; `use_in_process` (outside uWSGI: the
  dev server, the test client).
- publishing from outside the instance (`uwsgi_ws.client`): `encode_request`, sent
  on the instance's publish socket by a `PublishSocket` (`Refused` when the mule
  says no), or put on the Redis bridge's stream by `stream_publish`; `redact` hides
  a Redis URL's password.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Sequence, Set, Tuple

from .. import _uwsgi, frames, settings
from ..exceptions import PublishError, RingError
from . import history, local
from .hub import After, Batch, Done, Hub, Last, QueueSubscriber, Recovered, Recovery, Subscriber
from .publish import Data, Link, Refused, channel_bytes, decode_request, encode_request
from .publish import publish as _publish
from .redis import FLAG_GLOBAL, GlobalState, add_event, event_position, global_state, starting
from .redis import redact as _redact
from .redis import stats as _bridge_stats
from .ring import FLAG_BINARY, FLAG_EVENT, FLAG_REMOTE, BroadcastRing, Entry, Lapped

__all__ = ["After", "Batch", "Broadcast", "Data", "Entry", "Last", "Message", "Position", "PublishSocket",
           "QueueSubscriber", "Recovered", "Recovery", "Refused", "Subscriber", "bridge_stats", "channel_bytes",
           "encode_request", "for_process", "redact", "stream_publish", "use_in_process"]


#: Seconds `Broadcast.recover` waits for this instance to reach a global position a
#: client saw on a faster instance (the Redis bridge's inbox lag).
CATCH_UP_WAIT = 5.0
#: Seconds a worker waits, right after a start, for the Redis bridge to learn the
#: stream's numbering (`event_position`, `resume`) before using its ring's.
STARTUP_WAIT = 5.0


class Position(NamedTuple):
    """A point of the instance's message stream: `epoch` names the ring (a new one
    on each fresh start), `seq` the last message appended to it. With the Redis
    bridge, the point of the stream shared by every instance: `epoch` is the
    stream's and `seq` the global number of the last event broadcast this instance
    appended (the same message has the same (epoch, seq) on every instance)."""

    epoch: int
    seq: int


class Message(NamedTuple):
    """One broadcast message as a subscriber reads it: `Message.of` an `Entry` of a
    `Batch`, without the ring's WebSocket framing or flag bits (what an SSE stream,
    presence or a Socket.IO listener needs; a WebSocket writes `Batch.data` as is)."""

    #: Its number in this instance's ring (the ring's epoch is `Batch.epoch`).
    seq: int
    #: "" for every connection, else the channel it was published on.
    channel: str
    #: The message as published (an event: its UTF-8 JSON text, ending with the
    #: ``"seq"`` and ``"epoch"`` its numbering gave it).
    payload: bytes
    #: Published as bytes (a binary frame), else as text.
    binary: bool
    #: Published as an event (``publish(..., event=True)``): numbered, resumable.
    event: bool
    #: Another instance's, received through the Redis bridge (its own numbering is in
    #: its payload, not `seq`).
    remote: bool
    #: An event numbered by the Redis bridge's stream (the numbering shared by every
    #: instance, written in its payload), not by this ring.
    redis_numbered: bool

    @classmethod
    def of(cls, entry: Entry) -> Message:
        """Read `entry` (one of `Batch.entries`). Copies the payload; never blocks."""
        flags = entry.flags
        return cls(entry.seq, entry.channel, frames.payload(entry.frame), bool(flags & FLAG_BINARY),
                   bool(flags & FLAG_EVENT), bool(flags & FLAG_REMOTE), bool(flags & FLAG_GLOBAL))


class Broadcast:
    """This process's access to the instance broadcast. One per process (`for_process`).

    `publish` works in every process of the instance; the subscriber side
    (`attach`, `subscribe`, `recover`) needs a worker with a broadcast ring and a
    model with background tasks: `available` says so.
    """

    def __init__(self, runtime: Any) -> None:
        self._rt = runtime
        self._hub: Optional[Hub] = None
        self._ring: Optional[BroadcastRing] = None  # the hub's ring, set before `_hub`
        self._problem: Optional[str] = None
        self._lock = threading.Lock()  # never held across a yield: fine in every model
        self._startup_deadline: Optional[float] = None  # `_global_state`'s wait window
        self._trimmed: Dict[int, bool] = {}  # oldest seqs Redis still had when a resume asked (`loss_reason`)

    # -- publishing (any process, any thread) -----------------------------------------

    def publish(self, data: Data, channel: Optional[str] = None, event: bool = False,
                timeout: Optional[float] = None) -> int:
        """Broadcast `data` to every subscriber of `channel` (None: every connection of
        the instance), in every worker.

        Returns:
            The message's sequence number in the ring (it is there when this returns).

        Raises:
            PublishError: with the option to set when it can't (see `publish.publish`).
            TypeError: `data` is not str or bytes-like.

        Any thread (uWSGI's or your own), greenlet or process of the instance: a
        worker, spooler or mule appends a plain message to the ring itself, under the
        instance's writer lock; the rest goes through the broadcast mule's publish
        socket (`publish.publish` says what goes where). Blocks the calling thread or
        greenlet (never the worker) until the message is in the ring, waiting at most
        `timeout` seconds for the writer lock or the mule (None: ``uwsgi-ws-publish-timeout``).
        Outside uWSGI, in a process serving the app (``flask run``, the test
        client), the in-process broadcast takes it (`local`).
        """
        if not _uwsgi.available() and local.wanted():
            return local.instance().publish(data, channel, event)
        return _publish(data, channel, event, runtime=self._rt, timeout=timeout)

    # -- subscribing (workers) ---------------------------------------------------------

    @property
    def available(self) -> bool:
        """True when this worker can deliver broadcasts (a ring, a model with tasks)."""
        return self._get_hub() is not None

    @property
    def problem(self) -> str:
        """Why `available` is False (the option to add)."""
        self._get_hub()
        return self._problem or ""

    def _get_hub(self) -> Optional[Hub]:
        # Outside uWSGI the answer may change (`local.enable` at the first dev-server request).
        if self._hub is None and (self._problem is None or not _uwsgi.available()):
            with self._lock:
                if self._hub is None and (self._problem is None or not _uwsgi.available()):
                    ring, self._problem = self._make_ring()
                    if ring is not None:
                        self._ring = ring
                        self._hub = Hub(self._rt, ring, wake=None if _uwsgi.available() else local.instance().waker())
        return self._hub

    def _make_ring(self) -> Tuple[Optional[BroadcastRing], Optional[str]]:
        """The ring this worker's hub reads, or None and why not."""
        if not self._rt.HAS_TASKS:
            return None, "the async (ugreen) model has no background tasks: use --gevent or --threads"
        if not _uwsgi.available():
            if local.wanted():  # flask run, the test client: the same hub on an in-process ring
                return local.instance().ring, None
            return None, ("broadcast needs uWSGI: run the app under uwsgi (or app.run()); "
                          "outside it, flask run and ws.test_client() use an in-process broadcast")
        from .publish import shared_ring

        try:
            return shared_ring(), None
        except RingError as exc:
            return None, str(exc)

    def _hub_or_raise(self) -> Hub:
        return self._attached()[0]

    def _attached(self) -> Tuple[Hub, BroadcastRing]:
        """This worker's hub and its ring. Raises RingError when unavailable."""
        hub = self._get_hub()
        ring = self._ring
        if hub is None or ring is None:
            raise RingError(f"broadcast is not available in this worker: {self._problem}")
        return hub, ring

    def position(self) -> Position:
        """The current position of the instance's ring (every message, plain or event).
        Raises RingError when unavailable."""
        ring = self._attached()[1]
        return Position(ring.epoch, ring.write_seq)

    def event_position(self) -> Position:
        """The current position in the numbering of event broadcasts, what clients hold
        and `resume` takes: the ring's (`position`), or with the Redis bridge the stream's
        shared by every instance (epoch and global seq of the last event appended here).
        Raises RingError when unavailable."""
        ring = self._attached()[1]
        state = self._global_state(ring)
        if state is not None:
            return Position(state.epoch, state.seq)
        return Position(ring.epoch, ring.write_seq)

    def _global_state(self, ring: BroadcastRing) -> Optional[GlobalState]:
        """The bridge's numbering; right after a start (a reload) with the bridge configured,
        waits up to STARTUP_WAIT seconds for the bridge's first answer from Redis, so that
        the first clients back get positions (and resumes) in the shared numbering."""
        if not _uwsgi.available():
            return None
        state = global_state(ring)
        if state is None and settings.get("redis-url"):
            if self._startup_deadline is None:  # one window per process, whatever the callers
                self._startup_deadline = time.monotonic() + STARTUP_WAIT
            while state is None and starting(ring) and time.monotonic() < self._startup_deadline:
                self._rt.sleep(0.02)
                state = global_state(ring)
        return state

    def loss_reason(self, oldest: int) -> Optional[str]:
        """Why a `resume` answered Recovered(False, `oldest`) when it is not simply that
        the instance keeps messages from `oldest` on: with the Redis bridge, that Redis's
        stream no longer has the earlier ones (MAXLEN trimmed them). None otherwise."""
        ring = self._ring
        state = global_state(ring) if ring is not None and _uwsgi.available() else None
        if state is not None and (oldest in self._trimmed or (state.trimmed and oldest == state.floor + 1)):
            return (f"trimmed: Redis's stream (MAXLEN) no longer holds the messages before seq {oldest}; "
                    "refetch the state")
        return None

    def attach(self, sub: Subscriber) -> None:
        """Make `sub` a member: it receives channel-None broadcasts and may subscribe.
        Raises RingError when unavailable."""
        self._hub_or_raise().attach(sub)

    def detach(self, sub: Subscriber) -> None:
        """`sub` receives nothing more. Idempotent; a no-op when unavailable."""
        if self._hub is not None:
            self._hub.detach(sub)

    def subscribe(self, sub: Subscriber, channel: str) -> Any:
        """Add `sub` to `channel` now (live only); a context manager that unsubscribes.
        Raises ValueError for a bad name, RingError when unavailable."""
        return self._hub_or_raise().subscribe(sub, channel)

    def unsubscribe(self, sub: Subscriber, channel: str, ordered: bool = False) -> None:
        """Remove `sub` from `channel` (with `ordered`: after its recoveries queued so far)."""
        if self._hub is not None:
            self._hub.unsubscribe(sub, channel, ordered)

    def channels(self, sub: Subscriber) -> Set[str]:
        """The channels `sub` receives now."""
        return self._hub.channels(sub) if self._hub is not None else set()

    def subscriber_count(self, channel: Optional[str] = None) -> int:
        """Subscribers of `channel` in this worker (None: every attached one); 0 when unavailable."""
        return self._hub.count(channel) if self._hub is not None else 0

    def stats(self) -> Dict[str, int]:
        """This worker's fan-out counters: delivered (messages x subscribers),
        slow_consumers (closed with 1013), lapped (times this worker fell behind the
        ring), subscribers (attached now), compressions (broadcast messages compressed
        for permessage-deflate subscribers: once per message and parameter set). All 0
        when unavailable."""
        hub = self._hub
        if hub is None:
            return {"delivered": 0, "slow_consumers": 0, "lapped": 0, "subscribers": 0, "compressions": 0}
        return {"delivered": hub.delivered, "slow_consumers": hub.slow_consumers, "lapped": hub.lapped,
                "subscribers": hub.count(None), "compressions": hub.compressions}

    def recover(self, sub: Subscriber, plan: Dict[str, Recovery], done: Optional[Done] = None) -> None:
        """Subscribe `sub` to each channel of `plan` with its recovery: None (live from
        now), `After(seq)` (every message after seq: resume), `Last(n)` (the last n).

        Messages the ring no longer holds come from the mule's history when it is on
        (``uwsgi-ws-history``); `done` gets {channel: Recovered} (ok False: some were
        gone; `seq` is then the oldest message still kept). Blocks this thread or
        greenlet only while asking the history (when the ring cannot serve the plan).
        Raises RingError when unavailable.
        """
        hub, ring = self._attached()
        oldest = ring.min_seq
        ask_after = {c: r.seq for c, r in plan.items() if isinstance(r, After) and r.seq + 1 < oldest}
        ask_last = {c: r.n for c, r in plan.items() if isinstance(r, Last)}
        preface: Sequence[Entry] = ()
        gone: Dict[str, int] = {}
        if (ask_after or ask_last) and _uwsgi.available():  # the history is the mule's
            reply = history.fetch(self._rt, ask_after, ask_last)
            if reply is not None:
                preface, gone = reply.entries, reply.gone
                for channel in (*ask_after, *ask_last):
                    if channel not in gone:
                        plan[channel] = After(reply.through)

        self._wait_hub(hub, ring, plan)

        def finish(result: Dict[str, Recovered]) -> None:
            for channel, oldest_kept in gone.items():  # the oldest the history still has
                if channel in result and not result[channel].ok:
                    result[channel] = Recovered(False, oldest_kept)
            if done is not None:
                done(result)

        hub.recover(sub, list(plan.items()), finish, preface)

    def _wait_hub(self, hub: Hub, ring: BroadcastRing, plan: Dict[str, Recovery]) -> None:
        """Wait (at most CATCH_UP_WAIT seconds) until this worker's hub has handed out the
        ring up to the highest `After` seq of `plan`: the hub subscribes at the point it
        reached and delivers live what follows, so a position beyond that point (a
        client coming from another worker or instance, the history's `through`) would
        have those messages sent twice."""
        target = max((r.seq for r in plan.values() if isinstance(r, After)), default=0)
        deadline = time.monotonic() + CATCH_UP_WAIT
        while hub.reached < target <= ring.write_seq and time.monotonic() < deadline:
            self._rt.sleep(0.002)

    def resume(self, sub: Subscriber, plan: Dict[str, Recovery], done: Optional[Done] = None) -> None:
        """`recover` with positions in the numbering of `event_position` (what clients
        hold): the ring's, or with the Redis bridge the stream's, valid on every
        instance. `done`'s seqs are in that numbering too. Same blocking and errors as
        `recover`; with the bridge it may also wait (at most CATCH_UP_WAIT seconds) for
        a position a client saw on a faster instance."""
        hub, ring = self._attached()
        state = self._global_state(ring)
        if state is None:
            self.recover(sub, plan, done)
        else:
            self._recover_global(hub, ring, state, sub, plan, done)

    # -- global positions (the Redis bridge numbers event broadcasts) ----------------------

    def _recover_global(self, hub: Hub, ring: BroadcastRing, state: GlobalState, sub: Subscriber,
                        plan: Dict[str, Recovery], done: Optional[Done]) -> None:
        """`recover` with positions of the stream shared through Redis: each `After(g)` is
        translated to the ring seq after which this ring holds the event broadcasts
        numbered above g (they are in the same order on every instance); a position the
        ring cannot serve is answered Recovered(False, oldest global seq still here)."""
        wanted = max((r.seq for r in plan.values() if isinstance(r, After)), default=0)
        if wanted > state.seq:  # seen on a faster instance: wait until this one has it too
            deadline = time.monotonic() + CATCH_UP_WAIT
            while wanted > state.seq and time.monotonic() < deadline:
                self._rt.sleep(0.01)
                state = global_state(ring) or state
        starts: Dict[str, int] = {}  # the client's global seq per channel
        bottoms: Dict[str, int] = {}  # the ring seq each replay starts after
        lost: Dict[str, int] = {}
        cache: Dict[int, Optional[int]] = {}
        for channel, recovery in list(plan.items()):
            if not isinstance(recovery, After):
                continue
            g = recovery.seq
            if g not in cache:
                cache[g] = _ring_after(ring, g, state)
            at = cache[g]
            starts[channel] = g
            if at is not None:
                bottoms[channel] = at
            if at is None:
                lost[channel] = _oldest_global(ring, state)
                plan[channel] = After(ring.write_seq)
            else:
                plan[channel] = After(at)
        preface: List[Entry] = []
        if lost:  # not (all) in this ring: the mule reads them back from Redis's stream
            reply = history.fetch_stream(self._rt, {c: starts[c] for c in lost}, state.epoch)
            now = global_state(ring) or state
            at = _ring_after(ring, reply.through, now) if reply is not None else None
            if reply is not None and at is not None:
                preface.extend(_as_global(reply.entries))
                for channel in list(lost):
                    if channel in reply.gone:
                        lost[channel] = reply.gone[channel]
                        self._trimmed[reply.gone[channel]] = True
                        while len(self._trimmed) > 1024:
                            del self._trimmed[next(iter(self._trimmed))]
                    else:
                        del lost[channel]
                        plan[channel] = After(at)
                        bottoms[channel] = at
        ask_last = {c: r.n for c, r in plan.items() if isinstance(r, Last)}
        if ask_last:  # the history keeps the events the bridge appended, by ring seq
            reply = history.fetch(self._rt, {}, ask_last)
            if reply is not None:
                preface.extend(_as_global(reply.entries))
                for channel in ask_last:
                    plan[channel] = After(reply.through)

        self._wait_hub(hub, ring, plan)

        def finish(result: Dict[str, Recovered]) -> None:  # in the hub's task: scans stay short
            out: Dict[str, Recovered] = {}
            for channel, outcome in result.items():
                if channel in lost:
                    out[channel] = Recovered(False, lost[channel])
                elif not outcome.ok:  # lapped during the replay: the oldest event from the ring's oldest on
                    out[channel] = Recovered(False, _first_global_from(ring, outcome.seq) or state.seq + 1)
                else:  # the newest event the replay reached (none after the start: the client's own)
                    out[channel] = Recovered(True, max(starts.get(channel, 0), _global_at(
                        ring, outcome.seq, bottoms.get(channel, max(outcome.seq - 4096, 0)) + 1)))
            if done is not None:
                done(out)

        hub.recover(sub, list(plan.items()), finish, preface)


def _as_global(entries: Sequence[Entry]) -> List[Entry]:
    """`entries` (from the history or the stream) flagged as numbered by Redis when they
    carry a global position (an SSE stream takes its ids from the frame then)."""
    return [Entry(e.seq, e.channel, e.flags | FLAG_GLOBAL, e.frame) if event_position(e.frame) else e
            for e in entries]


def _global_entries(ring: BroadcastRing, top: int, bottom: int = 0) -> Iterator[Tuple[int, int, int]]:
    """(ring seq, global seq, epoch) of the ring's numbered event broadcasts at or
    before ring seq `top` (and from `bottom` on), newest first, until the ring's oldest
    (or a lap)."""
    seq = top
    while seq >= max(ring.min_seq, bottom, 1):
        first = max(seq - 255, ring.min_seq, bottom, 1)
        try:
            batch = ring.read_range(first, seq)
        except Lapped:
            return
        for entry in reversed(batch):
            if entry.flags & FLAG_GLOBAL:
                pos = event_position(entry.frame)
                if pos is not None:
                    yield entry.seq, pos[0], pos[1]
        seq = first - 1


def _ring_after(ring: BroadcastRing, g: int, state: GlobalState) -> Optional[int]:
    """The ring seq R such that the ring's event broadcasts after R are exactly those
    numbered above `g` (R is just before the first of them, so plain messages older than
    it are not replayed); None when some of them are not in this ring."""
    if g < state.floor:
        return None  # never read here (started later, or Redis trimmed them first)
    # The inbox appends an event, then records its number: read the ring's top first, and
    # then the number; if `g` is at least that number, every event above g is after the
    # top minus one (a new connection's start: no scan down the ring).
    early = ring.write_seq
    now = global_state(ring)
    bottom = early if now is not None and now.epoch == state.epoch and g >= now.seq else 0
    top = ring.write_seq
    above: Optional[Tuple[int, int]] = None  # (ring seq, number) of the oldest one above g seen
    for seq, number, epoch in _global_entries(ring, top, bottom):
        if epoch != state.epoch:
            break  # an older epoch: nothing of this one before it
        if number <= g:
            return top if above is None else above[0] - 1
        above = (seq, number)
    if bottom:
        return top if above is None else above[0] - 1
    if above is None:
        # None above g in the ring: fine if the instance is not past g (the next come later).
        return top if g >= state.seq else None
    return above[0] - 1 if above[1] == g + 1 else None


def _global_at(ring: BroadcastRing, top: int, bottom: int) -> int:
    """The global seq of the newest numbered event broadcast in ring seqs bottom..top (0: none)."""
    for _seq, number, _epoch in _global_entries(ring, top, bottom):
        return number
    return 0


def _first_global_from(ring: BroadcastRing, first: int) -> int:
    """The global seq of the oldest numbered event broadcast at ring seq `first` or after,
    looking at most 4096 entries on (0: none)."""
    try:
        for entry in ring.scan(max(first, ring.min_seq), min(ring.write_seq, first + 4095)):
            if entry.flags & FLAG_GLOBAL:
                pos = event_position(entry.frame)
                if pos is not None:
                    return pos[0]
    except Lapped:
        pass
    return 0


def _oldest_global(ring: BroadcastRing, state: GlobalState) -> int:
    """The oldest global seq a resume can start from here (what a client is told it lost before)."""
    oldest = state.seq + 1
    for _seq, number, epoch in _global_entries(ring, ring.write_seq):
        if epoch != state.epoch:
            break
        oldest = number
    return max(oldest, state.floor + 1)


_instances: Dict[Tuple[int, int], Broadcast] = {}
_instances_lock = threading.Lock()


def for_process(runtime: Any) -> Broadcast:
    """This process's `Broadcast` for `runtime` (one per process: a forked worker
    gets its own)."""
    key = (os.getpid(), id(runtime))
    found = _instances.get(key)
    if found is None:
        with _instances_lock:
            found = _instances.setdefault(key, Broadcast(runtime))
    return found


def use_in_process() -> None:
    """Use the in-process broadcast in this process from now on, outside uWSGI (the
    development server, ``ws.test_client()``): the same ring and hub in this
    process's memory, so seqs, epochs, rooms and resume behave as under uWSGI.
    Idempotent; any thread; no effect under uWSGI."""
    local.enable()


def bridge_stats() -> Dict[str, Any]:
    """The Redis bridge's counters and states as the broadcast mule records them in the
    ring header (any process of the instance; no Redis, no lock): ``out_state`` and
    ``in_state`` ("connected", "unreachable", "not started", "off"), ``local_total``,
    ``out``, ``inbound``, ``missed``, ``late``, ``not_bridged``, ``last_id``,
    ``instance``, ``write_seq`` and the other fields of the bridge block
    (uwsgi_ws/broadcast/redis.py). Raises RingError when this process has no ring."""
    return _bridge_stats()


class PublishSocket:
    """A client of an instance's publish socket (``uwsgi-ws-publish-socket``, a path)
    from any process of the host: one acknowledged request at a time. Not
    thread-safe (one user at a time). Reconnects by itself and keeps its client id,
    so a request sent again after a broken connection is never appended twice."""

    def __init__(self, path: str) -> None:
        self._link = Link(path)

    def send(self, request: bytes, timeout: float) -> int:
        """Send `request` (`encode_request`) and return its seq in the instance's ring
        once the broadcast mule appended it. Blocks the calling thread up to `timeout`
        seconds (plain blocking sockets).

        Raises:
            Refused: the mule refused it (too large, malformed): the text says why.
            PublishError: no answer within `timeout`; the text says what was wrong (no
                such socket, permission denied, the mule not running).
        """
        return self._link.call(request, timeout)

    def close(self) -> None:
        """Close the connection (the next `send` reconnects). Idempotent."""
        self._link.close()


def redact(url: str) -> str:
    """`url` with its password replaced by ``***``, for logs and error messages. Never
    raises: a URL too broken to split (or with a port out of range) keeps only what is safe."""
    return _redact(url)


def stream_publish(client: Any, stream: str, maxlen: int, origin: str, number: int, request: bytes) -> int:
    """Add one publish request (`encode_request`) to the Redis bridge's `stream` as
    request `number` (1, 2, 3...) of the publisher `origin` (its random id), the way
    every bridged instance reads it: a plain message with fields ``o n c f d`` (a
    reader drops a repeated (origin, number) as a duplicate), an event numbered in
    Redis like the instances' own (the stream's seq and epoch; the same number sent
    again answers the seq of the first). `client`: a redis-py client; `maxlen`: the
    approximate length Redis trims the stream to. Blocks on one round trip.

    Returns:
        The event's global seq, or `number` for a plain message.

    Raises:
        ValueError: `request` is malformed.
        redis.RedisError, OSError: from the client (retrying with the same `number`
            is safe).
    """
    channel, flags, payload = decode_request(request)
    if flags & FLAG_EVENT:
        return add_event(client, stream, maxlen, origin, channel, flags, payload, number=number)
    fields: Dict[Any, Any] = {"o": origin, "n": number, "c": channel.encode("utf-8"), "f": flags & FLAG_BINARY,
                              "d": payload}
    client.xadd(stream, fields, maxlen=maxlen, approximate=True)
    return number


def publish(data: Data, channel: Optional[str] = None, event: bool = False) -> int:
    """`Broadcast.publish` for this process, in the model uWSGI runs (any process of
    the instance: workers, mules, spoolers). See `Broadcast.publish`."""
    from .. import runtime

    return for_process(runtime.load(runtime.detect())).publish(data, channel, event)


__all__ += ["PublishError", "publish"]
