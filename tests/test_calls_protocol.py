"""The sans-I/O side of calls, payloads and the new server frames
(uwsgi_ws.events_protocol): replies, $bin values, the encoders, parse_server."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import json
import uuid

import pytest

from uwsgi_ws import events_protocol as ep


def test_reply_frames():
    assert ep.parse_client('{"type":"reply","id":3,"data":[1]}') == ep.Reply(3, [1])
    assert ep.parse_client('{"type":"reply","id":3,"error":"no"}') == ep.Reply(3, None, "no")
    bad = ep.parse_client('{"type":"reply","data":1}')
    assert isinstance(bad, ep.Invalid) and bad.type == "reply" and "id" in bad.message
    assert ep.client_reply(4, error="x") == {"type": "reply", "id": 4, "error": "x"}
    assert ep.client_reply(4, None) == {"type": "reply", "id": 4, "data": None}


def test_binary_values_round_trip_at_any_depth():
    frame = {"type": "event", "event": "up", "data": {"files": [b"\x00\x01", bytearray(b"ab")], "n": 1}}
    text = ep.dumps(frame)
    assert json.loads(text)["data"]["files"][0] == {"$bin": "AAE="}
    action = ep.parse_client(text)
    assert isinstance(action, ep.Emit) and action.data == {"files": [b"\x00\x01", b"ab"], "n": 1}


def test_objects_that_only_look_binary_stay_json():
    assert ep.loads('{"$bin":"not base64!"}') == {"$bin": "not base64!"}
    assert ep.loads('{"$bin":"AAE=","other":1}') == {"$bin": "AAE=", "other": 1}
    assert ep.loads('{"$bin":5}') == {"$bin": 5}


def test_rich_encoder_and_a_clear_error_without_it():
    @dataclasses.dataclass
    class P:
        x: int
        when: datetime.date

    value = {"t": datetime.datetime(2026, 1, 2, 3, 4, 5), "u": uuid.UUID(int=1), "d": decimal.Decimal("1.10"),
             "p": P(1, datetime.date(2026, 1, 2)), "s": {1}}
    assert json.loads(ep.dumps(value, ep.RichEncoder)) == {
        "t": "2026-01-02T03:04:05", "u": "00000000-0000-0000-0000-000000000001", "d": "1.10",
        "p": {"x": 1, "when": "2026-01-02"}, "s": [1]}
    with pytest.raises(TypeError, match="datetime"):
        ep.dumps({"t": datetime.datetime(2026, 1, 1)})


def test_parse_server_knows_the_new_frames():
    assert ep.parse_server(json.dumps(ep.connected("1-2"))) == ep.ConnectedFrame("1-2")
    assert ep.parse_server(json.dumps(ep.call(7, "q", {"a": 1}))) == ep.CallFrame(7, "q", {"a": 1})
    assert ep.parse_server(json.dumps(ep.presence("join", "r", "1-2", {"user": "u"}))) == \
        ep.PresenceFrame("join", "r", "1-2", {"user": "u"})
    assert ep.parse_server(json.dumps(ep.left("r"))) == ep.LeftFrame("r")
    with pytest.raises(ValueError, match="malformed call"):
        ep.parse_server('{"type":"call","event":"q"}')
