"""The broadcast mule: lays the ring out and appends what the workers do not
(``--mule=uwsgi_ws.mule:run``).

Run it next to ``--master --sharedarea N``. At start it lays the broadcast ring
out (`ring.BroadcastRing.format`, or resumes it) and records there what the
other processes may append themselves under the instance's writer lock
(`writer`; `_direct_writers`): plain publishes of the workers, spoolers and
other mules, events too without the history. Everything else reaches it through
its publish socket (`PublishServer`; the wire format is documented in
`uwsgi_ws.broadcast.publish`): the master's publishes and, with
``uwsgi-ws-publish-direct=false``, every one, on an abstract socket private to
the instance; other processes of the host on the filesystem socket
``uwsgi-ws-publish-socket`` when set. It frames each message once, appends it
to the broadcast ring under the writer lock, answers each publisher with the
message's seq, and wakes the workers (`wakeup`) once per batch of requests
however large the burst. The main thread waits in
``uwsgi.mule_get_msg(signals=True)``, so the mule runs uWSGI signal handlers
at once; it also still appends requests sent the old way with
``uwsgi.mule_msg`` (unacknowledged).

Scale-out: with ``uwsgi-ws-redis-url`` set (a uWSGI placeholder, or the
environment variable ``UWSGI_WS_REDIS_URL``) the mule also runs the Redis
bridge (`redis`: two threads that push local messages to a Redis Stream and
append other instances' messages to the ring), and every publish of the
instance comes here. The mule's writers (the publish server, the main loop,
the bridge's inbox) are threads of this one process, serialised by
`_ring_lock`, the writer lock. Without the setting, the bridge and the
``redis`` package are never imported. With the bridge, an *event* broadcast
(flag FLAG_EVENT) is not appended here: the mule has Redis number it and add
it to the stream (`redis.Bridge.publish_event`, idempotent per publisher
request), answers the publisher with that global seq, and the bridge's inbox
appends it to the ring from the stream, in stream order, as every instance
does (flags FLAG_EVENT | redis.FLAG_GLOBAL; the history keeps it then). With
Redis unreachable such a publish is refused at once. The history's socket
also serves resumes read back from the stream (`history.fetch_stream`), and is
opened for that even with the history off.

Delivery: a publisher returns once its message is in the ring. While the mule
is down (the master respawns it) its publishers retry until
``uwsgi-ws-publish-timeout`` (the workers' own appends go on). A mule killed
between an append and its answer: the publisher sends the request again to the
respawned mule, which finds it in the `Journal` (the last (number, seq, check)
of each publisher, in a file on /dev/shm that outlives the mule) and answers
with the seq it already has: nothing accepted is lost or appended twice. Bound: two publishers whose ids
share a journal slot (1 in `Journal.SLOTS`) both retrying across the same
kill; and without a writable /dev/shm or temp dir the journal lives in the
mule's memory only (then a kill -9 can repeat each in-flight request once).
"""

from __future__ import annotations

import errno
import glob
import mmap
import os
import select
import socket
import struct
import tempfile
import threading
import time
import zlib
from typing import Any, Dict, List, Optional, Tuple

from .. import _threadstart, _uwsgi, metrics, settings
from ..exceptions import RingError
from ..log import get as _logger
from . import wakeup, writer
from .publish import (
    DEFAULT_MULE_MSG_SIZE,
    ENVELOPE,
    OK,
    REFUSED,
    REPLY,
    SEND_FLAGS,
    decode_request,
    mule_msg_size,
    ring_problem,
    set_local_sink,
    shared_ring,
    size_problem,
)
from .ring import FLAG_EVENT, WRITERS_EVENTS, WRITERS_PLAIN, BroadcastRing, Lapped

log = _logger(__name__)
# Held by every append to the ring in the broadcast mule (its publish server, its
# main loop and the Redis bridge's inbox thread): the instance's writer lock
# (`writer`), which the workers' direct publishes take too; a thread lock while
# no lock file can be made (the ring then tells other processes not to append).
_ring_lock: Any = threading.Lock()
_bridge: Any = None  # the running redis.Bridge, if configured
_history: Any = None  # the running history.Server, if uwsgi-ws-history is set
_server: Any = None  # the running PublishServer


