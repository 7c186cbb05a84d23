"""The closing handshake in both directions, and the connection API after it."""

from __future__ import annotations

import urllib.parse

import pytest
import websocket
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from harness import read_reports
from wsraw import CLOSE, RawWebSocket

APP = "echo_app:app"
MODELS = ["threads", "gevent", "async"]


def path_with_report(path, report, **params):
    return f"{path}?{urllib.parse.urlencode({'report': str(report), **params})}"


def test_server_initiated_close_code_and_reason(server, tmp_path):
    report = tmp_path / "close.jsonl"
    with connect(server.url + path_with_report("/close-server", report), open_timeout=5) as ws:
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)
        assert ws.close_code == 4000
        assert ws.close_reason == "bye"
    outcome = read_reports(report)[0]  # then the teardown line
    # The client echoed 4000: the handshake completed with it.
    assert outcome["close_code"] == 4000
    assert outcome["closed"] is True and outcome["connected"] is False
    assert outcome["send"] == ["ConnectionClosed", 4000]
    assert outcome["receive"] == ["ConnectionClosed", 4000]
    assert outcome["iteration"] == []


def test_server_close_frame_on_the_wire(server, tmp_path):
    report = tmp_path / "close.jsonl"
    path = path_with_report("/close-server", report, code=4321, reason="é" * 100)
    with RawWebSocket(server.port, path) as raw:
        frame = raw.recv_frame()
        assert frame.opcode == CLOSE
        assert frame.close_code == 4321
        # RFC 6455 caps a control payload at 125 bytes: the reason is cut on a character.
        assert len(frame.payload) <= 125
        assert frame.close_reason == "é" * 61
        raw.send_close(4321)
        raw.wait_eof()  # the server closes TCP after the handshake
    assert read_reports(report)[0]["close_code"] == 4321


def test_client_initiated_close_code_seen_by_the_handler_and_echoed(server, tmp_path):
    report = tmp_path / "close.jsonl"
    with connect(server.url + path_with_report("/close-client", report), open_timeout=5) as ws:
        ws.send("one")
        assert ws.recv(timeout=5) == "one"
        ws.close(4001, "client bye")
        assert ws.close_code == 4001  # the server's close frame echoes the code
    outcome = read_reports(report)[0]  # then the teardown line
    assert outcome["close_code"] == 4001
    assert outcome["close_reason"] == "client bye"
    assert outcome["received"] == ["one"]
    assert outcome["closed"] is True
    assert outcome["receive"] == ["ConnectionClosed", 4001, "client bye"]
    assert outcome["send"] == ["ConnectionClosed", 4001]


def test_client_close_without_status_code(server, tmp_path):
    report = tmp_path / "close.jsonl"
    with RawWebSocket(server.port, path_with_report("/close-client", report)) as raw:
        raw.send_close(None)
        frame = raw.recv_frame()
        assert frame.opcode == CLOSE
        assert frame.payload == b""  # nothing to echo for "no status"
        raw.wait_eof()
    assert read_reports(report)[0]["close_code"] == 1005


def test_client_close_with_websocket_client(server, tmp_path):
    report = tmp_path / "close.jsonl"
    ws = websocket.create_connection(server.url + path_with_report("/close-client", report), timeout=5)
    ws.send("x")
    assert ws.recv() == "x"
    ws.close(status=3000, reason=b"app-defined")
    outcome = read_reports(report)[0]
    assert (outcome["close_code"], outcome["close_reason"]) == (3000, "app-defined")


def test_tcp_drop_without_close_frame_is_1006(server, tmp_path):
    report = tmp_path / "close.jsonl"
    raw = RawWebSocket(server.port, path_with_report("/close-client", report))
    raw.send_text("before the drop")
    assert raw.recv_frame().payload == b"before the drop"
    raw.close()
    outcome = read_reports(report)[0]
    assert outcome["close_code"] == 1006
    assert outcome["receive"][0] == "ConnectionClosed"


def test_handler_returning_closes_with_1000(server):
    # /both's websocket handler sends one message and returns.
    with RawWebSocket(server.port, "/both") as raw:
        assert raw.recv_frame().payload == b"websocket handler"
        frame = raw.expect_close()
        assert frame.close_code == 1000
        raw.wait_eof(timeout=2)
