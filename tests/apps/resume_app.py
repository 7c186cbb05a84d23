"""Resume on any instance (tests/test_resume_instances.py, tests/test_browser_resume.py).

WebSocket /live (uwsgi_ws.events, presence on, join/leave events): on connect
sets the identity from `?name=` and sends `hello` {pid} to the connection.
Events:
    echo   ack = the data
    who    ack = live.presence(data): the room's members
HTTP:
    POST /emit-many/<room>?n=&src=&interval=   emits `n` with {"src", "i"} for i in 0..n-1, in order
                                              (paced by `interval` seconds); 200 {"emitted": n},
                                              503 with the PublishError's text when refused
    GET  /position                             the events' position {"epoch": str, "seq": int} (the
                                              stream's with the bridge), "bridge": its counters
    GET  /presence/<room>                      live.presence(room)
    GET  /page                                 the browser test's page (tests/test_browser_resume.py)
"""

import os
import time

from flask import Flask, jsonify, request

from uwsgi_ws import WebSocket
from uwsgi_ws.exceptions import PublishError

app = Flask(__name__)
ws = WebSocket(app, ping_interval=None)
live = ws.events("/live", presence=True, join_leave=True)


@live.on("connect")
def connected(conn):
    name = request.args.get("name")
    if name:
        conn.identity = {"user": name}
    conn.emit("hello", {"pid": os.getpid()})


@live.on("echo")
def echo(conn, data):
    return data


@live.on("who")
def who(conn, room):
    """The room's presence now: what a page refetches after a reconnect (presence frames
    sent while it was away are not replayed)."""
    return live.presence(room)


def _nap(seconds):
    import uwsgi

    if uwsgi.opt.get("gevent"):
        import gevent

        gevent.sleep(seconds)
    else:
        time.sleep(seconds)


@app.post("/emit-many/<room>")
def emit_many(room):
    n = int(request.args.get("n", "1"))
    src = request.args.get("src", "x")
    interval = float(request.args.get("interval", "0"))
    try:
        for i in range(n):
            live.emit("n", {"src": src, "i": i}, to=room)
            if interval:
                _nap(interval)
    except PublishError as exc:
        return f"PublishError: {exc}", 503
    return jsonify(emitted=n)


@app.get("/position")
def position():
    from uwsgi_ws.broadcast import redis as bridge

    where = ws.broadcast().event_position()
    return jsonify(epoch=str(where.epoch), seq=where.seq, bridge=bridge.stats())


@app.get("/presence/<room>")
def presence(room):
    return jsonify(live.presence(room))


PAGE = """<!doctype html><meta charset="utf-8"><title>resume</title>
<script src="/_uwsgi_ws/uwsgi_ws.js"></script>
<script>
  const q = new URLSearchParams(location.search);
  window.got = [];          // data.i of every "n" event of room r, in arrival order
  window.lost = [];         // not_recovered (room, reason)
  window.statuses = [];
  window.members = {};      // the room's presence as the page sees it: id -> user
  window.refreshed = 0;     // presence refetches done
  // presence frames are not replayed on resume: at each (re)open, refetch the room's presence,
  // then follow join/leave
  const live = uwsgiWs.connect("/live", {auth: {name: q.get("name")}, onStatus: s => {
    statuses.push(s);
    if (s === "open") live.emit("who", "r").then(list => {
      const now = {};
      for (const m of list) now[m.id] = m.identity && m.identity.user;
      window.members = now;
      window.refreshed += 1;
    });
  }});
  window.live = live;
  live.on("n", data => got.push(data.src + data.i));
  live.on("not_recovered", (room, reason) => lost.push([room, reason]));
  live.on("presence", p => { if (p.op === "join") members[p.id] = p.identity && p.identity.user;
                             else delete members[p.id]; });
  live.join("r");
</script>"""


@app.get("/page")
def page():
    return PAGE
