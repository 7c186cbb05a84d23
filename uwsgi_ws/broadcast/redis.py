"""Scale-out: the broadcasts of several uWSGI instances shared through one Redis Stream.

Opt-in: set the instance setting ``redis-url`` (vassal YAML ``set-placeholder:
uwsgi-ws-redis-url=redis://10.0.0.5:6379/0``, or ``UWSGI_WS_REDIS_URL`` in the
environment; `uwsgi_ws.settings` says why the placeholder is better). Only the
broadcast mule talks to Redis (`uwsgi_ws.broadcast.mule.run` starts the bridge);
without the setting the mule imports neither this module nor `redis`. Workers only read the
counters (`stats`), which needs no `redis`.

How it works (the README's "Scale-out with Redis" says why):

- Local first. The mule appends each local publish to its ring and wakes the
  workers exactly as without Redis: local subscribers never wait for Redis,
  and an instance whose Redis is down keeps serving its own publishes.
- The outbox thread pushes the ring's local entries (flag REMOTE clear), in
  ring order, to one stream: ``XADD <key> MAXLEN ~ <maxlen>``, each tagged
  with this instance's id (the ring's epoch) and a counter ``n`` (1, 2, 3...
  per instance). Its position is kept in the ring header, so a respawned mule
  resumes where it was; pushing an entry twice (a crash between XADD and that
  record) is harmless: readers drop it by its counter.
- The inbox thread reads the stream with ``XREAD BLOCK`` from the last id it
  consumed (kept in the ring header too; a fresh instance starts at its own
  start time, so what others published before it reached Redis still
  arrives), skips this instance's own entries
  (so nothing is delivered twice locally), drops duplicates (``n`` not above
  the last one seen from that instance), counts gaps (``n`` jumped: entries
  trimmed by MAXLEN or lost by Redis), and appends the rest to the ring with
  flag REMOTE under the mule's ring lock (the ring keeps one writer at a
  time), then wakes the workers.
- Redis unreachable: each thread retries with back-off (0.1 s doubling up to
  ``UWSGI_WS_REDIS_RETRY_MAX``, default 5 s), logging the outage once and the
  recovery once. Local publishes meanwhile are delivered locally at once and
  wait in the ring; the outbox pushes them when Redis is back (counted
  ``late``) unless the ring overwrote them first (counted ``not_bridged``,
  logged). The inbox resumes from its last id and catches up what the stream
  still holds (at least MAXLEN entries).
- Redis restarted (its run id changed: it may have lost its last writes), the
  outbox pushes again what it had pushed in the ``UWSGI_WS_REDIS_REPLAY``
  seconds (default 5) before; readers drop what they already had.

Stream entry fields: ``o`` instance id (16 hex digits; absent for entries
added by other programs), ``n`` its counter, ``c`` channel (UTF-8; empty: every
connection), ``f`` flags (bit 0: binary), ``d`` payload. Any program may
publish to every instance with ``XADD <key> * c <channel> d <payload>``.

Bridge block: bytes 64..247 of the ring header (`sharedarea`), little-endian,
zeroed when the ring is formatted; each field has a single writer thread:

    offset  size  field         writer   meaning
    0       4     out_state     outbox   0 not started, 1 connected, 2 unreachable, 3 off (error logged)
    4       4     in_state      inbox    the same, for reading
    8       8     pushed_seq    outbox   last ring seq handled (pushed, or counted not bridged)
    16      8     out           outbox   counter n of the last local message pushed
    24      8     late          outbox   local messages pushed after an outage (published while it could not push)
    32      8     local_total   main     local messages appended to the ring (under the ring lock)
    40      8     not_bridged   outbox   local messages the ring overwrote before they could be pushed
    48      8     last_id_ms    inbox    last stream entry id consumed (ms part)
    56      8     last_id_seq   inbox    (sequence part)
    64      8     inbound       inbox    messages of other instances appended to the ring
    72      8     missed        inbox    messages of other instances never read (gaps in their counter)
    80      8     duplicates    inbox    entries dropped as already delivered
    88      8     replayed      outbox   messages pushed again after a Redis restart
    96      4     positioned    inbox    1 once last_id is valid (set at the first connection)
    100     4     dropped       inbox    entries that could not be appended (malformed, too big for this ring)
    104     8     g_epoch       inbox    the stream's epoch (global positions; 0: not known yet)
    112     8     g_seq         inbox    global seq of the last event broadcast appended to the ring
    120     8     g_floor       inbox    every event broadcast after it has been appended (none at or before it
                                          can be replayed from this ring)
    128     4     g_trimmed     inbox    1: g_floor is a gap in the stream (MAXLEN trimmed events before this
                                          instance read them); 0: this instance started reading there
    132     4     reserved
    136     8     g_missed      inbox    event broadcasts never read (gaps in the global numbering)
    144     40    reserved (zero)

Global positions (event broadcasts, FLAG_EVENT). With the bridge, an event
broadcast is not appended locally first: the mule's publish path runs one Lua
script (`GLOBAL_PUBLISH`) that takes the next number of the stream's counter
``<stream>:seq`` (INCR), reads the stream's epoch ``<stream>:epoch`` (set once
with a random 63-bit number, kept while Redis keeps its data), writes them into
the event's JSON (``"seq":G,"epoch":"E"``) and XADDs it, all atomically: stream
order is numbering order. Every instance, the publishing one included, appends
the stream's event entries to its ring in stream order (inbox), flagged
FLAG_EVENT | FLAG_GLOBAL, so a client sees the same (epoch, seq) for a message
on every instance and its position means the same everywhere. Extra stream
fields of such an entry: ``g`` the global seq, ``e`` the epoch. Redis
unreachable: an event publish fails at once (RingError, a PublishError to the
publisher: there is no number to give it); plain publishes stay local-first.
"""

