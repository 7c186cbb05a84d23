"""The async model (uWSGI async cores + ugreen) with more than one connection at a time.

uWSGI >= 2.0.27 always enables Python threads, and its Python plugin keeps
the GIL while a core is suspended in `uwsgi.suspend()`. When the async loop
then starts another request on the same worker, the plugin's GIL acquire
(PyEval_RestoreThread) waits for the GIL its own thread holds: the worker
deadlocks (futex wait forever, every connection of the worker stalls). The
same happens with a bare WSGI app that calls uwsgi.async_sleep + suspend,
so the cause is uWSGI's, but it makes the "async" model serve one request
per process at a time and hang on the second.

Each test gets its own server: after the deadlock the worker is useless.
"""

from __future__ import annotations

import urllib.request

import pytest
import websocket

from harness import serve

BUG = ("uWSGI 2.0.31 async+ugreen: a second request while a core is suspended in "
       "uwsgi.suspend() deadlocks the worker on the GIL (see module docstring)")


@pytest.fixture
def async_server(tmp_path):
    server = serve("echo_app:app", tmp_path, model="async")
    yield server
    server.stop()


def test_one_connection_at_a_time_works(async_server):
    for i in range(3):
        ws = websocket.create_connection(async_server.url + "/echo", timeout=5)
        ws.send(f"round {i}")
        assert ws.recv() == f"round {i}"
        ws.close()


@pytest.mark.xfail(strict=True, reason=BUG)
def test_two_connections_at_once(async_server):
    first = websocket.create_connection(async_server.url + "/echo", timeout=3)
    try:
        first.send("one")
        assert first.recv() == "one"
        second = websocket.create_connection(async_server.url + "/echo", timeout=3)
        second.send("two")
        assert second.recv() == "two"
        first.send("one again")
        assert first.recv() == "one again"
        second.close()
    finally:
        first.shutdown()  # no closing handshake: the worker may be stuck


@pytest.mark.xfail(strict=True, reason=BUG)
def test_plain_http_while_a_websocket_is_open(async_server):
    ws = websocket.create_connection(async_server.url + "/echo", timeout=3)
    try:
        ws.send("hi")
        assert ws.recv() == "hi"
        assert urllib.request.urlopen(async_server.http + "/login", timeout=3).read() == b"logged in"
    finally:
        ws.shutdown()
