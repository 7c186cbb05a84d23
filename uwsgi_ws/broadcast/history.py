"""The broadcast history: the last event broadcasts of each channel, kept by the
broadcast mule beyond the ring.

The ring (`ring`) holds the most recent broadcasts of all channels
together, so a busy room pushes a quiet room's messages out of it. The history
keeps, per channel, the last N event broadcasts (the frames exactly as the
ring holds them, seq and epoch inside), up to a total byte budget, in the
broadcast mule's memory. Workers ask it for what the ring no longer has when a
client resumes, and for "the last messages" of a room a client joins
(`uwsgi_ws.events`, through `uwsgi_ws.broadcast.Broadcast`). It stores bytes
and knows nothing of connections.

Settings, uWSGI placeholders (``set-placeholder: uwsgi-ws-history=1000`` in a
config file, ``--set-placeholder`` on a command line; uWSGI keeps them in
``uwsgi.opt``, and `strict: true` accepts them where it refuses unknown keys):

    uwsgi-ws-history=N          event broadcasts kept per channel (default 0: off)
    uwsgi-ws-history-size=S     bytes of frames kept in all (default 64M; K/M/G suffixes)

Only local event broadcasts are kept (ring flag FLAG_EVENT, not FLAG_REMOTE):
plain `publish()` messages carry no seq a client could resume from. The mule
fills the history from the ring when it starts, so a respawned mule (kill -9)
starts with what the ring still holds; what only the old mule had is gone and
asked-for seqs before it are answered "gone".

The history file (opt-in, ``uwsgi-ws-history-file=PATH``, needs the ring in a
file, ``uwsgi-ws-ring-file``: the seqs it stores are that ring's). The history
lives in the mule's memory, and a reload (or a respawned mule) starts a new
mule: without the file it keeps only what the ring still holds, so a quiet
room's last messages, pushed out of the ring by a busy one, would be gone. With
it, the mule appends each kept broadcast to the file (one ``write``, no fsync:
it survives a killed process, reload and restart; a machine crash may lose the
tail, which is then answered "gone") and, at start, reloads the file when its
epoch is the ring's, then what the ring holds after it; then it rewrites the file
from memory (to PATH.tmp, renamed over PATH), as it also does whenever the
file grows past twice the kept bytes (at least 1 MiB). A file of another epoch
(the ring was laid out anew) is ignored and rewritten. Layout, little-endian:

    header:  magic b"UWSHIST1" | epoch u64 (the ring's) | base_seq u64 (nothing at or before it is known)
    records back to back, to EOF (a torn last record is ignored):
             kind u8 | seq u64 | channel_len u16 | frame_len u32 | channel (UTF-8) | frame
             kind 1: a kept broadcast (its frame exactly as in the ring);
             kind 2: a floor: every kept broadcast of the channel after `seq` follows (frame_len 0)

Wire format (a worker asks, the mule answers; one request per connection, on
the Unix stream socket ``\\0uwsgi_ws-history-<master pid>``):

    request:   u32 length | JSON {"after": {channel: seq}, "last": {channel: n}}
    response:  u32 length | JSON {"through": H, "gone": {channel: oldest_kept_seq}}
               then records back to back until EOF:  seq u64 | frame_len u32 | frame

With the Redis bridge the same socket also reads Redis's stream back for a
resume the ring cannot serve (`fetch_stream`; the mule serves it even with the
history off):

    request:   u32 length | JSON {"stream_after": {channel: global seq}, "epoch": E}
    response:  as above, `through` and the records' seqs being global seqs (the
               bridge's `read_back`); `gone`: channels Redis trimmed, with the oldest
               global seq it still has; {"error": M} and no records when it cannot

The mule answers processes of its own user (or root) only (SO_PEERCRED): an
abstract socket has no file permissions. All integers little-endian. `after`: every kept broadcast of the channel with a
greater seq; `last`: its n most recent ones. `through`: the ring's write_seq
when the mule answered: the history has every local event broadcast of the
asked channels with seq <= H (minus the `gone` ones), so the asker continues
from the ring after H. `gone`: channels of `after` whose messages after the
asked seq are no longer all kept. Records come in seq order over all channels.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, List, NamedTuple, Optional, Tuple

from .. import _threadstart, _uwsgi, metrics, settings
from ..log import get as _logger
from .ring import FLAG_EVENT, FLAG_REMOTE, Entry, Lapped

log = _logger(__name__)

_LEN = struct.Struct("<I")
_RECORD = struct.Struct("<QI")
MAX_REQUEST = 1024 * 1024
FETCH_TIMEOUT = 5.0  # seconds a worker waits for the mule's answer


def enabled() -> bool:
    """True when the mule keeps a history (``uwsgi-ws-history`` > 0)."""
    try:
        return int(settings.get("history")) > 0
    except ValueError:
        return False


def address() -> bytes:
    """The history's abstract socket address, private to this uWSGI instance."""
    return _uwsgi.instance_address("history")


