"""The announcement example (tests/apps/socketio_announce_app.py, Flask-SocketIO's with
the import line changed) in Debian's headless Chromium, against real uWSGI (2 workers,
threads and gevent, the broadcast mule).

Each page loads the example's own page, whose <script> asks a CDN for the
socket.io-client v4 bundle: the test answers that request with the same bundle from
tests/js/socketio/node_modules (no network), and the page connects with `io()`,
default options: HTTP long-polling first, then the upgrade to WebSocket, each request
landing on either worker. Pages are opened until their sessions belong to both
workers; a broadcast from one reaches every page once, 'my event' only its sender.
The browser fixture (one Chromium per module, fresh profile, stopped by pid) is
tests/test_browser.py's.
"""

from __future__ import annotations

import uuid

from test_browser import browser  # noqa: F401  (the fixture)
from test_socketio import EXTRA as _EXTRA
from test_socketio import JS, node_ready, worker_of

APP = "socketio_announce_app:app"
MODELS = ["threads", "gevent"]
EXTRA = _EXTRA
BUNDLE = JS / "node_modules" / "socket.io-client" / "dist" / "socket.io.min.js"

CONNECT = """() => {
    window.log = [];
    window.socket = io();  // the client's default options
    socket.on('my response', (m) => window.log.push(m.data));
}"""
UPGRADED = "() => window.socket && window.socket.connected && window.socket.io.engine.transport.name === 'websocket'"


def open_page(browser, server):
    node_ready()  # the bundle comes from tests/js/socketio/node_modules
    page = browser.new_page()
    page.route("https://cdn.socket.io/**",
               lambda route: route.fulfill(path=str(BUNDLE), content_type="application/javascript"))
    page.goto(server.http + "/")
    page.evaluate(CONNECT)
    page.wait_for_function(UPGRADED, polling=20)
    return page


def received(page, data: str) -> int:
    return int(page.evaluate("(d) => window.log.filter((x) => x === d).length", data))


def test_announcement_example_in_chromium(server, browser):
    pages, workers = [], set()
    try:
        # the kernel hands each accept to a worker with no balance promised (under threads the
        # same worker often wins many in a row): open pages until both workers hold one
        while len(workers) < 2:
            assert len(pages) < 40, f"every page's session landed on workers {workers}"
            page = open_page(browser, server)
            pages.append(page)
            workers.add(worker_of(page.evaluate("() => window.socket.id")))
        for page in pages:
            page.wait_for_function("() => window.log.includes('Connected')", polling=20)
        echo, shout, marker = (f"{name}-{uuid.uuid4().hex[:8]}" for name in ("echo", "shout", "marker"))
        pages[0].evaluate("(d) => window.socket.emit('my event', {data: d})", echo)
        pages[0].wait_for_function("(d) => window.log.includes(d)", arg=echo, polling=20)
        pages[0].evaluate("(d) => window.socket.emit('my broadcast event', {data: d})", shout)
        pages[-1].wait_for_function("(d) => window.log.includes(d)", arg=shout, polling=20)
        pages[-1].evaluate("(d) => window.socket.emit('my broadcast event', {data: d})", marker)
        for page in pages:
            page.wait_for_function("(d) => window.log.includes(d)", arg=marker, polling=20)
            assert received(page, shout) == 1 and received(page, marker) == 1
        assert received(pages[0], echo) == 1
        assert all(received(page, echo) == 0 for page in pages[1:])
    finally:
        for page in pages:
            page.close()
    assert not server.crashes(), server.log()
