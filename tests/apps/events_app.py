"""The event endpoint under test (tests/test_events.py).

WebSocket /live (uwsgi_ws.events): on connect joins room "lobby" and emits `hello`
{pid} to the connection itself. Events:
    echo      ack = the data
    say       emits `said` with the data to room data["room"] (default "lobby"); ack {"ok": true}
    fail      raises EventError("refused: <data>")  -> error ack with that message
    crash     raises ZeroDivisionError               -> error ack "internal error", logged
    whoami    ack = the upgrade request's path and the `name` query argument (request context)
    all       emits `everyone` with the data to every connection of the endpoint
    output-rules  ack = {call: "ok" or the error text} for emits that would make an invalid
              frame (NaN, an infinity, a lone surrogate, an unserialisable value, a name that
              is no str), to this connection, to a room and to everyone
HTTP:
    POST /emit/<room>?event=   body = JSON data; emits from a plain view (room "-": everyone)
    GET  /ring                 {"epoch": str, "write_seq": int, "min_seq": int}
    GET  /members/<room>       {"pid": .., "members": subscribers of the room's channel in this worker's hub}
    GET  /metrics              the Prometheus text (uwsgi_ws.metrics)
On disconnect: emits `left` {"code": close code, "name": the `name` query argument} to room "departures".
"""

import json
import os

from flask import Flask, jsonify, request

from uwsgi_ws import WebSocket
from uwsgi_ws.broadcast.ring import BroadcastRing
from uwsgi_ws.events import EventError

app = Flask(__name__)
ws = WebSocket(app, ping_interval=None, metrics_route="/metrics")
live = ws.events("/live")


@live.on("connect")
def connected(conn):
    conn.join("lobby")
    conn.emit("hello", {"pid": os.getpid()})


@live.on("echo")
def echo(conn, data):
    return data


@live.on("say")
def say(conn, data):
    live.emit("said", data, to=(data or {}).get("room", "lobby"))
    return {"ok": True}


@live.on("fail")
def fail(conn, data):
    raise EventError(f"refused: {data}")


@live.on("crash")
def crash(conn, data):
    return 1 / 0


@live.on("output-rules")
def output_rules(conn, data):
    calls = {
        "conn-nan": lambda: conn.emit("x", {"v": float("nan")}),
        "conn-surrogate": lambda: conn.emit("x", "\udfff"),
        "room-inf": lambda: live.emit("x", [float("-inf")], to="nobody-listens"),
        "all-surrogate": lambda: live.emit("x", "\ud800"),
        "all-object": lambda: live.emit("x", object()),
        "all-name": lambda: live.emit(42, "v"),
    }
    answers = {}
    for name, call in calls.items():
        try:
            call()
            answers[name] = "ok"
        except (TypeError, ValueError) as exc:
            answers[name] = f"{type(exc).__name__}: {exc}"
    return answers


@live.on("whoami")
def whoami(conn, data):
    return {"path": request.path, "name": request.args.get("name")}


@live.on("all")
def everyone(conn, data):
    live.emit("everyone", data)


@app.post("/emit/<room>")
def emit(room):
    live.emit(request.args.get("event", "news"), json.loads(request.get_data() or b"null"),
              to=None if room == "-" else room)
    return "", 204


@app.get("/ring")
def ring():
    r = BroadcastRing.open()
    return jsonify(epoch=str(r.epoch), write_seq=r.write_seq, min_seq=r.min_seq)


@live.on("disconnect")
def left(conn, code, reason):
    live.emit("left", {"code": code, "name": request.args.get("name")}, to="departures")


@app.get("/members/<room>")
def members(room):
    count = ws.broadcast().subscriber_count(live.channel(room))
    return jsonify(pid=os.getpid(), members=count)
