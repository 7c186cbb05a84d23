"""The event protocol's sans-I/O core (uwsgi_ws/events_protocol.py), without any server:
every client frame rule of docs/protocol.md, the encoders, and the client-side parser."""

from __future__ import annotations

import json

import pytest

from uwsgi_ws import events_protocol as ep


def check_room(room: str) -> None:
    """The endpoint's rule: its channel name fits 255 UTF-8 bytes (here: the room 200)."""
    if len(room.encode()) > 200:
        raise ValueError(f"room {room[:10]!r}: over 200 bytes")


def parse(frame: object, **kwargs: object) -> ep.Action:
    return ep.parse_client(frame if isinstance(frame, (str, bytes)) else json.dumps(frame), check_room, **kwargs)


# -- client frames -> actions -------------------------------------------------------------


def test_event_with_and_without_ack_id() -> None:
    assert parse({"type": "event", "event": "say", "data": {"t": 1}, "id": 7}) == ep.Emit("say", {"t": 1}, 7)
    assert parse({"type": "event", "event": "say"}) == ep.Emit("say", None, None)
    assert parse({"type": "event", "event": "say", "id": "a"}).id == "a"  # any JSON but null


@pytest.mark.parametrize("name", ["connect", "disconnect", "join", 3, None, ["x"]])
def test_event_names_reserved_or_not_strings_are_invalid(name: object) -> None:
    action = parse({"type": "event", "event": name, "id": 1})
    assert action == ep.Invalid("event: \"event\" is a string naming a client event", "event")


@pytest.mark.parametrize("message", [
    "not json", "[1, 2]", "3", '"event"', '{"event": "say"}', '{"type": 1}', b'{"type": "event"}', "",
])
def test_unreadable_frames(message: object) -> None:
    action = ep.parse_client(message)  # type: ignore[arg-type]
    assert isinstance(action, ep.Invalid) and action.type is None
    assert action.message == ep.UNREADABLE


def test_join_last_is_capped_and_checked() -> None:
    assert parse({"type": "join", "room": "lobby"}) == ep.Join("lobby", 0)
    assert parse({"type": "join", "room": "lobby", "last": 10}) == ep.Join("lobby", 10)
    assert parse({"type": "join", "room": "lobby", "last": 1000}, max_last=50) == ep.Join("lobby", 50)
    for bad in (-1, True, 1.5, "3", None):
        action = parse({"type": "join", "room": "lobby", "last": bad}, max_last=50)
        assert isinstance(action, ep.Invalid) and action.type == "join"
        assert action.message.endswith("0 to 50")


@pytest.mark.parametrize("kind", ["join", "leave"])
def test_room_rules(kind: str) -> None:
    for bad in ("", None, 5, ["a"]):
        assert parse({"type": kind, "room": bad}) == ep.Invalid(f"{kind}: \"room\" is a non-empty string", kind)
    too_long = parse({"type": kind, "room": "x" * 201})
    assert too_long == ep.Invalid("room 'xxxxxxxxxx': over 200 bytes", kind)  # the endpoint's own words
    assert parse({"type": kind, "room": "é"}).room == "é"  # type: ignore[union-attr]


def test_resume() -> None:
    action = parse({"type": "resume", "epoch": 123, "rooms": {"": 4, "lobby": 9}})
    assert action == ep.Resume("123", {"": 4, "lobby": 9})  # the epoch compared as a string
    for rooms in ([], {"a": -1}, {"a": "3"}, {"a": True}, None):
        action = parse({"type": "resume", "epoch": "1", "rooms": rooms})
        assert action == ep.Invalid("resume: \"rooms\" maps room names to the last seq seen (integers)", "resume")
    assert parse({"type": "resume", "epoch": "1", "rooms": {"x" * 201: 1}}).type == "resume"


def test_unknown_type_is_named() -> None:
    action = parse({"type": "subscribe" * 10})
    assert isinstance(action, ep.Invalid) and action.type == "subscribe" * 10
    assert action.message == f"unknown frame type {('subscribe' * 10)[:40]!r}: event, join, leave or resume"


# -- encoders -----------------------------------------------------------------------------


def test_server_encoders_round_trip_through_the_client_parser() -> None:
    frames = [
        ep.event("said", {"t": "é"}, "lobby"),
        ep.ack(3, {"ok": True}),
        ep.ack_error(4, "nope"),
        ep.error("bad"),
        ep.not_recovered("lobby", ep.too_old(17)),
        ep.resumed({"lobby": 9}, 12345678901234567),
    ]
    parsed = [ep.parse_server(ep.dumps(f)) for f in frames]
    assert parsed == [
        ep.EventFrame("said", {"t": "é"}, "lobby"),
        ep.AckFrame(3, {"ok": True}),
        ep.AckFrame(4, None, "nope"),
        ep.ErrorFrame("bad"),
        ep.NotRecoveredFrame("lobby", "too old: the server keeps messages from seq 17 on; refetch the state"),
        ep.ResumedFrame({"lobby": 9}, "12345678901234567"),  # the epoch is a string (exact in JavaScript)
    ]
    assert "é" in ep.dumps(frames[0])  # UTF-8 as is, compact
    assert ", " not in ep.dumps(frames[0])


def test_broadcast_event_carries_seq_and_epoch() -> None:
    text = ep.dumps(ep.event("tick", 1, None))[:-1] + ',"seq":5,"epoch":"77"}'  # what the ring's writer appends
    assert ep.parse_server(text) == ep.EventFrame("tick", 1, None, 5, "77")


def test_client_encoders_parse_as_the_server_reads_them() -> None:
    assert parse(ep.client_event("say", [1], 2)) == ep.Emit("say", [1], 2)
    assert parse(ep.client_event("say")) == ep.Emit("say")
    assert parse(ep.client_join("lobby", 3)) == ep.Join("lobby", 3)
    assert parse(ep.client_leave("lobby")) == ep.Leave("lobby")
    assert parse(ep.client_resume("9", {"": 1})) == ep.Resume("9", {"": 1})


def test_sse_encoding() -> None:
    payload = ep.dumps(ep.event("said", "hi", "lobby")).encode()
    assert ep.sse_event("7-3", "said", payload) == b"id: 7-3\nevent: said\ndata: " + payload + b"\n\n"
    notice = ep.not_recovered(None, ep.EPOCH_CHANGED)
    assert ep.sse_notice(notice) == b"event: not_recovered\ndata: " + ep.dumps(notice).encode() + b"\n\n"


@pytest.mark.parametrize("message", [b"\x00", "nope", "[]", '{"type":"event"}', '{"type":"ack"}',
                                     '{"type":"what"}', '{"type":"resumed","rooms":3,"epoch":1}'])
def test_parse_server_refuses_what_is_not_the_protocol(message: object) -> None:
    with pytest.raises(ValueError):
        ep.parse_server(message)  # type: ignore[arg-type]
