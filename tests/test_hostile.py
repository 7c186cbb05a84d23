"""Hostile input on real uWSGI that tests/test_protocol.py and test_routing.py
do not cover: absurd handshakes (header sizes, counts, garbage), clients that
never finish their handshake (slowloris), and the frame classes of RFC 6455
sections 5 and 7 not tried there (63-bit lengths, every invalid close code,
fragmented control frames, a new message inside a fragmented one).

Every attack runs beside a connection opened before it on the same single
worker, which must still echo afterwards, with the worker's pid unchanged and
no crash in the log. uWSGI runs with ``--socket-timeout 3`` here (the threads
model's default is 4 s; ``--gevent`` raises it to 30 s unless set after it).
"""

from __future__ import annotations

import socket
import struct
import time

import pytest
import websocket

from harness import survives, wait_for
from wsraw import BINARY, CLOSE, CONT, PING, PONG, TEXT, RawWebSocket, upgrade_request

APP = "echo_app:app"  # max_message_size = 64 KiB
MODELS = ["threads", "gevent"]
SOCKET_TIMEOUT = 3
EXTRA = ["--processes", "1", "--socket-timeout", str(SOCKET_TIMEOUT)]
PROMPT = 2.0  # seconds: how long "promptly" may take on loopback


def expect_close_code(raw, code, within=PROMPT):
    frame = raw.expect_close(timeout=within)
    assert frame.close_code == code, (frame.close_code, frame.payload)
    raw.wait_eof(timeout=PROMPT)  # and the server closes TCP after it


