"""README promises about one connection, each on real uWSGI in both models
(tests/apps/promises_app.py, one worker so the app's records are the test's):

- the engine options are read from Flask config (``UWSGI_WS_<NAME>``, README
  "Options"): the app sets them all there and none as keywords;
- `max_queue` back-pressure: a handler that does not read stops the connection
  being read, the kernel buffers fill and the peer's send blocks; nothing is lost;
- `close_timeout`: a peer that never answers the close frame is cut off after it;
- a handler that raises: close 1011, `got_request_exception` is sent, the worker lives;
- `record.uwsgi_ws`: each close record carries its fields as a dict;
- the native fan-out helper (`uwsgi_ws._speedups.send_many`) is the path the hub
  uses in a normal install, and `uwsgi-ws-pure` turns it off.

One-line mutants of the package each test was seen to fail on (both models):
config keys: settings' config_key -> "UWSGIWS_..."; back-pressure: the reader's
max_queue pause -> always read; close_timeout: close()'s deadline -> now;
got_request_exception: its send() removed; record.uwsgi_ws: the close record's
extra={} ; native path: hub's `if not settings.get("pure")` -> False (and -> True
for the pure test).
"""

from __future__ import annotations

import json
import select
import socket
import time
import urllib.request

import pytest

from harness import serve, wait_for
from wsraw import CLOSE, TEXT, RawWebSocket, encode

APP = "promises_app:app"
EXTRA = ["--processes", "1", "--sharedarea", "4096", "--mule=uwsgi_ws.mule:run"]
EXPECTED_TRACEBACKS = [r"LookupError: raised on purpose by /raise"]

CONFIG = {"max_queue": 2, "close_timeout": 1.0, "ping_interval": None, "ping_timeout": 7.0,
          "write_limit": 12345, "receive_timeout": 30.0}  # promises_app.py's app.config
DEFAULT_CLOSE_TIMEOUT = 5.0


def get(server, path: str) -> object:
    with urllib.request.urlopen(server.http + path, timeout=10) as resp:
        return json.loads(resp.read())


