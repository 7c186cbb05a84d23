"""`SocketIO`: Flask-SocketIO's API, served by uwsgi_ws under uWSGI.

Flask-SocketIO's own `SocketIO` class does the Flask side (handlers in a
request context, `request.sid`, the managed session, `emit`/`send`/`call`,
`test_client`); this subclass changes what is under it:

- the server is python-socketio's, on `engine.EngineServer` (Engine.IO's
  WebSocket transport on our protocol engine, never uWSGI's);
- the client manager is `manager.BroadcastManager` (emits, rooms, acks across
  workers through the broadcast ring; no Redis);
- requests reach Engine.IO through Flask routes on ``/<path>/``: the WebSocket
  upgrade on a uwsgi_ws route (``ws.route``), polling on a plain view;
- a request for a session of another worker is handed to it (`handoff`).

Differences from Flask-SocketIO are listed in docs/socketio.md.
"""

from __future__ import annotations

import http
import logging
import os
import socket
import threading
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union
from urllib.parse import parse_qs

import flask
import flask_socketio
import socketio
from flask import Flask, Response, request

from .. import _uwsgi, handshake, metrics, shutdown
from ..connection import Connection
from ..exceptions import HandshakeRefused
from . import engine, handoff
from .listener import ChannelListener, subscribe
from .manager import BroadcastManager

log = logging.getLogger("uwsgi_ws.socketio")

_FLASK_SOCKETIO_RUN_ONLY = ("use_reloader", "reloader_options", "log_output", "allow_unsafe_werkzeug",
                            "extra_files", "keyfile", "certfile", "log_format")
_CONNECTION_OPTIONS = ("max_message_size", "ping_interval", "ping_timeout", "close_timeout", "max_queue",
                       "write_limit")


class Server(socketio.Server):  # type: ignore[misc]
    """python-socketio's Server on `engine.EngineServer`."""

    def _engineio_server_class(self) -> Any:
        return engine.EngineServer


def _origins(cors: Any) -> Union[str, List[str], None]:
    """Flask-SocketIO's `cors_allowed_origins` as a uwsgi_ws origin policy
    (engineio checks it again, including the callable form)."""
    if cors is None:
        return None  # same origin only, as engineio's default
    if cors == "*" or cors == [] or callable(cors):
        return "*"  # [] turns engineio's check off; a callable is checked by engineio
    if isinstance(cors, str):
        return [cors]
    return list(cors)


class _Bus:
    """The manager's broadcast: `publish` on a channel, a worker-local listener of it."""

    def __init__(self, owner: SocketIO, channel: str) -> None:
        self._owner = owner
        self.channel = "socketio:" + channel

    def available(self) -> bool:
        return self._owner._broadcast_available()

    def publish(self, text: str) -> None:
        self._owner.websocket.publish(text, channel=self.channel)

    def batches(self) -> Optional[Iterator[List[Union[str, bytes]]]]:
        owner = self._owner
        if owner._worker.get("pid") != os.getpid() and flask.has_request_context():
            owner._prepare_worker()  # a plain route's emit in a worker without Socket.IO requests yet
        broadcast = owner._worker_broadcast()
        if broadcast is None:
            return None
        eio = owner.server.eio
        listener = ChannelListener(eio.create_queue(), self.channel)
        subscribe(broadcast, listener)
        return listener.batches(eio.get_queue_empty_exception())


