"""Every publish entry of the app given a text no text frame may carry
(tests/test_publisher_output_rules.py).

POST /call/<entry>?data=<kind>  runs one publish entry in this worker and answers
    "seq <n>" (str(result) for entries that return None) or the exception as
    "<type>: <message>". Entries:
        publish         ws.publish(text)
        publish-list    ws.publish(text, channel=["a", "b"])
        thread          ws.publish(text) from a threading.Thread
        module          uwsgi_ws.broadcast.publish(text) (mules, spoolers)
        event           ws.broadcast().publish('{"x":"<text>"}', "c", event=True)
        emit            live.emit("x", {"text": text}, to="r")
        conn-emit-id    live.emit("x", text, to=<a connection id>)
    Kinds: ok ("fine ✓ 😀", valid), surrogate ("ok \\ud800 then": a lone
    surrogate), escaped (b"ok \\xff" decoded with surrogateescape, as the CLI reads
    a non-UTF-8 stdin), big (70,000 characters: over the default --mule-msg-size).
Events endpoint /live: any room may be joined.
"""

from __future__ import annotations

import threading

from flask import Flask

import uwsgi_ws.broadcast
from uwsgi_ws import WebSocket

app = Flask(__name__)
ws = WebSocket(app, allowed_origins="*", ping_interval=None)
live = ws.events("/live")

TEXTS = {
    "ok": "fine \u2713 \U0001f600",
    "surrogate": "ok \ud800 then",
    "escaped": b"ok \xff".decode("utf-8", "surrogateescape"),
    "big": "x" * 70000,
}


@live.on("join")
def may_join(conn, room):
    return True


def _in_thread(text: str) -> int:
    out: dict = {}

    def run() -> None:
        try:
            out["result"] = ws.publish(text)
        except Exception as exc:
            out["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    while thread.is_alive():  # the model's sleep: a gevent worker keeps running
        ws.runtime().sleep(0.01)
    if "error" in out:
        raise out["error"]
    return out["result"]


ENTRIES = {
    "publish": lambda text: ws.publish(text),
    "publish-list": lambda text: ws.publish(text, channel=["a", "b"]),
    "thread": _in_thread,
    "module": lambda text: uwsgi_ws.broadcast.publish(text),
    "event": lambda text: ws.broadcast().publish('{"x":"%s"}' % text, "c", event=True),
    "emit": lambda text: live.emit("x", {"text": text}, to="r"),
    "conn-emit-id": lambda text: live.emit("x", text, to="1-1"),
}


@app.post("/call/<entry>")
def call(entry):
    from flask import request

    text = TEXTS[request.args["data"]]
    try:
        result = ENTRIES[entry](text)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return f"seq {result}"
