"""The broadcast ring: numbered, ready-to-send frames in a uWSGI sharedarea.

One writer at a time appends (any process of the instance, serialised by the
instance's writer lock, `uwsgi_ws.broadcast.writer`: the broadcast mule, and
the workers publishing plain messages themselves); every worker reads. The
ring stores bytes and knows nothing of connections.
Readers never take a lock: they copy a record, then check that the writer had
not started to overwrite it (a torn or lapped record is reported as `Lapped`,
never returned).

Byte layout (little-endian), the whole sharedarea:

    offset  size  field
    0       8     magic b"UWSRING1"
    8       4     layout version (1)
    12      4     index_entries   (power of two)
    16      8     data_size       bytes in the data region
    24      8     epoch           random, set when the ring is formatted (new instance)
    32      8     write_seq       number of the last committed message (0: none yet)
    40      8     min_seq         oldest message whose record is still intact
    48      8     write_pos       data-region offset of the next record
    56      4     mule_id         the broadcast mule (publishers send to it)
    60      4     boot          crc32 of the machine's boot id when the ring was laid out
                                  (0 where unknown); see `format`
    64      184   bridge block    the Redis bridge's state (layout in
                                  uwsgi_ws/broadcast/redis.py); zeroed by a fresh
                                  format, untouched by the ring itself
    248     4     owner         master pid of the uWSGI instance using a ring file
                                  (`from_file`; 0 for a sharedarea)
    252     4     writers       what processes other than the mule may append, under the
                                  instance's writer lock file (`writer`), set by the mule:
                                  bit 0 (WRITERS_PLAIN) plain messages, bit 1 (WRITERS_EVENTS)
                                  events; 0: the mule appends everything
    256     16 x index_entries    index: message seq -> record
                  entry:  seq u64 | offset u32 | length u32   (slot = seq % index_entries)
    256 + 16 x index_entries      data region, data_size bytes, records back to back:
                  record: seq u64 | frame_len u32 | flags u8 | channel_len u8 | 2 reserved
                          | channel (channel_len bytes, UTF-8) | frame (frame_len bytes)
                          | zero padding to a multiple of 8

`frame` is a complete server WebSocket frame (header + payload), framed once
by its writer and written as-is to every subscribed connection. It is always
plain (RSV1 clear): the permessage-deflate copy of a broadcast is made by each
worker's hub at fan-out, once per message and negotiated parameter set
(uwsgi_ws/broadcast/hub.py `Hub._variants`), so SSE, the Redis bridge, the
history and resume read the ring unchanged and a worker compresses only for
the parameters its own subscribers negotiated. Flags: bit 0 =
binary; bit 1 = remote (the Redis bridge wrote it: a message of another
instance, not to be sent to Redis again; workers ignore it); bit 2 = event
(an event-protocol JSON text carrying its own seq and epoch, see
uwsgi_ws/broadcast/publish.py). A record never
wraps: if it does not fit before the end of the data region, it starts at
offset 0.

Writer protocol (append): compute the records the new one will overwrite,
raise `min_seq` past them, write the record, its index entry, `write_pos`,
and last `write_seq` (the commit). A writer killed mid-append leaves
`write_seq` unchanged, so the half-written record is never read; the next
writer resumes from the header. Only a ring the broadcast mule laid out
for this boot takes appends from other processes (`writable`).

Reader protocol (read): for seq <= write_seq, look up the index entry, copy
the record, then re-read `min_seq`: if it passed seq, the copy may be torn and
the reader has been lapped.
"""

from __future__ import annotations

import logging
import os
import struct
import sys
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Tuple

from .. import _uwsgi, settings
from ..exceptions import RingError

MAGIC = b"UWSRING1"
VERSION = 1
HEADER = struct.Struct("<8sIIQQQQQII")  # the first 64 bytes of the header
INDEX_ENTRY = struct.Struct("<QII")  # 16 bytes
RECORD = struct.Struct("<QIBBH")  # 16 bytes
FLAG_BINARY = 0x01
FLAG_REMOTE = 0x02
FLAG_EVENT = 0x04
HEADER_SIZE = 256
BRIDGE_OFFSET = 64  # the bridge block: bytes 64..247 of the header
_OWNER = 248
_WRITERS = 252
WRITERS_PLAIN = 0x01
WRITERS_EVENTS = 0x02
MIN_AREA = 64 * 1024