# -- the store (the broadcast mule) ---------------------------------------------------


class History:
    """The kept broadcasts: per channel, the last `per_channel` frames, `max_bytes`
    in all (the oldest over all channels go first). Not thread-safe: the mule
    serialises `append` and `query` (its ring lock)."""

    def __init__(self, per_channel: int, max_bytes: int, base_seq: int) -> None:
        self.per_channel = per_channel
        self.max_bytes = max_bytes
        self.base_seq = base_seq  # nothing at or before it is known
        self._channels: Dict[str, Deque[Tuple[int, bytes]]] = {}
        self._floor: Dict[str, int] = {}  # channel -> newest seq evicted
        self._order: Deque[Tuple[int, str]] = deque()  # (seq, channel), oldest first; may hold evicted ones
        self.size = 0
        self.count = 0

    def append(self, seq: int, channel: str, frame: bytes) -> None:
        kept = self._channels.get(channel)
        if kept is None:
            kept = self._channels[channel] = deque()
        kept.append((seq, frame))
        self._order.append((seq, channel))
        self.size += len(frame)
        self.count += 1
        if len(kept) > self.per_channel:
            self._evict_oldest(channel)
        while self.size > self.max_bytes and self._order:
            old_seq, old_channel = self._order.popleft()
            old = self._channels.get(old_channel)
            if old and old[0][0] == old_seq:
                self._evict_oldest(old_channel)
        if len(self._order) > 2 * self.count + 1024:  # drop entries evicted per channel
            self._order = deque(e for e in self._order
                                if e[1] in self._channels and e[0] >= self._channels[e[1]][0][0])

    def _evict_oldest(self, channel: str) -> None:
        kept = self._channels[channel]
        seq, frame = kept.popleft()
        self.size -= len(frame)
        self.count -= 1
        if kept:
            self._floor[channel] = seq
        else:  # forget the channel; its floor becomes everyone's (conservative)
            del self._channels[channel]
            self._floor.pop(channel, None)
            self.base_seq = max(self.base_seq, seq)

    def set_floor(self, channel: str, seq: int) -> None:
        """Note that `channel`'s broadcasts up to `seq` are no longer all kept (a reload)."""
        self._floor[channel] = max(self._floor.get(channel, 0), seq)

    def snapshot(self) -> Tuple[int, Dict[str, int], List[Tuple[int, str, bytes]]]:
        """(base_seq, {channel: floor}, every kept (seq, channel, frame) in seq order)."""
        records = [(seq, channel, frame) for channel, kept in self._channels.items() for seq, frame in kept]
        records.sort(key=lambda r: r[0])
        return self.base_seq, dict(self._floor), records

    def floor(self, channel: str) -> int:
        """Every kept broadcast of `channel` after this seq is here."""
        return max(self.base_seq, self._floor.get(channel, 0))

    def query(self, after: Dict[str, int], last: Dict[str, int]) -> Tuple[Dict[str, int], List[Tuple[int, bytes]]]:
        """({channel: oldest kept seq} for `after` channels that lost messages,
        records in seq order)."""
        gone: Dict[str, int] = {}
        out: List[Tuple[int, bytes]] = []
        for channel, seq in after.items():
            floor = self.floor(channel)
            if seq < floor:
                gone[channel] = floor + 1
                continue
            out.extend(r for r in self._channels.get(channel, ()) if r[0] > seq)
        for channel, n in last.items():
            if n > 0 and channel not in after:
                kept = self._channels.get(channel, ())
                out.extend(list(kept)[-n:])
        out.sort(key=lambda r: r[0])
        return gone, out


