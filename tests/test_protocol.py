"""RFC 6455 on the wire, with a raw socket: fragmentation, control frames,
invalid data, size limits, protocol errors. Every attack runs beside a
connection opened before it on the same (single) worker, which must still
echo afterwards, with no worker respawned."""

from __future__ import annotations

import struct
import time

import pytest
import websocket

from harness import survives
from wsraw import BINARY, CLOSE, CONT, PING, PONG, TEXT, RawWebSocket

APP = "echo_app:app"  # max_message_size = 64 KiB
MODELS = ["threads", "gevent"]
EXTRA = ["--processes", "1"]

PROMPT = 2.0  # seconds: how long "promptly" may take on loopback


def expect_failure(raw, code, within=PROMPT):
    """The server sends a close frame with `code` within `within` seconds; we answer it.

    (Whether the server then closes TCP promptly is test_tcp_closed_promptly_after_failing.)
    """
    started = time.monotonic()
    frame = raw.expect_close(timeout=within)
    assert frame.close_code == code, (frame.close_code, frame.payload)
    return time.monotonic() - started


# -- fragmentation and control frames ------------------------------------


def test_fragmented_text_with_a_ping_in_between(server):
    with survives(server), RawWebSocket(server.port) as raw:
        raw.send_frame(TEXT, b"Hel", fin=False)
        raw.send_frame(PING, b"between")
        raw.send_frame(CONT, b"lo w\xc3", fin=False)  # "ö" split across fragments
        raw.send_frame(CONT, b"\xb6rld", fin=True)
        pong = raw.recv_frame()
        assert (pong.opcode, pong.payload) == (PONG, b"between")
        echo = raw.recv_frame()
        assert (echo.fin, echo.opcode, echo.payload) == (True, TEXT, "Hello wörld".encode())


def test_fragmented_binary_many_fragments(server):
    parts = [bytes([i]) * 1000 for i in range(20)]
    with RawWebSocket(server.port) as raw:
        for i, part in enumerate(parts):
            raw.send_frame(BINARY if i == 0 else CONT, part, fin=i == len(parts) - 1)
        echo = raw.recv_frame()
        assert (echo.opcode, echo.payload) == (BINARY, b"".join(parts))


def test_ping_gets_pong_with_the_same_payload(server):
    with RawWebSocket(server.port) as raw:
        for payload in (b"", b"abc", bytes(range(125))):
            raw.send_frame(PING, payload)
            frame = raw.recv_frame()
            assert (frame.opcode, frame.payload) == (PONG, payload)


def test_ping_with_websocket_client(server):
    ws = websocket.create_connection(server.url + "/echo", timeout=5)
    try:
        ws.ping("are you there")
        assert ws.recv_data(control_frame=True) == (websocket.ABNF.OPCODE_PONG, b"are you there")
    finally:
        ws.close()


def test_unsolicited_pong_is_ignored(server):
    with RawWebSocket(server.port) as raw:
        raw.send_frame(PONG, b"nobody asked")
        raw.send_text("still fine")
        frame = raw.recv_frame()
        assert (frame.opcode, frame.payload) == (TEXT, b"still fine")


# -- invalid data ----------------------------------------------------------


def test_invalid_utf8_text_is_1007(server):
    with survives(server), RawWebSocket(server.port) as raw:
        raw.send_frame(TEXT, b"valid then \xff\xfe")
        expect_failure(raw, 1007)


def test_invalid_utf8_split_across_fragments_is_1007(server):
    # A truncated 4-byte sequence at the end of the message: each fragment alone looks fine.
    with survives(server), RawWebSocket(server.port) as raw:
        raw.send_frame(TEXT, b"ok \xf0\x9f", fin=False)
        raw.send_frame(CONT, b"\x98", fin=True)
        expect_failure(raw, 1007)


def test_invalid_utf8_fails_before_the_message_ends(server):
    # "\xe2\x82" then "(" can never become valid: fail fast, without the final fragment.
    with RawWebSocket(server.port) as raw:
        raw.send_frame(TEXT, b"ab\xe2\x82", fin=False)
        raw.send_frame(CONT, b"(more", fin=False)
        expect_failure(raw, 1007)


