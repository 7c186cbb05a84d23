"""Peer 5: minimal raw uWSGI gevent app (no Flask) — the uWSGI API ceiling.

``uwsgi.websocket_*`` functions act on the *current request*, so each
connection's own request greenlet must do its sends. Each connection owns a
deque and an Event; a libev read watcher on the connection fd flags
readability (to answer pings/close via ``websocket_recv_nb``). ``POST
/publish`` appends the body to every deque and sets every Event.

Run: ``uwsgi --http-socket ... --gevent N --wsgi-file uwsgi_raw_server.py``
"""
from __future__ import annotations

from collections import deque
from typing import Callable, Iterable

import gevent
import uwsgi
from gevent.event import Event


class Subscriber:
    """Per-connection mailbox: pending messages, a wake-up event, a read flag."""

    __slots__ = ("queue", "event", "readable")

    def __init__(self) -> None:
        self.queue: deque[bytes] = deque()
        self.event = Event()
        self.readable = False

    def on_readable(self) -> None:
        self.readable = True
        self.event.set()


subscribers: set[Subscriber] = set()


def websocket(environ: dict) -> list[bytes]:
    """Handshake, then loop: flush queued messages, drain incoming frames."""
    uwsgi.websocket_handshake(environ["HTTP_SEC_WEBSOCKET_KEY"], environ.get("HTTP_ORIGIN", ""))
    me = Subscriber()
    watcher = gevent.get_hub().loop.io(uwsgi.connection_fd(), 1)
    watcher.start(me.on_readable)
    subscribers.add(me)
    try:
        while True:
            woke = me.event.wait(5.0)  # wake at least every 5 s for uWSGI's ping logic
            me.event.clear()
            while me.queue:
                uwsgi.websocket_send(me.queue.popleft())
            if me.readable or not woke:
                me.readable = False
                while uwsgi.websocket_recv_nb():  # raises IOError on close
                    pass
    except IOError:
        pass
    finally:
        subscribers.discard(me)
        watcher.stop()
    return []


def application(environ: dict, start_response: Callable) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    if path == "/ws" and "HTTP_SEC_WEBSOCKET_KEY" in environ:
        return websocket(environ)
    if path == "/publish" and environ["REQUEST_METHOD"] == "POST":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length)
        for sub in subscribers:
            sub.queue.append(body)
            sub.event.set()
        start_response("204 No Content", [])
        return []
    start_response("404 Not Found", [("Content-Length", "0")])
    return []
