"""The operator's page (`ws.admin_route`) for tests/test_admin.py and
tests/test_admin_browser.py.

- /_admin: allowed when the request carries the cookie ``admin=letmein`` or the header
  ``X-Test-Admin: letmein`` (the app's check); rooms() always lists "lobby".
- /_closed: an admin route without a check: refuses everyone (the default).
- /_broken: a check that raises (header X-Mode: raise), redirects to /login (X-Mode: login)
  or answers "yes" (not True).
- WebSocket /live (presence=True): on connect the identity is {"user": ?user} and the
  connection joins the rooms of ?rooms=a,b; event "whoami" answers {"id", "pid"}.
- GET /evil: a page that posts to the admin's actions at the URL ?target= (a forged
  cross-origin request, when served from another origin).
Logging is configured (INFO), so the admin's action lines reach the uWSGI log.
"""

import logging
import os

from flask import Flask, abort, redirect, request

from uwsgi_ws import WebSocket

logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")

app = Flask(__name__)
ws = WebSocket(app, ping_interval=None)
live = ws.events("/live", presence=True)
SECRET = "letmein"


@live.on("connect")
def connected(conn):
    conn.identity = {"user": request.args.get("user")}
    for room in filter(None, request.args.get("rooms", "").split(",")):
        conn.join(room)


@live.on("whoami")
def whoami(conn, data):
    return {"id": conn.id, "pid": os.getpid()}


def operator(req):
    return SECRET in (req.cookies.get("admin"), req.headers.get("X-Test-Admin"))


ws.admin_route("/_admin", allow=operator, rooms=lambda: ["lobby"])
ws.admin_route("/_closed", endpoint="closed_admin")


def broken(req):
    if req.headers.get("X-Mode") == "raise":
        raise RuntimeError("the admin check is broken")
    if req.headers.get("X-Mode") == "login":
        abort(redirect("/login"))  # an HTTPException: Flask answers it
    return "yes"  # truthy, but not True: refused


ws.admin_route("/_broken", allow=broken, endpoint="broken_admin")

EVIL = """<!doctype html><meta charset="utf-8"><title>evil</title>
<form id="f" method="post" enctype="text/plain" target="sink"><input name='{"event":"forged","to":"' value='r1"}'></form>
<iframe name="sink"></iframe>
<script>
  const target = new URLSearchParams(location.search).get("target");
  window.done = [];
  const body = JSON.stringify({event: "forged", to: "r1", data: "csrf"});
  fetch(target + "/emit", {method: "POST", mode: "no-cors", credentials: "include", body})
    .then(() => done.push("fetch"), () => done.push("fetch"));
  fetch(target + "/disconnect", {method: "POST", mode: "no-cors", credentials: "include",
                                 body: JSON.stringify({id: new URLSearchParams(location.search).get("id"), code: 4001})})
    .then(() => done.push("fetch2"), () => done.push("fetch2"));
  const f = document.getElementById("f");
  f.action = target + "/emit";
  document.querySelector("iframe").addEventListener("load", () => done.push("form"));
  f.submit();
</script>"""


@app.get("/evil")
def evil():
    return EVIL
