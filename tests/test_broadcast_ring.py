"""The broadcast ring (`uwsgi_ws.sharedarea.BroadcastRing`) on its own, without uWSGI.

The ring lives in a plain `memoryview(bytearray(size))` here; the uWSGI
sharedarea is the same thing to it. Writer and readers are separate
`BroadcastRing` views over the one buffer, as the mule and the workers are.
"""

from __future__ import annotations

import os
import struct

import pytest

from uwsgi_ws.broadcast.ring import (
    FLAG_BINARY,
    HEADER_SIZE,
    INDEX_ENTRY,
    MIN_AREA,
    RECORD,
    BroadcastRing,
    Lapped,
    RingError,
    geometry,
)

AREA = MIN_AREA  # 64 KiB: 256 index entries, 61376 data bytes


def frame(payload: bytes, binary: bool = False) -> bytes:
    """An unmasked server frame, as the mule stores them (built here, not by the package)."""
    first = 0x82 if binary else 0x81
    n = len(payload)
    if n < 126:
        return bytes((first, n)) + payload
    if n < 0x10000:
        return struct.pack("!BBH", first, 126, n) + payload
    return struct.pack("!BBQ", first, 127, n) + payload


def new_ring(size: int = AREA, mule_id: int = 1):
    """(writer, reader, buffer): two views of one freshly formatted area."""
    buf = memoryview(bytearray(size))
    writer = BroadcastRing(buf)
    writer.format(mule_id)
    return writer, BroadcastRing(buf), buf


def record_size(frame_len: int, channel: str = "") -> int:
    return (RECORD.size + len(channel.encode()) + frame_len + 7) & ~7


# -- geometry and header ------------------------------------------------------


def test_geometry_of_a_16_mib_area():
    entries, data = geometry(4096 * 4096)
    assert entries == 4096 * 4096 // 256  # one index entry per 256 bytes
    assert data == 4096 * 4096 - HEADER_SIZE - entries * INDEX_ENTRY.size


def test_too_small_an_area_names_the_option():
    with pytest.raises(RingError, match="--sharedarea"):
        BroadcastRing(memoryview(bytearray(MIN_AREA - 1)))


def test_read_only_view_is_refused():
    with pytest.raises(RingError):
        BroadcastRing(memoryview(bytes(AREA)))


def test_fresh_ring_header():
    writer, reader, _ = new_ring(mule_id=3)
    assert reader.formatted
    assert reader.write_seq == 0 and reader.min_seq == 1
    assert reader.epoch != 0
    assert reader.mule_id == 3
    assert reader.read(1) is None
    assert reader.read_range(1, 100) == []
    assert list(reader) == []


def test_unformatted_area_reads_as_epoch_0():
    ring = BroadcastRing(memoryview(bytearray(AREA)))
    assert not ring.formatted and ring.epoch == 0 and ring.mule_id == 0


# -- append and read ----------------------------------------------------------


def test_append_then_read_in_order_text_binary_channels():
    writer, reader, _ = new_ring()
    written = []
    for i in range(50):
        binary = i % 3 == 0
        channel = ["", "a", "b", "é" * 10][i % 4]
        f = frame(os.urandom(i * 7) if binary else ("m%d" % i).encode(), binary)
        seq = writer.append(f, channel, FLAG_BINARY if binary else 0)
        assert seq == i + 1 == reader.write_seq
        written.append((seq, channel, FLAG_BINARY if binary else 0, f))
    got = reader.read_range(1, 50)
    assert [tuple(e) for e in got] == written
    assert tuple(reader.read(17)) == written[16]
    assert reader.read(51) is None
    assert reader.read_range(40, 1000) == got[39:]  # clipped to write_seq
    assert [tuple(e) for e in reader] == written


def test_empty_frame_and_largest_frame():
    writer, reader, _ = new_ring()
    assert writer.append(b"") == 1
    big = os.urandom(writer.max_frame_size(1))
    assert writer.append(big, "z") == 2
    assert reader.read(1).frame == b""
    assert reader.read(2).frame == big and reader.read(2).channel == "z"


