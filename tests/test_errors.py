"""A handler that raises: the client gets 1011, Flask logs the exception, the worker lives."""

from __future__ import annotations

import re

import websocket

from harness import read_reports, wait_for
from wsraw import RawWebSocket

APP = "echo_app:app"
MODELS = ["threads", "gevent", "async"]
EXPECTED_TRACEBACKS = [r"RuntimeError: handler failed on purpose"]  # logged by Flask: what these tests check
EXTRA = ["--processes", "1"]


def test_handler_exception_closes_with_1011_and_is_logged(server):
    ws = websocket.create_connection(server.url + "/echo", timeout=5)
    ws.send("warm-up")
    assert ws.recv() == "warm-up"
    ws.close()
    pids = wait_for(server.worker_pids, 5, "the worker's spawn line")

    with RawWebSocket(server.port, "/raise") as raw:
        raw.send_text("marker-7f3a")
        frame = raw.expect_close()
        assert frame.close_code == 1011
        assert frame.close_reason == "internal error"  # no exception text leaks to the client

    # Flask's app.log_exception: "Exception on /raise [GET]" and the traceback.
    wait_for(lambda: "Exception on /raise [GET]" in server.log(), 5, "Flask's error log line")
    log = server.log()
    assert re.search(r"RuntimeError: handler failed on purpose: marker-7f3a", log)
    assert "Traceback (most recent call last)" in log

    ws = websocket.create_connection(server.url + "/echo", timeout=5)
    try:
        ws.send("the worker lives")
        assert ws.recv() == "the worker lives"
    finally:
        ws.close()
    assert server.worker_pids() == pids
    assert server.crashes() == []


def test_handler_exception_with_websocket_client(server):
    ws = websocket.create_connection(server.url + "/raise", timeout=5)
    try:
        ws.send("again")
        opcode, data = ws.recv_data(control_frame=True)
        assert opcode == websocket.ABNF.OPCODE_CLOSE
        assert int.from_bytes(data[:2], "big") == 1011
    finally:
        ws.close()


def test_connection_closed_escaping_the_handler_is_not_an_error(server, tmp_path):
    report = tmp_path / "teardown.jsonl"
    with RawWebSocket(server.port, f"/receive-loop?report={report}") as raw:
        raw.send_text("one")
        assert raw.recv_frame().payload == b"one"
        raw.send_close(4002, "done")
        frame = raw.expect_close(answer=False)
        assert frame.close_code == 4002  # the normal closing handshake, not 1011
        raw.wait_eof(timeout=2)
    # teardown runs once the handler (and the extension's error handling) is done
    assert read_reports(report)[0]["event"] == "teardown"
    assert "Exception on /receive-loop" not in server.log()
    assert "ConnectionClosed" not in server.log()