def post(server, path: str) -> int:
    req = urllib.request.Request(server.http + path, data=b"", method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status


def text(ws: RawWebSocket, timeout: float = 5.0) -> str:
    """The next text message (pings and pongs skipped)."""
    while True:
        frame = ws.recv_frame(timeout)
        assert frame.opcode != CLOSE, f"closed: {frame.close_code} {frame.close_reason}"
        if frame.opcode == TEXT:
            return frame.payload.decode()


def test_engine_options_come_from_flask_config(server):
    with RawWebSocket(server.port, "/options") as ws:
        assert json.loads(text(ws)) == CONFIG
    # max_message_size = 1000 from config (the default is 1 MiB): one byte more is 1009
    with RawWebSocket(server.port, "/echo") as ws:
        ws.send_text("a" * 1000)
        assert text(ws) == "a" * 1000
        ws.send_text("a" * 1001)
        assert ws.expect_close().close_code == 1009


def test_a_handler_that_does_not_read_pushes_back_on_the_peer(server):
    """max_queue = 2: the handler reads nothing until released; the client's
    non-blocking send must stop being accepted (EAGAIN) well before BOUND bytes,
    and after the release every message arrives, in order."""
    bound = 8 << 20  # bytes: far beyond the kernel buffers of one loopback connection (typically < 1 MiB)
    ws = RawWebSocket(server.port, "/hold?rcvbuf=8192")
    try:
        assert text(ws).startswith("ready:")
        ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
        ws.sock.setblocking(False)
        sent = count = 0
        rest = b""
        blocked = False
        while sent < bound:
            if not rest:
                rest = encode(TEXT, (f"m{count}:" + "x" * 900).encode())
                count += 1
            try:
                n = ws.sock.send(rest)
            except BlockingIOError:
                # Blocked: is it for good? The reader may still be draining the kernel
                # buffer into the queue; wait for the socket to take more, a little.
                _, writable, _ = select.select([], [ws.sock], [], 1.0)
                if not writable:
                    blocked = True
                    break
                continue
            sent += n
            rest = rest[n:]
        assert blocked, f"{sent} bytes taken without the handler reading: reading never paused (max_queue)"
        print(f"\n[{server.model}] the peer's send blocked after {sent} bytes ({count} messages)")
        assert post(server, "/release") == 204
        ws.sock.setblocking(True)
        ws.sock.settimeout(10)
        ws.sock.sendall(rest)
        ws.sock.sendall(encode(TEXT, b"end"))
        assert text(ws, 20) == f"got {count} in order"
    finally:
        ws.close()


def test_a_peer_that_never_answers_the_close_is_cut_after_close_timeout(server):
    ws = RawWebSocket(server.port, "/close")
    try:
        assert text(ws).startswith("ready:")
        t0 = time.monotonic()
        frame = ws.expect_close(answer=False)
        assert (frame.close_code, frame.close_reason) == (1000, "bye")
        ws.wait_eof(DEFAULT_CLOSE_TIMEOUT - 1)  # close_timeout 1.0 from config, not the default 5
        waited = time.monotonic() - t0
    finally:
        ws.close()
    assert waited >= CONFIG["close_timeout"] * 0.9, f"the connection ended {waited:.2f}s after the close frame"
    closes = wait_for(lambda: get(server, "/closes") or None, 5, "the handler's close() to return")
    assert CONFIG["close_timeout"] * 0.9 <= closes[-1] < DEFAULT_CLOSE_TIMEOUT, closes


def test_a_raising_handler_sends_got_request_exception_and_closes_1011(server):
    before = len(get(server, "/signals"))
    pid = None
    with RawWebSocket(server.port, "/raise") as ws:
        pid = int(text(ws).split(":")[1])
        assert ws.expect_close().close_code == 1011
    signals = wait_for(lambda: get(server, "/signals")[before:] or None, 5, "got_request_exception")
    assert signals == [{"type": "LookupError", "message": "raised on purpose by /raise"}]
    with RawWebSocket(server.port, "/close") as ws:  # the worker lives
        assert text(ws) == f"ready:{pid}"


def test_close_records_carry_their_fields_in_record_uwsgi_ws(server):
    before = len(get(server, "/records"))
    with RawWebSocket(server.port, "/echo") as ws:
        ws.send_text("one")
        assert text(ws) == "one"
        ws.send_close(1000)
        ws.expect_close(answer=False)

    def closed_echo():
        return [r for r in get(server, "/records")[before:]
                if r["message"].startswith("websocket closed route=/echo") and "messages_in=1 " in r["message"]]

    record = wait_for(closed_echo, 5, "the close record of /echo")[-1]
    fields = record["uwsgi_ws"]
    assert isinstance(fields, dict), record
    assert {"route", "duration", "messages_in", "messages_out", "close_code", "closed_by",
            "close_reason"} <= set(fields), fields
    assert (fields["route"], fields["messages_in"], fields["messages_out"], fields["close_code"],
            fields["closed_by"]) == ("/echo", 1, 1, 1000, "client"), fields

    # a refused upgrade: route, status, reason, message
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(f"GET /echo HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  "Sec-WebSocket-Version: 8\r\n\r\n".encode())
        assert s.recv(100).startswith(b"HTTP/1.1 426")
    rejected = wait_for(lambda: [r for r in get(server, "/records")[before:] if "rejected" in r["message"]] or None, 5,
                        "the record of the refused upgrade")[-1]
    assert {"route", "status", "reason", "message"} <= set(rejected["uwsgi_ws"] or {}), rejected
    assert (rejected["uwsgi_ws"]["route"], rejected["uwsgi_ws"]["status"]) == ("/echo", 426), rejected


def test_the_native_fan_out_helper_is_the_path_the_hub_uses(server):
    assert get(server, "/send-path") == {"native": True, "module": "uwsgi_ws._speedups"}


@pytest.mark.parametrize("model", ["threads", "gevent"])
def test_pure_turns_the_native_helper_off(model, tmp_path):
    pure = serve(APP, tmp_path, model=model, extra=[*EXTRA, "--set-placeholder", "uwsgi-ws-pure=1"])
    try:
        assert get(pure, "/send-path") == {"native": False, "module": None}
    finally:
        pure.stop()
    assert not pure.crashes(), pure.log()
