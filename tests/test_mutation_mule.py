"""The broadcast mule's pure parts, without uWSGI: the publish journal, the append
of a publish request to the ring, the malformed-request check and the removal of
stale journal files. Written for the mutation run (docs/mutation.md): its first
run over uwsgi_ws/broadcast/mule.py found these reachable only through real
uWSGI tests (tests/test_broadcast.py, tests/test_publish_*.py), which mutmut
cannot attribute to the mule's functions, so every mutant of them was left
without a test. The mule's serving loop stays covered by those real-uWSGI tests.

The ring is a `BroadcastRing` over a bytearray (as tests/test_broadcast_ring.py);
journals are files in a temporary directory; processes are real (a child that
has exited is a dead pid).
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import pytest

from uwsgi_ws.broadcast import mule
from uwsgi_ws.broadcast.mule import Journal, _append_locked, _malformed, _remove_stale
from uwsgi_ws.broadcast.publish import encode_request
from uwsgi_ws.broadcast.ring import FLAG_BINARY, FLAG_EVENT, MIN_AREA, BroadcastRing
from uwsgi_ws.broadcast.writer import append_request, frame_request


def new_ring() -> BroadcastRing:
    ring = BroadcastRing(memoryview(bytearray(MIN_AREA)))
    ring.format(1)
    return ring


def payload_of(frame: bytes) -> tuple:
    """(opcode, payload) of an unmasked short server frame (the ring stores them so)."""
    assert frame[0] & 0x80 and not frame[1] & 0x80
    n, start = frame[1] & 0x7F, 2
    if n == 126:
        (n,), start = struct.unpack_from("!H", frame, 2), 4
    return frame[0] & 0x0F, frame[start:start + n]


# -- the journal ----------------------------------------------------------------------


def journal() -> Journal:
    return Journal(bytearray(Journal.SLOTS * Journal.SLOT.size), None)


def test_a_recorded_publish_is_found_and_nothing_else():
    j = journal()
    assert j.find(12345, 1) is None
    assert j.record(12345, 1, 7) == (0, 0, 0, 0)
    assert j.find(12345, 1) == 7
    assert j.find(12345, 2) is None  # the same publisher's next request
    assert j.find(12345 + Journal.SLOTS, 1) is None  # another publisher in the same slot
    assert j.record(12345, 2, 8) == (12345, 1, 7, 0)  # the slot's previous content, for restore
    assert j.find(12345, 2) == 8 and j.find(12345, 1) is None


def test_a_slot_with_seq_0_is_empty():
    j = journal()
    j.record(99, 3, 0)
    assert j.find(99, 3) is None


def test_restore_puts_back_what_record_replaced():
    j = journal()
    j.record(5, 1, 10)
    old = j.record(5, 2, 11)
    j.restore(5, old)
    assert j.find(5, 1) == 10 and j.find(5, 2) is None
    # The slot is the client id's, modulo SLOTS: a restore does not touch the others.
    j.record(6, 1, 12)
    j.restore(5, (0, 0, 0, 0))
    assert j.find(5, 1) is None and j.find(6, 1) == 12


def test_forget_after_clears_the_uncommitted_slots_only():
    """Slots numbered by Redis (check 0): kept while at most the ring's write_seq."""
    j = journal()
    ring = new_ring()
    for text in ("a", "b", "c", "d", "e", "f"):
        append_request(ring, encode_request(text, None))
    for cid, seq in ((1, 5), (2, 6), (3, 7), (Journal.SLOTS - 1, 9)):
        j.record(cid, 1, seq)
    j._forget_after(ring)
    assert [j.find(cid, 1) for cid in (1, 2, 3, Journal.SLOTS - 1)] == [5, 6, None, None]
    assert bytes(j.buf[3 * Journal.SLOT.size:4 * Journal.SLOT.size]) == bytes(Journal.SLOT.size)


def test_forget_after_keeps_a_slot_only_when_the_ring_holds_its_record():
    """The mule records (client, number, seq, check) and is killed before its append; a
    worker then appends its own message as that seq: the slot is cleared (a resend is
    appended, not answered with the worker's seq). The mule's own committed append is
    kept; so is one whose seq has left the ring."""
    ring = new_ring()
    j = journal()
    channel, _, frame = frame_request(ring, encode_request("the mule's", "room"))
    j.record(1, 1, ring.write_seq + 1, Journal.check(channel, frame))  # then killed: no append
    append_request(ring, encode_request("a worker's", "room"))  # the same seq, another message
    seq2 = ring.write_seq + 1
    channel, _, frame = frame_request(ring, encode_request("committed", "room"))
    j.record(2, 1, seq2, Journal.check(channel, frame))
    ring.append(frame, channel, 0)
    j.record(3, 1, ring.write_seq + 1, 12345)  # beyond the ring: never committed
    j._forget_after(ring)
    assert j.find(1, 1) is None and j.find(2, 1) == seq2 and j.find(3, 1) is None
    j.record(4, 1, 1, 999)  # seq 1 lapped out of the ring: an old committed append
    while ring.min_seq <= 1:
        append_request(ring, encode_request("x" * 4000, None))
    j._forget_after(ring)
    assert j.find(4, 1) == 1 and j.find(2, 1) == seq2  # both gone from the ring: kept


