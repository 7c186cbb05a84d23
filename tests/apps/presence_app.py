"""Presence, targeting and calls of an events endpoint (tests/test_presence.py,
tests/test_targeting.py, tests/test_calls.py, tests/test_browser_presence.py).

WebSocket /live (join_leave=True, RichEncoder): on connect the identity is
{"user": ?user, "name": ?name} and the connection joins the rooms of ?rooms=a,b.
Events (all acked):
    join / leave    data = room
    whoami          {"id": conn.id, "pid": worker pid}
    say             emit "said" data["text"] to room data["room"], skipping the sender
    ask             conn.call(data["event"], data["data"], timeout=data["timeout"]) -> its reply,
                    or {"error": ...} / {"timeout": true}
    rich            returns a datetime, a UUID, a dataclass and bytes (json_encoder, $bin)
HTTP (any worker; each worker also on a port of its own):
    GET  /presence/<room>     {"pid", "members": live.presence(room), "count": live.presence_count(room)}
    POST /emit?event=&to=&to_user=&skip=&thread=1   body JSON data (thread=1: from a threading.Thread)
    POST /disconnect/<id>?code=&reason=
    POST /close_room/<room>
    GET  /call/<id>?event=    conn.call from a view (the connection must be in this worker)
    POST /mule                the body (JSON) to mule 2, tests/apps/presence_mule.py, which acts on it
"""

import dataclasses
import datetime
import json
import os
import threading
import uuid

from flask import Flask, jsonify, request

from uwsgi_ws import WebSocket
from uwsgi_ws.events_protocol import RichEncoder

app = Flask(__name__)
ws = WebSocket(app, ping_interval=None)
live = ws.events("/live", presence=True, join_leave=True, json_encoder=RichEncoder)
_conns = {}  # this worker's connections by id (for /call)


@dataclasses.dataclass
class Point:
    x: int
    y: int


@live.on("connect")
def connected(conn):
    conn.identity = {"user": request.args.get("user"), "name": request.args.get("name")}
    for room in filter(None, request.args.get("rooms", "").split(",")):
        conn.join(room)
    _conns[conn.id] = conn


@live.on("disconnect")
def gone(conn, code, reason):
    _conns.pop(conn.id, None)


@live.on("join")
def may_join(conn, room):
    return room != "forbidden"


@live.on("join_room")
def join_room(conn, room):
    conn.join(room)
    return True


@live.on("leave_room")
def leave_room(conn, room):
    conn.leave(room)
    return True


@live.on("whoami")
def whoami(conn, data):
    return {"id": conn.id, "pid": os.getpid()}


@live.on("say")
def say(conn, data):
    live.emit("said", data["text"], to=data["room"], skip=conn)
    return True


@live.on("ask")
def ask(conn, data):
    try:
        return {"reply": conn.call(data["event"], data.get("data"), timeout=data.get("timeout", 5))}
    except TimeoutError:
        return {"timeout": True}
    except Exception as exc:  # EventError: the client's error
        return {"error": str(exc), "kind": type(exc).__name__}


@live.on("rich")
def rich(conn, data):
    return {"when": datetime.datetime(2026, 12, 1, 2, 30), "uuid": uuid.UUID(int=7), "point": Point(1, 2),
            "blob": b"\x00\xffbin"}


@app.get("/presence/<room>")
def presence(room):
    return jsonify(pid=os.getpid(), members=live.presence(room), count=live.presence_count(room))


@app.get("/rooms")
def rooms():
    return jsonify(live.rooms())


@app.post("/emit")
def emit():
    data = json.loads(request.get_data() or b"null")
    args = dict(event=request.args.get("event", "news"), data=data, to=request.args.get("to"),
                to_user=request.args.get("to_user"), skip=request.args.get("skip"))

    def run():
        live.emit(args.pop("event"), args.pop("data"), **args)

    if request.args.get("thread") == "1":
        t = threading.Thread(target=run)
        t.start()
        t.join(10)
    else:
        run()
    return "", 204


@app.post("/mule")
def to_mule():
    import uwsgi

    return ("", 204) if uwsgi.mule_msg(request.get_data(), 2) else ("mule queue full", 503)


@app.post("/disconnect/<conn_id>")
def disconnect(conn_id):
    live.disconnect(conn_id, int(request.args.get("code", 1000)), request.args.get("reason", ""))
    return "", 204


@app.post("/close_room/<room>")
def close_room(room):
    live.close_room(room)
    return "", 204


@app.get("/call/<conn_id>")
def call(conn_id):
    conn = _conns.get(conn_id)
    if conn is None:
        return jsonify(error="not in this worker", pid=os.getpid()), 404
    try:
        return jsonify(reply=conn.call(request.args.get("event", "question"), None, timeout=5))
    except TimeoutError:
        return jsonify(timeout=True)


PAGE = """<!doctype html><meta charset="utf-8"><title>presence</title>
<script src="/_uwsgi_ws/uwsgi_ws.js"></script>
<script>
  const q = new URLSearchParams(location.search);
  window.log = [];
  window.statuses = [];
  const live = uwsgiWs.connect("/live", {auth: {user: q.get("user"), rooms: q.get("rooms") || ""},
                                         onStatus: s => statuses.push(s), buffer: 5});
  window.live = live;
  live.on("presence", p => log.push(["presence", p.op, p.room, p.id, p.identity.user]));
  live.on("said", (data, frame) => log.push(["said", data]));
  live.on("question", data => new Promise(resolve => setTimeout(() => resolve({answer: data || "from the page"}), 10)));
  live.on("left", room => log.push(["left", room]));
  const dropped = d => log.push(["dropped", d]);
  live.on("dropped", dropped);
  live.off("dropped", dropped);
</script>"""


@app.get("/page")
def page():
    return PAGE
