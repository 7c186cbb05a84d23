"""Echo: every message a client sends comes back to it.

Run it on its own (uWSGI, threads model, http://127.0.0.1:8001/), with the
package installed (`make venv`, then use .venv/bin/python):

    python examples/echo/app.py

or with uWSGI directly, from the repository root:

    uwsgi --master --die-on-term --http-socket 127.0.0.1:8001 --processes 1 --threads 16 \
          --pythonpath . --wsgi-file examples/echo/app.py --callable app

or through the Emperor with the other examples: `make run` (vassals/echo.yaml).
"""

from flask import Flask

from uwsgi_ws import WebSocket

app = Flask(__name__)
ws = WebSocket(app)

PAGE = """<!doctype html>
<html lang="en">
<meta charset="utf-8">
<title>uwsgi_ws echo</title>
<style>
  body { font: 15px system-ui, sans-serif; max-width: 40rem; margin: 2rem auto; }
  #log { border: 1px solid #ccc; height: 16rem; overflow-y: auto; padding: .5rem; }
  #log div.out { color: #555; } #log div.in { color: #064; } #log div.sys { color: #a50; }
</style>
<h1>Echo</h1>
<p>Status: <b id="status">connecting…</b></p>
<form id="form"><input id="text" autocomplete="off" size="40" placeholder="say something">
<button>Send</button></form>
<div id="log"></div>
<script>
  const log = (cls, text) => {
    const div = document.createElement("div");
    div.className = cls; div.textContent = text;
    const box = document.getElementById("log");
    box.appendChild(div); box.scrollTop = box.scrollHeight;
  };
  const status = document.getElementById("status");
  const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/echo";
  const sock = new WebSocket(url);
  sock.onopen = () => { status.textContent = "connected"; };
  sock.onmessage = (e) => log("in", "← " + e.data);
  sock.onclose = (e) => { status.textContent = "closed (" + e.code + ")"; log("sys", "closed " + e.code); };
  document.getElementById("form").onsubmit = (e) => {
    e.preventDefault();
    const input = document.getElementById("text");
    if (input.value && sock.readyState === WebSocket.OPEN) {
      sock.send(input.value); log("out", "→ " + input.value); input.value = "";
    }
  };
</script>
</html>
"""


@app.route("/")
def index():
    return PAGE


@ws.route("/echo")
def echo(conn):
    for message in conn:  # str for text frames, bytes for binary; ends on close
        conn.send(message)


if __name__ == "__main__":
    # Execs uWSGI: --http-socket 127.0.0.1:8001 --master --processes 1 --threads 16
    app.run(host="127.0.0.1", port=8001, processes=1, threads=16)
