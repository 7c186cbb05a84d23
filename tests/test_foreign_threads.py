"""A connection used from a `threading.Thread` the app starts (issue 12 item 5), on real
uWSGI in every model (threads, gevent, async: one connection at a time there, see
tests/test_async_model.py): every method works there (send, ping, receive,
close, a subscription and its publishes), except the first use, which sends the 101
through uWSGI's request API: that raises a RuntimeError saying what to do, instead of
uWSGI's "you can call uwsgi api function only from the main callable" (and, under
gevent, its "[BUG] current_wsgi_req NOT FOUND" log line). Publish and emit from threads:
tests/test_publish_threads.py.
"""

from __future__ import annotations

import websocket

APP = "foreign_threads_app:app"
EXTRA = ["--sharedarea", "4096", "--mule=uwsgi_ws.mule:run"]
MODELS = ["threads", "gevent", "async"]


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
            subscribed = ("RingError: subscribe('feed') needs the broadcast: the async (ugreen) model has no "
                          "background tasks: use --gevent or --threads")
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
