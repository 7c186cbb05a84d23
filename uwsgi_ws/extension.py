"""The Flask extension: WebSocket routes on Flask's own routing, served by uWSGI.

This layer only wires things: Flask routing and request context, the
handshake (`handshake`), the connection (`connection`), the concurrency model
(`runtime`) and the broadcast (`broadcast.Broadcast`).
"""

from __future__ import annotations

import contextlib
import functools
import socket
import sys
import weakref
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union, cast

from flask import Blueprint, Flask, Response, current_app, got_request_exception, has_app_context, request
from werkzeug.exceptions import HTTPException
from werkzeug.routing import WebsocketMismatch

from . import _uwsgi, access, admission, devserver, geventws, handshake, metrics, runtime, settings, shutdown, startup
from .broadcast import Broadcast
from .broadcast import for_process as broadcast_for_process
from .connection import Connection, ConnectionClosed, LegacyConnection
from .deflate import DeflateOptions
from .deflate import configure as configure_deflate
from .exceptions import HandshakeRefused
from .protocol import INTERNAL_ERROR, NORMAL, Protocol

if TYPE_CHECKING:  # what admin_route(), events() and test_client() return: imported by them, when used
    from .admin import Admin
    from .events import Events
    from .testing import TestClient

#: The extension's options and their defaults, declared in `uwsgi_ws.settings.APP_OPTIONS`
#: (type, unit, meaning; the README's table is generated from there). Each can also be set
#: as Flask config key ``UWSGI_WS_<NAME>`` (e.g. ``UWSGI_WS_MAX_MESSAGE_SIZE``); keyword
#: arguments win.
DEFAULTS: Dict[str, Any] = settings.app_defaults()

Handler = Callable[..., Any]


class _Upgraded(Response):
    """The response of a WebSocket route: performs the upgrade when called by
    the WSGI server and runs the handler; writes nothing through WSGI."""

    def __init__(self, ws: WebSocket, handler: Handler, kwargs: Dict[str, Any], key: str,
                 subprotocol: Optional[str]) -> None:
        super().__init__()
        self._ws, self._handler, self._kwargs = ws, handler, kwargs
        self._key, self._subprotocol = key, subprotocol

    def __call__(self, environ: Dict[str, Any], start_response: Callable[..., Any]) -> Any:
        ws = self._ws
        try:
            release = ws._reserve_slot()
        except access.Refused as exc:
            return _refusal(exc, "limit")(environ, start_response)
        try:
            answer = ws._serve(environ, start_response, self._handler, self._kwargs, self._key, self._subprotocol,
                               headers_for_101(self.headers))
        finally:
            release()
        if answer is not None:  # the handler (a decorator on it) answered before the upgrade
            return answer(environ, start_response)
        return []


#: Headers of the route's response never copied to the 101: hop-by-hop (RFC 9110 7.6.1,
#: RFC 7230 6.1), the handshake's own (RFC 6455 4.2.2) and those of a body (a 101 has none).
_NOT_ON_101 = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te",
    "trailer", "trailers", "transfer-encoding", "upgrade", "content-type", "content-length", "content-encoding",
})


def headers_for_101(headers: Any) -> List[Tuple[str, str]]:
    """What the app added to a WebSocket route's response (`after_request` headers, the
    session cookie Flask sets or refreshes) that the 101 carries: every header but
    `_NOT_ON_101`, those the app's own ``Connection`` header names (hop-by-hop too) and
    ``Sec-WebSocket-*``. `headers`: werkzeug Headers; never raises."""
    dropped = _NOT_ON_101 | {t.strip().lower() for t in headers.get("Connection", "").split(",")}
    return [(name, value) for name, value in headers.to_wsgi_list()
            if name.lower() not in dropped and not name.lower().startswith("sec-websocket-")]


