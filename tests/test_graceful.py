"""A graceful reload (``uwsgi --reload``: SIGHUP to the master) closes every open
WebSocket with 1012 (service restart) at once, instead of holding it until
worker-reload-mercy runs out and the master kills the worker (a reset); the
reloaded instance then serves new connections."""

from __future__ import annotations

import os
import signal
import time

import pytest
import websocket

from harness import serve, wait_for

MERCY = 30  # seconds: far longer than the test waits, so a close can't come from the kill


def recv_close(ws, timeout):
    """The close code the server sends, reading past data frames; fails after `timeout`."""
    ws.settimeout(timeout)
    while True:
        opcode, data = ws.recv_data(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return int.from_bytes(data[:2], "big"), data[2:].decode()


@pytest.mark.parametrize("model", ["threads", "gevent"])
def test_reload_closes_websockets_with_1012(model, tmp_path):
    server = serve("echo_app:app", tmp_path, model=model,
                   extra=["--processes", "1", "--worker-reload-mercy", str(MERCY)])
    try:
        clients = [websocket.create_connection(server.url + "/echo", timeout=5) for _ in range(3)]
        for i, ws in enumerate(clients):
            ws.send(f"hello {i}")
            assert ws.recv() == f"hello {i}"
        old = wait_for(server.worker_pids, 5, "the worker's spawn line")
        started = time.monotonic()
        os.kill(server.pid, signal.SIGHUP)  # what `uwsgi --reload pidfile` sends
        for ws in clients:
            code, reason = recv_close(ws, 10)
            assert (code, reason) == (1012, "server restarting")
            ws.close()
        assert time.monotonic() - started < 10
        # the instance comes back with a new worker that serves
        wait_for(lambda: server.worker_pids() and server.worker_pids() != old, 30, "the reloaded worker")
        ws = wait_for(lambda: _connect(server), 30, "a connection to the reloaded instance")
        ws.send("after the reload")
        assert ws.recv() == "after the reload"
        ws.close()
        assert "NO MERCY" not in server.log()  # the worker ended by itself, not killed after the mercy
    finally:
        server.stop()


def _connect(server):
    try:
        return websocket.create_connection(server.url + "/echo", timeout=5)
    except (OSError, websocket.WebSocketException):
        return None