_W_SEQ = 32
_MIN_SEQ = 40
_W_POS = 48
# The header counters other processes read while the mule writes them
# (write_seq, min_seq, write_pos) are accessed with native, aligned 8-byte
# loads and stores: "<Q" packs and unpacks byte by byte, so a reader could see
# a torn value (write_seq going backwards, seen as an IndexError in a hub).
# Native order is little-endian on the x86-64 and ARM64 machines uWSGI runs on.
_U64 = struct.Struct("Q")
assert _U64.size == 8 and sys.byteorder == "little", "the ring layout is little-endian"

assert HEADER.size == BRIDGE_OFFSET and INDEX_ENTRY.size == 16 and RECORD.size == 16


class Lapped(Exception):
    """The message asked for was overwritten before (or while) it was read."""


class Entry(NamedTuple):
    """One message read from the ring: its instance-wide `seq`, its `channel` ("" for every
    connection), its `flags` (FLAG_BINARY, FLAG_REMOTE, FLAG_EVENT) and the complete server
    WebSocket `frame` (header and payload), framed once by the writer."""

    seq: int
    channel: str
    flags: int
    frame: bytes


def _align8(n: int) -> int:
    return (n + 7) & ~7


def boot_tag() -> int:
    """crc32 of this machine boot's id (Linux /proc/sys/kernel/random/boot_id); 0 where unknown."""
    import zlib

    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as f:
            return zlib.crc32(f.read().strip()) or 1
    except OSError:
        return 0


_boot: Optional[int] = None


def _boot_here() -> int:
    """`boot_tag()`, read once per process."""
    global _boot
    if _boot is None:
        _boot = boot_tag()
    return _boot


_fallback_logged = False


def _log_fallback(problem: str) -> None:
    global _fallback_logged
    if not _fallback_logged:  # once per process
        _fallback_logged = True
        logging.getLogger("uwsgi_ws.broadcast.ring").error(
            "%s; using the sharedarea instead: resume will not survive a reload", problem)


def _is_other_instance(pid: int) -> bool:
    """True when process `pid` runs (our user's) and is the same uwsgi binary as this
    process: the master of another instance, not a reused pid."""
    try:
        return os.readlink(f"/proc/{pid}/exe") == os.readlink("/proc/self/exe")
    except OSError:  # gone, another user's, or no /proc: not a live instance of ours
        return False


def geometry(area_size: int) -> Tuple[int, int]:
    """(index_entries, data_size) for a sharedarea of `area_size` bytes: one index
    entry per 256 bytes of area (a power of two, at least 256), the rest data."""
    if area_size < MIN_AREA:
        raise RingError(
            f"the sharedarea has {area_size} bytes; the broadcast ring needs at least {MIN_AREA}: "
            "raise --sharedarea (it counts 4 KiB pages, e.g. --sharedarea 4096 for 16 MiB)"
        )
    entries = 256
    while entries * 2 * 256 <= area_size:
        entries *= 2
    data_size = area_size - HEADER_SIZE - entries * INDEX_ENTRY.size
    return entries, data_size


