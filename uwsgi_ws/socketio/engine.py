"""python-engineio driven by uwsgi_ws: its WebSocket transport runs on our engine.

python-engineio picks its concurrency primitives from a driver table
(``Server._async``: thread, queue, event, sleep and a ``websocket`` class).
`EngineServer` starts from engineio's own ``threading`` or ``gevent`` table,
whichever matches the uWSGI model, and replaces the ``websocket`` entry with
`ConnectionWebSocket`, which wraps a `uwsgi_ws.Connection` (our protocol
engine on a socket we own after the handshake; never uWSGI's WebSocket API).

Session ids name their worker: ``<worker id>.<engineio's random id>``, so a
request that reaches another worker can be handed to the owner
(`uwsgi_ws.socketio.handoff`). Socket.IO namespace sids come from the same
generator and carry the owner too.
"""

from __future__ import annotations

import contextlib
import io
import logging
import threading
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union
from urllib.parse import parse_qs

import engineio
from engineio import packet as eio_packet

from .. import _uwsgi, frames, runtime
from ..exceptions import ConnectionClosed
from ..runtime import Runtime
from .outbox import TRY_AGAIN_LATER, Outbox

log = logging.getLogger("uwsgi_ws.socketio.engine")

#: WSGI environ key holding the `uwsgi_ws.Connection` the WebSocket transport runs on.
CONNECTION_KEY = "uwsgi_ws.socketio.connection"
#: Optional: a callable run with the connection once it is open.
ON_OPEN_KEY = "uwsgi_ws.socketio.on_open"
#: Or a callable returning it, called when engineio decides to upgrade (a handed-off socket).
CONNECTION_FACTORY_KEY = "uwsgi_ws.socketio.connection_factory"


def worker_runtime() -> Runtime:
    """The concurrency-model adapter of the running uWSGI (`uwsgi_ws.runtime`; threads
    outside uWSGI)."""
    return runtime.load(runtime.detect())


def worker_id() -> int:
    """This process's uWSGI worker id (1-based), 0 outside a uWSGI worker.
    Plain data: safe from any thread or greenlet."""
    try:
        return _uwsgi.worker_id()
    except Exception:  # a mule or the master
        return 0


def owner_of(sid: str) -> Optional[int]:
    """The worker id encoded in session id `sid`, None when it carries none."""
    head, dot, _ = sid.partition(".")
    if not dot or not head.isdigit():
        return None
    return int(head)


class ConnectionWebSocket:
    """engineio's ``websocket`` driver class over a `uwsgi_ws.Connection`.

    engineio calls ``ConnectionWebSocket(handler, server)(environ, start_response)``
    when a request upgrades; the connection is in ``environ[CONNECTION_KEY]``
    (put there by the route). Its first use sends the 101, so anything engineio
    refuses before reading is still answered with plain HTTP. `wait` and `send`
    may run in two threads/greenlets at once (engineio's reader and writer):
    the Connection is thread-safe for that.
    """

    def __init__(self, handler: Callable[[ConnectionWebSocket], Any], server: Any) -> None:
        self.app = handler
        self.server = server
        self.conn: Any = None
        self.outbox: Optional[Outbox] = None
        self.environ: Dict[str, Any] = {}

    def __call__(self, environ: Dict[str, Any], start_response: Callable[..., Any]) -> Any:
        conn = environ.get(CONNECTION_KEY)
        if conn is None and CONNECTION_FACTORY_KEY in environ:
            conn = environ[CONNECTION_FACTORY_KEY]()
        if conn is None:
            raise RuntimeError("the Socket.IO WebSocket transport runs on a uwsgi_ws route: "
                               "create the server with uwsgi_ws.socketio.SocketIO(app)")
        # Upgrade now, in the request's own thread/greenlet: engineio's writer task
        # may be the first to use the connection, and the 101 goes through uWSGI's
        # start_response, which only the request's thread may call.
        conn.closed  # noqa: B018  the first use of a pending connection sends the 101
        on_open = environ.get(ON_OPEN_KEY)
        if on_open is not None:
            on_open(conn)
        self.conn, self.environ = conn, environ
        session = getattr(self.app, "__self__", None)  # engineio's Socket (the handler is its method)
        self.outbox = getattr(session, "queue", None)
        if not isinstance(self.outbox, Outbox):
            self.outbox = None
        if self.outbox is not None:
            self.outbox.attach(conn, session)
        try:
            return self.app(self)
        finally:
            if self.outbox is not None:
                self.outbox.detach()

    def wait(self) -> Union[str, bytes, None]:
        """The next message; None once the connection is closed."""
        try:
            return self.conn.receive()  # type: ignore[no-any-return]
        except ConnectionClosed:
            return None

    def send(self, message: Union[str, bytes]) -> None:
        """Send one Engine.IO packet. Raises OSError once closed (engineio's writer stops)."""
        try:
            self.conn.send(message)
        except ConnectionClosed as exc:
            raise OSError(str(exc)) from None
        if self.outbox is not None:
            self.outbox.sent()

    def close(self) -> None:
        """Close with 1000 (waits for the peer's close frame up to close_timeout)."""
        try:
            self.conn.close()
        except ConnectionClosed:
            pass


