"""The engine checks its own output (issue 12, items 3 and 6), on real uWSGI.

Every public call that makes a frame refuses, with an error naming the rule,
what the decoder would refuse from a client: close codes (RFC 6455 section 7.4),
a ping over 125 bytes (section 5.5), text that is not UTF-8 (section 8.1),
data that is neither str nor bytes. No data frame follows our close frame when
`send` races `close` (section 5.5.1). And a handler ended by another
connection's ConnectionClosed closes its own with 1011 and logs the traceback.
"""

from __future__ import annotations

import pytest
import websocket

from wsraw import CLOSE, RawWebSocket

APP = "output_rules_app:app"
EXTRA = ["--sharedarea", "1"]
# the /room handler ended by another connection's close: logged, what the last test checks
EXPECTED_TRACEBACKS = [r"ConnectionClosed\w*: WebSocket closed with code 1000"]

NOT_SENDABLE = [999, 1004, 1005, 1006, 1014, 1015, 1016, 2999, 5000, 65535]
SENDABLE = [1000, 1001, 1002, 1003, 1007, 1011, 1012, 1013, 3000, 4999]


def _decoder_accepts(code: int) -> bool:
    """What the engine's decoder accepts from a client's close frame."""
    import os
    import struct

    from uwsgi_ws.protocol import Protocol, State

    protocol = Protocol()
    mask = os.urandom(4)
    payload = struct.pack("!H", code)
    protocol.receive_data(bytes([0x88, 0x80 | 2]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
    return protocol.state is not State.OPEN and not protocol.failed


def test_the_send_rule_is_the_decoder_rule():
    """One rule both ways: every code from 0 to 5000 (and a few beyond) is sendable
    exactly when the decoder accepts it from a client."""
    from uwsgi_ws.protocol import check_close_code

    for code in [*range(0, 5001), 65535]:
        try:
            check_close_code(code)
            sendable = True
        except ValueError:
            sendable = False
        assert sendable == _decoder_accepts(code), code


@pytest.mark.parametrize("code", NOT_SENDABLE)
def test_close_refuses_codes_no_peer_may_receive(server, code):
    with RawWebSocket(server.port, f"/close?code={code}") as raw:
        frame = raw.recv_frame()
        assert frame.opcode == 1, frame  # the ValueError's text, not a close frame with that code
        text = frame.payload.decode()
        assert text.startswith("ValueError: close code") and str(code) in text and "RFC 6455" in text, text
        close = raw.expect_close()
        assert close.close_code == 1000


@pytest.mark.parametrize("code", SENDABLE)
def test_close_sends_the_codes_the_decoder_accepts(server, code):
    with RawWebSocket(server.port, f"/close?code={code}") as raw:
        close = raw.expect_close()
        assert close.opcode == CLOSE and close.close_code == code


def test_ping_over_125_bytes_is_refused(server):
    for size, expected in ((125, "ok"), (126, "ValueError: a ping payload is at most 125 bytes")):
        conn = websocket.create_connection(server.url + f"/ping?size={size}", timeout=5)
        try:
            assert conn.recv().startswith(expected)
        finally:
            conn.close()


def test_send_refuses_what_is_neither_text_nor_bytes(server):
    conn = websocket.create_connection(server.url + "/send-type", timeout=5)
    try:
        assert conn.recv() == "TypeError: send() takes str (a text frame) or bytes (binary), not int"
    finally:
        conn.close()


def test_text_from_the_sharedarea_must_be_utf8(server):
    conn = websocket.create_connection(server.url + "/sharedarea-text", timeout=5)
    try:
        text = conn.recv()
        assert text.startswith("ValueError: sharedarea 0 bytes 0..12 are not UTF-8"), text
    finally:
        conn.close()


def test_text_that_is_not_unicode_is_refused_by_every_call(server):
    """A Python str may hold a lone surrogate; UTF-8 cannot (RFC 6455 section 5.6)."""
    conn = websocket.create_connection(server.url + "/unicode", timeout=5)
    try:
        lines = conn.recv().split("\n")
    finally:
        conn.close()
    whats = ["a text frame", "a text frame", "send_bytes() text", "a ping's text", "a close reason"]
    assert len(lines) == len(whats), lines
    for line, what in zip(lines, whats):
        assert line.startswith(f"ValueError: {what} must be UTF-8 (RFC 6455 section 5.6)"), line
        assert "lone surrogate at position 3" in line, line


def test_no_data_frame_after_our_close_frame(server):
    """send() from another task races close(): 30 rounds; on the wire, the close
    frame is always the last frame the server sent."""
    for _ in range(30):
        with RawWebSocket(server.port, "/race?n=5000") as raw:
            raw.send_text("go")
            seen_close = False
            while True:
                frame = raw.recv_frame(timeout=10)
                if frame.opcode == CLOSE:
                    seen_close = True
                    raw.send_close(1000)
                    break
                assert not seen_close
            raw.wait_eof(timeout=10)  # nothing but EOF after the close frame


def test_another_connections_close_ends_the_handler_with_1011_and_a_traceback(server):
    """A handler keeping connections in a dict sends to one whose client left: that
    ConnectionClosed is an application error for the healthy connection (1011,
    logged), not the quiet end of its own (which was a silent 1000)."""
    leaving = websocket.create_connection(server.url + "/room", timeout=5)
    pid = leaving.recv()
    for _ in range(40):  # the list is per worker: find a second connection on the same one
        staying = RawWebSocket(server.port, "/room")
        if staying.recv_frame().payload.decode() == pid:
            break
        staying.close()
    else:
        pytest.fail("no second connection on the first one's worker")
    with staying:
        leaving.close()  # completes the closing handshake: the server's side is closed
        staying.send_text("after")
        close = staying.expect_close()
        assert close.close_code == 1011, close
    server.wait_for_log(r"ConnectionClosed\w*: WebSocket closed with code 1000")
    assert "Traceback" in server.log()