class SocketIO(flask_socketio.SocketIO):  # type: ignore[misc]
    """Flask-SocketIO's `SocketIO`, on uwsgi_ws: same constructor, decorators and methods.

    `SocketIO(app, **options)` or `SocketIO()` then `init_app(app, **options)`.
    Options are Flask-SocketIO's (``cors_allowed_origins``, ``ping_interval``,
    ``manage_session``, ``channel``, ``path``, ...). ``message_queue`` still
    selects python-socketio's Redis/Kombu/Kafka manager (not needed across the
    workers of one instance; uwsgi_ws's Redis bridge links instances).
    ``async_mode`` may be left out (the uWSGI model decides) or "uwsgi_ws".

    Raises:
        ValueError: an `async_mode` other than threads/gevent, or uWSGI's async cores.
    """

    _app: Optional[Flask] = None

    def init_app(self, app: Optional[Flask], **kwargs: Any) -> None:
        """Attach to `app` (see the class docstring). Mirrors Flask-SocketIO's
        `init_app` with our server, manager and routes."""
        if app is not None:
            app.extensions["socketio"] = self
        self.server_options.update(kwargs)
        self.manage_session: bool = self.server_options.pop("manage_session", self.manage_session)
        channel = self.server_options.pop("channel", "flask-socketio")
        if "client_manager" not in self.server_options:
            url = self.server_options.get("message_queue")
            if url:
                if url.startswith(("redis://", "rediss://")):
                    queue_class: Any = socketio.RedisManager
                elif url.startswith("kafka://"):
                    queue_class = socketio.KafkaManager
                elif url.startswith("zmq"):
                    queue_class = socketio.ZmqManager
                else:
                    queue_class = socketio.KombuManager
                self.server_options["client_manager"] = queue_class(url, channel=channel, write_only=app is None)
            elif _under_uwsgi():
                self.server_options["client_manager"] = BroadcastManager(_Bus(self, channel), channel=channel)
            # else python-socketio's local Manager: one process (tests, test_client, scripts)
        if self.server_options.get("json") is flask.json:
            self.server_options["json"] = _flask_safe_json(app)
        resource = self.server_options.pop("path", None) or self.server_options.pop("resource", None) or "socket.io"
        self.resource = resource.strip("/")
        self.server = Server(**self.server_options)
        self.async_mode = self.server.async_mode if hasattr(self.server, "async_mode") else "uwsgi_ws"
        for message, handler, namespace in self.handlers:
            self.server.on(message, handler, namespace=namespace)
        for namespace_handler in self.namespace_handlers:
            self.server.register_namespace(namespace_handler)
        self._app = app
        self._worker: Dict[str, Any] = {}
        self._worker_lock = threading.Lock()
        if app is not None:
            self._wire(app)

    # -- wiring -------------------------------------------------------------------

    @property
    def websocket(self) -> Any:
        """The app's `uwsgi_ws.WebSocket` extension (created by `init_app` when absent).
        Raises RuntimeError before `init_app(app)`."""
        if self._app is None:
            raise RuntimeError("this SocketIO has no app: call init_app(app) first")
        return self._app.extensions["uwsgi_ws"]

    def _wire(self, app: Flask) -> None:
        from .. import WebSocket

        if "uwsgi_ws" not in app.extensions:
            WebSocket(app, allowed_origins=_origins(self.server_options.get("cors_allowed_origins")))
        rule = f"/{self.resource}/"
        self.websocket.route(rule, endpoint="socketio_websocket")(self._websocket_view)
        app.add_url_rule(rule, "socketio_polling", self._polling_view, methods=["GET", "POST", "OPTIONS"])
        app.wsgi_app = _HandOffMiddleware(app.wsgi_app, self, rule)  # type: ignore[method-assign]

    def _environ(self) -> Dict[str, Any]:
        environ = dict(request.environ)
        environ.pop("werkzeug.request", None)
        environ["flask.app"] = self._app
        return environ

    def _websocket_view(self, conn: Connection) -> Any:
        environ = self._environ()
        environ[engine.CONNECTION_KEY] = conn
        # Socket.IO clients take broadcasts from the manager, in Engine.IO packets: a plain
        # ws.publish() to every connection must not reach them as a bare frame.
        environ[engine.ON_OPEN_KEY] = self.websocket.broadcast().detach
        result = engine.handle(self.server.eio, environ)
        if result is None:
            return None  # the session ran on this connection and is over
        return Response(result["body"], status=result["status"], headers=result["headers"])

    def _polling_view(self) -> Response:
        if request.method == "GET" and "sid" not in request.args:
            # a new Engine.IO session: the same access policy as the WebSocket route's
            # (Origin, before_connect hooks; uwsgi_ws.admission)
            refused: Optional[Response] = self.websocket.admission.check()
            if refused is not None:
                return refused
        result = engine.handle(self.server.eio, self._environ())
        if result is None:  # pragma: no cover - engineio upgrades only with a connection
            return Response("a WebSocket upgrade reached the polling view\n", status=400)
        return Response(result["body"], status=result["status"], headers=result["headers"])

    # -- per worker ---------------------------------------------------------------

    def _prepare_worker(self) -> Dict[str, Any]:
        """This worker's hub and hand-off listener, made on its first Socket.IO
        request (uWSGI's API is called here, in a request, never in a task)."""
        pid = os.getpid()
        state = self._worker
        if state.get("pid") == pid:
            return state
        with self._worker_lock:
            if self._worker.get("pid") == pid:
                return self._worker
            rt = self.websocket.runtime()
            inflight = _InFlight(rt)
            state = {"pid": pid, "broadcast": None, "listener": None, "forwarder": None, "inflight": inflight}
            self.server.eio.runtime = rt
            # uWSGI waits for its requests when it stops a worker, not for the ones handed to it:
            # the worker's exit (a reload's, once the stop hooks closed them) waits for those
            _at_worker_exit(lambda: inflight.drain(float(self.websocket.option("close_timeout")) + 1.0))
            # a reload answers this worker's waiting polls with CLOSE (its WebSockets get 1012 as any)
            shutdown.track(engine.PollingSessions(self.server.eio), self.server.eio.runtime)
            broadcast = self.websocket.broadcast()
            if broadcast.available:  # creating the hub calls uWSGI's API: here, in a request
                state["broadcast"] = broadcast
            else:  # no ring: emits reach this worker only
                log.warning("uwsgi_ws.socketio: no broadcast in worker %d (%s): emits reach this worker only",
                            pid, broadcast.problem)
            masterpid, worker = _uwsgi_ids()
            if masterpid and worker:
                sockets = self.server.eio.socket_module
                state["forwarder"] = handoff.Forwarder(sockets, masterpid)
                try:
                    state["listener"] = handoff.Listener(sockets, self.server.eio.start_background_task,
                                                         masterpid, worker, self._serve_handed_off)
                except OSError as exc:
                    log.error("uwsgi_ws.socketio: worker %d cannot take sessions from other workers (%s)",
                              worker, exc)
            self._worker = state
        return state

    def _broadcast_available(self) -> bool:
        """Emits go through the broadcast: in a uWSGI worker whose hub exists, or
        that has not served a Socket.IO request yet (a task started at import)."""
        if engine.worker_id() == 0:
            return False
        state = self._worker
        return state.get("pid") != os.getpid() or state.get("broadcast") is not None

    def _worker_broadcast(self) -> Any:
        state = self._worker
        return state.get("broadcast") if state.get("pid") == os.getpid() else None

    def _serve_handed_off(self, item: Dict[str, Any], client: Any) -> None:
        """Answer a request another worker handed over, on the client's socket (counted
        in this worker's `_InFlight`: its exit waits for it)."""
        inflight = self._worker.get("inflight")
        if inflight is None:  # pragma: no cover - the listener starts after the worker's state
            self._serve_handed_off_now(item, client)
            return
        with inflight:
            self._serve_handed_off_now(item, client)

    def _serve_handed_off_now(self, item: Dict[str, Any], client: Any) -> None:
        meta, environ = item["meta"], item["environ"]
        environ["flask.app"] = self._app
        if meta["kind"] == "websocket":
            self._serve_websocket(environ, client)
            return
        try:
            result = engine.handle(self.server.eio, environ)
            if result is not None:
                client.sendall(handoff.http_response(result["status"], result["headers"], result["body"],
                                                     meta["protocol"]))
            client.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            client.close()

    def _serve_websocket(self, environ: Dict[str, Any], client: Any) -> None:
        """Serve a handed-off WebSocket upgrade on the client's socket, as a uwsgi_ws
        route serves one (uwsgi_ws/extension.py `_serve`): `shutdown.upgrading` around
        the 101, the connection counted (`metrics.opened`, route ``/<path>/``) and
        tracked (`shutdown.track`: close 1012 on a graceful reload, 1001 on a
        shutdown) until it is over (`untrack`, `metrics.closed`). A refusal (a bad
        handshake, 503 while the worker shuts down) is answered in plain HTTP."""
        sock = socket.socket(fileno=client.detach())  # our engine takes a plain socket
        rt = self.websocket.runtime()
        route = f"/{self.resource}/"
        opened: List[Tuple[Connection, Any]] = []  # the connection and its metrics token

        def connect() -> Connection:
            key = handshake.check_request(environ)
            with shutdown.upgrading(rt):  # a full shutdown meanwhile waits for `track`
                head = ["HTTP/1.1 101 Switching Protocols", *(f"{k}: {v}" for k, v in
                                                              handshake.response_headers(key, None)), "", ""]
                sock.sendall("\r\n".join(head).encode("latin-1"))
                sock.setblocking(False)
                if sock.family in (socket.AF_INET, socket.AF_INET6):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                ws = self.websocket
                # broadcast=None: a Socket.IO session takes broadcasts through its manager, not the hub
                conn = Connection(sock, environ, rt, **{k: ws.option(k) for k in _CONNECTION_OPTIONS})
                token = metrics.opened(route)
                conn.start()
                shutdown.track(conn, rt)  # close 1012 on a graceful worker stop
                opened.append((conn, token))
            return conn

        environ[engine.CONNECTION_FACTORY_KEY] = connect
        try:
            result = engine.handle(self.server.eio, environ)
            if result is not None and not opened:
                sock.sendall(handoff.http_response(result["status"], result["headers"], result["body"],
                                                   environ["SERVER_PROTOCOL"]))
        except HandshakeRefused as exc:  # handshake.HandshakeError too
            metrics.rejected(exc.reason, str(exc), route, exc.status)
            status = f"{exc.status} {_phrase(exc.status)}"
            headers = [("Content-Type", "text/plain; charset=utf-8"), *exc.headers]
            try:
                sock.setblocking(True)
                sock.sendall(handoff.http_response(status, headers, str(exc).encode() + b"\n",
                                                   environ.get("SERVER_PROTOCOL", "HTTP/1.1")))
            except OSError:
                pass
        except OSError:
            pass
        finally:
            for conn, token in opened:
                conn.finish()
                shutdown.untrack(conn)
                metrics.closed(token, conn)
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    # -- Flask-SocketIO's methods that change ---------------------------------------

    def run(self, app: Flask, host: Optional[str] = None, port: Optional[int] = None, **kwargs: Any) -> None:
        """Replace this process with uWSGI serving `app` (never returns): 2 workers of
        16 threads, the broadcast mule and ring, unless `kwargs` say otherwise
        (uWSGI options, as `app.run` of uwsgi_ws takes them: ``gevent=1000``,
        ``processes=4``). Flask-SocketIO's development-server options
        (``use_reloader``, ``log_output``, ...) are ignored."""
        for name in _FLASK_SOCKETIO_RUN_ONLY:
            if kwargs.pop(name, None) is not None:
                log.info("uwsgi_ws.socketio: run(%s=...) is a Flask-SocketIO development-server option; ignored",
                         name)
        debug = bool(kwargs.pop("debug", app.debug))
        if not any(k in kwargs for k in ("threads", "gevent")):
            kwargs["threads"] = 16
            kwargs.setdefault("enable_threads", True)
        kwargs.setdefault("processes", 2)
        # the broadcast (a 4096-page sharedarea, the mule as a file) as app.run() adds it
        app.run(host=host or "127.0.0.1", port=port or 5000, debug=debug, **kwargs)

    def stop(self) -> None:
        """Stop the uWSGI instance serving the app (gracefully: the master reloads
        nothing and exits)."""
        _uwsgi.api().stop()


