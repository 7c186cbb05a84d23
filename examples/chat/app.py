"""Chat: every message a client sends goes to everyone in the room, across
all worker processes, through uwsgi_ws's broadcast (sharedarea ring + mule).
The page speaks the event protocol at /live through the browser client
(rooms, nicknames, acks, reconnect and resume, and the room's last 50 messages
on join, from the history the broadcast mule keeps); /ws is the plain JSON WebSocket
({"name", "text"} in, the same with "time" and "pid" out, one room).

Run it on its own (uWSGI, 2 processes x 16 threads, http://127.0.0.1:8002/),
with the package installed (`make venv`, then use .venv/bin/python):

    python examples/chat/app.py

or with uWSGI directly, from the repository root:

    uwsgi --master --http-socket 127.0.0.1:8002 --processes 2 --threads 16 \
          --sharedarea 4096 --mule=uwsgi_ws.mule:run --mule-msg-size=262144 \
          --set-placeholder uwsgi-ws-history=200 --pythonpath . --wsgi-file examples/chat/app.py --callable app

or through the Emperor with the other examples: `make run` (vassals/chat.yaml).
"""

import json
import os
import time

from flask import Flask

from uwsgi_ws import WebSocket
from uwsgi_ws.events import EventError

app = Flask(__name__)
ws = WebSocket(app)

PAGE = """<!doctype html>
<html lang="en">
<meta charset="utf-8">
<title>uwsgi_ws chat</title>
<style>
  body { font: 15px system-ui, sans-serif; max-width: 40rem; margin: 2rem auto; }
  #log { border: 1px solid #ccc; height: 20rem; overflow-y: auto; padding: .5rem; }
  #log .who { font-weight: bold; } #log .sys { color: #a50; } #log .pid { color: #999; font-size: 80%; }
  #worker { color: #555; font-weight: normal; }
</style>
<h1>Chat</h1>
<p>Status: <b id="status">connecting…</b> <span id="worker"></span> — open this page in two windows.
   Room: <select id="room"><option>lobby</option><option>random</option></select></p>
<form id="form">
  <input id="name" size="10" placeholder="name">
  <input id="text" autocomplete="off" size="32" placeholder="message">
  <button>Send</button>
</form>
<div id="log"></div>
<script src="/_uwsgi_ws/uwsgi_ws.js"></script>
<script>
  const box = document.getElementById("log");
  const name = document.getElementById("name");
  const roomSel = document.getElementById("room");
  name.value = "guest" + Math.floor(Math.random() * 1000);
  // One line of the log: a div.msg (a chat message, with data-seq and data-room) or a div.sys.
  const line = (parts, kind, data) => {
    const div = document.createElement("div");
    div.className = kind || "sys";
    Object.assign(div.dataset, data || {});
    for (const [cls, text] of parts) {
      const span = document.createElement("span");
      span.className = cls; span.textContent = text; div.appendChild(span);
    }
    box.appendChild(div); box.scrollTop = box.scrollHeight;
  };
  // Reconnects and resumes by itself: every message once, in order (see docs/protocol.md).
  const live = uwsgiWs.connect("/live", {onStatus: (s) => { document.getElementById("status").textContent = s; }});
  let room = roomSel.value;
  const LAST = 50;  // on join, first the room's last messages (the server's history, else its ring)
  live.join(room, {last: LAST});
  live.on("said", (m, frame) => {
    if (frame.room === room) line([["who", m.name + ": "], ["text", m.text], ["pid", "  (worker " + m.pid + ")"]],
                                  "msg", {seq: frame.seq, room: frame.room});
  });
  live.on("not_recovered", (r, reason) => line([["sys", "some messages of " + (r || "the server") + " were lost: " + reason]], "sys lost"));
  // Which worker process holds the connection (sent by the server on every (re)connect).
  live.on("welcome", (m) => {
    const worker = document.getElementById("worker");
    worker.textContent = "(worker " + m.pid + ")"; worker.dataset.pid = m.pid;
  });
  roomSel.onchange = () => {
    live.leave(room); room = roomSel.value; live.join(room, {last: LAST});
    box.textContent = ""; line([["sys", "you joined " + room]]);
  };
  document.getElementById("form").onsubmit = (e) => {
    e.preventDefault();
    const text = document.getElementById("text");
    if (!text.value) return;
    live.emit("say", {room: room, name: name.value || "guest", text: text.value})
      .then(() => { text.value = ""; }, (err) => line([["sys", "not sent: " + err.message]]));
  };
</script>
</html>
"""


@app.route("/")
def index():
    return PAGE


@ws.route("/ws")
def chat(conn):
    with ws.subscribe(conn, "chat"):
        for message in conn:
            if not isinstance(message, str):
                continue  # text frames only
            try:
                data = json.loads(message)
                name, text = str(data.get("name", "guest")), str(data["text"])
            except (ValueError, KeyError, TypeError, AttributeError):
                name, text = "guest", message  # plain text is fine too
            ws.publish(
                json.dumps({
                    "name": name[:32],
                    "text": text[:2000],
                    "time": time.time(),
                    "pid": os.getpid(),  # which worker took it: shows the cross-worker fan-out
                }),
                channel="chat",
            )


# The page's endpoint: events and rooms (uwsgi_ws.events; the client is /_uwsgi_ws/uwsgi_ws.js).
live = ws.events("/live")
ROOMS = ("lobby", "random")


@live.on("connect")
def welcome(conn):
    conn.emit("welcome", {"pid": os.getpid()})  # to this connection only: the page shows its worker


@live.on("join")
def may_join(conn, room):
    return room in ROOMS  # clients may join these rooms only


@live.on("say")
def say(conn, data):
    if not isinstance(data, dict) or data.get("room") not in ROOMS or not isinstance(data.get("text"), str):
        raise EventError(f"send {{room: one of {list(ROOMS)}, name, text}}")
    live.emit("said", {"name": str(data.get("name", "guest"))[:32], "text": data["text"][:2000],
                       "time": time.time(), "pid": os.getpid()}, to=data["room"])
    return {"ok": True}


if __name__ == "__main__":
    # Execs uWSGI with the broadcast options of conf/broadcast.yaml.
    app.run(
        host="127.0.0.1", port=8002, processes=2, threads=16,
        sharedarea=4096, mule="uwsgi_ws.mule:run", mule_msg_size=262144,
        uwsgi_ws_history=200,  # the last 200 messages of each room (uwsgi_ws/history.py)
    )