def test_close_reason_with_invalid_utf8_is_1007(server):
    with RawWebSocket(server.port) as raw:
        raw.send_frame(CLOSE, struct.pack("!H", 1000) + b"\xff")
        expect_failure(raw, 1007)


@pytest.mark.parametrize("answer", [True, False], ids=["client-answers-close", "client-silent"])
def test_tcp_closed_promptly_after_failing(server, answer):
    # RFC 6455 7.1.7: after a failure the server sends its close frame and closes
    # the TCP connection; it must not wait for a close frame it will not process.
    with RawWebSocket(server.port) as raw:
        raw.send_frame(TEXT, b"\xff")
        started = time.monotonic()
        frame = raw.expect_close(answer=answer)
        assert frame.close_code == 1007
        raw.wait_eof(timeout=PROMPT)
        assert time.monotonic() - started < PROMPT


def test_tcp_closed_promptly_after_a_normal_client_close(server):
    with RawWebSocket(server.port) as raw:
        raw.send_close(1000)
        started = time.monotonic()
        frame = raw.expect_close(answer=False)
        assert frame.close_code == 1000
        raw.wait_eof(timeout=PROMPT)
        assert time.monotonic() - started < PROMPT


# -- size limits -----------------------------------------------------------


def test_oversize_message_is_1009(server):
    with survives(server), RawWebSocket(server.port) as raw:
        raw.send_frame(BINARY, b"x" * (64 * 1024 + 1))
        expect_failure(raw, 1009)


def test_oversize_fragmented_message_is_1009(server):
    with RawWebSocket(server.port) as raw:
        for _ in range(5):
            raw.send_frame(TEXT if _ == 0 else CONT, b"y" * 16 * 1024, fin=False)
        expect_failure(raw, 1009)


def test_header_announcing_2_to_the_40_bytes_is_1009_promptly(server):
    with survives(server), RawWebSocket(server.port) as raw:
        raw.send_frame(BINARY, b"", length=1 << 40)  # the header only, no payload follows
        elapsed = expect_failure(raw, 1009)
        assert elapsed < PROMPT


def test_exactly_at_the_limit_is_accepted(server):
    with RawWebSocket(server.port) as raw:
        raw.send_frame(BINARY, b"z" * (64 * 1024))
        frame = raw.recv_frame()
        assert (frame.opcode, len(frame.payload)) == (BINARY, 64 * 1024)


# -- protocol errors -------------------------------------------------------


def test_stray_continuation_frame_is_1002_and_the_worker_survives(server):
    with survives(server), RawWebSocket(server.port) as raw:
        raw.send_frame(CONT, b"no message to continue", fin=True)
        expect_failure(raw, 1002)


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(RawWebSocket.encode(TEXT, b"new", fin=True), id="text-inside-fragmented-message"),
        pytest.param(RawWebSocket.encode(PING, b"p" * 126), id="ping-over-125-bytes"),
        pytest.param(RawWebSocket.encode(PING, b"p", fin=False), id="fragmented-ping"),
        pytest.param(RawWebSocket.encode(0x3, b"?"), id="reserved-opcode"),
        pytest.param(bytes([0x80 | 0x40 | TEXT]) + RawWebSocket.encode(TEXT, b"r")[1:], id="rsv1-without-extension"),
        pytest.param(RawWebSocket.encode(TEXT, b"unmasked", mask=False), id="unmasked-client-frame"),
        pytest.param(RawWebSocket.encode(CLOSE, struct.pack("!H", 999)), id="close-code-999"),
        pytest.param(RawWebSocket.encode(CLOSE, struct.pack("!H", 1005)), id="close-code-1005-on-the-wire"),
        pytest.param(RawWebSocket.encode(CLOSE, b"\x03"), id="close-payload-of-1-byte"),
    ],
)
def test_protocol_violations_are_1002(server, frame):
    with RawWebSocket(server.port) as raw:
        raw.send_frame(TEXT, b"start", fin=False)  # an open fragmented message (harmless otherwise)
        raw.sock.sendall(frame)
        expect_failure(raw, 1002)


def test_many_protocol_errors_in_a_row_leave_the_worker_alive(server):
    with survives(server):
        for _ in range(20):
            with RawWebSocket(server.port) as raw:
                raw.send_frame(CONT, b"stray")
                expect_failure(raw, 1002)
