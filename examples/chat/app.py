"""Chat: every message a client sends goes to everyone in the room, across
all worker processes, through uwsgi_ws's broadcast (sharedarea ring + mule).
The page speaks the event protocol at /live through the browser client
(rooms, nicknames, acks, reconnect and resume, and the room's last 50 messages
on join, from the history the broadcast mule keeps); /ws is the plain JSON WebSocket
({"name", "text"} in, the same with "time" and "pid" out, one room).

Access: the page logs in (POST /login with a name: the session cookie), gets a
signed token that expires after CHAT_TOKEN_MAX_AGE seconds (POST /token,
itsdangerous), and connects to /live with it (the client's `auth` option, asked
again whenever the server refused the token it has). @ws.before_connect checks it
for the WebSocket and the SSE stream alike (uwsgi_ws.admission: one policy for
both); the plain /ws stays open, for command-line clients. Set CHAT_SECRET_KEY
(the same in every instance) outside a demo: by default a random key is made at
start, shared by the workers forked from the master (lazy-apps off).

Run it on its own (uWSGI, 2 processes x 16 threads, http://127.0.0.1:8002/),
with the package installed (`make venv`, then use .venv/bin/python):

    python examples/chat/app.py

or with uWSGI directly, from the repository root:

    uwsgi --master --die-on-term --http-socket 127.0.0.1:8002 --processes 2 --threads 16 \
          --sharedarea 4096 --mule=uwsgi_ws.mule:run --mule-msg-size=262144 \
          --set-placeholder uwsgi-ws-history=200 --pythonpath . --wsgi-file examples/chat/app.py --callable app

or through the Emperor with the other examples: `make run` (vassals/chat.yaml).
"""

import json
import os
import secrets
import time

from flask import Flask, abort, g, request, session
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from uwsgi_ws import WebSocket
from uwsgi_ws.events import EventError

app = Flask(__name__)
app.secret_key = os.environ.get("CHAT_SECRET_KEY") or secrets.token_hex(32)
ws = WebSocket(app)

TOKEN_MAX_AGE = int(os.environ.get("CHAT_TOKEN_MAX_AGE", "300"))  # seconds a token may be used to connect
tokens = URLSafeTimedSerializer(app.secret_key, salt="chat-live")

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
  // Log in (the name is the login: a session cookie), then connect with a signed token that
  // expires: the client calls `auth` before every (re)connect, and with {refused} once the
  // server refused the token it had (expired): then a fresh one is fetched.
  let token = null;
  const login = () => fetch("/login", {method: "POST", body: new URLSearchParams({name: name.value || "guest"})});
  async function freshToken(refused) {
    if (token && !refused) return token;
    let r = await fetch("/token", {method: "POST"});
    if (r.status === 401) { await login(); r = await fetch("/token", {method: "POST"}); }  // no session yet
    if (!r.ok) throw new Error("no token: HTTP " + r.status);
    token = (await r.json()).token;
    return token;
  }
  // Reconnects and resumes by itself: every message once, in order (see docs/protocol.md).
  const live = uwsgiWs.connect("/live", {
    auth: async ({refused}) => ({token: await freshToken(refused)}),
    onStatus: (s) => { document.getElementById("status").textContent = s; },
  });
  live.on("error", (message) => line([["sys", message]]));
  name.onchange = () => login().then(() => { token = null; live.reconnect(); });  // a new name: a new login
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


@app.post("/login")
def login():
    """A demo login: any name (a real app checks a password). The session cookie remembers it."""
    name = (request.form.get("name") or "").strip()[:32]
    if not name:
        return "400 Bad Request: send name=...\n", 400
    session["name"] = name
    return {"name": name}


@app.post("/token")
def token():
    """A signed token for /live, valid TOKEN_MAX_AGE seconds (POST: a cross-site page can't read it)."""
    if "name" not in session:
        return "401 Unauthorized: log in first (POST /login name=...)\n", 401
    return {"token": tokens.dumps({"name": session["name"]}), "max_age": TOKEN_MAX_AGE}


@ws.before_connect
def check_token():
    """The page's endpoint (WebSocket /live, SSE /live/sse) needs a valid token; /ws stays open."""
    if request.path not in ("/live", "/live/sse"):
        return None
    value = request.args.get("token")
    if not value:
        abort(401, "no token: POST /login, then POST /token, then connect with ?token=...")
    try:
        g.user = tokens.loads(value, max_age=TOKEN_MAX_AGE)["name"]
    except SignatureExpired:
        abort(401, "token expired: get a new one (POST /token)")
    except BadSignature:
        abort(403, "bad token")
    return None


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
    live.emit("said", {"name": g.user, "text": data["text"][:2000],  # who the token says
                       "time": time.time(), "pid": os.getpid()}, to=data["room"])
    return {"ok": True}


if __name__ == "__main__":
    # Execs uWSGI with the broadcast options of conf/broadcast.yaml.
    app.run(
        host="127.0.0.1", port=8002, processes=2, threads=16,
        sharedarea=4096, mule="uwsgi_ws.mule:run", mule_msg_size=262144,
        uwsgi_ws_history=200,  # the last 200 messages of each room (uwsgi_ws/broadcast/history.py)
    )
