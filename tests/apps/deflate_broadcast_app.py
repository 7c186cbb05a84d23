"""Broadcasts to mixed subscribers with permessage-deflate on (tests/test_deflate_broadcast.py).

One events endpoint, /live (its SSE stream /live/sse?rooms=<room>), one with
compression off (/quiet: `ws.events(..., compression=None)`), and raw
WebSocket subscribers of a room's broadcast channel (`live.channel(room)`), so
one publish reaches WebSocket clients that negotiated deflate, WebSocket clients
that did not, SSE streams and (with UWSGI_WS_REDIS_URL) the Redis stream.
Compression is on with the defaults, `compression_min_size` 64 bytes.

WebSocket:
    /sub/<room>   subscribes to the room's channel, sends `ready:<pid>`, then
                  reads until the client goes away
HTTP:
    POST /publish/<room>[?event=1]   publishes the body (UTF-8 text) as it is on
                  the room's channel (event=1: as an event broadcast, which the
                  mule numbers and SSE streams carry; the body must then be an
                  events-protocol event frame); 200 {"seq": ring seq}
    GET  /stats   this worker's pid and broadcast counters (JSON; `compressions`:
                  broadcast messages this worker compressed)
"""

import os

from flask import Flask, request

from uwsgi_ws import WebSocket

app = Flask(__name__)
ws = WebSocket(app, ping_interval=None, compression_min_size=64)
live = ws.events("/live")
quiet = ws.events("/quiet", compression=None)  # per endpoint: on or off only


@ws.route("/sub/<room>")
def sub(conn, room):
    with conn.subscribe(live.channel(room)):
        conn.send(f"ready:{os.getpid()}")
        for _ in conn:
            pass


@app.post("/publish/<room>")
def publish(room):
    seq = ws.broadcast().publish(request.get_data(as_text=True), live.channel(room),
                                 event=request.args.get("event") == "1")
    return {"seq": seq}


@app.get("/stats")
def stats():
    out = {"pid": os.getpid()}
    broadcast = ws.broadcast()
    if broadcast.available:
        out.update(broadcast.stats())
    return out