def send_raw(port, data: bytes, timeout=5.0):
    """Send `data`, read until the server closes or resets; (what came back, how it ended)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            return b"", "reset"
        received = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    return received, "closed"
                received += chunk
        except ConnectionResetError:
            return received, "reset"
        except socket.timeout:
            return received, "open"


# -- absurd handshakes -------------------------------------------------------------


@pytest.mark.parametrize("extra", [
    pytest.param("X-Big: " + "a" * 100_000 + "\r\n", id="one-100KB-header"),
    pytest.param("Cookie: " + "c=" + "v" * 5000 + "\r\n", id="5KB-cookie-over-buffer-size"),
    pytest.param("".join(f"X-H{i}: {'v' * 40}\r\n" for i in range(2000)), id="2000-headers"),
])
def test_handshake_over_buffer_size_is_cut_and_logged(server, extra):
    # uWSGI reads the whole header block into --buffer-size (default 4096) bytes
    # before the app sees it; past that it drops the connection (no HTTP status:
    # uWSGI closes, with a reset as the client's bytes are unread) and logs why.
    with survives(server):
        before = server.log().count("invalid HTTP request size")
        received, ending = send_raw(server.port, upgrade_request("/echo", server.port, extra=extra))
        assert ending in ("closed", "reset") and b"101" not in received, (ending, received[:200])
        wait_for(lambda: server.log().count("invalid HTTP request size (max 4096)") > before, 5,
                 "uWSGI's log line naming the buffer size")


def test_too_many_small_headers_within_buffer_size(server):
    # 200 headers fit in 4096 bytes but pass uWSGI's --max-vars (about 115 headers
    # by default): uWSGI drops the request and logs it.
    extra = "".join(f"X-{i}: v\r\n" for i in range(200))
    with survives(server):
        received, ending = send_raw(server.port, upgrade_request("/echo", server.port, extra=extra))
        assert ending in ("closed", "reset") and b"101" not in received, (ending, received[:200])
        wait_for(lambda: "max vec size reached" in server.log(), 5, "uWSGI's --max-vars log line")


@pytest.mark.parametrize("garbage", [
    pytest.param(b"\x00\x01\x02\x03" * 64 + b"\r\n\r\n", id="binary-request-line"),
    pytest.param(b"GET\r\n\r\n", id="request-line-without-path"),
    pytest.param(b"GET /echo HTTP/1.1\r\nno colon here\r\n\r\n", id="header-without-colon"),
    pytest.param(b"\r\n\r\n", id="empty-request"),
])
def test_garbage_requests_get_no_upgrade(server, garbage):
    """No upgrade, no traceback (the module's server fixture fails on one): uWSGI drops
    the request, or hands it over without a method and the app answers 400."""
    with survives(server):
        received, ending = send_raw(server.port, garbage)
        assert ending in ("closed", "reset"), ending
        assert b"101 Switching" not in received
        assert not received or received[:12] in (b"HTTP/1.0 400", b"HTTP/1.1 400"), received[:200]


@pytest.mark.parametrize("key", [
    pytest.param("A" * 3000, id="3000-byte-key"),
    pytest.param("dGhlIHNhbXBsZSBub25jZQ==, dGhlIHNhbXBsZSBub25jZQ==", id="two-keys"),
    pytest.param("d\u00e9dGhlIHNhbXBsZSBub25jZQ=", id="non-ascii-key"),
])
def test_absurd_keys_are_400(server, key):
    with survives(server):
        raw = upgrade_request("/echo", server.port, key="KEY").replace(b"KEY", key.encode("utf-8"))
        received, ending = send_raw(server.port, raw)
        assert received.startswith(b"HTTP/1.1 400"), received[:200]
        assert b"Sec-WebSocket-Key" in received
        assert ending == "closed"


# -- slowloris: a handshake that never ends --------------------------------------


def test_stalled_handshake_is_cut_after_socket_timeout(server):
    with survives(server):
        with socket.create_connection(("127.0.0.1", server.port), timeout=SOCKET_TIMEOUT * 3) as s:
            s.sendall(b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: web")
            started = time.monotonic()
            # meanwhile the worker serves others: the stalled read holds one core only
            other = websocket.create_connection(server.url + "/echo", timeout=5)
            other.send("served meanwhile")
            assert other.recv() == "served meanwhile"
            other.close()
            assert s.recv(100) == b""  # uWSGI closes it, with no answer
            elapsed = time.monotonic() - started
        assert SOCKET_TIMEOUT - 0.5 < elapsed < SOCKET_TIMEOUT + 2, elapsed


def test_drip_fed_handshake_is_bounded_per_read_only(server):
    """uWSGI's --socket-timeout bounds each read, not the whole header block: a
    client that sends a byte before each timeout keeps its core until the
    header block ends or passes --buffer-size. This pins that documented bound
    (README, Security): put a proxy with a total header timeout in front when
    that matters (nginx `client_header_timeout`, haproxy `timeout http-request`)."""
    with survives(server):
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
            s.sendall(b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Drip: ")
            started = time.monotonic()
            while time.monotonic() - started < SOCKET_TIMEOUT * 2 + 1:
                s.sendall(b"x")  # well inside each read's timeout
                time.sleep(SOCKET_TIMEOUT / 3)
            s.sendall(b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
            head = s.recv(4096)
            assert head.startswith(b"HTTP/1.1 101"), head  # still served, after 2 x socket-timeout


# -- frames: lengths ------------------------------------------------------------------


def test_63_bit_length_with_the_msb_set_is_1002(server):
    with survives(server), RawWebSocket(server.port) as raw:
        # FIN|BINARY, MASK|127, then a 64-bit length with its most significant bit set
        raw.sock.sendall(bytes([0x82, 0x80 | 127]) + struct.pack("!Q", (1 << 63) | 5) + b"\x00" * 4)
        expect_close_code(raw, 1002)


def test_64_bit_length_of_2_to_the_63_minus_1_is_1009_before_the_payload(server):
    with survives(server), RawWebSocket(server.port) as raw:
        raw.sock.sendall(bytes([0x82, 0x80 | 127]) + struct.pack("!Q", (1 << 63) - 1) + b"\x00" * 4)
        expect_close_code(raw, 1009)


@pytest.mark.parametrize("length", [125, 126, 65535])
def test_non_minimal_length_encoding_is_1002(server, length):
    # RFC 6455 5.2: the minimal number of bytes MUST be used to encode the length
    with RawWebSocket(server.port) as raw:
        if length < 126:
            header = bytes([0x82, 0x80 | 126]) + struct.pack("!H", length)
        else:
            header = bytes([0x82, 0x80 | 127]) + struct.pack("!Q", length)
        raw.sock.sendall(header + b"\x00" * 4 + b"z" * length)
        expect_close_code(raw, 1002)


def test_fragments_adding_up_past_the_limit_are_1009_before_the_last_payload(server):
    with survives(server), RawWebSocket(server.port) as raw:
        raw.send_frame(BINARY, b"a" * 60_000, fin=False)
        raw.send_frame(CONT, b"", fin=True, length=10_000)  # header only: 70,000 > 64 KiB
        expect_close_code(raw, 1009)


# -- frames: close codes -------------------------------------------------------------


@pytest.mark.parametrize("code", [0, 1, 999, 1004, 1006, 1014, 1015, 1016, 1100, 2000, 2999, 5000, 65535])
def test_invalid_close_codes_are_1002(server, code):
    with survives(server), RawWebSocket(server.port) as raw:
        raw.send_frame(CLOSE, struct.pack("!H", code) + b"why")
        expect_close_code(raw, 1002)


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013,
                                  3000, 3999, 4000, 4999])
def test_valid_close_codes_are_echoed(server, code):
    with RawWebSocket(server.port) as raw:
        raw.send_frame(CLOSE, struct.pack("!H", code) + "ok ✓".encode())
        expect_close_code(raw, code)


def test_close_over_125_bytes_is_1002(server):
    with RawWebSocket(server.port) as raw:
        raw.send_frame(CLOSE, struct.pack("!H", 1000) + b"r" * 124)
        expect_close_code(raw, 1002)


# -- frames: fragmentation -------------------------------------------------------------


@pytest.mark.parametrize("opcode", [CLOSE, PING, PONG], ids=["close", "ping", "pong"])
def test_fragmented_control_frames_are_1002(server, opcode):
    with survives(server), RawWebSocket(server.port) as raw:
        raw.send_frame(opcode, struct.pack("!H", 1000) if opcode == CLOSE else b"x", fin=False)
        expect_close_code(raw, 1002)


@pytest.mark.parametrize("first, second", [(TEXT, BINARY), (BINARY, TEXT), (BINARY, BINARY)],
                         ids=["binary-inside-text", "text-inside-binary", "binary-inside-binary"])
def test_new_message_inside_a_fragmented_one_is_1002(server, first, second):
    with survives(server), RawWebSocket(server.port) as raw:
        raw.send_frame(first, b"part one", fin=False)
        raw.send_frame(second, b"new message", fin=True)
        expect_close_code(raw, 1002)


def test_close_inside_a_fragmented_message_ends_it_cleanly(server):
    # Control frames may come between fragments: a close there is a normal close.
    with RawWebSocket(server.port) as raw:
        raw.send_frame(TEXT, b"never finished", fin=False)
        raw.send_close(1000, "bye")
        expect_close_code(raw, 1000)


def test_data_after_the_close_frame_is_ignored(server):
    with survives(server), RawWebSocket(server.port) as raw:
        raw.sock.sendall(RawWebSocket.encode(CLOSE, struct.pack("!H", 1000))
                         + RawWebSocket.encode(TEXT, b"late") + b"\xff" * 100)
        frame = raw.expect_close(answer=False)
        assert frame.close_code == 1000
        raw.wait_eof(timeout=PROMPT)