from __future__ import annotations

import collections
import random
import struct
import threading
import time
import traceback
from typing import Any, Callable, Deque, Dict, List, NamedTuple, Optional, Tuple
from urllib.parse import urlsplit, urlunsplit

from .. import _threadstart, frames
from .. import settings as _settings
from ..exceptions import RingError
from ..log import get as _logger
from . import wakeup
from .ring import FLAG_BINARY, FLAG_EVENT, FLAG_REMOTE, BroadcastRing, Lapped

log = _logger(__name__)
BATCH = 512  # stream entries per XADD pipeline or XREAD
READ_BACK_BATCH = 1000  # stream entries per XREVRANGE when a resume reads the stream
READ_BACK_LIMIT = 1_000_000  # stream entries a resume may scan at most (then: not recovered)
MAX_ORIGINS = 4096  # instances whose last counter the inbox remembers

NOT_STARTED, CONNECTED, UNREACHABLE, OFF = 0, 1, 2, 3
_STATE_NAMES = {NOT_STARTED: "not started", CONNECTED: "connected", UNREACHABLE: "unreachable", OFF: "off"}

_FIELDS: Dict[str, Tuple[int, str]] = {
    "out_state": (0, "<I"),
    "in_state": (4, "<I"),
    "pushed_seq": (8, "<Q"),
    "out": (16, "<Q"),
    "late": (24, "<Q"),
    "local_total": (32, "<Q"),
    "not_bridged": (40, "<Q"),
    "last_id_ms": (48, "<Q"),
    "last_id_seq": (56, "<Q"),
    "inbound": (64, "<Q"),
    "missed": (72, "<Q"),
    "duplicates": (80, "<Q"),
    "replayed": (88, "<Q"),
    "positioned": (96, "<I"),
    "dropped": (100, "<I"),
    "g_epoch": (104, "<Q"),
    "g_seq": (112, "<Q"),
    "g_floor": (120, "<Q"),
    "g_trimmed": (128, "<I"),
    "g_missed": (136, "<Q"),
}

#: Ring flag of an event broadcast numbered by Redis (global position): replayable on
#: every instance, never pushed by the outbox (it came from the stream).
FLAG_GLOBAL = 0x08

#: KEYS: stream, counter, epoch key, the publisher's last-request key (any key when none).
#: ARGV: maxlen, origin, channel, flags, the event's JSON without its closing brace, an
#: epoch to set if none, the publisher's request number ('' for none). Returns {seq, epoch}.
#: A request number already recorded for that publisher (sent again after the mule was
#: killed before answering) returns the seq it got without adding it again.
GLOBAL_PUBLISH = """
local epoch = redis.call('GET', KEYS[3])
if ARGV[7] ~= '' and epoch then
  local prev = redis.call('GET', KEYS[4])
  if prev then
    local n, s = string.match(prev, '^(%d+):(%d+)$')
    if n == ARGV[7] then
      return {tonumber(s), epoch}
    end
  end
end
if not epoch then
  epoch = ARGV[6]
  redis.call('SET', KEYS[3], epoch)
end
local seq = redis.call('INCR', KEYS[2])
local d = ARGV[5] .. ',"seq":' .. seq .. ',"epoch":"' .. epoch .. '"}'
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'o', ARGV[2], 'g', seq, 'e', epoch,
           'c', ARGV[3], 'f', ARGV[4], 'd', d)
if ARGV[7] ~= '' then
  redis.call('SET', KEYS[4], ARGV[7] .. ':' .. seq, 'EX', 600)
end
return {seq, epoch}
"""


