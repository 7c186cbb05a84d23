"""Waits of a connection while a `threading.Thread` the app started uses it, in every
model (issue 12 item 5), on real uWSGI. App: tests/apps/foreign_threads_app.py.

What the async model (uWSGI async cores + ugreen) did before runtime/ugreen.py
told its worker's own cores from other threads:

- a thread that waited in `receive` (or `close`) called uWSGI's
  ``wait_fd_read`` + ``suspend()``: the thread swapped itself into the loop
  context of the worker's main thread and ran uWSGI's event loop there; the next
  request that loop accepted called into Python from that thread and aborted the
  worker ("Fatal Python error: PyEval_RestoreThread: ... the current Python
  thread state is NULL", killed by signal 6): every client of the worker reset;
- after a thread had received on and closed a connection, the worker's next
  connection hung in its handshake (the loop's contexts left as the thread's);
- a core suspended in uWSGI's loop keeps the GIL (uWSGI's Python plugin), so a
  thread's `send` ran only once the core woke up: while the handler waited in
  `receive`, the thread's message stayed unsent until the client sent something.

Now a thread waits on a plain poll, and a core waits with the GIL released while
another thread is alive (the worker's loop waits then; a request that arrives
meanwhile is accepted once the handler returns). The threads and gevent models
pass the same tests. A test's worker keeps its pid and its log no crash line.
"""

from __future__ import annotations

import socket

import pytest
import websocket

import harness

APP = "foreign_threads_app:app"
EXTRA = ["--sharedarea", "4096", "--sharedarea", "1", "--mule=uwsgi_ws.mule:run"]
MODELS = ["threads", "gevent", "async"]


@pytest.fixture(autouse=True)
def same_worker(server):
    """The worker that served the test is still the one running: nothing crashed it."""
    yield from harness.same_worker(server)


def http_get(server, path: str) -> socket.socket:
    """Send a GET for `path` (it is in the server's socket once this returns); read the answer later."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
    return sock


def answer(sock: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    finally:
        sock.close()
    return data


def test_a_request_while_a_thread_receives(server):
    """A thread reads the connection (a reader-thread pattern) while a plain HTTP
    request reaches the same worker: both are served, by the same process (async,
    before: the request aborted the worker)."""
    conn = websocket.create_connection(server.url + "/reader", timeout=30)
    pid = conn.recv().split()[1]
    try:
        conn.send("one")
        assert conn.recv() == "echo one"
        request = http_get(server, "/pid")  # the thread is waiting in receive meanwhile
        conn.send("two")
        assert conn.recv() == "echo two"
    finally:
        conn.close()  # the thread's loop ends, then the handler
    reply = answer(request)
    assert reply.startswith(b"HTTP/1.1 200"), reply
    if server.model == "async":  # one worker: the same one that served the WebSocket
        assert reply.endswith(pid.encode()), reply


def test_a_thread_sends_while_the_handler_receives(server):
    """The thread's message goes out while the handler waits in receive() (async,
    before: only once the client sent something)."""
    conn = websocket.create_connection(server.url + "/send-while-receiving", timeout=30)
    try:
        assert conn.recv() == "open"
        assert conn.recv() == "from a thread"  # the client has sent nothing yet
        conn.send("then")
        assert conn.recv() == "echo then"
    finally:
        conn.close()


def test_the_worker_serves_on_after_a_thread_received_and_closed(server):
    """Three connections in turn, each received on and closed by a thread, then a plain
    request: all served by the same worker (async, before: the second connection hung,
    the worker's loop stuck on the GIL)."""
    for n in range(3):
        conn = websocket.create_connection(server.url + "/receive-then-close", timeout=30)
        try:
            assert conn.recv() == "open"
            conn.send(f"round {n}")
            opcode, data = conn.recv_data(control_frame=True)
            assert opcode == websocket.ABNF.OPCODE_CLOSE
            assert (int.from_bytes(data[:2], "big"), data[2:].decode()) == (4002, f"round {n}")
        finally:
            conn.close()
    assert answer(http_get(server, "/pid")).startswith(b"HTTP/1.1 200")


def closed_with(conn: websocket.WebSocket) -> tuple:
    """The close frame's (code, reason), once it comes (after any data frames).
    websocket-client answers it with 1000: the code the server's side then reports
    (RFC 6455 section 7.1.5: the code of the close frame received)."""
    while True:
        opcode, data = conn.recv_data(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return int.from_bytes(data[:2], "big"), data[2:].decode()


def close_race(server, route: str, tag: str, close: tuple, waiter: str) -> None:
    """Open `route`?tag=`tag` (it sends "open"), expect the close frame `close` (code,
    reason), then the app's log line: `waiter` ("handler" or "thread") saw the receive it
    waited in end with ConnectionClosedOK (the client's answering 1000)."""
    conn = websocket.create_connection(server.url + f"{route}?tag={tag}", timeout=30)
    try:
        assert conn.recv() == "open"
        assert closed_with(conn) == close
    finally:
        conn.close()
    server.wait_for_log(rf"{tag} {waiter}: ConnectionClosedOK: WebSocket closed with code 1000", timeout=30)


def test_a_thread_closes_while_the_handler_receives(server):
    """The close goes out; the handler's receive ends with ConnectionClosed."""
    close_race(server, "/close-while-receiving", f"cwr-{server.model}", (4003, "closed by a thread"), "handler")


def test_a_thread_receives_while_the_handler_closes(server):
    """The handler's close completes; the thread's receive ends with ConnectionClosed."""
    close_race(server, "/receive-while-closing", f"rwc-{server.model}", (4004, "closed by the handler"), "thread")