class HistoryFile:
    """The history's file (layout in the module docstring), written by the mule only.

    Not thread-safe: the mule calls it under its ring lock. Write errors are
    logged once; the file is then removed (a file missing later broadcasts would
    answer "all kept" wrongly after the next start) and the history stays in
    memory only.
    """

    MAGIC = b"UWSHIST1"
    HEAD = struct.Struct("<8sQQ")  # magic, epoch, base_seq
    REC = struct.Struct("<BQHI")  # kind, seq, channel_len, frame_len
    MESSAGE, FLOOR = 1, 2

    def __init__(self, path: str, epoch: int) -> None:
        self.path, self.epoch = path, epoch
        self._fd: Optional[int] = None
        self.written = 0  # bytes in the file
        self.broken = False

    def read(self) -> Optional[Tuple[int, Dict[str, int], List[Tuple[int, str, bytes]]]]:
        """(base_seq, floors, records in file order) when the file exists and is of
        this epoch; None otherwise (missing, another epoch, not a history file)."""
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.error("history file %r unreadable (%s): starting from the ring", self.path, exc.strerror)
            return None
        if len(data) < self.HEAD.size:
            return None
        magic, epoch, base = self.HEAD.unpack_from(data, 0)
        if magic != self.MAGIC or epoch != self.epoch:
            log.info("history file %r is not of ring epoch %x: starting from the ring", self.path, self.epoch)
            return None
        floors: Dict[str, int] = {}
        records: List[Tuple[int, str, bytes]] = []
        pos = self.HEAD.size
        while pos + self.REC.size <= len(data):
            kind, seq, clen, flen = self.REC.unpack_from(data, pos)
            end = pos + self.REC.size + clen + flen
            if end > len(data) or kind not in (self.MESSAGE, self.FLOOR):
                break  # torn tail (killed mid-write) or garbage: what came before stands
            channel = data[pos + self.REC.size:pos + self.REC.size + clen].decode("utf-8", "replace")
            if kind == self.FLOOR:
                floors[channel] = seq
            else:
                records.append((seq, channel, data[end - flen:end]))
            pos = end
        return base, floors, records

    def rewrite(self, history: History) -> None:
        """Replace the file with `history`'s content (PATH.tmp renamed over PATH)."""
        if self.broken:
            return
        base, floors, records = history.snapshot()
        parts = [self.HEAD.pack(self.MAGIC, self.epoch, base)]
        for channel, seq in floors.items():
            parts.append(self._record(self.FLOOR, seq, channel, b""))
        for seq, channel, frame in records:
            parts.append(self._record(self.MESSAGE, seq, channel, frame))
        data = b"".join(parts)
        tmp = self.path + ".tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            if self._fd is not None:
                os.close(self._fd)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        except OSError as exc:
            self._fail(exc)
            return
        self.written = len(data)

    def append(self, seq: int, channel: str, frame: bytes, history: History) -> None:
        """Add a kept broadcast; rewrite the file when it outgrew `history` (compaction)."""
        if self.broken or self._fd is None:
            return
        record = self._record(self.MESSAGE, seq, channel, frame)
        try:
            written = os.write(self._fd, record)
            if written != len(record):
                raise OSError(28, "short write (disk full?)")
        except OSError as exc:
            self._fail(exc)
            return
        self.written += written
        if self.written > max(2 * history.size, 1 << 20):
            self.rewrite(history)

    def _record(self, kind: int, seq: int, channel: str, frame: bytes) -> bytes:
        chan = channel.encode("utf-8")
        return self.REC.pack(kind, seq, len(chan), len(frame)) + chan + frame

    def _fail(self, exc: OSError) -> None:
        self.broken = True
        log.error("history file %r: %s: keeping the history in memory only from now on (a reload keeps "
                  "what the ring holds); fix the path or the disk and reload", self.path, exc.strerror or exc)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        try:
            os.unlink(self.path)
        except OSError:
            pass