def add_event(client: Any, stream: str, maxlen: int, origin: str, channel: str, flags: int, payload: bytes,
              number: int = 0) -> int:
    """Number an event broadcast in Redis and add it to `stream`, as the broadcast mule
    does (`GLOBAL_PUBLISH`), for a program outside the instances that publishes events
    straight to the stream (`uwsgi_ws.client.Publisher(redis_url=...)`): the event then
    gets the position every instance gives it. `client`: a redis-py client; `payload`
    the event's JSON (ending with ``}``); `number` (> 0): this publisher's request
    number, so that the same request sent again (a retry after a timeout whose first
    try got through) returns the seq it got instead of adding the event twice (the
    publisher is `origin`; remembered 10 minutes). Blocks on one round trip.

    Returns:
        Its global seq.

    Raises:
        ValueError: `payload` is not an event's JSON object.
        redis.RedisError, OSError: from the client.
    """
    if not payload.endswith(b"}"):
        raise ValueError("an event broadcast's JSON must end with '}'")
    seq, _epoch = client.eval(GLOBAL_PUBLISH, 4, stream, stream + ":seq", stream + ":epoch",
                              f"{stream}:publisher:{origin}", maxlen, origin, channel, flags & FLAG_BINARY,
                              payload[:-1], new_epoch(), str(number) if number > 0 else "")
    return int(seq)


def new_epoch() -> str:
    """A random 63-bit epoch, as its decimal string."""
    return str(random.SystemRandom().getrandbits(63) or 1)


class GlobalState(NamedTuple):
    """What a worker needs of the global numbering (`global_state`)."""

    epoch: int
    seq: int
    floor: int
    trimmed: bool


class BridgeBlock:
    """Typed fields of the bridge block of `ring` (see the module docstring).
    Each field has one writer; any process may read."""

    def __init__(self, ring: BroadcastRing) -> None:
        self.buf = ring.bridge_block()

    def get(self, name: str) -> int:
        offset, fmt = _FIELDS[name]
        value: int = struct.unpack_from(fmt, self.buf, offset)[0]
        return value

    def set(self, name: str, value: int) -> None:
        offset, fmt = _FIELDS[name]
        struct.pack_into(fmt, self.buf, offset, value)

    def add(self, name: str, delta: int) -> None:
        if delta:
            self.set(name, self.get(name) + delta)


def stats(ring: Optional[BroadcastRing] = None) -> Dict[str, Any]:
    """The bridge's counters and states, from any process of the instance (no Redis
    needed). States are "not started" when no bridge is configured."""
    ring = ring or BroadcastRing.open()
    block = BridgeBlock(ring)
    out: Dict[str, Any] = {name: block.get(name) for name in _FIELDS}
    out["out_state"] = _STATE_NAMES.get(out["out_state"], str(out["out_state"]))
    out["in_state"] = _STATE_NAMES.get(out["in_state"], str(out["in_state"]))
    out["last_id"] = "%d-%d" % (out.pop("last_id_ms"), out.pop("last_id_seq"))
    out["instance"] = "%016x" % ring.epoch
    out["write_seq"] = ring.write_seq
    return out


def global_state(ring: BroadcastRing) -> Optional[GlobalState]:
    """The ring's global numbering (any process), None when event broadcasts are numbered
    by this instance's ring (no bridge, or its epoch not read from Redis yet)."""
    block = BridgeBlock(ring)
    epoch = block.get("g_epoch")
    if not epoch:
        return None
    return GlobalState(epoch, block.get("g_seq"), block.get("g_floor"), bool(block.get("g_trimmed")))


def starting(ring: BroadcastRing) -> bool:
    """True while the bridge of a (re)started mule has not yet tried Redis for reading
    (its numbering may come any moment)."""
    return BridgeBlock(ring).get("in_state") == NOT_STARTED


def event_position(frame: bytes) -> Optional[Tuple[int, int]]:
    """(seq, epoch) written at the end of an event frame's JSON (`GLOBAL_PUBLISH`), or None."""
    tail = bytes(frame[-64:])
    at = tail.rfind(b',"seq":')
    if at < 0 or not tail.endswith(b'"}'):
        return None
    seq, _, epoch = tail[at + 7:-2].partition(b',"epoch":"')
    try:
        return int(seq), int(epoch)
    except ValueError:
        return None


