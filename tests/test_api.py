"""The connection API beyond send/receive: receive timeouts, recv_nb, sharedarea sends."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest
import websocket

from wsraw import RawWebSocket

APP = "echo_app:app"
MODELS = ["threads", "gevent", "async"]
EXTRA = ["--sharedarea", "1"]  # one 4 KiB page
# the out-of-range sharedarea read raises in the handler on purpose: 1011 and a logged traceback
EXPECTED_TRACEBACKS = [r"ValueError: 200 bytes from 4000 run past the end of sharedarea 0"]

ASYNC_SECONDS = ("uwsgi_ws bug (async model): runtime/ugreen.wait rounds every timeout up to whole "
                 "seconds (uwsgi.wait_fd_read takes int seconds): receive(timeout=0.1) waits 1 s")


def xfail_async(server, request, reason):
    if server.model == "async":
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))


def test_receive_timeout_returns_none(server, request):
    xfail_async(server, request, ASYNC_SECONDS)
    ws = websocket.create_connection(server.url + "/timeout", timeout=5)
    try:
        started = time.monotonic()
        result = json.loads(ws.recv())
        assert result["got"] == "None"
        assert 0.09 <= result["elapsed"] < 0.5, result
        assert time.monotonic() - started < 0.5
        ws.send("the connection still works")
        assert ws.recv() == "the connection still works"
    finally:
        ws.close()


def test_receive_timeout_returns_none_eventually(server):
    # The part every model must get right: None, not an exception, and the connection lives.
    ws = websocket.create_connection(server.url + "/timeout", timeout=5)
    try:
        result = json.loads(ws.recv())
        assert result["got"] == "None"
        assert result["elapsed"] >= 0.09
        ws.send("after the timeout")
        assert ws.recv() == "after the timeout"
    finally:
        ws.close()


def test_recv_nb(server, request):
    ws = websocket.create_connection(server.url + "/recv-nb", timeout=8)
    try:
        assert json.loads(ws.recv()) == {"first": "None"}  # nothing sent yet: None, no blocking
        ws.send("polled")
        result = json.loads(ws.recv())
        assert result["got"] == "polled"
        ws.send("then iteration")
        assert ws.recv() == "then iteration"
    finally:
        ws.close()


def write_sharedarea(server, pos, data):
    req = urllib.request.Request(f"{server.http}/sharedarea?pos={pos}", data=data, method="POST")
    assert urllib.request.urlopen(req, timeout=5).read() == b"ok"


def test_send_from_sharedarea_honours_pos_and_length(server):
    write_sharedarea(server, 100, b"hello world")
    ws = websocket.create_connection(server.url + "/sharedarea?pos=106&length=5", timeout=5)
    try:
        assert ws.recv_data() == (websocket.ABNF.OPCODE_TEXT, b"world")
    finally:
        ws.close()
    ws = websocket.create_connection(server.url + "/sharedarea?pos=100&length=5", timeout=5)
    try:
        assert ws.recv() == "hello"
    finally:
        ws.close()


def test_send_binary_from_sharedarea_to_the_end(server):
    write_sharedarea(server, 4090, b"\x00\x01\x02\xfd\xfe\xff")
    ws = websocket.create_connection(server.url + "/sharedarea?pos=4090&binary=1", timeout=5)
    try:
        assert ws.recv_data() == (websocket.ABNF.OPCODE_BINARY, b"\x00\x01\x02\xfd\xfe\xff")
    finally:
        ws.close()


def test_sharedarea_out_of_range_is_an_error_not_a_crash(server):
    # pos + length past the 4 KiB area: the handler raises -> close 1011, the worker lives.
    with RawWebSocket(server.port, "/sharedarea?pos=4000&length=200") as raw:
        assert raw.expect_close().close_code == 1011
    ws = websocket.create_connection(server.url + "/echo", timeout=5)
    try:
        ws.send("alive")
        assert ws.recv() == "alive"
    finally:
        ws.close()