class BroadcastRing:
    """A view of the ring in `buf` (a writable memoryview of the whole sharedarea).

    Reading (`write_seq`, `read`, `read_range`) is safe from any process at any
    time. Writing (`format`, `append`) needs the instance's writer lock
    (`uwsgi_ws.broadcast.writer`); `format` is the broadcast mule's.
    """

    def __init__(self, buf: memoryview) -> None:
        if buf.readonly:
            raise RingError("the sharedarea memoryview is read-only")
        self.buf = buf.cast("B") if buf.format != "B" else buf
        self.entries, self.data_size = geometry(len(self.buf))
        self.index_base = HEADER_SIZE
        self.data_base = HEADER_SIZE + self.entries * INDEX_ENTRY.size

    @classmethod
    def open(cls) -> BroadcastRing:
        """This instance's ring: in the file of the instance setting ``ring-file`` when
        it is set (it survives reloads: see `from_file`), else in uWSGI sharedarea
        ``sharedarea`` (0).

        A ring file this process cannot use (no permission to create it, another
        running instance's) is logged as an error and the sharedarea serves instead,
        as without the setting: broadcasting goes on, only resume across a reload is
        lost. Every process of the instance runs as the same user and decides alike.

        Raises:
            RingError: neither is usable (the message names what to configure).
        """
        path = settings.get("ring-file")
        if path:
            try:
                return cls.from_file(path, settings.get("ring-size"))
            except RingError as exc:
                try:
                    ring = cls.from_sharedarea()
                except RingError as second:
                    raise RingError(f"{exc}; and no sharedarea to fall back on: {second}") from None
                _log_fallback(str(exc))
                return ring
        return cls.from_sharedarea()

    @classmethod
    def from_file(cls, path: str, size: int) -> BroadcastRing:
        """The ring in a file mapped shared (MAP_SHARED) by every process of the instance.

        Unlike a sharedarea, which uWSGI allocates anew at each reload (the master
        re-executes itself), the file outlives a reload (``uwsgi --reload``, a touched
        vassal) and, on a disk, a full restart: `format` then finds the ring intact and
        keeps its epoch, so clients resume across the reload. Put it on a tmpfs
        (/run, /dev/shm) to survive reloads only. Created (mode 0600) with `size`
        bytes when missing; a file of another size is resized, which lays the ring
        out anew (a new epoch).

        Under uWSGI the file is claimed for this instance (its master pid in the
        header, kept across reloads, which keep the master pid): a file another live
        instance of the same uwsgi binary claimed is refused, since two writers would
        corrupt it.

        Raises:
            RingError: the file cannot be opened or sized, or another running
                instance uses it (the message says which).
        """
        import mmap

        geometry(size)  # RingError for a size too small
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise RingError(f"uwsgi-ws-ring-file={path!r}: {exc.strerror}: give a path the instance's "
                            "user can create and write (e.g. under /run/uwsgi)") from None
        try:
            if os.fstat(fd).st_size != size:
                os.ftruncate(fd, size)
            area = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as exc:
            raise RingError(f"uwsgi-ws-ring-file={path!r}: cannot map {size} bytes: {exc.strerror}") from None
        finally:
            os.close(fd)
        ring = cls(memoryview(area))
        master = _uwsgi.masterpid() if _uwsgi.available() else 0
        if master:
            owner: int = struct.unpack_from("<I", ring.buf, _OWNER)[0]
            if owner and owner != master and _is_other_instance(owner):
                raise RingError(f"uwsgi-ws-ring-file={path!r} is in use by the uWSGI instance of master pid "
                                f"{owner}: give each instance its own ring file")
            struct.pack_into("<I", ring.buf, _OWNER, master)
        return ring

    @classmethod
    def from_sharedarea(cls, area_id: Optional[int] = None) -> BroadcastRing:
        """The ring over uWSGI sharedarea `area_id` (default: $UWSGI_WS_SHAREDAREA or 0).

        Raises RingError naming the option to set outside uWSGI or without a sharedarea.
        """
        if area_id is None:
            area_id = settings.get("sharedarea")
        if not _uwsgi.available():
            raise RingError(
                "broadcast needs uWSGI: run the app under uwsgi with --master, "
                "--sharedarea 4096 and --mule=uwsgi_ws.mule:run"
            )
        try:
            view = _uwsgi.api().sharedarea_memoryview(area_id)
        except AttributeError:  # uWSGI defines sharedarea_* only when a --sharedarea is configured
            raise RingError(
                f"no uWSGI sharedarea {area_id}: add --sharedarea 4096 "
                "(YAML `sharedarea: 4096`) for the broadcast ring"
            ) from None
        except Exception as exc:
            raise RingError(
                f"no uWSGI sharedarea {area_id} ({exc}): add --sharedarea 4096 "
                "(YAML `sharedarea: 4096`) for the broadcast ring"
            ) from None
        if view is None:
            raise RingError(f"no uWSGI sharedarea {area_id}: add --sharedarea 4096 for the broadcast ring")
        return cls(view)

    # -- header -------------------------------------------------------------

    @property
    def formatted(self) -> bool:
        return bytes(self.buf[0:8]) == MAGIC

    def header(self) -> Dict[str, Any]:
        magic, version, entries, data_size, epoch, wseq, mseq, wpos, mule, _ = HEADER.unpack_from(self.buf, 0)
        return dict(magic=magic, version=version, index_entries=entries, data_size=data_size, epoch=epoch,
                    write_seq=wseq, min_seq=mseq, write_pos=wpos, mule_id=mule)

    @property
    def write_seq(self) -> int:
        """Number of the last committed message (0 before the first)."""
        value: int = _U64.unpack_from(self.buf, _W_SEQ)[0]
        return value

    @property
    def min_seq(self) -> int:
        value: int = _U64.unpack_from(self.buf, _MIN_SEQ)[0]
        return value

    @property
    def epoch(self) -> int:
        """Changes when the ring is formatted anew (a new uWSGI instance); 0 before."""
        return _U64.unpack_from(self.buf, 24)[0] if self.formatted else 0

    @property
    def mule_id(self) -> int:
        return struct.unpack_from("<I", self.buf, 56)[0] if self.formatted else 0

    def bridge_block(self) -> memoryview:
        """The header's bridge block (bytes 64..247), for `uwsgi_ws.broadcast.redis`."""
        return self.buf[BRIDGE_OFFSET:_OWNER]

    def writable(self, event: bool = False) -> bool:
        """True when the broadcast mule laid this ring out (or resumed it) for this boot and
        of this geometry, the state `format` leaves, and lets other processes append a
        plain message (an event: `event`) under the writer lock (the header's `writers`).
        Read it with the lock held (`format` takes it)."""
        magic, version, entries, data_size, _, _, _, wpos, mule, boot = HEADER.unpack_from(self.buf, 0)
        writers: int = struct.unpack_from("<I", self.buf, _WRITERS)[0]
        return bool(magic == MAGIC and version == VERSION and entries == self.entries and data_size == self.data_size
                    and wpos <= self.data_size and mule != 0 and boot == _boot_here()
                    and writers & (WRITERS_EVENTS if event else WRITERS_PLAIN))

    def max_frame_size(self, channel_len: int = 255) -> int:
        """The largest frame `append` accepts with a channel of that many bytes."""
        return (min(self.data_size // 4, 0xFFFFFFFF) & ~7) - RECORD.size - channel_len

    # -- writers (under the writer lock, `uwsgi_ws.broadcast.writer`; `format`: the mule) --

    def format(self, mule_id: int, writers: int = 0) -> None:
        """Resume the ring if it is intact, of this geometry and laid out since the
        machine booted, else lay it out anew with a fresh epoch. Then record
        `mule_id` as the broadcast mule, and what other processes may append under
        the instance's writer lock (`writers`: WRITERS_PLAIN | WRITERS_EVENTS, or 0).

        A ring file (`from_file`) is never synced: after a machine crash its pages
        on disk may predate messages clients saw, and resuming its numbering would
        skip the next ones as already seen. So a ring laid out before this boot
        (the boot id differs) starts a new epoch, as a sharedarea ring does at
        every start: a reboot costs clients their position, never a message.
        """
        h = self.header()
        boot = _boot_here()
        if not (h["magic"] == MAGIC and h["version"] == VERSION and h["index_entries"] == self.entries
                and h["data_size"] == self.data_size and h["write_pos"] <= self.data_size
                and struct.unpack_from("<I", self.buf, 60)[0] == boot):
            epoch = int.from_bytes(os.urandom(8), "little") >> 1 or 1
            owner = bytes(self.buf[_OWNER:_OWNER + 4])
            self.buf[: self.data_base] = bytes(self.data_base)
            self.buf[_OWNER:_OWNER + 4] = owner
            HEADER.pack_into(self.buf, 0, b"\0" * 8, VERSION, self.entries, self.data_size, epoch, 0, 1, 0, 0, boot)
            self.buf[0:8] = MAGIC
        struct.pack_into("<I", self.buf, 56, mule_id)
        struct.pack_into("<I", self.buf, _WRITERS, writers)

    def append(self, frame: bytes, channel: str = "", flags: int = 0) -> int:
        """Append one frame; returns its sequence number. The caller holds the writer lock.

        Raises:
            RingError: the channel name is over 255 bytes or the frame over `max_frame_size`.
        """
        chan = channel.encode("utf-8")
        if len(chan) > 255:
            raise RingError(f"channel name {channel[:40]!r}... is over 255 bytes")
        length = _align8(RECORD.size + len(chan) + len(frame))
        if len(frame) > self.max_frame_size(len(chan)):
            raise RingError(
                f"a {len(frame)}-byte frame does not fit the ring (at most {self.max_frame_size(len(chan))}): "
                "raise --sharedarea"
            )
        buf = self.buf
        seq = self.write_seq + 1
        start = _U64.unpack_from(buf, _W_POS)[0]
        pos = start if start + length <= self.data_size else 0
        self._invalidate(seq, start, pos, length)
        base = self.data_base + pos
        RECORD.pack_into(buf, base, seq, len(frame), flags, len(chan), 0)
        end = base + RECORD.size
        buf[end:end + len(chan)] = chan
        end += len(chan)
        buf[end:end + len(frame)] = frame
        INDEX_ENTRY.pack_into(buf, self.index_base + (seq % self.entries) * 16, seq, pos, length)
        _U64.pack_into(buf, _W_POS, pos + length)
        _U64.pack_into(buf, _W_SEQ, seq)  # commit
        return seq

    def _invalidate(self, seq: int, start: int, pos: int, length: int) -> None:
        """Raise min_seq past every record the append of `seq` at `pos` overwrites."""
        buf = self.buf
        min_seq = self.min_seq
        last = seq - 1
        zones = [(pos, pos + length)] if pos == start else [(start, self.data_size), (0, length)]
        new_min = min_seq
        while new_min <= last:
            if new_min <= seq - self.entries:  # its index slot is about to be reused
                new_min += 1
                continue
            s, off, ln = INDEX_ENTRY.unpack_from(buf, self.index_base + (new_min % self.entries) * 16)
            if s != new_min or any(off < hi and lo < off + ln for lo, hi in zones):
                new_min += 1
                continue
            break
        if new_min != min_seq:
            _U64.pack_into(buf, _MIN_SEQ, new_min)

    # -- readers -----------------------------------------------------------

    def read(self, seq: int) -> Optional[Entry]:
        """Message `seq`, None if not yet written; raises Lapped if it is gone."""
        entries = self.read_range(seq, seq)
        return entries[0] if entries else None

    def read_range(self, first: int, last: int) -> List[Entry]:
        """Messages first..last (clipped to write_seq), in order.

        Raises Lapped if `first` is already overwritten; a later message lost
        during the copy cuts the list short before it (read again from there).
        """
        buf = self.buf
        last = min(last, self.write_seq)
        if first > last:
            return []
        if first < self.min_seq:
            raise Lapped(first)
        copies = []
        for seq in range(first, last + 1):
            s, off, ln = INDEX_ENTRY.unpack_from(buf, self.index_base + (seq % self.entries) * 16)
            if s != seq or off + ln > self.data_size:
                break
            start = self.data_base + off
            copies.append((seq, bytes(buf[start:start + ln])))
        min_after = self.min_seq
        out: List[Entry] = []
        for seq, raw in copies:
            if seq < min_after:
                if not out:
                    raise Lapped(seq)
                break
            rseq, flen, flags, clen, _ = RECORD.unpack_from(raw, 0)
            if rseq != seq:
                break
            chan_end = RECORD.size + clen
            out.append(Entry(seq, raw[RECORD.size:chan_end].decode("utf-8"), flags, raw[chan_end:chan_end + flen]))
        if not out:  # first <= write_seq, yet its record is gone (slot reused, or overwritten)
            raise Lapped(first)
        return out

    def scan(self, first: int, last: int, chunk: int = 1024) -> Iterator[Entry]:
        """Messages first..last (clipped to write_seq), in order, read `chunk` at a
        time (each chunk is one `read_range`: copied, then checked for laps).

        Raises Lapped when `first`, or a later message before it was yielded, is
        overwritten: what was yielded until then is intact.
        """
        while first <= last:
            batch = self.read_range(first, min(last, first + chunk - 1))
            if not batch:
                return
            yield from batch
            first = batch[-1].seq + 1

    def __iter__(self) -> Iterator[Entry]:
        """Every message still in the ring, oldest first (for tests and resume)."""
        seq = max(self.min_seq, 1)
        while True:
            try:
                yield from self.scan(seq, self.write_seq)
                return
            except Lapped:
                seq = self.min_seq