def _append_local(ring: BroadcastRing, request: bytes) -> Optional[int]:
    """Append a publish request of this mule to the ring (any of its threads)."""
    with _ring_lock:
        return _append_locked(ring, request)


def _append_locked(ring: BroadcastRing, request: bytes, ident: Optional[Tuple[int, int]] = None,
                   journal: Optional[Journal] = None) -> Optional[int]:
    """Append a publish request (ring lock held); `ident`: (publisher id, request number)
    when it came through the publish socket, recorded in `journal` before the append."""
    if _bridge is not None and len(request) > 5 and request[4] & FLAG_EVENT:
        # With the Redis bridge an event broadcast is numbered by Redis and comes back
        # through the stream, in stream order, as on every instance (`redis` docstring).
        try:
            channel, flags, payload = decode_request(request)
        except ValueError:
            return None
        if flags & FLAG_EVENT:
            seq: Optional[int] = _bridge.publish_event(channel, flags, payload, ident)
            return seq
    try:
        channel, flags, frame = writer.frame_request(ring, request)
    except ValueError:
        return None
    if journal is not None and ident is not None:
        old = journal.record(ident[0], ident[1], ring.write_seq + 1, Journal.check(channel, frame))
        try:
            seq = ring.append(frame, channel, flags)
        except BaseException:
            journal.restore(ident[0], old)
            raise
    else:
        seq = ring.append(frame, channel, flags)
    if _history is not None and flags & FLAG_EVENT:
        _history.append(seq, channel, frame)
    if _bridge is not None:
        _bridge.count_local()
    return seq


def _publish_here(ring: BroadcastRing, request: bytes) -> Optional[int]:
    """`publish()` called inside the mule (its own code, a thread of its): straight to the ring."""
    seq = _append_local(ring, request)
    metrics.local().add(metrics.PUBLISHED)
    wakeup.wake_workers()
    if _bridge is not None:
        _bridge.notify()
    return seq


def run() -> None:
    """The broadcast mule's main loop (``--mule=uwsgi_ws.mule:run``); never returns."""
    global _server
    global _ring_lock
    uwsgi = _uwsgi.api()
    try:
        ring = shared_ring()
        lock = _writer_lock()
        if lock is not None:
            _ring_lock = lock
        with _ring_lock:
            ring.format(_uwsgi.mule_id(), _direct_writers() if lock is not None else 0)
    except RingError as exc:
        # uWSGI neither prints what a mule callable raises nor waits before respawning
        # it: say why once, then stay (publishers get the same error themselves).
        log.error("the broadcast mule cannot run: %s", exc)
        while True:
            time.sleep(3600)
    set_local_sink(lambda request: _publish_here(ring, request))
    size = max(mule_msg_size(), DEFAULT_MULE_MSG_SIZE) + 64
    log.info("broadcast mule %d serving ring epoch %x at message %d", _uwsgi.mule_id(), ring.epoch, ring.write_seq)
    _start_history(ring)
    _start_bridge(ring)
    wakeup.wake_workers()  # creates the wake-up socket here, before the publish server's thread uses it
    _server = PublishServer.start(ring)
    counts = metrics.local()
    # With --enable-metrics this mule also copies the metrics into uWSGI's (the stats server).
    mirror = metrics.mirror_enabled()
    timeout = int(metrics.MIRROR_INTERVAL) if mirror else -1
    mirrored = 0.0
    while True:
        # Signals are handled in here; messages are legacy `uwsgi.mule_msg` publish requests.
        message = uwsgi.mule_get_msg(signals=True, farms=False, buffer_size=size, timeout=timeout)
        appended = dropped = 0
        # None: a signal was handled; b"": the timeout passed (uWSGI returns an empty message).
        while message:
            try:
                if _append_local(ring, message) is not None:
                    appended += 1
                else:
                    dropped += 1
            except RingError as exc:
                dropped += 1
                log.warning("dropped a publish request: %s", exc)
            if appended >= 4096:
                break
            message = uwsgi.mule_get_msg(signals=True, farms=False, buffer_size=size, timeout=0)
        if appended or dropped:  # counted before the wake-up: a scrape never sees more delivered
            counts.add2(metrics.PUBLISHED, appended, metrics.DROPPED_MULE, dropped)
        if appended:
            wakeup.wake_workers()
            if _bridge is not None:
                _bridge.notify()
        if mirror and time.monotonic() - mirrored >= metrics.MIRROR_INTERVAL:
            mirrored = time.monotonic()
            metrics.mirror_to_uwsgi()


