"""The outbound stream on a socket pair (no uWSGI needed: it is plain sockets).

RFC 6455 section 5.5.1: after its close frame an endpoint sends no data frame.
`Outbound.close_after` queues the close frame and shuts the stream for data in
one hold of the lock; these tests hold it to that, and to its buffering rules.
"""

from __future__ import annotations

import socket
import threading

from uwsgi_ws import runtime
from uwsgi_ws.outbound import Outbound

RT = runtime.load("threads")


def pair(write_limit: int = 1 << 20):
    a, b = socket.socketpair()
    a.setblocking(False)
    broken = []
    return Outbound(a, RT, write_limit, lambda: broken.append(True)), a, b, broken


def read_all(sock: socket.socket) -> bytes:
    sock.settimeout(0.2)
    chunks = []
    try:
        while True:
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    except socket.timeout:
        pass
    return b"".join(chunks)


def test_data_after_the_close_frame_is_refused():
    out, a, b, _ = pair()
    assert out.write(b"data-1", 1)
    out.close_after(b"CLOSE")
    assert not out.write(b"data-2", 1)  # refused: the caller raises ConnectionClosed
    assert not out.offer(b"data-3", 1)  # the fan-out too
    assert out.begin_direct() == -1
    assert out.write(b"pong", 0)  # control frames still go (none follows a close in practice)
    assert read_all(b) == b"data-1CLOSEpong"


def test_racing_writers_never_follow_the_close_frame():
    """Eight threads write numbered frames while a ninth closes: on the wire, nothing
    from a data writer comes after CLOSE, in 200 rounds."""
    for _ in range(200):
        out, a, b, _ = pair()
        go = threading.Event()

        def writer(tag: bytes) -> None:
            go.wait()
            for i in range(50):
                if not out.write(tag, 1, wait=False):
                    return

        threads = [threading.Thread(target=writer, args=(b"<%d>" % n,)) for n in range(8)]
        for t in threads:
            t.start()
        go.set()
        out.close_after(b"CLOSE")
        for t in threads:
            t.join()
        out.flush()
        a.shutdown(socket.SHUT_WR)
        wire = read_all(b)
        assert wire.endswith(b"CLOSE"), wire[-40:]
        a.close()
        b.close()


def test_offer_refuses_past_the_write_limit_but_write_buffers():
    out, a, b, _ = pair(write_limit=1000)
    b.setblocking(False)
    big = b"x" * (1 << 22)
    assert out.write(big, 1, wait=False)  # the producer's own write: buffered, no limit
    assert out.pending > 0
    assert not out.offer(b"y" * 10, 1)  # a broadcast past the limit: a slow consumer
    assert out.messages == 1


def test_a_broken_socket_is_reported_once_and_refuses_data():
    out, a, b, broken = pair()
    b.close()
    for _ in range(3):
        out.write(b"z" * 100000, 1, wait=False)
    assert broken == [True]
    assert not out.write(b"more", 1)