class Server:
    """The mule's history: `append` from the ring writer (under `lock`), answers
    worker requests in a daemon thread of the mule."""

    def __init__(self, history: History, ring: Any, lock: Any, store: Optional[HistoryFile] = None) -> None:
        """Binds the socket (OSError when another process holds it after 5 s).
        `store`: the history file to keep up to date (`restore` made it)."""
        self.history, self._ring, self._lock, self._store = history, ring, lock, store
        #: With the Redis bridge: (after, epoch, through) -> (gone, [(global seq, frame)]),
        #: `Bridge.read_back`; `through` is read here, under the ring lock.
        self.stream_reader: Optional[Callable[[Dict[str, int], int, int],
                                              Tuple[Dict[str, int], List[Tuple[int, bytes]]]]] = None
        self.global_seq: Optional[Callable[[], int]] = None
        self._metrics = metrics.local()
        self._gauges()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        for attempt in range(50):  # a killed predecessor may not have released it yet
            try:
                self._sock.bind(address())
                break
            except OSError:
                if attempt == 49:
                    raise
                time.sleep(0.1)
        self._sock.listen(128)
        _threadstart.start(self._serve, name="uwsgi_ws-history")

    def append(self, seq: int, channel: str, frame: bytes) -> None:
        """Keep a new event broadcast (the ring writer, under `lock`)."""
        self.history.append(seq, channel, frame)
        if self._store is not None:
            self._store.append(seq, channel, frame, self.history)
        self._gauges()

    def _gauges(self) -> None:
        self._metrics.set2(metrics.HISTORY_MESSAGES, self.history.count, metrics.HISTORY_BYTES, self.history.size)

    def _serve(self) -> None:
        uid = os.getuid()
        while True:
            client, _ = self._sock.accept()
            try:
                # An abstract socket has no file permissions: answer processes of our own user only.
                _, peer_uid, _ = struct.unpack("3i", client.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                                        struct.calcsize("3i")))
                if peer_uid != uid and peer_uid != 0:
                    raise PermissionError(f"a process of uid {peer_uid} asked for the history")
                client.settimeout(FETCH_TIMEOUT)
                self._answer(client)
            except Exception as exc:  # a worker that gave up, or a bad request: keep serving
                log.warning("history request failed: %r", exc)
            finally:
                client.close()

    def _answer(self, client: socket.socket) -> None:
        size = _LEN.unpack(_recv_exactly(client, _LEN.size))[0]
        if size > MAX_REQUEST:
            raise ValueError(f"request of {size} bytes")
        request = json.loads(_recv_exactly(client, size))
        if "stream_after" in request:
            self._answer_stream(client, request)
            return
        after = {str(c): int(s) for c, s in (request.get("after") or {}).items()}
        last = {str(c): int(n) for c, n in (request.get("last") or {}).items()}
        with self._lock:  # the ring writer holds it while it appends (ring, then history)
            through = self._ring.write_seq
            gone, records = self.history.query(after, last)
        head = json.dumps({"through": through, "gone": gone}).encode()
        parts = [_LEN.pack(len(head)), head]
        for seq, frame in records:
            parts.append(_RECORD.pack(seq, len(frame)))
            parts.append(frame)
        client.sendall(b"".join(parts))
        self._metrics.add2(metrics.HISTORY_QUERIES, 1, metrics.HISTORY_REPLAYED, len(records))


    def _answer_stream(self, client: socket.socket, request: Dict[str, Any]) -> None:
        after = {str(c): int(s) for c, s in (request.get("stream_after") or {}).items()}
        reader, position = self.stream_reader, self.global_seq
        records: List[Tuple[int, bytes]] = []
        if reader is None or position is None or not after:
            head: Dict[str, Any] = {"error": "no Redis bridge in this instance"}
        else:
            with self._lock:  # no append meanwhile: the ring has every event up to `through`
                through = position()
            try:
                gone, records = reader(after, int(request.get("epoch") or 0), through)
                head = {"through": through, "gone": gone}
            except Exception as exc:  # Redis unreachable: the worker answers not recovered
                head = {"error": str(exc)}
        body = json.dumps(head).encode()
        parts = [_LEN.pack(len(body)), body]
        for seq, frame in records:
            parts.append(_RECORD.pack(seq, len(frame)))
            parts.append(frame)
        client.sendall(b"".join(parts))
        self._metrics.add2(metrics.HISTORY_QUERIES, 1, metrics.HISTORY_REPLAYED, len(records))


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the history peer closed early")
        data += chunk
    return data


def load(ring: Any, per_channel: int, max_bytes: int) -> History:
    """A history filled with the event broadcasts still in the ring (mule start)."""
    history = History(per_channel, max_bytes, ring.write_seq)
    first, last = ring.min_seq, ring.write_seq
    if first == 0 or last == 0:
        return history
    history.base_seq = first - 1
    if not _fill(history, ring, first, last):
        return History(per_channel, max_bytes, ring.write_seq)
    return history


def _fill(history: History, ring: Any, first: int, last: int) -> bool:
    """Append the ring's local event broadcasts first..last; False if lapped."""
    try:
        for entry in ring.scan(first, last):
            if entry.flags & FLAG_EVENT and not entry.flags & FLAG_REMOTE:
                history.append(entry.seq, entry.channel, bytes(entry.frame))
    except Lapped:  # workers' plain messages passed the scan (a ring's worth meanwhile): rare
        return False
    return True