def _writer_lock() -> Optional[writer.WriterLock]:
    """The instance's writer lock for this mule (lock files of gone instances removed
    first); None, logged, when no lock file can be used: then every publish goes
    through this mule."""
    writer.remove_stale_locks(_uwsgi.masterpid())
    try:
        lock = writer.instance_lock()
    except OSError as exc:
        lock = None
        log.warning("every publish goes through the broadcast mule: %s", exc)
    if lock is None and writer.why_not():
        log.warning("every publish goes through the broadcast mule: no writer lock file (%s)", writer.why_not())
    return lock


def _direct_writers() -> int:
    """What the workers may append themselves (the ring's `writers`), decided here once
    for the whole instance: plain messages unless ``uwsgi-ws-publish-direct`` is off or
    the Redis bridge runs (it forwards what this mule appends); events too unless the
    history runs (this mule keeps them). A setting that cannot be read counts as on."""
    try:
        if not settings.get("publish-direct") or settings.get("redis-url"):
            return 0
    except ValueError:
        return 0
    try:
        history_on = settings.get("history") > 0
    except ValueError:
        history_on = True
    return WRITERS_PLAIN | (0 if history_on else WRITERS_EVENTS)


def _start_history(ring: BroadcastRing) -> None:
    """Keep the event history when uwsgi-ws-history is set (`history`)."""
    global _history
    from . import history

    try:
        per_channel, max_bytes = settings.get("history"), settings.get("history-size")
    except ValueError as exc:
        log.error("no broadcast history: %s", exc)
        return
    path = settings.get("history-file")
    if per_channel <= 0:
        if path and os.path.exists(path):  # it would miss what this mule appends: stale for a later start
            try:
                os.unlink(path)
                log.info("history off: removed the history file %r", path)
            except OSError as exc:
                log.error("history off, and the history file %r cannot be removed (%s): remove it before "
                          "turning the history on again", path, exc.strerror)
        return
    store = None
    if path and not settings.get("ring-file"):
        log.error("uwsgi-ws-history-file=%r ignored: it needs the ring in a file too (uwsgi-ws-ring-file), "
                  "the seqs it keeps are the ring's and a sharedarea ring starts anew at each reload", path)
    elif path:
        store = history.HistoryFile(path, ring.epoch)
    # Without the writer lock: this runs before the publish server and the bridge start
    # (nothing else appends events), and the workers' plain publishes must not wait for
    # a history file's reading and rewriting, or the socket's bind (`history.restore`).
    if store is not None:
        kept, from_file = history.restore(ring, per_channel, max_bytes, store)
    else:
        kept, from_file = history.load(ring, per_channel, max_bytes), 0
    try:
        _history = history.Server(kept, ring, _ring_lock, store)
    except OSError as exc:
        log.error("no broadcast history: cannot listen on %r: %s", history.address(), exc)
        return
    log.info("broadcast history: the last %d events per room, at most %d bytes (%d loaded: %d from the file %r, "
             "the rest from the ring)", per_channel, max_bytes, kept.count, from_file, path if store else None)