class PollingSessions:
    """A worker's Engine.IO sessions on HTTP long-polling, shaped as `uwsgi_ws.shutdown`
    tracks a connection (`close`, `close_nowait`): when uWSGI stops the worker (a
    reload: `close`; a shutdown: `close_nowait`), every session still on polling gets
    Engine.IO's CLOSE packet in its waiting poll (or its next one, wherever it lands)
    at once, and the client reconnects, to the new workers, instead of the poll
    being held until the ping interval or the master's worker-reload-mercy. Once a
    poll took the packet the session is closed here (the app's disconnect handler
    runs). The packet is queued before the session is marked closed: engineio
    answers a poll for a closed session 400 ("Invalid session"), which the client
    reads as a transport error. Sessions on (or upgrading to) a WebSocket are left
    alone: their connection is tracked itself (close 1012/1001).

    Thread-safe; never blocks (the waits run in tasks of the session's server).
    """

    def __init__(self, eio: EngineServer) -> None:
        self._eio = eio

    def close(self, code: int = 1012, reason: str = "") -> None:
        """Queue CLOSE on every polling session; each closes once a poll took it."""
        eio = self._eio
        for sid, session in list(eio.sockets.items()):
            if session.closed or session.closing or session.upgrading or session.upgraded:
                continue
            try:
                session.send(eio_packet.Packet(eio_packet.CLOSE))
                eio.start_background_task(self._close_when_taken, session)
            except Exception:  # one session must not spare the others
                log.exception("uwsgi_ws.socketio: closing polling session %s at the worker's stop failed", sid)

    close_nowait = close

    def _close_when_taken(self, session: Any) -> None:
        session.queue.join()  # a poll took the CLOSE packet (engineio calls task_done per packet)
        session.close(wait=False, abort=True, reason=self._eio.reason.SERVER_DISCONNECT)


