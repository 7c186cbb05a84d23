"""Headers on the 101 (issue 12, item 7): what `after_request` adds and the session
cookie set or refreshed before the upgrade go on the 101 (browsers accept Set-Cookie
there); hop-by-hop headers, the handshake's own and a body's never do.

- before_request: ``?visit=1`` counts a visit in the session (Set-Cookie);
- after_request: adds X-Request-Id, Cache-Control, a second cookie, and headers that
  must not reach the 101 (Connection, Keep-Alive, Transfer-Encoding, TE, Trailer,
  Upgrade, a forged Sec-WebSocket-Accept, Content-Type, Content-Length, X-Hop
  which its Connection header names);
- /ws sends "visits:<n>" (the session as the handler sees it), then echoes.
"""

from flask import Flask, request, session

from uwsgi_ws import WebSocket

app = Flask(__name__)
app.secret_key = "tests"
ws = WebSocket(app, ping_interval=None)


@app.before_request
def count_visit():
    if request.args.get("visit"):
        session["visits"] = session.get("visits", 0) + 1


@app.after_request
def add_headers(response):
    response.headers["X-Request-Id"] = "req-42"
    response.headers["Cache-Control"] = "no-store"
    response.set_cookie("theme", "dark", httponly=True, samesite="Lax")
    if request.args.get("hostile"):
        for name, value in (("Connection", "close"), ("Keep-Alive", "timeout=5"), ("Transfer-Encoding", "chunked"),
                            ("TE", "trailers"), ("Trailer", "X-Foo"), ("Upgrade", "h2c"),
                            ("Sec-WebSocket-Accept", "forged"), ("Content-Length", "12"),
                            ("X-Hop", "named by Connection")):
            response.headers[name] = value
        response.headers["Content-Type"] = "text/plain"
        response.headers["Connection"] = "close, X-Hop"  # names X-Hop hop-by-hop (RFC 9110 7.6.1)
    return response


@ws.route("/ws")
def echo(conn):
    conn.send(f"visits:{session.get('visits')}")
    for message in conn:
        conn.send(message)