def _start_bridge(ring: BroadcastRing) -> None:
    """Start the Redis bridge when a Redis URL is set (nothing imported otherwise)."""
    global _bridge, _history
    if not settings.get("redis-url"):
        return
    from . import redis

    wakeup.wake_workers()  # creates the wake-up socket here, before the bridge's threads use it
    # The history keeps the event broadcasts the inbox appends (under the ring lock, as it wants).
    _bridge = redis.start(ring, _ring_lock, _history.append if _history is not None else None)
    if _bridge is None:
        return
    from . import history

    if _history is None:  # the history's socket also serves resumes read back from Redis
        try:
            _history = history.Server(history.History(0, 0, ring.write_seq), ring, _ring_lock)
        except OSError as exc:
            log.error("resume from Redis's stream is off: cannot listen on %r: %s", history.address(), exc)
            return
    block = redis.BridgeBlock(ring)
    _history.global_seq = lambda: block.get("g_seq")
    _history.stream_reader = _bridge.read_back


# -- the publish journal -----------------------------------------------------------------------


class Journal:
    """The last request each publisher had appended: (client_id, number, seq, check) in
    one of `SLOTS` slots (client_id modulo SLOTS; client ids are random 64-bit).

    Written under the writer lock *before* the append it records, with `check`, a
    crc32 of the channel and frame about to be appended at `seq`. After a kill -9
    between the two, the lock is free and a worker may append *its* message as that
    seq before the mule is respawned: `open` keeps a slot only when the ring holds,
    at its seq, the record it describes (same check), or its seq has left the ring
    (an old, committed one); a slot beyond the ring's write_seq, or whose seq holds
    another message, was never committed and is cleared. Check 0: a seq numbered by
    Redis (the bridge's events), kept while at most the ring's write_seq, as before.
    Kept in a file on /dev/shm (else the temp dir) named after the instance (master
    pid, ring epoch), so the respawned mule reads what its predecessor wrote; files of
    instances whose master is gone are removed at start. Not thread-safe: callers hold
    the ring lock.

    Layout: SLOTS x (client_id u64 | number u64 | seq u64 | check u32 | 4 reserved),
    little-endian.
    """

    SLOTS = 8192
    SLOT = struct.Struct("<QQQI4x")

    def __init__(self, buf: Any, path: Optional[str]) -> None:
        self.buf = buf
        self.path = path

    @staticmethod
    def check(channel: str, frame: bytes) -> int:
        """The check of a record: crc32 of its channel (UTF-8) and frame, never 0."""
        return zlib.crc32(frame, zlib.crc32(channel.encode("utf-8"))) or 1

    @classmethod
    def open(cls, ring: BroadcastRing) -> Journal:
        """The instance's journal (a fresh one in memory when no file can be made)."""
        size = cls.SLOTS * cls.SLOT.size
        uid, master = os.getuid(), _uwsgi.masterpid()
        path = None
        buf: Any = None
        for directory in ("/dev/shm", tempfile.gettempdir()):
            if not os.access(directory, os.W_OK):
                continue
            prefix = os.path.join(directory, f"uwsgi_ws-publish-{uid}-")
            _remove_stale(prefix, master)
            path = f"{prefix}{master}-{ring.epoch:x}"
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    if os.fstat(fd).st_size != size:  # new, or of another layout: start empty
                        os.ftruncate(fd, 0)
                        os.ftruncate(fd, size)
                    buf = mmap.mmap(fd, size)
                finally:
                    os.close(fd)
                break
            except OSError as exc:
                log.warning("publish journal: cannot use %s (%s)", path, exc)
                path = None
        if buf is None:
            log.warning("publish journal in memory only: a kill -9 of the mule may append an in-flight "
                        "publish twice")
            buf = bytearray(size)
        journal = cls(buf, path)
        journal._forget_after(ring)
        return journal

    def _forget_after(self, ring: BroadcastRing) -> None:
        """Clear the slots of appends that were never committed (see the class docstring)."""
        last = ring.write_seq
        for i in range(self.SLOTS):
            _, _, seq, check = self.SLOT.unpack_from(self.buf, i * self.SLOT.size)
            if not seq:
                continue
            keep = seq <= last
            if keep and check:
                try:
                    entry = ring.read(seq)
                except Lapped:
                    entry = None  # gone from the ring: an old, committed append
                keep = entry is None or self.check(entry.channel, entry.frame) == check
            if not keep:
                self.SLOT.pack_into(self.buf, i * self.SLOT.size, 0, 0, 0, 0)

    def find(self, client_id: int, number: int) -> Optional[int]:
        """The seq of (client_id, number) if it was appended, else None."""
        cid, num, seq, _ = self.SLOT.unpack_from(self.buf, (client_id % self.SLOTS) * self.SLOT.size)
        return seq if seq and cid == client_id and num == number else None

    def record(self, client_id: int, number: int, seq: int, check: int = 0) -> Tuple[int, int, int, int]:
        """Note that (client_id, number) is about to become `seq` (`check`: of its record,
        0 for a seq numbered by Redis); returns the slot's previous content (for
        `restore` when the append fails)."""
        offset = (client_id % self.SLOTS) * self.SLOT.size
        old = self.SLOT.unpack_from(self.buf, offset)
        self.SLOT.pack_into(self.buf, offset, client_id, number, seq, check)
        return old

    def restore(self, client_id: int, old: Tuple[int, int, int, int]) -> None:
        self.SLOT.pack_into(self.buf, (client_id % self.SLOTS) * self.SLOT.size, *old)