class _PendingConnection:
    """What a handler gets before the upgrade: the first use of any Connection
    attribute or method (or iteration) sends the 101, and this very object
    becomes the `Connection` (its class is switched in place, so identity and
    speed are those of a Connection from then on).

    So a decorator under ``@ws.route`` (``login_required`` style) that returns
    a response or raises before calling the handler is answered with plain
    HTTP, never with a half-open WebSocket. `environ` and `subprotocol` are
    readable without upgrading.
    """

    def __init__(self, upgrade: Callable[[Any], None], environ: Dict[str, Any], subprotocol: Optional[str]) -> None:
        self.environ = environ
        self.subprotocol = subprotocol
        self._upgrade_now = upgrade

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_upgrade_now":
            raise AttributeError(name)
        self._upgrade_now(self)
        return getattr(self, name)

    def __setattr__(self, name: str, value: Any) -> None:
        # Setting a Connection attribute (write_limit, max_queue, ...) is a first use
        # too: upgrade first, or Connection.__init__ would overwrite the value.
        if not name.startswith("__") and name not in ("environ", "subprotocol", "_upgrade_now"):
            self._upgrade_now(self)
        object.__setattr__(self, name, value)

    def __iter__(self) -> Any:
        self._upgrade_now(self)
        return iter(self)


def _refusal(exc: HandshakeRefused, reason: Optional[str] = None) -> Response:
    """The plain HTTP answer to a refused upgrade, counted and logged under `reason`
    (default: the HandshakeError's own)."""
    metrics.rejected(reason or getattr(exc, "reason", None) or "refused", str(exc), _route(), exc.status)
    return Response(str(exc) + "\n", status=exc.status, headers=exc.headers, mimetype="text/plain")


def _route() -> str:
    """The Flask rule of the current request: the `route` of metrics and logs."""
    rule = request.url_rule
    return rule.rule if rule is not None else request.path


def _answer_before_upgrade(app: Flask, exc: Exception) -> Response:
    """Flask's answer to an exception raised before the upgrade; call inside `except`."""
    if isinstance(exc, HTTPException):  # abort(401) in a decorator: the app's error handlers apply
        return app.make_response(app.handle_user_exception(exc))
    return app.handle_exception(exc)  # logged, got_request_exception sent, 500


def _websocket_mismatch(exc: WebsocketMismatch) -> Response:
    if "websocket" in request.headers.get("Upgrade", "").lower():
        message = "this URL is not a WebSocket endpoint; connect with plain HTTP"
    else:
        message = "this URL is a WebSocket endpoint: connect with a WebSocket client (Upgrade: websocket)"
    return Response(f"400 Bad Request: {message}\n", status=400, mimetype="text/plain")


