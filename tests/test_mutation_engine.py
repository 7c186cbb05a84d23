"""Promises of the engine (uwsgi_ws/protocol.py, uwsgi_ws/frames.py) that the mutation
run (docs/mutation.md, `make mutation`) found no test for: each test here kills
mutants that survived the engine's other tests (named in the test's comment).
Pure: the engine is fed bytes, what it writes is parsed back.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "fuzz"))

from uwsgi_ws import frames
from uwsgi_ws.protocol import Close, Message, Ping, Pong, Protocol, check_close_code

from protocol_oracle import BINARY, CLOSE, CONT, PING, PONG, TEXT, close_payload, frame, server_frames


def feed(p: Protocol, data: bytes) -> tuple:
    p.receive_data(data)
    return p.events_received(), p.data_to_send()


# -- protocol.Protocol -----------------------------------------------------------------


def test_pings_and_pongs_report_their_payload():
    # Pong(None) survived: the oracle compares runs with each other, never a pong's payload.
    p = Protocol()
    events, out = feed(p, frame(PONG, b"pong data") + frame(PING, b"ping data") + frame(PONG, b""))
    assert events == [Pong(b"pong data"), Ping(b"ping data"), Pong(b"")]
    assert type(events[0].payload) is bytes
    assert server_frames(out) == [(True, PONG, b"ping data")]


def test_a_peer_close_is_recorded_and_echoed_with_its_code_only():
    # close_received = None/False, close_initiator = None/"CLIENT" and an echoed reason "XXXX"
    # survived: nothing read these after a client-initiated close, and the oracle compares
    # only the first two bytes of a close payload.
    p = Protocol()
    events, out = feed(p, frame(CLOSE, close_payload(1001, b"bye now")))
    assert events == [Close(1001, "bye now")]
    assert p.close_received is True and p.close_sent is True
    assert p.close_initiator == "client"
    assert server_frames(out) == [(True, CLOSE, struct.pack("!H", 1001))]


def test_a_close_without_a_code_is_echoed_empty():
    p = Protocol()
    events, out = feed(p, frame(CLOSE))
    assert events == [Close(1005, "")]
    assert server_frames(out) == [(True, CLOSE, b"")]


def test_a_server_close_is_initiated_by_the_server():
    p = Protocol()
    p.close(1000, "done")
    assert p.close_initiator == "server" and p.close_sent and not p.close_received
    events, _ = feed(p, frame(CLOSE, close_payload(1000)))
    assert events == [Close(1000, "")] and p.close_received and p.close_initiator == "server"


def test_a_lost_connection_says_so():
    # The reason's text survived ("XX...XX"): it is what the connection's close_reason shows.
    p = Protocol()
    events, _ = feed(p, b"")
    assert events == [Close(1006, "connection lost without a close frame")]
    assert p.close_reason == "connection lost without a close frame"


@pytest.mark.parametrize("opcode, parts, want", [
    (TEXT, [b"h\xc3", b"\xa9llo"], "h\u00e9llo"),
    (BINARY, [b"\x00", b"", b"\x01\x02"], b"\x00\x01\x02"),
])
def test_fragmented_messages_are_joined(opcode, parts, want):
    # Mutants of the one-part shortcut (`parts[0] if len(parts) == 1`) are equivalent:
    # joining one part gives the same value. This pins the joining itself.
    stream = b"".join(frame(opcode if i == 0 else CONT, part, fin=i == len(parts) - 1)
                      for i, part in enumerate(parts))
    events, _ = feed(Protocol(), stream)
    assert events == [Message(want)]
    assert type(events[0].data) is type(want)


# -- frames.parse ----------------------------------------------------------------------


def test_parse_takes_every_length_form():
    # `len(frame) <= 2` / `< 3` survived (an empty frame is 2 bytes); so did `!h` (a signed
    # 16-bit length: wrong from 32 KiB).
    for payload in (b"", b"x" * 125, b"y" * 126, b"z" * 40000, b"w" * 70000):
        opcode, fin, got = frames.parse(frames.encode(frames.OP_BINARY, payload))
        assert (opcode, fin, bytes(got)) == (frames.OP_BINARY, True, payload)
    opcode, fin, got = frames.parse(frames.encode(frames.OP_TEXT, b"part", fin=False))
    assert (opcode, fin, bytes(got)) == (frames.OP_TEXT, False, b"part")


@pytest.mark.parametrize("bad, message", [
    (b"", "not an unmasked WebSocket frame"),
    (b"\x81", "not an unmasked WebSocket frame"),
    (b"\x81\x80\x00\x00\x00\x00", "not an unmasked WebSocket frame"),  # masked (a client's frame)
    (b"\x81\x05abc", "frame of 5 bytes announces a payload of 5 after a 2-byte header"),
    (b"\x81\x01ab", "frame of 4 bytes announces a payload of 1 after a 2-byte header"),
    (b"\x82\x7e\x01\x00" + b"a" * 10, "frame of 14 bytes announces a payload of 256 after a 4-byte header"),
])
def test_parse_refuses_what_is_not_one_frame_and_says_why(bad, message):
    # `frame[1] & 0x80` -> `frame[2] & 0x80`, `and` for `or` and the messages' texts survived.
    with pytest.raises(ValueError) as exc:
        frames.parse(bad)
    assert str(exc.value) == message


# -- protocol.check_close_code -------------------------------------------------------------


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1008, 1011, 1012, 1013, 3000, 4999])
def test_sendable_close_codes_pass(code):
    check_close_code(code)
    check_close_code(code, "a reason")


@pytest.mark.parametrize("code", [1004, 1005, 1006, 1015])
def test_reserved_and_reporting_only_codes_are_refused_naming_the_rule(code):
    # The tuple's members (1004 -> 1005, 1015 -> 1016) and the message's text survived:
    # the engine's other tests never close with these.
    with pytest.raises(ValueError) as exc:
        check_close_code(code)
    assert str(exc.value) == (f"close code {code} may not be sent in a close frame (RFC 6455 section 7.4.1: "
                              "1004 is reserved, 1005, 1006 and 1015 are for reporting only)")


@pytest.mark.parametrize("code", [999, 1014, 1016, 2999, 5000])
def test_undefined_codes_are_refused_naming_the_ranges(code):
    with pytest.raises(ValueError, match=rf"^close code {code} is not sendable: use 1000-1003, 1007-1013 or 3000-4999"):
        check_close_code(code)


@pytest.mark.parametrize("code, name", [(True, "bool"), (1000.0, "float"), ("1000", "str"), (None, "NoneType")])
def test_a_close_code_must_be_an_int(code, name):
    with pytest.raises(TypeError) as exc:
        check_close_code(code)
    assert str(exc.value) == f"a close code is an int, not {name}"


def test_a_close_reason_must_be_a_str():
    with pytest.raises(TypeError) as exc:
        check_close_code(1000, b"bytes")
    assert str(exc.value) == "a close reason is a str, not bytes"
    with pytest.raises(TypeError):
        Protocol().close(1000, None)
