"""A connection and the broadcast used from a `threading.Thread` the app starts (issue 12
item 5), on real uWSGI in every model (threads, gevent, async: one connection at a time
there, see tests/test_async_model.py). App: tests/apps/foreign_threads_app.py.

Every public call works there: send, send_binary, ping, receive, recv_nb, close,
close_nowait, send_from_sharedarea and send_binary_from_sharedarea, subscribe and
unsubscribe, ws.publish and an events endpoint's emit; in the async model (no
broadcast) subscribe says at once that it needs the broadcast, and publish and emit
still reach the mule. The exception is the first use, which sends the 101 through
uWSGI's request API: that raises a RuntimeError saying what to do, instead of uWSGI's
"you can call uwsgi api function only from the main callable" (and, under gevent,
its "[BUG] current_wsgi_req NOT FOUND" log line). After each test the worker has the
pid it had before (no crash, no respawn) and the log holds no crash line and no
traceback (the conftest's teardown). Many publishing threads and emit to SSE:
tests/test_publish_threads.py; the async model's waits with a thread alive:
tests/test_foreign_threads_models.py.
"""

from __future__ import annotations

import pytest
import websocket

import harness

APP = "foreign_threads_app:app"
EXTRA = ["--sharedarea", "4096", "--sharedarea", "1", "--mule=uwsgi_ws.mule:run"]
MODELS = ["threads", "gevent", "async"]
NO_BROADCAST = ("RingError: subscribe({!r}) needs the broadcast: the async (ugreen) model has no background "
                "tasks: use --gevent or --threads")


@pytest.fixture(autouse=True)
def same_worker(server):
    """The worker that served the test is still the one running: nothing crashed it."""
    yield from harness.same_worker(server)


def test_the_first_use_from_another_thread_is_a_clear_error(server):
    conn = websocket.create_connection(server.url + "/first", timeout=10)
    try:
        text = conn.recv()
    finally:
        conn.close()
    assert text.startswith("RuntimeError: a WebSocket's first use (it sends the 101) must happen in its "
                           "handler's own thread or greenlet"), text
    assert "[BUG]" not in server.log()


def test_every_method_works_from_another_thread(server):
    conn = websocket.create_connection(server.url + "/methods", timeout=10)
    try:
        assert conn.recv() == "open"
        assert conn.recv_data(control_frame=True) == (websocket.ABNF.OPCODE_TEXT, b"text from a thread")
        assert conn.recv_data(control_frame=True) == (websocket.ABNF.OPCODE_BINARY, b"binary from a thread")
        assert conn.recv_data(control_frame=True) == (websocket.ABNF.OPCODE_PING, b"from a thread")
        conn.send("to the thread")
        if server.model == "async":  # no broadcast there, from any thread: said at once
            subscribed = NO_BROADCAST.format("feed")
        else:
            assert conn.recv() == "published to feed"  # the thread's subscription
            conn.send("got it")
            subscribed = "'got it'"
        results = conn.recv()
        assert results == f"None | None | None | 'to the thread' | {subscribed}", results
        opcode, data = conn.recv_data(control_frame=True)
        assert opcode == websocket.ABNF.OPCODE_CLOSE
        assert (int.from_bytes(data[:2], "big"), data[2:].decode()) == (4000, "bye from a thread")
    finally:
        conn.close()


def test_the_other_calls_from_another_thread(server):
    """recv_nb (nothing waiting: None; then the client's message), send_binary, both
    sharedarea sends, publish and emit (delivered where the model has the broadcast),
    subscribe/unsubscribe (a publish after the unsubscribe is not delivered: the one
    after it on another channel comes next), close_nowait."""
    tag = f"more-{server.model}"
    conn = websocket.create_connection(server.url + f"/more?tag={tag}", timeout=15)
    try:
        assert conn.recv() == "open"
        assert conn.recv() == "None"  # recv_nb with nothing waiting, in a thread
        conn.send("waiting")

        def frame():
            return conn.recv_data(control_frame=True)

        assert frame() == (websocket.ABNF.OPCODE_BINARY, b"binary from a thread")
        assert frame() == (websocket.ABNF.OPCODE_TEXT, b"hello")  # send_from_sharedarea(1, 0, 5)
        assert frame() == (websocket.ABNF.OPCODE_BINARY, b"hello")  # send_binary_from_sharedarea
        if server.model != "async":
            assert frame() == (websocket.ABNF.OPCODE_TEXT, b"published from a thread")
            opcode, data = frame()
            assert b'"event":"tick","data":{"from":"a thread"},"room":"r1","seq":' in data, data
            assert frame() == (websocket.ABNF.OPCODE_TEXT, b"on more2")
            conn.send("got more2")
            assert frame() == (websocket.ABNF.OPCODE_TEXT, b"on more after unsubscribe")  # not more2's
            subscribed = "['events:/live:r1', 'more']"
        else:
            subscribed = NO_BROADCAST.format("more2")
        # recv_nb, recv_nb, send_binary, 2 sharedarea sends, publish (a seq), emit, subscribe...
        assert frame() == (websocket.ABNF.OPCODE_TEXT,
                           f"results: None | 'waiting' | None | None | None | 'int' | None | {subscribed}".encode())
        opcode, data = frame()
        assert opcode == websocket.ABNF.OPCODE_CLOSE
        assert (int.from_bytes(data[:2], "big"), data[2:].decode()) == (4001, "nowait from a thread")
    finally:
        conn.close()
    server.wait_for_log(rf"{tag} ended", timeout=30)  # the handler is done with it


def test_a_thread_and_the_handler_send_at_once(server):
    """2 x 2000 messages, text and binary, from a thread and from the handler at the
    same time: every one arrives whole, each sender's in its order."""
    count = 2000
    conn = websocket.create_connection(server.url + f"/concurrent?n={count}", timeout=30)
    try:
        assert conn.recv() == "open"
        got = {"t": [], "h": []}
        while True:
            opcode, data = conn.recv_data()
            if data == b"done":
                break
            text = data.decode()
            index = int(text[1:])
            assert opcode == (websocket.ABNF.OPCODE_BINARY if index % 3 == 0 else websocket.ABNF.OPCODE_TEXT), text
            got[text[0]].append(index)
        assert got == {"t": list(range(count)), "h": list(range(count))}
    finally:
        conn.close()