class WebSocket:
    """WebSocket routes for a Flask app served by uWSGI.

    `WebSocket(app)` or `WebSocket()` then `init_app(app)`. The concurrency
    model (threads, gevent, async) is read from the running uWSGI options at
    the first connection. `GeventWebSocket`, `AsyncWebSocket` and
    `ThreadedWebSocket` name one: `app.run()` starts uWSGI with it; under a
    uWSGI of another model they serve with the instance's model and warn at
    start (`startup.check_model`), since forcing it would stall the workers.
    """

    model: Optional[str] = None
    # The class of the connections handed to handlers (connection.LegacyConnection for
    # Flask-uWSGI-WebSocket's GeventWebSocket and AsyncWebSocket).
    _connection_class: type = Connection

    def __init__(self, app: Optional[Flask] = None, **options: Any) -> None:
        unknown = set(options) - set(DEFAULTS)
        if unknown:
            raise TypeError(f"unknown option(s) {sorted(unknown)}; known: {sorted(DEFAULTS)}")
        self.app = app
        self._options = options
        if "allowed_origins" in options:  # a malformed origin fails here, not at the first request
            access.OriginPolicy(options["allowed_origins"])
        if any(name.startswith("compression") for name in options):  # so does a bad compression setting
            self.deflate_options()
        #: Who may connect, for every transport of this extension (WebSocket, SSE): uwsgi_ws.admission
        self.admission = admission.Admission(self.option)
        # The routes declared on the extension (not on a blueprint), registered on every app
        # `init_app` attaches (an application factory calls it once per app it creates):
        # WebSocket routes (rule, view, handler, options) and plain HTTP ones (rule, endpoint,
        # view, options) such as an event endpoint's SSE stream.
        self._rules: List[Tuple[Any, ...]] = []
        self._http_rules: List[Tuple[Any, ...]] = []
        self._apps: weakref.WeakSet[Flask] = weakref.WeakSet()
        self._views: Dict[Any, Callable[..., Any]] = {}
        self._runtime: Any = None
        if app is not None:
            self.init_app(app)

    # -- set-up -------------------------------------------------------------

    def init_app(self, app: Flask) -> None:
        """Attach to `app`: the extension's routes (declared before or after) are registered
        on it, `app.run` launches uWSGI. An application factory may call it for each app it
        creates: each gets every route, and the options are read from the app handling the
        request (`option`). `self.app` is the last app attached."""
        self.app = app
        self._apps.add(app)
        app.extensions["uwsgi_ws"] = self
        __import__("uwsgi_ws.startup").startup.check()  # start-up traps (uwsgi_ws/startup.py), once per process
        startup.check_model(type(self).__name__, self.model)  # GeventWebSocket on a threads server...
        from .run import run, wrap_debug

        app.wsgi_app = _MalformedRequestGuard(app.wsgi_app)  # type: ignore[method-assign]
        wrap_debug(app)  # outermost: the debugger sees everything

        app.run = functools.partial(run, app)  # type: ignore[method-assign]
        app.register_error_handler(WebsocketMismatch, _websocket_mismatch)
        for args in self._rules:
            self._add_rule(app, *args)
        for args in self._http_rules:
            self._add_http_rule(app, *args)
        if self.option("metrics_route"):
            self.metrics_route(self.option("metrics_route"))
        if _uwsgi.available():
            # Import the model's adapter (gevent...) now, in the thread importing the app:
            # a thread the app starts at import (a publisher) must not be the first to
            # import it, or a worker forked meanwhile inherits a held import lock and hangs.
            self.runtime()

    def option(self, name: str) -> Any:
        """The effective value of an extension option (`uwsgi_ws.settings.APP_OPTIONS`).

        Args:
            name: the option's name (``"ping_interval"``).

        Returns:
            The keyword argument given to the constructor, else the Flask config
            ``UWSGI_WS_<NAME>`` (read at each call) of the app handling the request
            (``current_app``; outside an app context the last app attached), else the
            default.

        Raises:
            KeyError: `name` is not an extension option.
        """
        declared = settings.app_option(name)
        if name in self._options:
            return self._options[name]
        app = current_app._get_current_object() if has_app_context() else self.app  # type: ignore[attr-defined]
        key = declared.config_key
        if app is not None and key in app.config:
            return app.config[key]
        return declared.default

    def before_connect(self, hook: Callable[[], Any]) -> Callable[[], Any]:
        """Register `hook` (a decorator): it runs before every upgrade of this
        extension's routes, in the Flask request context, after the handshake
        and Origin checks. Return None or True to go on; False refuses with
        403; a Flask response (or anything a view may return) is sent instead
        of the upgrade; a raised HTTPException (``abort(401)``) is answered
        as Flask answers it. Hooks run in registration order, for the SSE
        stream of an event endpoint too (`uwsgi_ws.admission`)."""
        return self.admission.add_hook(hook)

    def origin_policy(self) -> access.OriginPolicy:
        """The Origin policy in force (built from the `allowed_origins` option)."""
        return self.admission.origin_policy()

    def route(self, rule: str, bp: Optional[Blueprint] = None, *, subprotocols: Sequence[str] = (),
              compression: Any = "", **options: Any) -> Callable[[Handler], Handler]:
        """Declare a WebSocket route; the handler gets the connection and the URL variables.

        `bp` registers it on a blueprint instead of the app (flask-sock style);
        `subprotocols` lists the Sec-WebSocket-Protocol values the route speaks;
        `compression` ("deflate" or None) overrides the `compression` option for
        this route (ValueError for another value).
        Other keyword arguments go to Flask's `add_url_rule` (`endpoint`, `defaults`, ...).

        Raises:
            TypeError: a keyword is one of the extension's options (`DEFAULTS`:
                ``compression_level``, ``max_message_size``, ...), which are set for the
                whole extension, not per route.
            ValueError: `compression` is neither "deflate" nor None.
        """
        per_extension = sorted(name for name in options if name in DEFAULTS)
        if per_extension:
            names = ", ".join(per_extension)
            raise TypeError(f"route({rule!r}, {names}=...): {names} is an option of the whole extension, not of a "
                            f"route: set it as {type(self).__name__}(app, {per_extension[0]}=...) or Flask config "
                            f"UWSGI_WS_{per_extension[0].upper()}; a route takes only subprotocols= and "
                            "compression=\"deflate\"/None (on or off)")
        if compression != "":
            configure_deflate(compression)  # ValueError now, not at the first request

        def decorator(handler: Handler) -> Handler:
            key = (handler, tuple(subprotocols), compression)
            view = self._views.get(key)
            if view is None:  # one view per handler: stacked @ws.route share the endpoint
                view = self._views[key] = self._make_view(handler, tuple(subprotocols), compression)
            if bp is not None:
                self._add_rule(bp, rule, view, handler, options)
                return handler
            self._rules.append((rule, view, handler, options))
            for app in list(self._apps):
                self._add_rule(app, rule, view, handler, options)
            return handler

        return decorator

    def add_url_rule(self, rule: str, endpoint: str, view: Callable[..., Any], **options: Any) -> None:
        """A plain HTTP route the extension serves next to its WebSocket routes (an event
        endpoint's SSE stream, the browser client's file): registered on every app
        attached (`init_app`), now and later; an app already serving `endpoint` keeps
        its own. `options` are Flask's `add_url_rule`'s (``methods``, ...)."""
        self._http_rules.append((rule, endpoint, view, options))
        for app in list(self._apps):
            self._add_http_rule(app, rule, endpoint, view, options)

    @staticmethod
    def _add_http_rule(app: Flask, rule: str, endpoint: str, view: Callable[..., Any],
                       options: Dict[str, Any]) -> None:
        if endpoint not in app.view_functions:
            app.add_url_rule(rule, endpoint, view, **options)

    def metrics_route(self, rule: str = "/metrics", **options: Any) -> None:
        """Serve the instance's metrics (`uwsgi_ws.metrics`) in the Prometheus text
        format at `rule`: a plain GET view, endpoint ``uwsgi_ws_metrics``. Opt-in;
        the option ``metrics_route`` (config ``UWSGI_WS_METRICS_ROUTE``) calls it
        at `init_app`. Keep it internal (allow only the scraper at the proxy)."""
        endpoint = options.pop("endpoint", "uwsgi_ws_metrics")
        if any(rule_endpoint == endpoint for _, rule_endpoint, _, _ in self._http_rules):
            return

        def prometheus_metrics() -> Response:
            return Response(metrics.prometheus_text(), content_type=metrics.CONTENT_TYPE)

        self.add_url_rule(rule, endpoint, prometheus_metrics, methods=["GET"], **options)

    def admin_route(self, rule: str = "/_admin", allow: Optional[Callable[[Any], bool]] = None,
                    **options: Any) -> Admin:
        """The operator's page at `rule` (`uwsgi_ws.admin.Admin`, docs/admin.md): live
        connections, rooms, deliveries, ring lag, the Redis bridge; emit a test event,
        disconnect a connection. Opt-in, and refused to everyone (403 saying how to
        allow) until `allow(request) -> bool` lets a request in.

        Args:
            rule: the page's URL; its feed and actions live under it.
            allow: called with the Flask request for every admin request (page,
                feed, actions); True lets it in. None: everyone is refused.
            options: `Admin`'s keyword arguments (``events``, ``rooms``, ``interval``).

        Returns:
            The `uwsgi_ws.admin.Admin`.

        Raises:
            RuntimeError: called before the app is known.
            TypeError: `allow` is not callable, or an unknown option.
        """
        from .admin import Admin

        return Admin(self, rule, allow, **options)

    @staticmethod
    def _add_rule(target: Any, rule: str, view: Callable[..., Any], handler: Handler,
                  options: Dict[str, Any]) -> None:
        options = dict(options)
        endpoint = options.pop("endpoint", handler.__name__)
        target.add_url_rule(rule, endpoint, view, websocket=True, methods=["GET"], **options)

    def deflate_options(self, compression: Any = "") -> Optional[DeflateOptions]:
        """The permessage-deflate settings from the `compression*` options (None: off).
        `compression` other than "" overrides the `compression` option (a route's).

        Raises:
            ValueError: an unknown `compression` value or a setting out of range.
        """
        return configure_deflate(
            self.option("compression") if compression == "" else compression,
            min_size=self.option("compression_min_size"), level=self.option("compression_level"),
            server_max_window_bits=self.option("compression_server_max_window_bits"),
            client_max_window_bits=self.option("compression_client_max_window_bits"),
            mem_level=self.option("compression_mem_level"))

    def _make_view(self, handler: Handler, subprotocols: Sequence[str], compression: Any = "") -> Callable[..., Any]:
        @functools.wraps(handler)
        def view(**kwargs: Any) -> Response:
            environ = request.environ
            try:
                key = handshake.check_request(environ)
                startup.check_upgrade(environ)  # uWSGI's http router without http-websockets: 501
            except handshake.HandshakeError as exc:
                return _refusal(exc)
            answer = self.admission.check()  # Origin, before_connect (the limits: _Upgraded)
            if answer is not None:
                return answer
            if "uwsgi.version" not in environ:
                if not devserver.serves(environ):
                    return _refusal(handshake.HandshakeError(
                        501, "WebSocket routes need uWSGI (run the app with uwsgi or app.run()), or, to develop, "
                        "Werkzeug's development server (flask run) or ws.test_client()", reason="no_uwsgi"))
                devserver.prepare(environ)
            # The upgrade reads the negotiated permessage-deflate parameters (or None) here.
            environ["uwsgi_ws.deflate"] = handshake.negotiate_deflate(environ, self.deflate_options(compression))
            return _Upgraded(self, handler, kwargs, key, handshake.select_subprotocol(environ, subprotocols))

        return view

    # -- serving --------------------------------------------------------------

    def runtime(self) -> Any:
        """The concurrency-model adapter in use (decided at the first connection): under
        uWSGI the running instance's model (a class forcing another one was warned
        about at start, `startup.check_model`), outside it the class's, else threads."""
        if self._runtime is None:
            model = runtime.detect() if _uwsgi.available() else (self.model or runtime.detect())
            self._runtime = runtime.load(model)
        return self._runtime

    def _reserve_slot(self) -> Callable[[], None]:
        """Count one more open WebSocket, or raise Refused(503) past a connection
        limit; returns the function that gives the slot back."""
        return self.admission.reserve()

    def _serve(self, environ: Dict[str, Any], start_response: Callable[..., Any], handler: Handler,
               kwargs: Dict[str, Any], key: str, subprotocol: Optional[str],
               extra_headers: Sequence[Tuple[str, str]] = ()) -> Optional[Response]:
        """Run the handler on a connection that upgrades at its first use. Returns
        the response to send instead if the handler answered before upgrading.
        `extra_headers` go on the 101 too (`headers_for_101`)."""
        sockets: List[socket.socket] = []  # the connection's socket once the 101 is sent
        owner = self.runtime().current_task()  # the request's task: the only one that may send the 101
        upgraded: List[Connection] = []
        opened: List[Any] = []  # the metrics token of the upgrade

        def upgrade(conn: Any) -> None:
            if self.runtime().current_task() != owner:
                raise RuntimeError(
                    "a WebSocket's first use (it sends the 101) must happen in its handler's own thread or "
                    "greenlet: uWSGI's request API works only there. Use the connection once in the handler "
                    "(e.g. conn.send(...), or read conn.connected) before handing it to another thread")
            with shutdown.upgrading(self.runtime()):  # a full shutdown meanwhile waits for `track`
                open_connection(conn)

        def open_connection(conn: Any) -> None:
            deflate = environ.get("uwsgi_ws.deflate")
            headers = handshake.response_headers(key, subprotocol, deflate.response if deflate is not None else None)
            headers = list(headers) + list(extra_headers)  # after_request's, the session cookie
            if devserver.serves(environ):  # flask run, the test client
                sock = devserver.upgrade(environ, start_response, headers)
            else:
                write = start_response("101 Switching Protocols", headers)
                write(b"")  # uWSGI sends the headers now; the socket is ours from here on
                sock = socket.socket(fileno=_uwsgi.api().connection_fd())
            sockets.append(sock)
            sock.setblocking(False)
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            cls: Any = self._connection_class
            conn.__class__ = cls
            cls.__init__(
                conn,
                sock,
                environ,
                self.runtime(),
                max_message_size=self.option("max_message_size"),
                ping_interval=self.option("ping_interval"),
                ping_timeout=self.option("ping_timeout"),
                close_timeout=self.option("close_timeout"),
                max_queue=self.option("max_queue"),
                write_limit=self.option("write_limit"),
                receive_timeout=self.option("timeout"),
                broadcast=self.broadcast(),
                protocol=Protocol(self.option("max_message_size"), deflate),
            )
            opened.append(metrics.opened(_route()))
            conn.start()
            if not devserver.serves(environ):
                shutdown.track(conn, self.runtime())  # close 1012 on a graceful worker stop
            else:  # flask run, python app.py (gevent-websocket): close 1012/1001 at the process's exit
                devserver.track(conn)
            upgraded.append(conn)

        conn: Any = _PendingConnection(upgrade, environ, subprotocol)
        app = current_app._get_current_object()  # type: ignore[attr-defined]
        try:
            code: int = NORMAL
            reason = ""
            try:
                result = handler(conn, **kwargs)
            except ConnectionClosed as exc:
                if not sockets:  # another connection's, before this one upgraded: a 500
                    answer = _answer_before_upgrade(app, exc)
                    metrics.rejected("handler", "the handler raised ConnectionClosed before the upgrade",
                                     _route(), getattr(answer, "status_code", None))
                    return answer
                if not conn.closed:  # another connection's (a handler keeping a dict of them)
                    code, reason = self._handler_failed(app, exc)
                # else: this connection's peer went away while the handler sent: the quiet end
            except Exception as exc:
                if not sockets:  # nothing sent yet: a plain HTTP answer (401, 403, 500)
                    if isinstance(exc, HandshakeRefused):  # at the upgrade: the worker is shutting down
                        return _refusal(exc)
                    answer = _answer_before_upgrade(app, exc)
                    metrics.rejected("handler", f"the handler raised {type(exc).__name__} before the upgrade",
                                     _route(), getattr(answer, "status_code", None))
                    return answer
                code, reason = self._handler_failed(app, exc)
            else:
                if not sockets and result is not None:  # e.g. a decorator's redirect or abort response
                    answer = cast(Response, app.make_response(result))
                    metrics.rejected("handler", "the handler answered with HTTP before the upgrade", _route(),
                                     answer.status_code)
                    return answer
                if not sockets:
                    try:
                        upgrade(conn)  # a handler that never used its connection: open, then close 1000
                    except HandshakeRefused as exc:  # the worker is shutting down
                        return _refusal(exc)
            if upgraded:
                conn.finish(code, reason)
                shutdown.untrack(conn)
                metrics.closed(opened[0], conn)
        finally:
            for sock in sockets:
                sock.detach()  # uWSGI closes the fd when the request ends
        return None

    @staticmethod
    def _handler_failed(app: Flask, exc: BaseException) -> Tuple[int, str]:
        """A handler raised after the upgrade: the client gets 1011 (RFC 6455 section
        7.4.1, "internal error"); Flask logs it and sends got_request_exception; the worker lives."""
        got_request_exception.send(app, exception=exc)
        app.log_exception(sys.exc_info())
        return INTERNAL_ERROR, "internal error"

    # -- broadcast ------------------------------------------------------------

    def broadcast(self) -> Broadcast:
        """This process's broadcast (`uwsgi_ws.broadcast.Broadcast`): publish, and in a
        worker with a ring, subscribe and recover. `broadcast().available` says whether
        this worker can deliver broadcasts."""
        return broadcast_for_process(self.runtime())

    def publish(self, data: Union[str, bytes], channel: Union[str, Iterable[str], None] = None) -> int:
        """Broadcast `data` to every connection subscribed to `channel` (None: every
        connection of the instance), in every worker. Several channels (a list, as
        flask-websockets passes): one publish per channel, so a connection subscribed
        to two of them receives the message twice.

        Returns:
            The message's seq in the ring, where it is when this returns (several
            channels: the last one's).

        Raises:
            PublishError: with the option to set when it can't (no broadcast mule,
                over ``--mule-msg-size``), or a bad channel name.
            ValueError: a str with a lone surrogate (a text frame is UTF-8, RFC 6455
                section 5.6).
            TypeError: `data` is neither str nor bytes-like.

        Thread-safe (any thread or greenlet, docs/routes.md); blocks the caller until
        the message is in the ring: appended by this process under the ring's writer
        lock, or by the broadcast mule where it keeps them (`uwsgi_ws.broadcast.writer`).
        """
        if isinstance(channel, (list, tuple, set, frozenset)):
            seq = 0
            for name in _channel_list(channel):
                seq = self.broadcast().publish(data, name)
            return seq
        return self.broadcast().publish(data, channel)  # type: ignore[arg-type]  # (it raises for a non-str)

    def events(self, path: str, **options: Any) -> Events:
        """An event endpoint (`uwsgi_ws.events.Events`): WebSocket at `path`, SSE at
        ``path + "/sse"``; named events, rooms, acks and resume (docs/protocol.md).
        May be declared before `init_app` (an application factory): its routes go to
        every app the extension attaches. Serving needs the broadcast ring (under
        uWSGI) or runs on the in-process one (flask run, the test client)."""
        from .events import Events

        return Events(self, path, **options)

    def test_client(self, flask_test_client: Any = None) -> TestClient:
        """A client for tests (`uwsgi_ws.testing.TestClient`): this app's WebSocket routes
        and event endpoints in this process, no uWSGI and no port, on the real
        Connection and engine; `publish`/`emit` reach its clients (the process's
        broadcast becomes the in-process one). `flask_test_client`: a Flask test
        client whose cookies (e.g. a logged-in session) the handshakes send."""
        from .testing import TestClient

        return TestClient(self, flask_test_client)

    def subscribe(self, conn: Connection,
                  channel: Union[str, Iterable[str]]) -> contextlib.AbstractContextManager[object]:
        """Context manager: `conn` receives broadcasts on `channel` inside the block.

        Args:
            channel: a channel name, or several (flask-websockets passes a list).

        Raises:
            ValueError: a bad channel name (empty, not UTF-8, over 255 bytes).
            RingError: broadcast is not available in this worker (the message says why).
        """
        if not isinstance(channel, (list, tuple, set, frozenset)):
            return cast("contextlib.AbstractContextManager[object]",
                        conn.subscribe(channel))  # type: ignore[arg-type]  # (it raises for a non-str)
        stack = contextlib.ExitStack()
        try:
            for name in _channel_list(channel):
                stack.enter_context(conn.subscribe(name))
        except BaseException:
            stack.close()
            raise
        return stack

    def register_blueprint(self, blueprint: Blueprint, **options: Any) -> None:
        """Serve the routes declared with the plain ``@blueprint.route(...)`` of a Flask
        `Blueprint` as WebSocket routes (Flask-Sockets' API): each view becomes a
        handler getting the connection and the URL variables. `options` are
        `app.register_blueprint`'s (``url_prefix``, ``subdomain``, ``url_defaults``, ``name``).

        Raises:
            RuntimeError: called before the app is known (use WebSocket(app) or init_app first).
        """
        if self.app is None:
            raise RuntimeError("register_blueprint() needs the app: call it after WebSocket(app) or init_app(app)")
        capture = _RuleCapture()
        state = blueprint.make_setup_state(capture, options, first_registration=True)  # type: ignore[arg-type]
        for deferred in blueprint.deferred_functions:
            deferred(state)
        for rule, endpoint, handler, rule_options in capture.rules:
            if handler is None:
                continue
            methods = rule_options.pop("methods", None)
            if methods and "GET" not in {m.upper() for m in methods}:
                continue  # a POST-only view of the blueprint is no WebSocket route
            rule_options.pop("websocket", None)
            key = (handler, ())
            view = self._views.get(key)
            if view is None:
                view = self._views[key] = self._make_view(handler, ())
            self._add_rule(self.app, rule, view, handler, {**rule_options, "endpoint": endpoint})