class _InFlight:
    """The handed-off requests a worker is serving (`with inflight:` around each).

    uWSGI's graceful stop waits for the worker's own requests; these run in tasks
    of the hand-off listener, outside uWSGI's cores, so the worker's exit waits for
    them instead (`drain`, from uWSGI's ``uwsgi.atexit`` hook: `_at_worker_exit`): a
    reload has just closed them (WebSockets
    with 1012, polls answered with CLOSE: `uwsgi_ws.shutdown`), and their last
    bytes must reach the client before the process ends. Thread-safe."""

    def __init__(self, rt: Any) -> None:
        self._pid = os.getpid()  # exit hooks outlive a fork: only this process drains
        self._drained = False
        self._lock = threading.Lock()  # never held across a yield
        self._count = 0
        self._idle = rt.Event()
        self._idle.set()

    def __enter__(self) -> None:
        with self._lock:
            self._count += 1
            self._idle.clear()

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._count -= 1
            if self._count == 0:
                self._idle.set()

    def drain(self, timeout: float) -> None:
        """Block (the calling thread or greenlet) until no handed-off request is being
        served, at most `timeout` seconds; logs those still running then. Never raises."""
        if self._count == 0 or os.getpid() != self._pid or self._drained:
            return
        self._drained = True  # uWSGI may call its atexit hook twice (gevent: after the loop, then at exit)
        try:
            if not self._idle.wait(timeout):
                log.warning("uwsgi_ws.socketio: worker %d exits with %d handed-off request(s) still served "
                            "after %.1f s", os.getpid(), self._count, timeout)
        except Exception as exc:  # e.g. no loop left to wait in: exit as uWSGI decided
            log.warning("uwsgi_ws.socketio: worker %d cannot wait for its handed-off requests at exit (%s)",
                        os.getpid(), exc)