def redact(url: str) -> str:
    """`url` with its password replaced by ***, for logs and error messages. Never raises:
    a URL too broken to split (or with a port out of range) keeps only what is safe."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
    except ValueError:
        return "<unparsable URL>"
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]  # as written: parts.port raises for a port out of range
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, parts.fragment))


def _log(message: str) -> None:
    log.info("redis bridge: %s", message)


class Settings:
    """The bridge's settings (`uwsgi_ws.settings`: ``uwsgi-ws-redis-*`` placeholders, else
    ``UWSGI_WS_REDIS_*``), validated (ConfigError, a ValueError, names the setting)."""

    def __init__(self) -> None:
        self.url: str = _settings.get("redis-url")
        self.stream: str = _settings.get("redis-stream")
        if not self.stream:
            raise ValueError("uwsgi-ws-redis-stream is empty: give the stream key all instances share")
        self.maxlen: int = _settings.get("redis-maxlen")
        self.retry_max: float = _settings.get("redis-retry-max")
        self.replay: float = _settings.get("redis-replay")


class _Backoff:
    def __init__(self, maximum: float) -> None:
        self.maximum = maximum
        self.delay = 0.1

    def reset(self) -> None:
        self.delay = 0.1

    def sleep(self) -> None:
        time.sleep(min(self.delay, self.maximum) * random.uniform(0.8, 1.2))
        self.delay = min(self.delay * 2, self.maximum)


def _before(entry_id: bytes) -> str:
    """The stream id just before `entry_id` (an inclusive XREVRANGE bound)."""
    ms, seq = _parse_id(entry_id)
    return "%d-%d" % (ms, seq - 1) if seq else "%d-%d" % (ms - 1, 2 ** 64 - 1)


def _parse_id(entry_id: bytes) -> Tuple[int, int]:
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or 0)


class Bridge:
    """The Redis bridge of one broadcast mule: an outbox and an inbox thread.

    `count_local` is called by the mule's writer (main loop) with `lock` held,
    after each local append; `notify` after each batch. Both threads append
    to / read the ring; appends hold `lock`.
    """

    def __init__(self, ring: BroadcastRing, lock: Any, settings: Settings) -> None:
        import redis  # only here: the mule imports this module only when configured
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self._redis = redis
        self._errors = (redis.RedisError, OSError)
        self._client_options = dict(socket_connect_timeout=3, socket_timeout=10, retry=Retry(NoBackoff(), 0),
                                    health_check_interval=0)
        redis.Redis.from_url(settings.url)  # raises ValueError for a malformed URL, now
        self.ring = ring
        self.lock = lock
        self.settings = settings
        self.block = BridgeBlock(ring)
        self.origin = "%016x" % ring.epoch
        self._origin_b = self.origin.encode()
        self._wake = threading.Event()
        self._started_ms = int(time.time() * 1000)
        self._run_id: Optional[str] = None
        self._checkpoints: Deque[Tuple[float, int, int]] = collections.deque()
        self._seen: collections.OrderedDict[bytes, int] = collections.OrderedDict()
        # A catch-up batch larger than the ring would lap this instance's own workers.
        self._read_batch = max(1, min(BATCH, ring.entries // 4))
        self._keys = (settings.stream, settings.stream + ":seq", settings.stream + ":epoch")
        self._pub: Any = None  # the publishing connection (`publish_event`), made at first use
        self._pub_lock = threading.Lock()
        self._script: Any = None
        #: Called with (ring seq, channel, frame) under the ring lock for each event
        #: broadcast the inbox appends (the mule's history keeps them).
        self.on_event: Optional[Callable[[int, str, bytes], None]] = None

    # -- global positions: event broadcasts numbered by Redis --------------------------

    def read_back(self, after: Dict[str, int], epoch: int, through: int
                  ) -> Tuple[Dict[str, int], List[Tuple[int, bytes]]]:
        """The event broadcasts of the channels of `after` numbered in (after[c], through]
        (epoch `epoch`) still in the stream, for a resume this instance's ring cannot
        serve (it started later, or its ring overwrote them). Reads the stream from its
        newest entry back (XREVRANGE, READ_BACK_BATCH at a time) until one numbered at
        most min(after): the cost is the distance, as for the replay itself.

        Returns:
            ({channel: oldest global seq the stream still has} for channels whose
            messages are no longer all there (trimmed), [(global seq, frame)] in order).

        Raises:
            RingError: Redis is unreachable (the caller answers not recovered).
        """
        lowest = min(after.values())
        found: List[Tuple[int, bytes]] = []
        oldest: Optional[int] = None  # the oldest number of `epoch` seen
        cursor, scanned, done = "+", 0, False
        with self._pub_lock:
            try:
                client = self._publishing_client()
                while not done and scanned < READ_BACK_LIMIT:
                    batch = client.xrevrange(self.settings.stream, max=cursor, min="-", count=READ_BACK_BATCH)
                    if not batch:
                        break
                    scanned += len(batch)
                    for _entry_id, fields in batch:
                        if b"g" not in fields:
                            continue
                        try:
                            g, e = int(fields[b"g"]), int(fields[b"e"])
                            channel = fields.get(b"c", b"").decode("utf-8")
                        except (KeyError, ValueError, UnicodeDecodeError):
                            continue
                        if e != epoch:
                            done = True  # an older epoch: nothing of this one before it
                            break
                        if g > through:
                            continue  # the ring has it (or will): live delivery's
                        oldest = g
                        if g <= lowest:
                            done = True
                            break
                        start = after.get(channel)
                        if start is not None and g > start:
                            opcode = frames.OP_BINARY if int(fields.get(b"f", b"0")) & FLAG_BINARY else frames.OP_TEXT
                            found.append((g, frames.encode(opcode, fields[b"d"])))
                    cursor = _before(batch[-1][0])
            except self._errors as exc:
                if self._pub is not None:
                    self._pub.close()
                    self._pub = None
                raise RingError(f"cannot read the stream back from Redis ({type(exc).__name__}: {exc})") from None
        found.reverse()
        floor = through + 1 if oldest is None else oldest
        gone = {c: floor for c, g in after.items() if g < through and floor > g + 1}
        return gone, found

    def _publishing_client(self) -> Any:
        """The connection of `publish_event` and `read_back` (caller holds _pub_lock)."""
        if self._pub is None:
            self._pub = self._redis.Redis.from_url(
                self.settings.url, client_name=f"uwsgi_ws-{self.origin}-pub", socket_connect_timeout=2,
                socket_timeout=2, retry=self._client_options["retry"], health_check_interval=0)
            self._script = self._pub.register_script(GLOBAL_PUBLISH)
        return self._pub

    def publish_event(self, channel: str, flags: int, payload: bytes, request: Optional[Tuple[int, int]] = None
                      ) -> int:
        """Number an event broadcast in Redis and add it to the stream (`GLOBAL_PUBLISH`);
        the inbox appends it to the ring, as every instance's does. Any thread; blocks on
        one Redis round trip (at most 2 s). `request`: (publisher id, request number) of
        the publish socket: sent again after a mule kill, it gets the seq it had (Redis
        remembers each publisher's last request for 10 minutes).

        Returns:
            Its global seq.

        Raises:
            RingError: Redis is unreachable or refused (the message says so): the publish
                is not accepted (the publisher gets a PublishError).
        """
        if not payload.endswith(b"}"):
            raise RingError("malformed event broadcast: its JSON must end with '}'")
        if self.block.get("in_state") == UNREACHABLE or self.block.get("out_state") == UNREACHABLE:
            raise RingError("event broadcast refused: Redis is unreachable, and with the Redis bridge every "
                            "event takes its position from Redis (so that clients resume on any instance); "
                            "retry when Redis is back")
        with self._pub_lock:
            try:
                self._publishing_client()
                last_key = f"{self.settings.stream}:pub:{request[0]:x}" if request else self._keys[1]
                seq, _epoch = self._script(keys=(*self._keys, last_key), args=[
                    self.settings.maxlen, self.origin, channel, flags & FLAG_BINARY, payload[:-1], new_epoch(),
                    str(request[1]) if request else ""])
            except self._errors as exc:
                if self._pub is not None:
                    self._pub.close()
                    self._pub = None
                raise RingError(f"event broadcast refused: Redis did not take it ({type(exc).__name__}: {exc}); "
                                "retry when Redis is back") from None
        self._wake.set()
        return int(seq)

    # -- called by the mule's main loop -------------------------------------------

    def count_local(self, count: int = 1) -> None:
        """`count` local messages were appended (caller holds the ring lock)."""
        self.block.add("local_total", count)

    def notify(self) -> None:
        """New local messages are in the ring: wake the outbox."""
        self._wake.set()

    def start(self) -> Bridge:
        _log(f"instance {self.origin} shares broadcasts through {redact(self.settings.url)} "
             f"stream {self.settings.stream!r} (MAXLEN ~{self.settings.maxlen})")
        for name, target in (("outbox", self._outbox), ("inbox", self._inbox)):
            _threadstart.start(self._forever, name, target, name=f"uwsgi_ws-redis-{name}")
        return self

    # -- shared ---------------------------------------------------------------------

    def _forever(self, name: str, target: Any) -> None:
        while True:  # a bug must not end the bridge silently: report it and go on
            try:
                target()
            except Exception:
                _log(f"{name} thread failed, restarting it in 1 s:\n{traceback.format_exc()}")
                time.sleep(1)

    def _connect(self, role: str) -> Any:
        client = self._redis.Redis.from_url(self.settings.url, client_name=f"uwsgi_ws-{self.origin}-{role}",
                                            **self._client_options)
        try:
            client.ping()
        except BaseException:
            client.close()
            raise
        return client

    # -- outbox: local entries of the ring -> the stream -----------------------------------

    def _outbox(self) -> None:
        block, backoff = self.block, _Backoff(self.settings.retry_max)
        client = None
        down_since: Optional[float] = None  # first failure since the last connection
        late_range = (0, 0)  # ring seqs (after, up to] published while it could not push
        while True:
            try:
                if client is None:
                    client = self._connect("out")
                    backoff.reset()
                    run_id = client.info("server").get("run_id")
                    pushed_before = block.get("pushed_seq")
                    replayed = self._replay() if self._run_id not in (None, run_id) else 0
                    self._run_id = run_id
                    if down_since is not None:
                        late_range = (pushed_before, self.ring.write_seq)
                        pending = self._count_local_between(*late_range)
                        _log(f"pushing again after {time.monotonic() - down_since:.1f}s: {pending} local "
                             "message(s) published meanwhile go to Redis now (counter `late`)"
                             + (f"; {replayed} pushed again, Redis restarted" if replayed else ""))
                    else:
                        _log("connected for pushing" + (f"; Redis restarted: {replayed} message(s) pushed "
                                                        "again" if replayed else ""))
                    down_since = None
                    block.set("out_state", CONNECTED)
                    if not self._checkpoints:
                        self._checkpoints.append((time.monotonic(), block.get("pushed_seq"), block.get("out")))
                self._wake.clear()
                if not self._push_pending(client, late_range) and not self._wake.wait(1.0):
                    client.ping()  # idle: notice an outage before the next publish
            except self._errors as exc:
                if client is not None:
                    client.close()
                    client = None
                if down_since is None:
                    down_since = time.monotonic()
                    _log(f"cannot push to Redis ({type(exc).__name__}: {exc}); local publishes are still "
                         "delivered here and wait in the ring to be pushed when Redis is back; retrying")
                block.set("out_state", UNREACHABLE)
                backoff.sleep()

    def _push_pending(self, client: Any, late_range: Tuple[int, int]) -> int:
        """Push every local ring entry after pushed_seq; returns how many ring entries it handled."""
        ring, block, settings = self.ring, self.block, self.settings
        handled = 0
        while True:
            start = block.get("pushed_seq") + 1
            last = ring.write_seq
            if start > last:
                return handled
            try:
                entries = ring.read_range(start, min(last, start + BATCH - 1))
            except Lapped:
                self._skip_lapped()
                continue
            n = block.get("out")
            late = 0
            commands = []
            for entry in entries:
                if entry.flags & (FLAG_REMOTE | FLAG_GLOBAL):
                    continue
                n += 1
                if late_range[0] < entry.seq <= late_range[1]:
                    late += 1
                commands.append(("XADD", settings.stream, "MAXLEN", "~", settings.maxlen, "*", "o", self.origin,
                                 "n", n, "c", entry.channel, "f", entry.flags & FLAG_BINARY,
                                 "d", frames.payload(entry.frame)))
            if len(commands) == 1:  # the common case of a steady publisher: no pipeline object
                client.execute_command(*commands[0])
            elif commands:
                pipe = client.pipeline(transaction=False)
                for command in commands:
                    pipe.execute_command(*command)
                pipe.execute()
            block.set("out", n)
            block.add("late", late)
            block.set("pushed_seq", entries[-1].seq)
            handled += len(entries)
            self._checkpoint(entries[-1].seq, n)
            if late and entries[-1].seq >= late_range[1]:
                _log(f"caught up: {block.get('late')} message(s) published while Redis was unreachable "
                     "have been pushed so far (counter `late`)")

    def _checkpoint(self, seq: int, n: int) -> None:
        """Remember (time, pushed_seq, out) for a replay; keep the newest one older than the window."""
        now = time.monotonic()
        points = self._checkpoints
        points.append((now, seq, n))
        while len(points) >= 2 and points[1][0] <= now - self.settings.replay:
            points.popleft()

    def _replay(self) -> int:
        """Redis restarted: rewind the outbox to the checkpoint before the replay window."""
        if not self._checkpoints or self.settings.replay <= 0:
            return 0
        _, seq, n = self._checkpoints[0]
        current = self.block.get("out")
        if n >= current:
            return 0
        if seq + 1 < self.ring.min_seq:
            _log("Redis restarted but the ring no longer holds the messages of the replay window: "
                 "not pushed again (other instances count what they miss as `missed`)")
            return 0
        self.block.set("out", n)
        self.block.set("pushed_seq", seq)
        self.block.add("replayed", current - n)
        self._checkpoints.clear()
        self._checkpoints.append((time.monotonic(), seq, n))
        return current - n

    def _count_local_between(self, after: int, upto: int) -> int:
        """Local entries with after < seq <= upto still in the ring."""
        ring = self.ring
        count, seq = 0, max(after + 1, ring.min_seq)
        while True:
            try:
                for entry in ring.scan(seq, upto):
                    count += not entry.flags & FLAG_REMOTE
                    seq = entry.seq + 1
                return count
            except Lapped:
                seq = ring.min_seq

    def _skip_lapped(self) -> None:
        """The ring overwrote local entries before they were pushed: count them, go on."""
        block = self.block
        with self.lock:  # no append meanwhile: the count below is exact
            first = self.ring.min_seq
            pending = self._count_local_between(first - 1, self.ring.write_seq)
            lost = block.get("local_total") - block.get("out") - block.get("not_bridged") - pending
            lost = max(lost, 0)
            block.add("not_bridged", lost)
            block.set("pushed_seq", first - 1)
        _log(f"{lost} local message(s) were overwritten in the ring before Redis took them: not bridged "
             f"(delivered on this instance only; {block.get('not_bridged')} so far, counter `not_bridged`). "
             "A larger --sharedarea holds a longer outage.")

    # -- inbox: the stream -> the ring ------------------------------------------------------

    def _inbox(self) -> None:
        block, settings, backoff = self.block, self.settings, _Backoff(self.settings.retry_max)
        client = None
        down_since: Optional[float] = None  # first failure since the last connection
        catching_up: Optional[int] = None
        while True:
            try:
                if client is None:
                    client = self._connect("in")
                    backoff.reset()
                    if not block.get("positioned"):
                        # A fresh instance reads what was published since it started (stream ids
                        # are Redis's clock in ms), even if Redis was unreachable until now.
                        newest = client.xrevrange(settings.stream, count=1)
                        ms, seq = _parse_id(newest[0][0]) if newest else (0, 0)
                        if (ms, seq) > (self._started_ms, 0):
                            ms, seq = self._started_ms, 0
                        block.set("last_id_ms", ms)
                        block.set("last_id_seq", seq)
                        block.set("positioned", 1)
                    self._read_epoch(client)
                    where = f"stream id {block.get('last_id_ms')}-{block.get('last_id_seq')}"
                    if down_since is not None:
                        _log(f"reading again after {time.monotonic() - down_since:.1f}s, from {where}")
                        catching_up = block.get("inbound")
                    else:
                        _log(f"connected for reading, from {where}")
                    down_since = None
                    block.set("in_state", CONNECTED)
                last_id = "%d-%d" % (block.get("last_id_ms"), block.get("last_id_seq"))
                reply = client.xread({settings.stream: last_id}, count=self._read_batch, block=1000)
                entries = reply[0][1] if reply else []
                if entries:
                    self._take(entries)
                if catching_up is not None and len(entries) < self._read_batch:
                    _log(f"caught up {block.get('inbound') - catching_up} message(s) of other instances")
                    catching_up = None
            except self._errors as exc:
                if client is not None:
                    client.close()
                    client = None
                if down_since is None:
                    down_since = time.monotonic()
                    _log(f"cannot read from Redis ({type(exc).__name__}: {exc}); other instances' "
                         "broadcasts will be caught up when it is back; retrying")
                block.set("in_state", UNREACHABLE)
                backoff.sleep()

    def _read_epoch(self, client: Any) -> None:
        """Learn the stream's epoch (creating it if none) before the first event, so that
        workers give positions in it from now on."""
        client.set(self._keys[2], new_epoch(), nx=True)
        epoch = int(client.get(self._keys[2]))
        with self.lock:
            if epoch != self.block.get("g_epoch"):
                self._new_epoch(epoch, int(client.get(self._keys[1]) or 0), "connected")

    def _new_epoch(self, epoch: int, floor: int, why: str) -> None:
        """Global positions are now of `epoch`; nothing at or before `floor` is here (lock held)."""
        block = self.block
        old = block.get("g_epoch")
        block.set("g_floor", floor)
        block.set("g_seq", floor)
        block.set("g_trimmed", 0)
        block.set("g_epoch", epoch)
        if old:
            _log(f"the stream's epoch changed ({why}: Redis lost its data?) from {old} to {epoch}: clients "
                 "resuming with positions of the old one are told `epoch changed`")

    def _take_global(self, entry_id: bytes, fields: Dict[bytes, bytes],
                     rows: List[Tuple[bytes, str, int, bytes, int, int]]) -> None:
        """An event broadcast numbered by Redis: keep it for the ring unless already had."""
        try:
            g, epoch = int(fields[b"g"]), int(fields[b"e"])
            channel = fields.get(b"c", b"").decode("utf-8")
            flags = int(fields.get(b"f", b"0")) & FLAG_BINARY
            data = fields[b"d"]
        except (KeyError, ValueError, UnicodeDecodeError):
            _log(f"dropped stream entry {entry_id.decode()}: malformed event broadcast")
            self.block.add("dropped", 1)
            return
        opcode = frames.OP_BINARY if flags else frames.OP_TEXT
        rows.append((frames.encode(opcode, data), channel, flags | FLAG_EVENT | FLAG_GLOBAL, entry_id, g, epoch))

    def _append_global(self, frame: bytes, channel: str, flags: int, entry_id: bytes, g: int, epoch: int) -> int:
        """Append one numbered event broadcast in order (lock held); returns 1 if appended."""
        block = self.block
        if epoch != block.get("g_epoch"):
            self._new_epoch(epoch, g - 1, f"stream entry {entry_id.decode()}")
        last = block.get("g_seq")
        if g <= last:
            block.add("duplicates", 1)
            return 0
        if g > last + 1:
            block.add("g_missed", g - last - 1)
            block.set("g_floor", g - 1)
            block.set("g_trimmed", 1)
            _log(f"missed event broadcasts {last + 1}..{g - 1}: trimmed from the stream (MAXLEN) before this "
                 f"instance read them; clients resuming from before {g} are told `trimmed`")
        seq = self.ring.append(frame, channel, flags)
        block.set("g_seq", g)
        if self.on_event is not None:
            self.on_event(seq, channel, frame)
        return 1

    def _take(self, entries: List[Tuple[bytes, Dict[bytes, bytes]]]) -> None:
        block, seen = self.block, self._seen
        rows: List[Tuple[bytes, str, int, bytes, int, int]] = []
        missed = duplicates = dropped = 0
        for entry_id, fields in entries:
            if b"g" in fields:
                self._take_global(entry_id, fields, rows)
                continue
            origin = fields.get(b"o")
            if origin == self._origin_b:
                continue  # our own: already in the ring
            try:
                channel = fields.get(b"c", b"").decode("utf-8")
                flags = int(fields.get(b"f", b"0")) & FLAG_BINARY
                data = fields[b"d"]
                n = int(fields[b"n"]) if origin is not None else None
            except (KeyError, ValueError, UnicodeDecodeError):
                dropped += 1
                _log(f"dropped stream entry {entry_id.decode()}: malformed (fields {sorted(fields)}); "
                     "an entry needs d (payload), and c (channel) and f (1: binary) are optional")
                continue
            if origin is not None and n is not None:
                last = seen.get(origin)
                if last is not None:
                    if n <= last:
                        duplicates += 1
                        continue
                    if n > last + 1:
                        missed += n - last - 1
                        _log(f"missed {n - last - 1} message(s) of instance {origin.decode()} (numbers "
                             f"{last + 1}..{n - 1}): gone from the stream before this instance read them "
                             "(MAXLEN trimmed them, or Redis lost them)")
                seen[origin] = n
                seen.move_to_end(origin)
                if len(seen) > MAX_ORIGINS:
                    seen.popitem(last=False)
            opcode = frames.OP_BINARY if flags & FLAG_BINARY else frames.OP_TEXT
            rows.append((frames.encode(opcode, data), channel, flags | FLAG_REMOTE, entry_id, 0, 0))
        appended = 0
        ms, seq = _parse_id(entries[-1][0])
        with self.lock:
            for frame, channel, flags, entry_id, g, epoch in rows:
                try:
                    if flags & FLAG_GLOBAL:
                        appended += self._append_global(frame, channel, flags, entry_id, g, epoch)
                    else:
                        self.ring.append(frame, channel, flags)
                        appended += 1
                except RingError as exc:
                    dropped += 1
                    _log(f"dropped stream entry {entry_id.decode()}: {exc}")
                # The position follows each append: a mule killed here repeats one message at most.
                entry_ms, entry_seq = _parse_id(entry_id)
                block.set("last_id_ms", entry_ms)
                block.set("last_id_seq", entry_seq)
            block.set("last_id_ms", ms)
            block.set("last_id_seq", seq)
        block.add("inbound", appended)
        block.add("missed", missed)
        block.add("duplicates", duplicates)
        block.add("dropped", dropped)
        if appended:
            wakeup.wake_workers()


def start(ring: BroadcastRing, lock: Any,
          on_event: Optional[Callable[[int, str, bytes], None]] = None) -> Optional[Bridge]:
    """Start the bridge of this broadcast mule from the environment; None (logged, the
    instance keeps broadcasting locally) when it is misconfigured. `on_event`: see
    `Bridge.on_event`."""
    block = BridgeBlock(ring)
    try:
        settings = Settings()
        bridge = Bridge(ring, lock, settings)
    except ImportError:
        problem = "the redis package is missing: pip install 'uwsgi_ws[redis]' (or redis)"
    except ValueError as exc:
        raw, where = _settings.setting("redis-url").source()
        name = where.rsplit(" ", 1)[-1]  # the placeholder or the variable it came from
        problem = f"{name}={redact(raw or '')!r}: {exc}"
    else:
        bridge.on_event = on_event
        return bridge.start()
    block.set("out_state", OFF)
    block.set("in_state", OFF)
    log.error("redis bridge: OFF, %s. Broadcasts stay local to this instance until "
              "the configuration is fixed and uWSGI restarted.", problem)
    return None