class EngineServer(engineio.Server):  # type: ignore[misc]
    """An engineio.Server whose WebSocket transport is `ConnectionWebSocket` and whose
    session ids carry the owning worker. `async_mode` reads ``"uwsgi_ws"``;
    `model` is the uWSGI model ("threads" or "gevent") the primitives follow.
    Other keyword arguments are engineio's (ping_interval, cors_allowed_origins, ...).
    """

    def __init__(self, **kwargs: Any) -> None:
        #: Bytes a session may have waiting for its client (queued packets plus what
        #: its WebSocket has buffered); past it the client is a slow consumer: its
        #: session is closed (WebSocket: close 1013), so memory stays bounded
        #: (engineio's own queue has no bound).
        self.max_queued_bytes: int = int(kwargs.pop("max_queued_bytes", 1 << 20))
        #: The uwsgi_ws runtime adapter (set by the extension): locks, writability waits.
        self.runtime: Any = None
        self._local = threading.local()
        self._frame_cache: Tuple[Any, bytes] = (None, b"")
        requested = kwargs.pop("async_mode", None)
        if requested not in (None, "uwsgi_ws", "threading", "gevent", "gevent_uwsgi"):
            raise ValueError(f"async_mode={requested!r} is not available here: uwsgi_ws.socketio runs on uWSGI "
                             "(threads or gevent, read from the uWSGI options); leave async_mode out")
        adapter = worker_runtime()
        try:
            library = runtime.primitives_library(adapter)  # engineio's table of the same primitives
        except ValueError as exc:
            raise ValueError(f"uwsgi_ws.socketio needs background tasks ({exc}): run uWSGI with --threads "
                             "or --gevent, not --async/--ugreen") from None
        #: The uWSGI model's name ("threads" or "gevent"): the primitives follow it.
        self.model: str = adapter.NAME
        #: The socket module of the model (`uwsgi_ws.runtime.socket_module`): the hand-off's sockets.
        self.socket_module: Any = runtime.socket_module(adapter)
        super().__init__(async_mode=library, **kwargs)
        self._async: Dict[str, Any] = dict(self._async, websocket=ConnectionWebSocket)
        self.async_mode = "uwsgi_ws"

    # -- sessions' queues (outbox.Outbox) -----------------------------------------

    def _handle_connect(self, *args: Any, **kwargs: Any) -> Any:
        self._local.new_session = True  # the next create_queue() is the new session's
        try:
            return super()._handle_connect(*args, **kwargs)
        finally:
            self._local.new_session = False

    def create_queue(self, *args: Any, **kwargs: Any) -> Any:
        """engineio's `create_queue`; a session's queue is an `Outbox`."""
        inner = super().create_queue(*args, **kwargs)
        if getattr(self._local, "new_session", False):
            self._local.new_session = False
            return Outbox(inner, self)
        return inner

    def send_packet(self, sid: str, pkt: Any) -> None:
        """engineio's `send_packet`, refusing to let one session hold more than
        `max_queued_bytes` unsent: that session is closed as a slow consumer
        instead (logged; its WebSocket gets close 1013). Never blocks."""
        session = self.sockets.get(sid)
        if session is not None and not session.closed:
            queue = session.queue
            if isinstance(queue, Outbox) and queue.pending_output > self.max_queued_bytes:
                self._slow_consumer(sid, session, queue)
                return
        super().send_packet(sid, pkt)

    def _slow_consumer(self, sid: str, session: Any, queue: Outbox) -> None:
        log.warning("uwsgi_ws.socketio: session %s has %d bytes waiting (max_queued_bytes %d): "
                    "closed as a slow consumer", sid, queue.pending_output, self.max_queued_bytes)
        queue.fail_slow(TRY_AGAIN_LATER, "slow consumer")
        session.close(wait=False, abort=True, reason=self.reason.TRANSPORT_ERROR)

    def frame_of(self, pkt: Any) -> bytes:
        """The WebSocket frame of an engineio packet; a broadcast's packet (the same
        object for every client) is framed once."""
        cached = self._frame_cache
        if cached[0] is pkt:
            return cached[1]
        frame = frames.encode_message(pkt.encode())
        self._frame_cache = (pkt, frame)
        return frame

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Inside the block (one thread/greenlet), direct writes to each client are
        joined and written once at its end."""
        me = _current()
        self._local.batch_owner, self._local.deferred = me, []
        try:
            yield
        finally:
            deferred, self._local.deferred = self._local.deferred, []
            self._local.batch_owner = None
            for outbox in deferred:
                outbox.flush_batch()

    def batching(self) -> bool:
        """True inside `batch()`, in the task that opened it."""
        owner = getattr(self._local, "batch_owner", None)
        return owner is not None and owner is _current()

    def defer(self, outbox: Outbox) -> None:
        self._local.deferred.append(outbox)

    def new_lock(self) -> Any:
        """A lock that blocks the right thing (a greenlet under gevent)."""
        return self.runtime.Lock() if self.runtime is not None else threading.Lock()

    def drain(self, conn: Any) -> None:
        """Block the calling task until `conn`'s outbound buffer is written (or closed)."""
        waiter = None
        while not conn.flush():
            if not conn.connected:
                return
            if self.runtime is None:
                self.sleep(0.01)
                continue
            waiter = waiter or self.runtime.Waiter(conn.fd)
            waiter.wait(False, True, 1.0)

    def generate_id(self) -> str:
        """``<worker id>.<random>``: the owner of a session is readable from its id."""
        return f"{worker_id()}.{super().generate_id()}"