class _HandOffMiddleware:
    """WSGI middleware: a Socket.IO request whose session another worker owns is
    handed to that worker (`handoff`); the rest go on to the app, after this
    worker's Socket.IO state is ready."""

    def __init__(self, wsgi_app: Any, owner: SocketIO, rule: str) -> None:
        self.wsgi_app = wsgi_app
        self._owner = owner
        self._rule = rule

    def __call__(self, environ: Dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        if path == self._rule or path == self._rule.rstrip("/"):
            state = self._owner._prepare_worker()
            sid = parse_qs(environ.get("QUERY_STRING", "")).get("sid", [None])[0]
            owner = engine.owner_of(sid) if sid else None
            forwarder = state.get("forwarder")
            if (owner is not None and forwarder is not None and owner != engine.worker_id()
                    and self._hand_off(environ, forwarder, owner)):
                return []  # the owner answers on the client's socket; uWSGI writes nothing
        return self.wsgi_app(environ, start_response)

    @staticmethod
    def _hand_off(environ: Dict[str, Any], forwarder: handoff.Forwarder, owner: int) -> bool:
        upgrade = "websocket" in environ.get("HTTP_UPGRADE", "").lower()
        body = b""
        if not upgrade and environ.get("REQUEST_METHOD") == "POST":
            try:
                length = int(environ.get("CONTENT_LENGTH") or 0)
            except ValueError:
                length = 0
            body = environ["wsgi.input"].read(length) if length > 0 else b""
        meta = handoff.describe(environ, "websocket" if upgrade else "http", body)
        if forwarder.hand_off(owner, meta, body, _uwsgi.api().connection_fd()):
            return True
        if body:  # the app reads it again (engineio answers "Invalid session")
            import io

            environ["wsgi.input"] = io.BytesIO(body)
        return False


def _at_worker_exit(fn: Any) -> None:
    """Run `fn` when this uWSGI worker ends, keeping the hook already there: uWSGI calls
    ``uwsgi.atexit`` once the worker's loop is over (gevent: in the main greenlet, the
    hub still running; threads: from exit(), the other threads still running), before
    the process exits. Outside uWSGI it does nothing. `fn` must not raise."""
    if not _uwsgi.available():
        return
    api = _uwsgi.api()
    previous = getattr(api, "atexit", None)

    def hook() -> None:
        try:
            fn()
        finally:
            if previous is not None:
                previous()

    setattr(api, "atexit", hook)  # noqa: B010  (uWSGI reads it from its module)


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _under_uwsgi() -> bool:
    return _uwsgi.available()


def _uwsgi_ids() -> Tuple[int, int]:
    """(master pid, worker id), zeros outside a uWSGI worker with a master."""
    if not _uwsgi.available():
        return 0, 0
    try:
        return _uwsgi.masterpid(), engine.worker_id()
    except Exception:
        return 0, 0


def _flask_safe_json(app: Optional[Flask]) -> Any:
    """Flask's json module, always inside an app context (Flask-SocketIO does the same)."""

    class FlaskSafeJSON:
        @staticmethod
        def dumps(*args: Any, **kwargs: Any) -> str:
            with app.app_context():  # type: ignore[union-attr]
                return flask.json.dumps(*args, **kwargs)

        @staticmethod
        def loads(*args: Any, **kwargs: Any) -> Any:
            with app.app_context():  # type: ignore[union-attr]
                return flask.json.loads(*args, **kwargs)

    return FlaskSafeJSON