def _remove_stale(prefix: str, master: int) -> None:
    """Remove journals of instances whose master is gone (and our master's older epochs)."""
    for path in glob.glob(glob.escape(prefix) + "*"):
        try:
            pid = int(path[len(prefix):].split("-", 1)[0])
        except ValueError:
            continue
        if pid == master or not writer.master_gone(pid):  # alive (or a reused pid): left alone
            continue
        try:
            os.unlink(path)
        except OSError:
            pass


# -- the publish server ----------------------------------------------------------------------


class _Peer:
    __slots__ = ("closing", "inbuf", "outbuf", "pid", "sock", "uid", "where")

    def __init__(self, sock: socket.socket, uid: int, pid: int, where: str) -> None:
        self.sock = sock
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.closing = False  # stop reading; close once outbuf is sent
        self.uid, self.pid, self.where = uid, pid, where


class PublishServer:
    """The mule's publish socket(s), served by one thread of the mule: accepts
    publishers, reads their requests, appends a batch under the ring lock, answers
    each with its seq, wakes the workers once per batch.

    Listens on the instance's abstract socket (`publish.address()`: peers of this
    uid or root only, SO_PEERCRED) and, when ``uwsgi-ws-publish-socket`` is set, on
    that path with mode ``uwsgi-ws-publish-socket-mode`` (file permissions decide;
    each peer's uid and pid are logged).
    """

    MAX_BATCH = 4096  # requests appended per lock hold
    READ_CHUNK = 1 << 18

    def __init__(self, ring: BroadcastRing, journal: Journal) -> None:
        from .publish import address

        self.ring = ring
        self.journal = journal
        self.limit = mule_msg_size()
        self.uid = os.getuid()
        self.poll = select.poll()
        self.listeners: Dict[int, Tuple[socket.socket, str]] = {}
        self.peers: Dict[int, _Peer] = {}
        self.counts = metrics.local()
        self._listen(address(), "instance")
        path = settings.get("publish-socket")
        if path:
            self._listen_path(path, settings.get("publish-socket-mode"))

    @classmethod
    def start(cls, ring: BroadcastRing) -> Optional[PublishServer]:
        """Bind the sockets and serve them in a daemon thread; None (logged) when the
        instance's socket cannot be bound."""
        with _ring_lock:
            journal = Journal.open(ring)
        try:
            server = cls(ring, journal)
        except OSError as exc:
            log.error("the broadcast mule cannot listen for publishers: %s", exc)
            return None
        _threadstart.start(server._forever, name="uwsgi_ws-publish")
        return server

    # -- sockets --------------------------------------------------------------------

    def _listen(self, addr: Any, where: str) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        for attempt in range(50):  # a killed predecessor may not have released it yet
            try:
                sock.bind(addr)
                break
            except OSError:
                if attempt == 49:
                    sock.close()
                    raise
                time.sleep(0.1)
        sock.listen(1024)
        sock.setblocking(False)
        self.listeners[sock.fileno()] = (sock, where)
        self.poll.register(sock.fileno(), select.POLLIN)

    def _listen_path(self, path: str, mode: int) -> None:
        try:
            if os.path.exists(path) or os.path.islink(path):
                import stat

                if not stat.S_ISSOCK(os.lstat(path).st_mode):
                    raise OSError(errno.EEXIST, f"{path} exists and is not a socket: remove it or choose "
                                  "another uwsgi-ws-publish-socket")
                probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    probe.connect(path)
                    raise OSError(errno.EADDRINUSE, f"another process serves {path}: give each instance "
                                  "its own uwsgi-ws-publish-socket")
                except (ConnectionRefusedError, FileNotFoundError):
                    os.unlink(path)  # a predecessor's (this mule killed, or the instance restarted)
                finally:
                    probe.close()
            self._listen(path, path)
            os.chmod(path, mode)
        except OSError as exc:
            log.error("publish socket %s: %s (publishing from outside the instance is off)", path,
                      exc.strerror or exc)
            return
        log.info("publish socket %s (mode %04o): publishers outside the instance may connect", path, mode)

    def _accept(self, listener: socket.socket, where: str) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and the like: keep serving the others
                log.warning("publish socket %s: accept failed: %s", where, exc)
                return
            pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                                  struct.calcsize("3i")))
            if where == "instance" and uid not in (self.uid, 0):
                # An abstract socket has no file permissions: processes of our own user only.
                log.warning("publish: refused a process of uid %d (pid %d) on the instance's socket", uid, pid)
                sock.close()
                continue
            if where != "instance":
                log.info("publish socket %s: a publisher connected (uid %d, pid %d)", where, uid, pid)
            sock.setblocking(False)
            self.peers[sock.fileno()] = _Peer(sock, uid, pid, where)
            self.poll.register(sock.fileno(), select.POLLIN)

    def _drop(self, peer: _Peer) -> None:
        fd = peer.sock.fileno()
        self.peers.pop(fd, None)
        try:
            self.poll.unregister(fd)
        except (KeyError, ValueError):
            pass
        peer.sock.close()

    # -- the loop -------------------------------------------------------------------

    def _forever(self) -> None:
        while True:  # a bug must not end publishing silently: report it and go on
            try:
                self._serve()
            except Exception:
                log.exception("the publish server failed; serving again in 1 s")
                time.sleep(1)

    def _serve(self) -> None:
        while True:
            events = self.poll.poll()
            batch: List[Tuple[_Peer, int, int, bytes]] = []
            touched: List[_Peer] = []
            for fd, ev in events:
                listener = self.listeners.get(fd)
                if listener is not None:
                    self._accept(*listener)
                    continue
                peer = self.peers.get(fd)
                if peer is None:
                    continue
                if ev & select.POLLOUT:
                    self._flush(peer)
                if ev & (select.POLLIN | select.POLLERR | select.POLLHUP | select.POLLNVAL) and not peer.closing:
                    self._read(peer, batch)
                    touched.append(peer)
            if batch:
                self._process(batch)
            for peer in touched:
                if peer.sock.fileno() in self.peers or peer.outbuf:
                    self._flush(peer)

    def _read(self, peer: _Peer, batch: List[Tuple[_Peer, int, int, bytes]]) -> None:
        eof = False
        while len(peer.inbuf) < self.READ_CHUNK * 4:
            try:
                chunk = peer.sock.recv(self.READ_CHUNK)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                eof = True
                break
            if not chunk:
                eof = True
                break
            peer.inbuf += chunk
            if len(chunk) < self.READ_CHUNK:
                # Most likely all there was: poll() is level-triggered, so anything that
                # came meanwhile (or an EOF) is reported at the next pass; reading on
                # until EAGAIN would cost a recv and an exception per request.
                break
        buf = peer.inbuf
        pos = 0
        while len(buf) - pos >= ENVELOPE.size and len(batch) < self.MAX_BATCH * 4:
            body_len, client_id, number = ENVELOPE.unpack_from(buf, pos)
            if body_len < 16 + 6 or body_len - 16 > self.limit:
                size = body_len - 16 - 6
                why = ("malformed publish request" if body_len < 16 + 6 else
                       f"a message of about {size} bytes is over the limit: --mule-msg-size={self.limit} "
                       f"(the largest publish request) leaves room for {self.limit - 6} bytes minus the channel "
                       "name: raise --mule-msg-size (and --sharedarea) or send less")
                self._reply(peer, REFUSED, 0, why)
                self.counts.add(metrics.DROPPED_MULE)
                peer.closing = True  # the rest of the stream cannot be read in step: close after this answer
                pos = len(buf)
                break
            end = pos + 4 + body_len
            if len(buf) < end:
                break
            batch.append((peer, client_id, number, bytes(buf[pos + ENVELOPE.size:end])))
            pos = end
        del buf[:pos]
        if eof and not peer.outbuf:
            peer.closing = True

    def _process(self, batch: List[Tuple[_Peer, int, int, bytes]]) -> None:
        ring, journal = self.ring, self.journal
        answers: List[Tuple[_Peer, int, int, str]] = []
        appended = refused = 0
        for start in range(0, len(batch), self.MAX_BATCH):
            with _ring_lock:
                for peer, client_id, number, request in batch[start:start + self.MAX_BATCH]:
                    seq = journal.find(client_id, number)
                    if seq is not None:  # sent again after a broken connection: appended already
                        answers.append((peer, OK, seq, ""))
                        continue
                    problem = size_problem(request, self.limit) or _malformed(request) or ring_problem(request, ring)
                    if problem is None:
                        try:  # recorded in the journal just before the ring append
                            seq = _append_locked(ring, request, (client_id, number), journal)
                        except RingError as exc:
                            seq, problem = None, str(exc)
                        if seq is not None and seq != ring.write_seq:  # an event numbered by Redis
                            journal.record(client_id, number, seq)  # (global seq; its numbering is idempotent)
                    if seq is None:
                        refused += 1
                        answers.append((peer, REFUSED, 0, problem or "malformed publish request"))
                    else:
                        appended += 1
                        answers.append((peer, OK, seq, ""))
        if appended or refused:  # counted before the wake-up: a scrape never sees more delivered
            self.counts.add2(metrics.PUBLISHED, appended, metrics.DROPPED_MULE, refused)
        if appended:
            wakeup.wake_workers()
            if _bridge is not None:
                _bridge.notify()
        for peer, status, seq, text in answers:
            self._reply(peer, status, seq, text)

    def _reply(self, peer: _Peer, status: int, seq: int, text: str) -> None:
        raw = text.encode("utf-8")[:4096]
        peer.outbuf += REPLY.pack(status, seq, len(raw)) + raw

    def _flush(self, peer: _Peer) -> None:
        fd = peer.sock.fileno()
        if fd < 0:
            return
        while peer.outbuf:
            try:
                sent = peer.sock.send(peer.outbuf, SEND_FLAGS)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # the publisher left: it reconnects and asks again if it still wants to
                peer.outbuf.clear()
                peer.closing = True
                break
            del peer.outbuf[:sent]
        if peer.closing and not peer.outbuf:
            self._drop(peer)
            return
        if len(peer.outbuf) > 1 << 20:  # a publisher that sends but never reads its answers
            log.warning("publish: dropped a publisher (uid %d, pid %d) that does not read its answers",
                        peer.uid, peer.pid)
            self._drop(peer)
            return
        try:
            self.poll.modify(fd, select.POLLIN | (select.POLLOUT if peer.outbuf else 0))
        except (KeyError, ValueError, OSError):
            pass


def _malformed(request: bytes) -> Optional[str]:
    try:
        decode_request(request)
    except (ValueError, UnicodeDecodeError) as exc:
        return f"malformed publish request: {exc}"
    return None
