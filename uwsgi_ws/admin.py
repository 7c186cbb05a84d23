"""The operator's page: ``ws.admin_route("/_admin", allow=...)``.

One static page (uwsgi_ws/static/admin.html, .js, .css: no build step, no CDN,
works offline) fed by a WebSocket of the same extension, and two actions::

    GET  <rule>                 the page
    GET  <rule>/admin.js|.css   its script and style
    WS   <rule>/feed            one JSON state per `interval` seconds (see `Admin.state`);
                                the page sends ``{"watch": {"<endpoint path>": ["room", ...]}}``
                                to name the rooms it shows (answered with a state at once)
    POST <rule>/emit            {"endpoint": path, "event": str, "data": any, "to": room|connection id|""}
    POST <rule>/disconnect      {"endpoint": path, "id": "<pid>-<n>", "code": int, "reason": str}

Access: every request first goes through `allow(request) -> bool`, the app's
check; without one (the default) everything is refused with 403 and a body
saying how to allow. The feed is a WebSocket route of the extension, so the
app's access policy (``allowed_origins``, ``before_connect`` hooks, connection
limits) applies to it as to any other. The actions are CSRF-safe: a POST must
carry the browser's ``Origin`` header naming this very host (same origin,
whatever ``allowed_origins`` says), ``Content-Type: application/json`` and the
header ``X-Uwsgi-Ws-Admin: 1`` (neither can be sent cross-origin without a CORS
preflight, which nothing here answers). Each action is logged on the
``uwsgi_ws.admin`` logger with the client's address. The page's responses
forbid framing (``frame-ancestors 'none'``), so a click cannot be borrowed.

Numbers come from `uwsgi_ws.metrics` (instance-wide: every worker's row of the
shared table), rooms and their members from each event endpoint's presence
(`Events.presence`: endpoints made with ``presence=True``), the actions go
through `Events.emit` and `Events.disconnect`, so they reach whichever worker
holds the connection. Which rooms the page lists: every room with a member
(`Events.rooms`, the busiest MAX_ROOMS first), then those the app's ``rooms()``
callable names and those the operator watches (typed in the page), even empty.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from flask import Response, request
from werkzeug.exceptions import HTTPException

from . import access, metrics
from .exceptions import BroadcastError, ConnectionClosed

log = logging.getLogger("uwsgi_ws.admin")

_STATIC = os.path.join(os.path.dirname(__file__), "static")
_ASSETS = {"admin.js": "text/javascript", "admin.css": "text/css"}
#: The page's own policy: everything from this origin, nothing framed, no inline script.
CSP = ("default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
       "frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
ACTION_HEADER = "X-Uwsgi-Ws-Admin"
MAX_WATCHED = 50  # rooms per endpoint the page may watch
MAX_MEMBERS = 100  # members listed per room (the count is exact)
MAX_ROOMS = 50  # occupied rooms listed per endpoint, the busiest first (the app's and the watched ones come on top)

HOW_TO_ALLOW = (
    "403 Forbidden: the uwsgi_ws admin page refuses everyone until the app allows a check, e.g.\n"
    "    ws.admin_route('/_admin', allow=lambda request: request.remote_addr == '127.0.0.1')\n"
    "or a check of your login (session, header set by your proxy). See docs/admin.md.\n"
)

Allow = Callable[[Any], bool]


def _events_class() -> Any:
    from .events import Events

    return Events


class Admin:
    """The operator's page of one extension (see the module docstring).

    Args:
        ws: the `uwsgi_ws.WebSocket` extension (its app must be known).
        rule: the page's URL rule, e.g. "/_admin"; the feed and actions live under it.
        allow: ``allow(request) -> bool``, called with the Flask request for every
            admin request; None refuses everyone (403). It may raise an HTTPException
            (``abort(401)``, a redirect to a login page): Flask answers it.
        events: the event endpoints (`uwsgi_ws.events.Events`, one or several) the page
            shows and acts on; None: every event endpoint of the app, found at each request.
        rooms: ``rooms() -> iterable of room names`` always listed for each endpoint
            with presence (besides the rooms the operator watches); None: none.
        interval: seconds between two states on the feed (default 1.0).
        endpoint: the Flask endpoint prefix of the admin views (default "uwsgi_ws_admin").

    Raises:
        RuntimeError: the extension has no app yet.
        TypeError: `allow` or `rooms` is not callable.
        ValueError: `interval` is not a positive number; `rule` has URL variables.

    Thread-safety: the views run in any worker, thread or greenlet; the object only
    reads its settings after construction.
    """

    def __init__(self, ws: Any, rule: str = "/_admin", allow: Optional[Allow] = None, *,
                 events: Union[Any, Sequence[Any], None] = None,
                 rooms: Optional[Callable[[], Iterable[str]]] = None,
                 interval: float = 1.0, endpoint: str = "uwsgi_ws_admin") -> None:
        if ws.app is None:
            raise RuntimeError("admin_route() needs the app: call it after WebSocket(app) or init_app(app)")
        if allow is not None and not callable(allow):
            raise TypeError(f"allow must be a function allow(request) -> bool, not {type(allow).__name__}")
        if rooms is not None and not callable(rooms):
            raise TypeError(f"rooms must be a function rooms() -> iterable of room names, not {type(rooms).__name__}")
        if "<" in rule:
            raise ValueError(f"admin rule {rule!r}: a fixed path, without URL variables (e.g. '/_admin')")
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not interval > 0:
            raise ValueError(f"interval must be a positive number of seconds, not {interval!r}")
        self.ws = ws
        self.app = ws.app
        self.rule = rule.rstrip("/") or "/"
        self.allow = allow
        self.rooms = rooms
        self.interval = float(interval)
        if events is not None and not isinstance(events, (list, tuple)):
            events = [events]
        self._events: Optional[List[Any]] = list(events) if events is not None else None
        base = "" if self.rule == "/" else self.rule
        app = self.app
        app.add_url_rule(self.rule, endpoint, self._page, methods=["GET"])
        app.add_url_rule(base + "/<any(" + ",".join(_ASSETS) + "):name>", endpoint + "_asset", self._asset,
                         methods=["GET"])
        app.add_url_rule(base + "/emit", endpoint + "_emit", self._emit, methods=["POST"])
        app.add_url_rule(base + "/disconnect", endpoint + "_disconnect", self._disconnect, methods=["POST"])

        def uwsgi_ws_admin_feed(conn: Any) -> Optional[Response]:
            return self._feed(conn)

        ws.route(base + "/feed", endpoint=endpoint + "_feed")(uwsgi_ws_admin_feed)

    # -- access --------------------------------------------------------------------------

    def _refused(self) -> Optional[Response]:
        """None when `allow` lets the current request in, else the 403 to answer."""
        if self.allow is None:
            return _text(HOW_TO_ALLOW, 403)
        try:
            allowed: Any = self.allow(request)
        except HTTPException:  # abort(401), a redirect to the login page: Flask answers it
            raise
        except Exception:
            log.exception("admin page: the allow() check raised; refusing %s", request.path)
            return _text("403 Forbidden: the admin page's allow() check failed (see the app's log)\n", 403)
        if allowed is not True:
            if allowed is not False:
                log.warning("admin page: allow() returned %r, not True or False: refused", allowed)
            return _text("403 Forbidden: the app's admin check (allow) refused this request\n", 403)
        return None

    def _action_refused(self) -> Optional[Response]:
        """The CSRF checks of a POST (module docstring), after `allow`."""
        refused = self._refused()
        if refused is not None:
            return refused
        origin = request.headers.get("Origin")
        if origin is None:
            return self._forged("no Origin header (send the action from the admin page itself)")
        if not access.OriginPolicy(None).allows(origin, request.host):
            return self._forged(f"Origin {origin[:100]!r} is not this site ({request.host[:100]!r})")
        if request.headers.get(ACTION_HEADER) != "1":
            return self._forged(f"no {ACTION_HEADER}: 1 header")
        if request.mimetype != "application/json":
            return self._forged("the body must be application/json")
        return None

    def _forged(self, why: str) -> Response:
        log.warning("admin page: refused %s from %s: %s", request.path, request.remote_addr, why)
        return _text(f"403 Forbidden: admin actions are accepted from the admin page only: {why}\n", 403)

    # -- views -----------------------------------------------------------------------------

    def _page(self) -> Response:
        refused = self._refused()
        if refused is not None:
            return refused
        body = _read("admin.html").replace("{{base}}", _html_attr(request.script_root + self.rule.rstrip("/")))
        return _secure(Response(body, mimetype="text/html"))

    def _asset(self, name: str) -> Response:
        refused = self._refused()
        if refused is not None:
            return refused
        return _secure(Response(_read(name), mimetype=_ASSETS[name]))

    def _feed(self, conn: Any) -> Optional[Response]:
        refused = self._refused()
        if refused is not None:
            return refused  # before the upgrade: plain HTTP
        watch: Dict[str, List[str]] = {}
        log.info("admin page: feed opened by %s", request.remote_addr)
        try:
            while True:
                conn.send(json.dumps(self.state(watch), separators=(",", ":")))
                message = conn.receive(self.interval)
                if message is not None:
                    watch = _parse_watch(message)
        except ConnectionClosed:
            return None

    def _action(self) -> Tuple[Dict[str, Any], Any, Optional[Response]]:
        """An action's request: (its JSON body, its events endpoint, None), or the
        refusal to answer instead (CSRF checks, `allow`, a bad body or endpoint)."""
        refused = self._action_refused()
        if refused is not None:
            return {}, None, refused
        body, error = _json_body()
        if error is not None:
            return body, None, error
        endpoint, error = self._endpoint(body.get("endpoint"))
        return body, endpoint, error

    def _emit(self) -> Response:
        body, endpoint, error = self._action()
        if error is not None:
            return error
        event, room = body.get("event"), body.get("to") or None
        if not isinstance(event, str) or not event:
            return _text("400 Bad Request: 'event' must be a non-empty string\n", 400)
        if room is not None and not isinstance(room, str):
            return _text("400 Bad Request: 'to' must be a room name or a connection id (a string; "
                         "empty: every connection)\n", 400)
        try:
            endpoint.emit(event, body.get("data"), to=room)
        except (ValueError, TypeError) as exc:
            return _text(f"400 Bad Request: {exc}\n", 400)
        except BroadcastError as exc:
            log.warning("admin page: emit %r to %r failed: %s", event, room, exc)
            return _text(f"503 Service Unavailable: {exc}\n", 503)
        log.info("admin page: %s emitted %r to %s on %s", request.remote_addr, event,
                 repr(room) if room else "every connection", endpoint.path)
        return _json({"ok": True})

    def _disconnect(self) -> Response:
        body, endpoint, error = self._action()
        if error is not None:
            return error
        conn_id, code, reason = body.get("id"), body.get("code", 1000), body.get("reason", "")
        if isinstance(code, bool) or not isinstance(code, int):
            return _text("400 Bad Request: 'code' must be an integer: 1000 or 3000-4999\n", 400)
        if not isinstance(reason, str):
            return _text("400 Bad Request: 'reason' must be a string\n", 400)
        try:
            endpoint.disconnect(conn_id, code, reason)
        except ValueError as exc:
            return _text(f"400 Bad Request: {exc}\n", 400)
        except BroadcastError as exc:
            log.warning("admin page: disconnect %r failed: %s", conn_id, exc)
            return _text(f"503 Service Unavailable: {exc}\n", 503)
        log.info("admin page: %s disconnected %s on %s with %d %r", request.remote_addr, conn_id, endpoint.path,
                 code, reason)
        return _json({"ok": True})

    # -- reading ---------------------------------------------------------------------------

    def endpoints(self) -> List[Any]:
        """The event endpoints the page shows: those given, else every one of the app
        (an `Events` registers its SSE view as a bound method of itself)."""
        if self._events is not None:
            return self._events
        events_class = _events_class()
        found: Dict[str, Any] = {}
        for view in self.app.view_functions.values():
            owner = getattr(view, "__self__", None)
            if isinstance(owner, events_class):
                found.setdefault(owner.path, owner)
        return [found[path] for path in sorted(found)]

    def _endpoint(self, path: Any) -> Tuple[Any, Optional[Response]]:
        endpoints = self.endpoints()
        for endpoint in endpoints:
            if endpoint.path == path or (path in (None, "") and len(endpoints) == 1):
                return endpoint, None
        known = ", ".join(repr(e.path) for e in endpoints) or "none (make one with ws.events(path))"
        return None, _text(f"404 Not Found: no event endpoint {path!r}; the endpoints are {known}\n", 404)

    def state(self, watch: Optional[Dict[str, List[str]]] = None) -> Dict[str, Any]:
        """One state of the feed (a JSON object; the page computes rates from two of them)::

            t            server time (Unix seconds, float)
            pid          the worker answering
            workers      live worker ids
            open         [{"route", "worker", "count"}]: open WebSockets per route and worker
            totals       instance counters since start: published, delivered, messages_in,
                         messages_out, slow_closes, dropped_slow, dropped_lapped, lapped,
                         publish_failed, lag_sum, lag_count (ring lag of the deliveries,
                         messages), lag_max, lag_p99
            rejected     {reason: upgrades refused}
            redis        None (no bridge) or the bridge's state (`metrics.bridge_state`)
            endpoints    [{"path", "presence", "rooms_total", "rooms": [{"room", "count",
                         "members", "error"}]}]; rooms_total: rooms with a member;
                         members: [{"id", "identity"}] (at most MAX_MEMBERS)

        Blocks while presence catches up with the ring (`Events.presence`); never raises
        for a room or endpoint (its "error" says what went wrong)."""
        snap = metrics.snapshot()
        totals = snap.totals
        names = {"published": metrics.PUBLISHED, "delivered": metrics.DELIVERED,
                 "messages_in": metrics.MESSAGES_IN, "messages_out": metrics.MESSAGES_OUT,
                 "slow_closes": metrics.SLOW_CLOSES, "dropped_slow": metrics.DROPPED_SLOW,
                 "dropped_lapped": metrics.DROPPED_LAPPED, "lapped": metrics.LAPPED,
                 "publish_failed": metrics.PUBLISH_FAILED, "lag_sum": metrics.LAG_SUM,
                 "lag_count": metrics.LAG_COUNT}
        out_totals = {name: totals.get(slot, 0) for name, slot in names.items()}
        out_totals["lag_max"] = snap.lag_max
        out_totals["lag_p99"] = snap.lag_quantile(0.99)
        return {
            "t": time.time(),
            "pid": os.getpid(),
            "workers": snap.workers,
            "open": [{"route": route, "worker": worker, "count": count}
                     for (route, worker), count in sorted(snap.open.items())],
            "totals": out_totals,
            "rejected": dict(sorted(snap.rejected.items())),
            "redis": metrics.bridge_state(),
            "endpoints": [self._endpoint_state(e, (watch or {}).get(e.path, [])) for e in self.endpoints()],
        }

    def _endpoint_state(self, endpoint: Any, watched: List[str]) -> Dict[str, Any]:
        info: Dict[str, Any] = {"path": endpoint.path, "presence": bool(endpoint.presence_on), "rooms": []}
        if not endpoint.presence_on:
            return info
        names: List[str] = []
        try:
            occupied = endpoint.rooms()
            info["rooms_total"] = len(occupied)
            names.extend(sorted(occupied, key=lambda r: (-occupied[r], r))[:MAX_ROOMS])
        except (RuntimeError, BroadcastError) as exc:
            info["error"] = str(exc)
        if self.rooms is not None:
            try:
                names.extend(str(r) for r in self.rooms())
            except Exception as exc:
                log.exception("admin page: the rooms() callable raised")
                info["error"] = f"rooms() raised {type(exc).__name__}: {exc}"
        for room in watched:
            if room not in names:
                names.append(room)
        names = list(dict.fromkeys(names))
        for room in names:
            entry: Dict[str, Any] = {"room": room}
            try:
                members = endpoint.presence(room)
                entry["count"] = len(members)
                entry["members"] = members[:MAX_MEMBERS]
            except (ValueError, TypeError, RuntimeError, BroadcastError) as exc:
                entry["error"] = str(exc)
            info["rooms"].append(entry)
        return info


# -- helpers --------------------------------------------------------------------------------


def _parse_watch(message: Union[str, bytes]) -> Dict[str, List[str]]:
    """The page's ``{"watch": {path: [room, ...]}}``; anything else watches nothing."""
    try:
        value = json.loads(message)
        watch = value["watch"]
        return {str(path): [r for r in rooms if isinstance(r, str) and r][:MAX_WATCHED]
                for path, rooms in watch.items() if isinstance(rooms, list)}
    except (ValueError, KeyError, TypeError, AttributeError):
        log.warning("admin page: the feed got %r, not {\"watch\": {path: [rooms]}}: watching nothing", message[:100])
        return {}


def _json_body() -> Tuple[Dict[str, Any], Optional[Response]]:
    try:
        body = json.loads(request.get_data(cache=False) or b"null")
    except ValueError as exc:
        return {}, _text(f"400 Bad Request: the body is not JSON: {exc}\n", 400)
    if not isinstance(body, dict):
        return {}, _text("400 Bad Request: the body must be a JSON object\n", 400)
    return body, None


def _read(name: str) -> str:
    with open(os.path.join(_STATIC, name), encoding="utf-8") as f:
        return f.read()


def _html_attr(value: str) -> str:
    return value.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;")


def _secure(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "same-origin"
    return response


def _text(body: str, status: int) -> Response:
    return _secure(Response(body, status=status, mimetype="text/plain"))


def _json(value: Any, status: int = 200) -> Response:
    return _secure(Response(json.dumps(value), status=status, mimetype="application/json"))