def test_max_frame_size_is_what_append_accepts():
    """`max_frame_size` says it is "the largest frame `append` accepts": one byte more must fail.

    (The check in `append` compares the 8-byte-aligned record length against the
    limit plus 8, so up to 8 bytes over the announced limit get in.)"""
    for channel in ("", "a", "chan"):
        writer, _, _ = new_ring()
        limit = writer.max_frame_size(len(channel))
        writer.append(bytes(limit), channel)
        with pytest.raises(RingError, match="--sharedarea"):
            writer.append(bytes(limit + 1), channel)


def test_frame_far_over_the_limit_names_the_option():
    writer, _, _ = new_ring()
    with pytest.raises(RingError, match="raise --sharedarea"):
        writer.append(bytes(writer.data_size // 2))
    assert writer.write_seq == 0


def test_channel_over_255_bytes_is_refused():
    writer, _, _ = new_ring()
    with pytest.raises(RingError, match="255"):
        writer.append(b"\x81\x00", "é" * 128)


# -- wrap-around and lapping ----------------------------------------------------


def test_wrap_around_keeps_the_recent_messages_readable():
    writer, reader, _ = new_ring()
    payload_len = 1000  # ~1 KiB records: the 61 KiB data region wraps after ~60
    written = {}
    for i in range(200):
        f = frame(i.to_bytes(4, "big") * (payload_len // 4))
        written[writer.append(f, "c")] = f
    assert reader.write_seq == 200
    assert 200 * record_size(len(written[200]), "c") > 3 * reader.data_size  # wrapped 3 times
    oldest = reader.min_seq
    assert 100 < oldest < 200
    # everything from min_seq on is intact and in order, and it fills most of the ring
    entries = reader.read_range(oldest, 200)
    assert [e.seq for e in entries] == list(range(oldest, 201))
    assert all(e.frame == written[e.seq] for e in entries)
    assert (200 - oldest + 1) * record_size(len(written[200]), "c") > reader.data_size * 3 // 4
    # what was overwritten is reported, never returned
    with pytest.raises(Lapped):
        reader.read(oldest - 1)
    with pytest.raises(Lapped):
        reader.read_range(1, 200)


def test_wrap_past_old_records_left_in_the_tail():
    """A big record that does not fit before the end starts at 0; the older records
    still in the skipped tail come first in sequence order, so they go too."""
    writer, reader, _ = new_ring()
    written = {}
    for i in range(130):  # two laps of 1000-byte records
        f = frame(b"%04d" % i * 250)
        written[writer.append(f)] = f
    while writer.header()["write_pos"] <= writer.data_size - 14000:
        f = frame(b"fill" * 250)
        written[writer.append(f)] = f
    tail_start = writer.header()["write_pos"]
    tail_seqs = [seq for seq in range(reader.min_seq, reader.write_seq + 1)
                 if INDEX_ENTRY.unpack_from(reader.buf, reader.index_base + (seq % reader.entries) * 16)[1]
                 >= tail_start]
    assert tail_seqs, "some retained records lie in the tail the big record skips"
    big = frame(b"B" * 13990)
    written[writer.append(big)] = big
    assert reader.min_seq > max(tail_seqs)
    retained = reader.read_range(reader.min_seq, reader.write_seq)
    assert [e.seq for e in retained] == list(range(reader.min_seq, reader.write_seq + 1))
    assert all(e.frame == written[e.seq] for e in retained)


def test_reader_more_than_a_ring_behind_is_lapped_then_resumes_from_min_seq():
    writer, reader, _ = new_ring()
    cursor = 1
    assert reader.read_range(cursor, cursor + 10) == []
    for i in range(3000):  # ~ 3000 * 48 bytes: more than twice the data region
        writer.append(frame(b"x" * 30 + b"%05d" % i))
    with pytest.raises(Lapped) as info:
        reader.read_range(cursor, cursor + 4096)
    assert info.value.args[0] == cursor
    cursor = reader.min_seq
    got = []
    while True:
        batch = reader.read_range(cursor, cursor + 100)
        if not batch:
            break
        got += batch
        cursor = batch[-1].seq + 1
    assert [e.seq for e in got] == list(range(reader.min_seq, 3001))
    assert got[-1].frame.endswith(b"02999")


def test_index_wrap_laps_small_messages_too():
    """More messages than index entries: the slot of seq is reused by seq + entries."""
    writer, reader, _ = new_ring()
    assert writer.entries == 256
    for i in range(writer.entries + 10):
        writer.append(frame(b""))  # 16-byte records: the data region is far from full
    assert reader.min_seq == 11  # seq 1..10 lost their index slots to 257..266
    with pytest.raises(Lapped):
        reader.read(10)
    assert reader.read(11).seq == 11


# -- the reader's protocol: copy, then check ------------------------------------


class InterleavedReader(BroadcastRing):
    """A reader that lets `writer_step` run at a chosen point of its read.

    `read_range` reads `min_seq` once before copying and once after. By default the
    step runs just before that second read (between the copy and the check), as if
    the writer had been scheduled right then; with `after_first_check` it runs
    right after the first read (between the check and the copy).
    """

    writer_step = None
    after_first_check = False

    def __init__(self, buf):
        super().__init__(buf)
        self._reads = 0

    @property
    def min_seq(self):  # type: ignore[override]
        self._reads += 1
        if self.writer_step is not None and self._reads == 2 and not self.after_first_check:
            self.writer_step()
        value = super().min_seq
        if self.writer_step is not None and self._reads == 1 and self.after_first_check:
            self.writer_step()
        return value


def test_record_overwritten_during_the_copy_is_reported_as_lapped():
    writer, _, buf = new_ring()
    for i in range(10):
        writer.append(frame(b"old %d" % i + b"." * 900))
    reader = InterleavedReader(buf)

    def overwrite_everything():
        for i in range(200):
            writer.append(frame(b"new %d" % i + b"!" * 900))

    reader.writer_step = overwrite_everything
    with pytest.raises(Lapped):
        reader.read_range(1, 10)
    # a fresh reader sees the new records only
    assert BroadcastRing(buf).read(reader.min_seq).frame[4:8] == b"new "


def test_copy_whose_oldest_records_get_overwritten_is_lapped():
    """The ring is full; while a reader copies all of it, the writer wraps and
    overwrites just the two oldest records: the read must fail, not return them."""
    writer, _, buf = new_ring()
    for i in range(30):
        writer.append(frame(b"%02d" % i + b"-" * 1990))  # 2016-byte records: 30 fill the ring
    first = BroadcastRing(buf).min_seq
    assert first == 1
    reader = InterleavedReader(buf)

    def overwrite_two():
        writer.append(frame(b"A" * 1992))
        writer.append(frame(b"B" * 1992))

    reader.writer_step = overwrite_two
    with pytest.raises(Lapped):
        reader.read_range(first, 30)


def test_index_slot_reused_between_check_and_copy_is_lapped_not_empty():
    """The writer laps the index (entries more messages) after the reader checked
    min_seq and before it looks `first` up: the slot holds another message now.
    `read_range` must raise Lapped (its docstring: "Raises Lapped if `first` is
    already overwritten"), not return [] for a range that was committed: the hub
    reads `entries[-1]` of what it gets (an IndexError in its task, seen once in
    a test run as `self._last = entries[-1].seq  IndexError`)."""
    writer, _, buf = new_ring()
    for i in range(10):
        writer.append(frame(b"m%d" % i))
    reader = InterleavedReader(buf)
    reader.after_first_check = True
    reader.writer_step = lambda: [writer.append(frame(b"")) for _ in range(writer.entries)]
    with pytest.raises(Lapped):
        got = reader.read_range(1, 10)
        assert got, "read_range returned [] for messages 1..10, all committed"


def test_copy_with_no_overwrite_in_between_is_returned():
    writer, _, buf = new_ring()
    for i in range(10):
        writer.append(frame(b"m%d" % i))
    reader = InterleavedReader(buf)
    reader.writer_step = lambda: writer.append(frame(b"later"))  # appends, overwrites nothing
    got = reader.read_range(1, 10)
    assert [e.frame for e in got] == [frame(b"m%d" % i) for i in range(10)]


def test_writer_killed_before_the_commit_leaves_no_readable_record():
    """Everything of an append but its last step (write_seq): readers never see it,
    and the next writer (a respawned mule) resumes and reuses the number."""
    writer, reader, buf = new_ring()
    writer.append(frame(b"one"))
    committed = bytes(buf[32:40])  # write_seq
    writer.append(frame(b"half-written"))
    buf[32:40] = committed  # the commit never happened
    assert reader.write_seq == 1
    assert reader.read(2) is None
    respawned = BroadcastRing(buf)
    epoch = reader.epoch
    respawned.format(mule_id=1)
    assert reader.epoch == epoch and reader.write_seq == 1
    assert respawned.append(frame(b"two")) == 2
    assert [e.frame for e in reader.read_range(1, 2)] == [frame(b"one"), frame(b"two")]


# -- format: resume an intact ring, re-format a foreign one ------------------------


def test_format_resumes_an_intact_ring():
    writer, reader, buf = new_ring(mule_id=1)
    for i in range(300):
        writer.append(frame(b"%d" % i), "c")
    before = reader.header()
    BroadcastRing(buf).format(mule_id=4)  # a respawned mule with another id
    after = reader.header()
    assert after["epoch"] == before["epoch"]
    assert after["write_seq"] == before["write_seq"] == 300
    assert after["min_seq"] == before["min_seq"] and after["write_pos"] == before["write_pos"]
    assert after["mule_id"] == 4
    assert reader.read(300).frame == frame(b"299")


@pytest.mark.parametrize("damage", ["garbage", "other geometry", "bad version", "write_pos past the end"])
def test_format_lays_out_a_foreign_area_anew(damage):
    buf = memoryview(bytearray(AREA))
    if damage == "garbage":
        buf[:] = os.urandom(AREA)
    else:
        other = memoryview(bytearray(AREA * 2)) if damage == "other geometry" else buf
        ring = BroadcastRing(other)
        ring.format(1)
        for i in range(20):
            ring.append(frame(b"%d" % i))
        if damage == "other geometry":
            buf[: HEADER_SIZE] = other[: HEADER_SIZE]
        elif damage == "bad version":
            struct.pack_into("<I", buf, 8, 99)
        else:
            struct.pack_into("<Q", buf, 48, ring.data_size + 8)
    old_epoch = struct.unpack_from("<Q", buf, 24)[0]
    ring = BroadcastRing(buf)
    ring.format(mule_id=2)
    h = ring.header()
    assert h["magic"] == b"UWSRING1" and h["version"] == 1
    assert h["epoch"] not in (0, old_epoch)
    assert h["write_seq"] == 0 and h["min_seq"] == 1 and h["write_pos"] == 0
    assert h["mule_id"] == 2
    assert ring.append(frame(b"first")) == 1
    assert ring.read(1).frame == frame(b"first")


def test_two_formats_of_fresh_areas_get_different_epochs():
    a, _, _ = new_ring()
    b, _, _ = new_ring()
    assert a.epoch != b.epoch


# -- property: whatever is not lapped reads back exactly as written -----------------

try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # the test extra installs it: pip install -e .[test]
    given = None

if given is None:

    @pytest.mark.skip(reason="hypothesis is not installed (pip install -e '.[test]')")
    def test_property_everything_not_lapped_reads_back_as_written():
        pass

else:
    _size = st.one_of(  # payload lengths: tiny, medium, up to past the limit (~15 KiB here)
        st.integers(min_value=0, max_value=130),
        st.integers(min_value=200, max_value=3000),
        st.integers(min_value=5000, max_value=16000),
    )
    _op = st.one_of(
        st.tuples(
            st.just("append"),
            _size,
            st.sampled_from(["", "a", "b", "channel-ü", "x" * 255]),
            st.booleans(),
        ),
        st.tuples(st.just("read"), st.integers(min_value=1, max_value=300)),
        st.tuples(st.just("burst"), st.integers(min_value=1, max_value=120), _size),
    )

    @settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(ops=st.lists(_op, min_size=1, max_size=60), seed=st.integers(0, 2**32 - 1))
    def test_property_everything_not_lapped_reads_back_as_written(ops, seed):
        import random

        rnd = random.Random(seed)
        writer, reader, _ = new_ring()
        written = {}  # seq -> (channel, flags, frame)
        placed = {}  # seq -> (start write_pos, offset, length): where the writer put it
        cursor = 1  # a reader that follows the stream in batches
        seen = []

        def append(n, channel, binary):
            f = frame(rnd.randbytes(n), binary)
            if len(f) > writer.max_frame_size(len(channel.encode())):
                return  # the limit itself: test_max_frame_size_is_what_append_accepts
            start = writer.header()["write_pos"]
            seq = writer.append(f, channel, FLAG_BINARY if binary else 0)
            assert seq == len(written) + 1
            s, off, ln = INDEX_ENTRY.unpack_from(writer.buf, writer.index_base + (seq % writer.entries) * 16)
            assert s == seq
            written[seq] = (channel, FLAG_BINARY if binary else 0, f)
            placed[seq] = (start, off, ln)

        for op in ops:
            if op[0] == "append":
                append(*op[1:])
            elif op[0] == "burst":
                for _ in range(op[1]):
                    append(op[2] if op[2] < 3000 else op[2] // 8, "", False)
            else:
                try:
                    batch = reader.read_range(cursor, cursor + op[1] - 1)
                except Lapped as lapped:
                    assert lapped.args[0] == cursor and cursor < reader.min_seq
                    cursor = reader.min_seq
                    continue
                seen += batch
                if batch:
                    cursor = batch[-1].seq + 1

            # invariants after every step
            wseq, mseq = reader.write_seq, reader.min_seq
            assert 1 <= mseq <= wseq + 1
            assert wseq == 0 or mseq <= wseq, "the last message must always be readable"
            retained = reader.read_range(mseq, wseq)  # every retained message is intact
            assert [e.seq for e in retained] == list(range(mseq, wseq + 1))
            for e in retained:
                assert (e.channel, e.flags, e.frame) == written[e.seq]
            if mseq > 1 and (mseq - 1) > wseq - writer.entries:
                # the newest lost message was really overwritten (or skipped at a wrap) by a later append
                lost = mseq - 1
                _, lo, ln = placed[lost]
                hit = False
                for later in range(lost + 1, wseq + 1):
                    start, off, lln = placed[later]
                    zones = [(off, off + lln)] if off == start else [(start, writer.data_size), (0, lln)]
                    hit = hit or any(lo < hi and zlo < lo + ln for zlo, hi in zones)
                assert hit, f"message {lost} was dropped though nothing overwrote it"

        # the following reader got what was written, in order, without duplicates
        assert [e.seq for e in seen] == sorted({e.seq for e in seen})
        for e in seen:
            assert (e.channel, e.flags, e.frame) == written[e.seq]


# -- found by the mutation run (docs/mutation.md) ----------------------------------------


def filled(n: int):
    writer, reader, _ = new_ring()
    for i in range(1, n + 1):
        writer.append(frame(b"m%d" % i), "c%d" % (i % 3))
    return writer, reader


def test_read_range_returns_exactly_first_to_last():
    # `range(first, last + 2)` survived: every test read up to write_seq, where the range is clipped.
    _, reader = filled(10)
    assert [e.seq for e in reader.read_range(3, 5)] == [3, 4, 5]
    assert [e.seq for e in reader.read_range(7, 7)] == [7]
    assert [e.channel for e in reader.read_range(1, 3)] == ["c1", "c2", "c0"]
    assert reader.read_range(11, 20) == [] and reader.read_range(5, 4) == []


@pytest.mark.parametrize("chunk", [1, 2, 3, 4, 1024])
def test_scan_yields_each_message_once_in_order_whatever_the_chunk(chunk):
    # scan's loop bounds and chunk arithmetic (`first < last`, `chunk + 1`, `chunk - 2`,
    # `seq - 1`, `seq + 2`) survived: nothing scanned in chunks smaller than the range.
    _, reader = filled(10)
    assert [e.seq for e in reader.scan(1, 10, chunk)] == list(range(1, 11))
    assert [e.seq for e in reader.scan(4, 4, chunk)] == [4]
    assert [e.seq for e in reader.scan(2, 9, chunk)] == list(range(2, 10))
    assert [bytes(e.frame) for e in reader.scan(9, 99, chunk)] == [frame(b"m9"), frame(b"m10")]
    assert list(reader.scan(11, 20, chunk)) == []


def test_iterating_a_lapped_ring_starts_at_its_oldest_message():
    writer, reader, _ = new_ring()
    big = b"x" * 4000
    for _ in range(40):  # about 160 KB through a 61 KB data area: the first ones are gone
        writer.append(frame(big))
    seqs = [e.seq for e in reader]
    assert seqs == list(range(reader.min_seq, 41)) and seqs[0] > 1