def _check_post(eio: EngineServer, environ: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = -1
    if length < 0:
        return answer("400 BAD REQUEST", [("Content-Type", "text/plain")], [b"bad Content-Length\n"])
    if length > eio.max_http_buffer_size:
        return None  # engineio refuses it (ContentTooLongError, 400) without reading it
    body = environ["wsgi.input"].read(length)
    environ["wsgi.input"] = io.BytesIO(body)
    problem = malformed_payload(body)
    if problem is None:
        return None
    sid = parse_qs(environ.get("QUERY_STRING", "")).get("sid", [None])[0]
    session = eio.sockets.get(sid) if sid else None
    if session is not None:  # not eio.disconnect(): it waits for a poll to take the CLOSE packet
        session.close(wait=False, abort=True, reason=eio.reason.TRANSPORT_ERROR)
        eio.sockets.pop(sid, None)
    log.info("uwsgi_ws.socketio: a malformed polling payload for session %s: %s", sid, problem)
    return answer("400 BAD REQUEST", [("Content-Type", "text/plain")],
                  [f"malformed Engine.IO payload: {problem}\n".encode()])


try:  # the running task: the greenlet (one OS thread runs them all under gevent)
    from greenlet import getcurrent as _current
except ImportError:  # pragma: no cover - no greenlet installed: threads only
    _current = threading.get_ident


def answer(status: str, headers: List[Any], body: List[bytes]) -> Dict[str, Any]:
    """A collected WSGI answer (what `handle` returns)."""
    return {"status": status, "headers": headers, "body": b"".join(body)}


def malformed_payload(body: bytes) -> Optional[str]:
    """Why `body` is not an Engine.IO v4 polling payload (packets separated by
    0x1e, each a packet type digit 0-6 then its data; "b" + base64 for binary),
    or None when it is. engineio itself logs such a body and answers 200 OK."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"the payload is not UTF-8 (byte {exc.start})"
    for index, item in enumerate(text.split("\x1e")):
        if item.startswith("b"):
            continue  # base64 binary message: engineio decodes it
        if not item or item[0] not in "0123456":
            return f"packet {index} has no valid packet type (0-6): {item[:20]!r}"
    return None


def handle(eio: EngineServer, environ: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """Run engineio on `environ`; the HTTP answer it gave ({status, headers, body}),
    or None when the request became a WebSocket (the answer was the 101).

    A polling POST whose payload is malformed gets 400 saying why, and its
    session ends (engineio ends a session on a packet it cannot take)."""
    started: List[Any] = []
    if environ.get("REQUEST_METHOD") == "POST":
        problem = _check_post(eio, environ)
        if problem is not None:
            return problem

    def start_response(status: str, headers: List[Any], exc_info: Any = None) -> Callable[[bytes], None]:
        started[:] = [status, list(headers)]
        return lambda data: None

    body = eio.handle_request(environ, start_response)
    if not started:
        return None
    return answer(started[0], started[1], list(body or []))