class ThreadedWebSocket(WebSocket):
    """The threads model (``--processes N --threads M``): ``app.run()`` starts threads;
    under a uWSGI of another model, as `GeventWebSocket`."""

    model = "threads"


class GeventWebSocket(WebSocket):
    """Flask-uWSGI-WebSocket's class for uWSGI's gevent loop engine (``--gevent N``):
    ``app.run()`` starts gevent (`uwsgi_ws.run`); under a uWSGI of another model it
    serves with that model and warns at start. Its connections are
    `LegacyConnection`: ``receive()`` returns None when the client leaves."""

    model = "gevent"
    _connection_class = LegacyConnection


class AsyncWebSocket(WebSocket):
    """Flask-uWSGI-WebSocket's class for uWSGI async cores (``--async N --ugreen``): no
    broadcast, no keepalive while the handler is not in `receive`; model and
    connections as `GeventWebSocket`."""

    model = "async"
    _connection_class = LegacyConnection


class _MalformedRequestGuard:
    """Answers 400 to a request uWSGI hands over without a method (a garbage request
    line: uWSGI passes it on with no REQUEST_METHOD, and Werkzeug's routing then
    raises KeyError before Flask can answer: a logged traceback and no response).
    Also arms `geventws` at the first request gevent-websocket's handler upgraded."""

    def __init__(self, wsgi_app: Callable[..., Any]) -> None:
        self.wsgi_app = wsgi_app

    def __call__(self, environ: Dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if geventws.KEY in environ:  # gevent-websocket's handler sent a 101 already (uwsgi_ws/geventws.py)
            geventws.arm()
        if "REQUEST_METHOD" not in environ:
            body = b"400 Bad Request: malformed request line (no method)\n"
            start_response("400 Bad Request", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
            return [body]
        return self.wsgi_app(environ, start_response)

    def __getattr__(self, name: str) -> Any:  # middleware that inspects app.wsgi_app keeps working
        return getattr(self.wsgi_app, name)


class Sockets(WebSocket):
    """Flask-Sockets' name for the extension: ``sockets = Sockets(app)``,
    ``@sockets.route``, ``sockets.register_blueprint(bp, url_prefix=...)``."""


class Sock(WebSocket):
    """flask-sock's name for the extension: ``sock = Sock(app)``, ``@sock.route``,
    ``@sock.route("/x", bp=bp)``."""


class WebSockets(WebSocket):
    """flask-websockets' name for the extension: ``websockets = WebSockets(app)``,
    ``websockets.subscribe(ws, ["a", "b"])``, ``websockets.publish(data, ["a", "b"])``."""


class _RuleCapture:
    """Stands in for the app while a blueprint's deferred setup runs: keeps the rules
    (`Blueprint.make_setup_state` calls `add_url_rule` on it with the prefixes applied)."""

    def __init__(self) -> None:
        self.rules: List[Tuple[str, str, Optional[Callable[..., Any]], Dict[str, Any]]] = []
        self.url_map = None
        self.config: Dict[str, Any] = {}

    def add_url_rule(self, rule: str, endpoint: Optional[str] = None, view_func: Optional[Callable[..., Any]] = None,
                     **options: Any) -> None:
        self.rules.append((rule, endpoint or (view_func.__name__ if view_func else ""), view_func, options))

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"register_blueprint() serves a blueprint's routes only; {name!r} is not supported "
                             "here: register that part with app.register_blueprint")


def _channel_list(channels: Iterable[str]) -> List[str]:
    """Several channel names as a list, each once (first-seen order: flask-websockets
    takes ``set(channels)``); TypeError saying what a channel is otherwise."""
    names = list(channels)
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"a channel name is a str, not {type(name).__name__}")
    return list(dict.fromkeys(names))
