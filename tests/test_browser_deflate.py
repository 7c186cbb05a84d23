"""Chromium negotiates permessage-deflate with the chat demo (issue 15), and the chat
still works: real headless Chromium, real uWSGI (threads, gevent), the helpers and
fixtures of tests/test_browser.py (one browser per module, the chat on 2 workers).

The page's WebSockets are recorded by an init script (a subclass of the native
WebSocket that keeps every instance), so the test reads `extensions`, what the
browser agreed to in the 101. Lines longer than `compression_min_size` make the
server send compressed frames (the broadcast's shared copy and the direct acks):
a frame the browser could not inflate would fail the connection (1002/1007) and
the page would show a reconnect, or lose lines.
"""

from __future__ import annotations

from test_browser import (  # noqa: F401  (browser, chat: fixtures)
    Transcript,
    browser,
    chat,
    check_log,
    joined,
    open_pages,
    unique,
    url,
)

from test_events import model  # noqa: F401  (the fixture: threads and gevent)

RECORD_SOCKETS = """
(() => {
  const Native = window.WebSocket;
  window.__sockets = [];
  window.WebSocket = class extends Native {
    constructor(...args) { super(...args); window.__sockets.push(this); }
  };
})();
"""
EXTENSIONS = "() => window.__sockets.filter(s => s.readyState === 1).map(s => s.extensions)"


def test_chromium_negotiates_deflate_and_the_chat_works(chat, browser):
    a, b = pages = open_pages(browser, [url(chat, 1), url(chat, 2)], {0: RECORD_SOCKETS, 1: RECORD_SOCKETS})
    try:
        for page in pages:
            page.status("open")
        for page in pages:
            extensions = page.page.evaluate(EXTENSIONS)
            assert extensions and all(e.startswith("permessage-deflate") for e in extensions), extensions
        token = unique("deflate")
        joined(pages, token)
        talk = Transcript(token)
        filler = " ".join(["compressible chat text"] * 20)  # ~450 bytes: over compression_min_size
        for i in range(6):
            talk.say(pages[i % 2], i, f" {filler} {i}")
        for page in pages:
            page.wait_text(talk.sent[-1])
        assert check_log(a, token + ":", talk.sent) == check_log(b, token + ":", talk.sent)
        for page in pages:
            assert page.statuses().count("open") == 1, page.statuses()  # never reconnected
            assert page.page.evaluate(EXTENSIONS)  # still the same open socket
    finally:
        for page in pages:
            page.close()