# -- appending a publish request ----------------------------------------------------------


def test_append_frames_text_and_binary_on_their_channel():
    ring = new_ring()
    assert append_request(ring, encode_request("hello", "room")) == 1
    assert append_request(ring, encode_request(b"\x00\x01", None)) == 2
    first, second = ring.read_range(1, 2)
    assert (first.seq, first.channel, first.flags) == (1, "room", 0)
    assert payload_of(first.frame) == (0x1, b"hello")
    assert (second.seq, second.channel, second.flags) == (2, "", FLAG_BINARY)
    assert payload_of(second.frame) == (0x2, b"\x00\x01")


def test_append_numbers_an_event_with_its_seq_and_the_ring_epoch():
    ring = new_ring()
    append_request(ring, encode_request("before", None))
    seq = append_request(ring, encode_request('{"event":"said"}', "lobby", event=True))
    assert seq == 2
    entry = ring.read(2)
    assert entry.flags == FLAG_EVENT
    opcode, payload = payload_of(entry.frame)
    assert opcode == 0x1
    assert json.loads(payload) == {"event": "said", "seq": 2, "epoch": str(ring.epoch)}


def test_append_refuses_what_is_not_a_publish_request():
    ring = new_ring()
    with pytest.raises(ValueError):
        append_request(ring, b"GET / HTTP/1.1\r\n\r\n")
    assert _append_locked(ring, b"junk") is None
    assert ring.write_seq == 0


def test_append_locked_without_a_bridge_appends_events_itself():
    assert mule._bridge is None
    ring = new_ring()
    assert _append_locked(ring, encode_request('{"a":1}', None, event=True)) == 1
    assert json.loads(payload_of(ring.read(1).frame)[1])["seq"] == 1


def test_malformed_names_the_problem():
    assert _malformed(encode_request("fine", "room")) is None
    assert _malformed(b"") == "malformed publish request: not a uwsgi_ws publish request"
    good = encode_request("x", "room")
    short = good[:good.index(b"room") + 2]  # the channel name cut short
    assert _malformed(short) == "malformed publish request: a publish request shorter than its channel name"
    assert _malformed(good.replace(b"room", b"r\xffom")).startswith("malformed publish request: ")


# -- stale journal files ----------------------------------------------------------------


@pytest.fixture
def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture
def alive_pid():
    # SIGHUP back to its default (a job runner may ignore it): a probe that sent a real
    # signal instead of 0 would end this process.
    code = "import signal, sys, time; signal.signal(signal.SIGHUP, signal.SIG_DFL); print(flush=True); time.sleep(600)"
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    child.stdout.readline()
    yield child.pid
    child.kill()
    child.wait()


def test_remove_stale_removes_journals_of_gone_masters_only(tmp_path, dead_pid, alive_pid):
    prefix = str(tmp_path / "uwsgi_ws-publish-0-")
    master = 999_999_999
    # Files of the gone master made before and after each kept one: whatever order glob
    # lists them in (creation order, its reverse, hashed), some come after each kept one
    # (a `break` where the loop must go on leaves them behind).
    names = {f"dead{i}": f"{prefix}{dead_pid}-{i:x}" for i in range(8)}
    names["alive"] = f"{prefix}{alive_pid}-2b"
    names.update({f"dead{i}": f"{prefix}{dead_pid}-{i:x}" for i in range(8, 16)})
    names["master"] = f"{prefix}{master}-3c"
    names.update({f"dead{i}": f"{prefix}{dead_pid}-{i:x}" for i in range(16, 24)})
    names["odd"] = f"{prefix}notapid-4d"
    names.update({f"dead{i}": f"{prefix}{dead_pid}-{i:x}" for i in range(24, 32)})
    for path in names.values():
        open(path, "wb").close()
    other = tmp_path / "unrelated-1-2"
    other.write_bytes(b"")
    _remove_stale(prefix, master)
    left = {name for name, path in names.items() if os.path.exists(path)}
    assert left == {"alive", "master", "odd"}
    assert other.exists()
    # The liveness probe is signal 0: the live process was not signalled.
    os.kill(alive_pid, 0)
    assert os.waitpid(alive_pid, os.WNOHANG) == (0, 0)
