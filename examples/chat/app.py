"""Chat: every message a client sends goes to everyone in the room, across
all worker processes, through uwsgi_ws's broadcast (sharedarea ring + mule).

Run it on its own (uWSGI, 2 processes x 16 threads, http://127.0.0.1:8002/),
with the package installed (`make venv`, then use .venv/bin/python):

    python examples/chat/app.py

or with uWSGI directly, from the repository root:

    uwsgi --master --http-socket 127.0.0.1:8002 --processes 2 --threads 16 \
          --sharedarea 4096 --mule=uwsgi_ws.mule:run --mule-msg-size=262144 \
          --pythonpath . --wsgi-file examples/chat/app.py --callable app

or through the Emperor with the other examples: `make run` (vassals/chat.yaml).
"""

import json
import os
import time

from flask import Flask

from uwsgi_ws import WebSocket

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
</style>
<h1>Chat</h1>
<p>Status: <b id="status">connecting…</b> — open this page in two windows.</p>
<form id="form">
  <input id="name" size="10" placeholder="name">
  <input id="text" autocomplete="off" size="32" placeholder="message">
  <button>Send</button>
</form>
<div id="log"></div>
<script>
  const box = document.getElementById("log");
  const status = document.getElementById("status");
  const name = document.getElementById("name");
  name.value = "guest" + Math.floor(Math.random() * 1000);
  const line = (parts) => {
    const div = document.createElement("div");
    for (const [cls, text] of parts) {
      const span = document.createElement("span");
      span.className = cls; span.textContent = text; div.appendChild(span);
    }
    box.appendChild(div); box.scrollTop = box.scrollHeight;
  };
  const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws";
  const sock = new WebSocket(url);
  sock.onopen = () => { status.textContent = "connected"; };
  sock.onclose = (e) => { status.textContent = "closed (" + e.code + ")"; line([["sys", "connection closed " + e.code]]); };
  sock.onmessage = (e) => {
    const m = JSON.parse(e.data);
    line([["who", m.name + ": "], ["", m.text], ["pid", "  (worker " + m.pid + ")"]]);
  };
  document.getElementById("form").onsubmit = (e) => {
    e.preventDefault();
    const text = document.getElementById("text");
    if (text.value && sock.readyState === WebSocket.OPEN) {
      sock.send(JSON.stringify({name: name.value || "guest", text: text.value}));
      text.value = "";
    }
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


if __name__ == "__main__":
    # Execs uWSGI with the broadcast options of conf/broadcast.yaml.
    app.run(
        host="127.0.0.1", port=8002, processes=2, threads=16,
        sharedarea=4096, mule="uwsgi_ws.mule:run", mule_msg_size=262144,
    )