def restore(ring: Any, per_channel: int, max_bytes: int, store: HistoryFile) -> Tuple[History, int]:
    """(the history, how many broadcasts came from the file) at mule start, with a
    history file: the file's broadcasts when it is of the ring's epoch, then the
    ring's after the file's last; the file is then rewritten from it. Without a
    usable file, as `load`. Called before the mule's publish server and Redis bridge
    start (no other writer of events runs), without the writer lock: workers go on
    appending plain messages, which the history does not keep, and the ring is read
    as any reader reads it."""
    saved = store.read()
    last = ring.write_seq
    if saved is None or saved[0] > last:
        history = load(ring, per_channel, max_bytes)
        from_file = 0
    else:
        base, floors, records = saved
        history = History(per_channel, max_bytes, base)
        for channel, floor in floors.items():
            history.set_floor(channel, floor)
        top, from_file = base, 0
        for seq, channel, frame in records:
            if seq <= top or seq > last:  # out of order or beyond the ring: not of this ring's numbering
                break
            history.append(seq, channel, frame)
            top, from_file = seq, from_file + 1
        # Every kept broadcast up to `top` is in the file: the mule writes the ring, then the
        # file, and one killed in between left that broadcast in the ring, which still has it
        # (only the mule appends events while the history runs; but workers' plain messages,
        # appended while a killed mule is respawned, may push it out of the ring first: that
        # one broadcast then misses from the history). The ring entries between `top` and its
        # oldest are other messages (plain, remote): the file has every event among them. A
        # mule started with the history off removes the file (it would miss what it appends).
        first = max(top + 1, ring.min_seq)
        if first <= last and not _fill(history, ring, first, last):
            history, from_file = load(ring, per_channel, max_bytes), 0
    store.rewrite(history)
    return history, from_file


# -- the client (workers) ---------------------------------------------------------------


class Reply(NamedTuple):
    """The history's answer: it has every kept event of the asked channels up to
    ring seq `through`; `gone` {channel: oldest kept seq} lost some; `entries` in seq order."""

    through: int
    gone: Dict[str, int]
    entries: List[Entry]


def fetch(runtime: Any, after: Dict[str, int], last: Dict[str, int],
          timeout: float = FETCH_TIMEOUT) -> Optional[Reply]:
    """Ask the broadcast mule's history (blocks this thread or greenlet only, up to
    `timeout` seconds). None when the history is off or does not answer (mule
    restarting): callers fall back to the ring."""
    if not enabled():
        return None
    return _ask(runtime, {"after": after, "last": last}, timeout)


def fetch_stream(runtime: Any, after: Dict[str, int], epoch: int,
                 timeout: float = FETCH_TIMEOUT) -> Optional[Reply]:
    """With the Redis bridge: the event broadcasts of each channel numbered after
    `after[channel]` (global seqs of `epoch`) up to the reply's `through`, read back
    from Redis's stream by the mule; `gone`: channels whose messages Redis trimmed.
    Blocks this thread or greenlet only (at most `timeout` seconds). None when the
    mule cannot answer (no bridge, Redis unreachable, mule restarting)."""
    return _ask(runtime, {"stream_after": after, "epoch": epoch}, timeout)


def _ask(runtime: Any, request: Dict[str, Any], timeout: float) -> Optional[Reply]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    waiter = runtime.Waiter(sock.fileno())
    deadline = time.monotonic() + timeout
    try:
        sock.connect(address())  # a Unix socket connects at once or fails
        body = json.dumps(request).encode()
        out = memoryview(_LEN.pack(len(body)) + body)
        while out:
            try:
                out = out[sock.send(out):]
            except BlockingIOError:
                if not waiter.wait(False, True, max(0.0, deadline - time.monotonic()))[1]:
                    raise TimeoutError from None
        chunks: List[bytes] = []
        while True:
            try:
                chunk = sock.recv(1 << 20)
            except BlockingIOError:
                if not waiter.wait(True, False, max(0.0, deadline - time.monotonic()))[0]:
                    raise TimeoutError from None
                continue
            if not chunk:
                break
            chunks.append(chunk)
    except (OSError, TimeoutError) as exc:
        log.warning("the broadcast history did not answer (%r): replaying from the ring only", exc)
        return None
    finally:
        sock.close()
    data = b"".join(chunks)
    size = _LEN.unpack_from(data, 0)[0]
    head = json.loads(data[4:4 + size])
    if "error" in head:
        log.warning("the broadcast mule cannot read the stream back: %s", head["error"])
        return None
    pos, entries = 4 + size, []
    while pos < len(data):
        seq, length = _RECORD.unpack_from(data, pos)
        pos += _RECORD.size
        entries.append(Entry(seq, "", FLAG_EVENT, data[pos:pos + length]))
        pos += length
    return Reply(int(head["through"]), {str(c): int(s) for c, s in head["gone"].items()}, entries)
