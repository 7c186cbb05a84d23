"""Ticker: clients on /ticker get every price published on channel "prices",
whoever publishes it: a POST /price on any worker, or the price mule
(examples/ticker/mule.py) that makes up a price every second.

Run it on its own (uWSGI, 2 processes x 16 threads, the broadcast mule and
the price mule, http://127.0.0.1:8003/), with the package installed
(`make venv`, then use .venv/bin/python):

    python examples/ticker/app.py

or with uWSGI directly, from the repository root:

    uwsgi --master --die-on-term --http-socket 127.0.0.1:8003 --processes 2 --threads 16 \
          --sharedarea 4096 --mule=uwsgi_ws.mule:run --mule-msg-size=262144 \
          --mule=examples/ticker/mule.py \
          --pythonpath . --wsgi-file examples/ticker/app.py --callable app

or through the Emperor with the other examples: `make run` (vassals/ticker.yaml).
Publish a price by hand:

    curl -d '{"symbol": "ACME", "price": 12.5}' -H 'Content-Type: application/json' \
         http://127.0.0.1:8003/price
"""

import json
import os
import time

from flask import Flask, jsonify, request

from uwsgi_ws import WebSocket

app = Flask(__name__)
ws = WebSocket(app)

PAGE = """<!doctype html>
<html lang="en">
<meta charset="utf-8">
<title>uwsgi_ws ticker</title>
<style>
  body { font: 15px system-ui, sans-serif; max-width: 40rem; margin: 2rem auto; }
  table { border-collapse: collapse; } td, th { padding: .2rem .8rem; text-align: right; }
</style>
<h1>Ticker</h1>
<p>Status: <b id="status">connecting…</b></p>
<table><thead><tr><th>symbol</th><th>price</th><th>at</th></tr></thead><tbody id="rows"></tbody></table>
<script>
  const rows = {};
  const status = document.getElementById("status");
  const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ticker";
  const sock = new WebSocket(url);
  sock.onopen = () => { status.textContent = "connected"; };
  sock.onclose = (e) => { status.textContent = "closed (" + e.code + ")"; };
  sock.onmessage = (e) => {
    const p = JSON.parse(e.data);
    let tr = rows[p.symbol];
    if (!tr) {
      tr = rows[p.symbol] = document.createElement("tr");
      for (let i = 0; i < 3; i++) tr.appendChild(document.createElement("td"));
      document.getElementById("rows").appendChild(tr);
    }
    tr.cells[0].textContent = p.symbol;
    tr.cells[1].textContent = Number(p.price).toFixed(2);
    tr.cells[2].textContent = new Date(p.time * 1000).toLocaleTimeString();
  };
</script>
</html>
"""


@app.route("/")
def index():
    return PAGE


@ws.route("/ticker")
def ticker(conn):
    with ws.subscribe(conn, "prices"):
        for _ in conn:  # nothing to read: wait here until the client leaves
            pass


@app.route("/price", methods=["POST"])
def price():
    data = request.get_json(silent=True) or request.form
    try:
        symbol = str(data["symbol"])[:16]
        value = float(data["price"])
    except (KeyError, TypeError, ValueError):
        return jsonify(error='send {"symbol": "ACME", "price": 12.5}'), 400
    message = {"symbol": symbol, "price": value, "time": time.time(), "pid": os.getpid()}
    ws.publish(json.dumps(message), channel="prices")
    return jsonify(published=message), 202


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    # Execs uWSGI: the broadcast mule first, then the price mule.
    app.run(
        host="127.0.0.1", port=8003, processes=2, threads=16,
        sharedarea=4096, mule_msg_size=262144,
        mule=["uwsgi_ws.mule:run", os.path.join(here, "mule.py")],
    )
