"""The in-process broadcast on its own (uwsgi_ws/broadcast/local.py): the ring's single
writer in one process, as the mule is under uWSGI: seq per message, the event tail the
mule writes, one wake-up byte per publish for every hub, clear refusals."""

from __future__ import annotations

import json
import select

import pytest

from uwsgi_ws import PublishError, frames
from uwsgi_ws.broadcast.local import LocalBroadcast
from uwsgi_ws.broadcast.ring import FLAG_BINARY, FLAG_EVENT


def test_publish_appends_framed_messages_with_consecutive_seqs() -> None:
    shared = LocalBroadcast(1 << 20)
    assert shared.publish("hello", channel="news") == 1
    assert shared.publish(b"\x00\x01") == 2
    first, second = list(shared.ring)
    assert (first.seq, first.channel, first.flags) == (1, "news", 0)
    assert frames.parse(first.frame)[0] == frames.OP_TEXT and bytes(frames.payload(first.frame)) == b"hello"
    assert (second.seq, second.channel, second.flags) == (2, "", FLAG_BINARY)
    assert bytes(frames.payload(second.frame)) == b"\x00\x01"


def test_an_event_gets_its_seq_and_the_ring_epoch_as_the_mule_writes_them() -> None:
    shared = LocalBroadcast(1 << 20)
    shared.publish("x", channel="other")
    seq = shared.publish('{"type":"event","event":"e","data":1,"room":null}', channel="events:/live", event=True)
    entry = list(shared.ring)[-1]
    assert entry.flags == FLAG_EVENT
    message = json.loads(bytes(frames.payload(entry.frame)))
    assert message == {"type": "event", "event": "e", "data": 1, "room": None, "seq": seq,
                       "epoch": str(shared.ring.epoch)}
    assert seq == 2 and shared.ring.epoch != 0


def test_every_hub_is_woken_once_per_publish_and_a_full_socket_drops_the_byte() -> None:
    shared = LocalBroadcast(1 << 20)
    hubs = [shared.waker(), shared.waker()]
    shared.publish("a")
    shared.publish("b")
    for sock in hubs:
        assert select.select([sock], [], [], 5)[0] == [sock]
        assert [sock.recv(8), sock.recv(8)] == [b"w", b"w"]
    for _ in range(5000):  # far more than a datagram socket buffers: never blocks, never raises
        shared.publish("c")
    assert shared.ring.write_seq == 5002


def test_refusals_say_what_is_wrong() -> None:
    shared = LocalBroadcast(1 << 20)
    with pytest.raises(PublishError, match="over the in-process broadcast's limit"):
        shared.publish("x" * (1 << 19))
    with pytest.raises(PublishError, match="255"):
        shared.publish("x", channel="c" * 300)
    with pytest.raises(PublishError, match="JSON object"):
        shared.publish("not json", event=True)
    with pytest.raises(TypeError, match=r"str .* or bytes"):
        shared.publish(3)  # type: ignore[arg-type]
    assert shared.ring.write_seq == 0  # nothing half-published
