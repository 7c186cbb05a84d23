"""Broadcast channels with odd names (tests/test_channels.py): what publish and
subscribe do with NUL, newlines, 255/256-byte names, lone surrogates, non-str.

    POST /publish/<name>      publishes "hello <name>" on CHANNELS[name]; answers
                              "ok" or "<ExceptionType>: <message>" (always 200)
    WebSocket /sub/<name>     subscribes to CHANNELS[name] and sends "subscribed",
                              or sends "<ExceptionType>: <message>" and closes
"""

from flask import Flask

from uwsgi_ws import WebSocket

app = Flask(__name__)
ws = WebSocket(app, ping_interval=None)

CHANNELS = {
    "plain": "plain",
    "nul": "\x00",
    "nul-inside": "a\x00b",
    "newline": "a\nb",
    "255-bytes": "é" * 127 + "x",
    "256-bytes": "x" * 256,
    "surrogate": "\ud800",
    "low-surrogate": "ab\udc00",
    "int": 5,
    "bytes": b"plain",
}


def outcome(exc):
    return f"{type(exc).__name__}: {exc}"


@app.post("/publish/<name>")
def publish(name):
    try:
        ws.publish(f"hello {name}", channel=CHANNELS[name])
    except Exception as exc:
        return outcome(exc)
    return "ok"


@ws.route("/sub/<name>")
def sub(conn, name):
    try:
        subscription = ws.subscribe(conn, CHANNELS[name])
    except Exception as exc:
        conn.send(outcome(exc))
        return
    with subscription:
        conn.send("subscribed")
        for _ in conn:
            pass
