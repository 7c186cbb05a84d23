"""`ws.test_client()`: test an app's WebSocket routes and event endpoints in-process.

No uWSGI, no port: each `connect` makes a socket pair, runs the app's WSGI
request for the handshake in a thread of its own (as Werkzeug's threaded
development server does, with the server end in ``environ["werkzeug.socket"]``)
and speaks RFC 6455 as a client on the other end. The server side is the real
thing: the extension's handshake checks, access policy and ``before_connect``
hooks, the same `Connection` and protocol engine as under uWSGI (close codes,
size limits, UTF-8 checks, keepalive), and the in-process broadcast
(`uwsgi_ws.broadcast.use_in_process`: the same ring and hub, so ``seq``, ``epoch``,
``last`` and ``not_recovered`` behave as in production). ``ws.publish`` and
``live.emit`` called by the test reach the test's clients.

    client = ws.test_client()
    conn = client.connect("/echo", query_string={"token": "t"})
    conn.send("hi"); assert conn.receive(timeout=1) == "hi"
    conn.close(1000)

    ev = client.events("/live")
    ack = ev.emit("say", {"text": "x"})   # the ack's data; EventError on an error ack
    ev.join("lobby", last=10)
    ev.get_received()                    # [(event, data), ...] received so far

A refused upgrade (Origin, ``before_connect``, a connection limit, 404, a bad
handshake) raises `UpgradeRefused` carrying the HTTP status, headers and body.

A handler subscribes after the upgrade, so `connect` may return before it has:
a publish right then reaches nobody. `TestClient.wait_subscribed` waits for it:

    conn = client.connect("/ticker/ACME")
    client.wait_subscribed("ACME")       # the handler's ws.subscribe(conn, "ACME") has run
    ws.publish("42.0", channel="ACME"); assert conn.receive(timeout=1) == "42.0"

Thread-safety: one test thread per client connection (the test's); the server
side runs in threads of its own.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import os
import select
import socket
import struct
import sys
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Deque, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

from flask import current_app, has_app_context
from werkzeug.test import EnvironBuilder
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import FrameProtocol, Opcode, ParseFailed

from .. import events_protocol
from ..broadcast import Batch, Broadcast, QueueSubscriber, use_in_process
from ..exceptions import ConnectionClosed, EventError, UwsgiWsError

if TYPE_CHECKING:  # annotations only: uwsgi_ws.extension imports this module (WebSocket.test_client)
    from ..extension import WebSocket

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3
_PROBE_CHANNEL = "uwsgi_ws:test-client-probe"
_SYNC_EVENT = "uwsgi_ws:sync"  # an event no app handles: its error ack marks a point of the stream
Query = Union[str, Mapping[str, Any], None]


class UpgradeRefused(UwsgiWsError):
    """The server answered the WebSocket handshake with plain HTTP instead of 101.

    Attributes:
        status: the HTTP status code (403, 404, 503, ...).
        headers: the response headers, names lower-cased.
        body: the response body, decoded as UTF-8 (replacement characters if not).
    """

    def __init__(self, status: int, headers: Dict[str, str], body: str) -> None:
        super().__init__(f"the upgrade was refused with HTTP {status}: {body.strip()[:200]}")
        self.status = status
        self.headers = headers
        self.body = body


class TestClient:
    """Connects to the routes of `ws`'s app in this process (see the module docstring).

    Args:
        ws: the `uwsgi_ws.WebSocket` extension, already attached to its app.
        flask_test_client: a Flask ``app.test_client()`` whose cookies (a session
            logged in through it) every handshake sends, as Flask-SocketIO's
            ``flask_test_client`` does. Its app is the one connected to (else the
            app of the active app context, else the last app `init_app` attached).

    Creating one switches this process's broadcast to the in-process one.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, ws: WebSocket, flask_test_client: Any = None) -> None:
        # The app: `flask_test_client`'s, else the app of the active app context, else the
        # last one `init_app` attached (an application factory attaches one per test).
        app = getattr(flask_test_client, "application", None)
        if app is None and has_app_context():
            app = current_app._get_current_object()  # type: ignore[attr-defined]
        app = app or ws.app
        if app is None:
            raise RuntimeError("test_client() needs the app: call it after WebSocket(app) or init_app(app)")
        use_in_process()
        self.ws = ws
        self.app = app
        self.flask_test_client = flask_test_client

    def connect(self, path: str, query_string: Query = None, headers: Optional[Mapping[str, str]] = None,
                subprotocols: Sequence[str] = (), timeout: float = 5.0, compression: bool = False) -> TestConnection:
        """Open a WebSocket to `path`.

        Args:
            path: the URL path (with a ``?query`` or use `query_string`).
            query_string: a str or a mapping of query arguments.
            headers: extra request headers (``Origin``, ``Cookie``, ``Authorization``...).
            subprotocols: the Sec-WebSocket-Protocol values offered, in order.
            timeout: seconds to wait for the server's answer.
            compression: offer permessage-deflate (RFC 7692) as browsers do; when
                the server accepts, messages both ways are compressed.

        Returns:
            The open connection (`TestConnection`).

        Raises:
            UpgradeRefused: the server answered with HTTP (carries status and body).
            TimeoutError: no answer in `timeout` seconds (a handler that neither
                uses its connection nor returns).

        Blocks the calling thread until the server answers.
        """
        key = base64.b64encode(os.urandom(16)).decode()
        request_headers = {"Host": "localhost", "Upgrade": "websocket", "Connection": "Upgrade",
                           "Sec-WebSocket-Key": key, "Sec-WebSocket-Version": "13"}
        if subprotocols:
            request_headers["Sec-WebSocket-Protocol"] = ", ".join(subprotocols)
        deflate = PerMessageDeflate() if compression else None
        if deflate is not None:
            request_headers["Sec-WebSocket-Extensions"] = "permessage-deflate; client_max_window_bits"  # a browser's
        request_headers.update(headers or {})
        builder = EnvironBuilder(path=path, method="GET", query_string=query_string,
                                 headers=list(request_headers.items()),
                                 environ_base={"REMOTE_ADDR": "127.0.0.1"})
        try:
            environ = builder.get_environ()
        finally:
            builder.close()
        if self.flask_test_client is not None and "HTTP_COOKIE" not in environ:
            self.flask_test_client._add_cookies_to_wsgi(environ)  # Werkzeug >= 2.3 (Flask >= 2.3)
        server_end, client_end = socket.socketpair()
        environ["werkzeug.socket"] = server_end
        thread = threading.Thread(target=_serve_request, args=(self.app, environ, server_end), daemon=True,
                                  name=f"uwsgi_ws test request {path}")
        thread.start()
        try:
            status, response_headers, rest = _read_head(client_end, timeout)
            if status != 101:
                body = _read_to_end(client_end, rest, timeout)
                raise UpgradeRefused(status, response_headers, body.decode("utf-8", "replace"))
            expected = base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()
            if response_headers.get("sec-websocket-accept") != expected:
                raise UwsgiWsError(f"the 101 carries a wrong Sec-WebSocket-Accept: {response_headers!r}")
        except BaseException:
            client_end.close()
            raise
        extensions = []
        accepted = response_headers.get("sec-websocket-extensions", "")
        if deflate is not None and accepted.strip().startswith(deflate.name):
            deflate.finalize(accepted)
            extensions.append(deflate)
        return TestConnection(client_end, rest, response_headers, thread, extensions)

    def wait_subscribed(self, channel: str, count: int = 1, timeout: float = 5.0) -> int:
        """Block until at least `count` connections of this process are subscribed to
        `channel` (a handler's ``ws.subscribe(conn, channel)`` has run): a publish on
        `channel` after this reaches them.

        Handlers subscribe after the upgrade, so `connect` can return first; a test
        that publishes at once races the handler (the message reaches nobody). The
        count is the process's: every test client shares the in-process broadcast, so
        close the connections of earlier tests (``with client.connect(...)``) or
        pass the `count` expected in all.

        Args:
            channel: the channel name.
            count: how many subscribers to wait for (at least 1).
            timeout: seconds.
        Returns:
            The number of subscribers of `channel` now (at least `count`).
        Raises:
            ValueError: `count` below 1.
            TimeoutError: fewer subscribers after `timeout` seconds (the message says
                how many there were).
        Blocks the calling thread (polls every few milliseconds); thread-safe.
        """
        if count < 1:
            raise ValueError(f"count must be at least 1, not {count}")
        broadcast = self.ws.broadcast()
        deadline = time.monotonic() + timeout
        while True:
            found: int = broadcast.subscriber_count(channel)
            if found >= count:
                return found
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{found} connection(s) subscribed to {channel!r} after {timeout}s, "
                                   f"waiting for {count}: does the handler call ws.subscribe(conn, "
                                   f"{channel!r})?")
            time.sleep(0.002)

    def events(self, path: str, query_string: Query = None, headers: Optional[Mapping[str, str]] = None,
               timeout: float = 5.0, resume: Optional[Tuple[str, Dict[str, int]]] = None) -> EventsClient:
        """Connect to the event endpoint at `path` (`ws.events(path)`) as a client of its
        protocol (docs/protocol.md). Returns once the endpoint has subscribed the
        connection: an emit after this reaches it. Raises as `connect`.

        `resume`: (epoch, {room: last seq seen}), e.g. an earlier client's `position`:
        connects with ``?resume=1`` and sends the resume frame first; on return the
        replay, any ``not_recovered`` and the ``resumed`` frame have arrived."""
        if resume is not None:
            if isinstance(query_string, str):
                query_string = query_string + ("&" if query_string else "") + "resume=1"
            else:
                query_string = {**(query_string or {}), "resume": "1"}
        conn = self.connect(path, query_string, headers, timeout=timeout)
        client = EventsClient(conn, self.ws.broadcast())
        try:
            if resume is not None:
                conn.send(events_protocol.dumps(events_protocol.client_resume(*resume)))
            client.sync(timeout)
        except BaseException:
            conn.abort()
            raise
        return client


class TestConnection:
    """The client end of a test WebSocket: what `TestClient.connect` returns.

    `receive` answers the server's pings and its closing handshake by itself.
    Not thread-safe: use it from one thread.
    """

    __test__ = False

    def __init__(self, sock: socket.socket, initial: bytes, headers: Dict[str, str],
                 request_thread: threading.Thread, extensions: Sequence[Any] = ()) -> None:
        self._sock = sock
        self._protocol = FrameProtocol(client=True, extensions=list(extensions))
        self._messages: Deque[Union[str, bytes]] = deque()
        self._parts: List[Union[str, bytes]] = []
        self._request = request_thread
        self._eof = False
        self._close_sent = False
        #: The 101's headers, names lower-cased.
        self.headers = headers
        #: The subprotocol the server selected, or None.
        self.subprotocol: Optional[str] = headers.get("sec-websocket-protocol")
        #: The close code once closed (1006: the transport went without a close frame).
        self.close_code: Optional[int] = None
        #: The close reason once closed.
        self.close_reason = ""
        if initial:
            self._feed(initial)

    # -- sending ----------------------------------------------------------------------

    def send(self, data: Union[str, bytes]) -> None:
        """Send a text frame (str) or a binary frame (bytes).

        Raises:
            ConnectionClosed: the connection is closed.
            TypeError: neither str nor bytes-like.
        """
        if not isinstance(data, (str, bytes, bytearray, memoryview)):
            raise TypeError(f"send() takes str (a text frame) or bytes (binary), not {type(data).__name__}")
        self._check_open()
        self._write(self._protocol.send_data(bytes(data) if not isinstance(data, str) else data))

    def send_frame(self, opcode: int, payload: bytes, fin: bool = True, rsv: int = 0) -> None:
        """Send one frame exactly as given (masked as a client must): to test what the
        server does with bad input (invalid UTF-8 in a text frame, a stray
        continuation, a reserved opcode...). `rsv`: the RSV1-3 bits (0..7)."""
        self._check_open()
        mask = os.urandom(4)
        head = bytes([(0x80 if fin else 0) | (rsv & 7) << 4 | (opcode & 0x0F)])
        n = len(payload)
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 65536:
            head += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack("!Q", n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self._write(head + mask + masked)

    def ping(self, payload: bytes = b"") -> None:
        """Send a ping (the server's pong is read and dropped by `receive`)."""
        self._check_open()
        self._write(self._protocol.ping(payload))

    def close(self, code: int = 1000, reason: str = "", timeout: float = 5.0) -> None:
        """Close: send the close frame, wait (at most `timeout` s) for the server's and
        for the end of the stream. `close_code`/`close_reason` are then the server's
        answer. Idempotent."""
        if self.close_code is None and not self._close_sent:
            self._close_sent = True
            try:
                self._write(self._protocol.close(code, reason))
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        while not self._eof and time.monotonic() < deadline:
            self._pump(deadline - time.monotonic())
        if self.close_code is None:
            self.close_code, self.close_reason = 1006, "no close frame from the server"
        self._finish()

    def abort(self) -> None:
        """Drop the transport without a closing handshake (the server sees 1006)."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        if self.close_code is None:
            self.close_code, self.close_reason = 1006, "aborted by the client"
        self._eof = True
        self._finish()

    # -- receiving --------------------------------------------------------------------

    def receive(self, timeout: Optional[float] = 5.0) -> Union[str, bytes, None]:
        """The next message: str (text) or bytes (binary); None after `timeout` seconds
        (None: wait for ever).

        Raises:
            ConnectionClosed: the server closed (code, reason), once every message
                received before its close frame was returned.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._messages:
            if self._eof:
                raise ConnectionClosed(self.close_code, self.close_reason)
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            self._pump(remaining)
        return self._messages.popleft()

    def receive_available(self) -> List[Union[str, bytes]]:
        """Every message already received (what the socket holds now); never blocks."""
        while not self._eof and self._pump(0):
            pass
        out = list(self._messages)
        self._messages.clear()
        return out

    @property
    def closed(self) -> bool:
        """True once the server's close frame arrived or the transport ended."""
        return self.close_code is not None

    def __iter__(self) -> Iterator[Union[str, bytes]]:
        """Messages until the server closes."""
        while True:
            try:
                message = self.receive(None)
            except ConnectionClosed:
                return
            if message is not None:
                yield message

    def __enter__(self) -> TestConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._eof:
            self.close()

    # -- internals ----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.close_code is not None or self._close_sent:
            raise ConnectionClosed(self.close_code or 1006, self.close_reason)

    def _write(self, data: Union[bytes, bytearray]) -> None:
        try:
            self._sock.sendall(data)
        except OSError:
            self._lost()
            raise ConnectionClosed(self.close_code, self.close_reason) from None

    def _pump(self, timeout: Optional[float]) -> bool:
        """Read once (waiting at most `timeout` s); True when bytes came."""
        ready, _, _ = select.select([self._sock], [], [], None if timeout is None else max(0.0, timeout))
        if not ready:
            return False
        try:
            data = self._sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            self._lost()
            return False
        self._feed(data)
        return True

    def _feed(self, data: bytes) -> None:
        self._protocol.receive_bytes(data)
        try:
            for frame in self._protocol.received_frames():
                opcode = frame.opcode
                payload: Any = frame.payload  # str pieces (text), bytes, or (code, reason) for a close
                if opcode in (Opcode.TEXT, Opcode.BINARY, Opcode.CONTINUATION):
                    self._parts.append(payload)
                    if frame.message_finished:
                        parts, self._parts = self._parts, []
                        text = bool(parts) and isinstance(parts[0], str)
                        self._messages.append("".join(parts) if text else b"".join(parts))  # type: ignore[arg-type]
                elif opcode is Opcode.PING:
                    if not self._close_sent:
                        self._write(self._protocol.pong(payload))
                elif opcode is Opcode.CLOSE:
                    code, reason = int(payload[0]), str(payload[1])
                    self.close_code, self.close_reason = code, reason
                    if not self._close_sent:  # echo it (RFC 6455 section 5.5.1)
                        self._close_sent = True
                        try:
                            self._sock.sendall(self._protocol.close(code if code != 1005 else None))
                        except OSError:
                            pass
        except ParseFailed as exc:
            self.close_code, self.close_reason = 1002, f"the server sent an invalid frame: {exc}"
            self.abort()

    def _lost(self) -> None:
        self._eof = True
        if self.close_code is None:
            self.close_code, self.close_reason = 1006, "the connection was lost without a close frame"
        self._finish()

    def _finish(self) -> None:
        try:
            self._sock.close()
        finally:
            self._request.join(5)


class EventsClient:
    """A client of an event endpoint (docs/protocol.md): what `TestClient.events` returns.

    Every frame the server sends is kept: events in `get_received`, the rest in
    `frames` (typed, `uwsgi_ws.events_protocol`), error frames in `errors` too.
    """

    def __init__(self, conn: TestConnection, broadcast: Broadcast) -> None:
        self.conn = conn
        self._broadcast = broadcast
        self._ids = itertools.count(1)
        self._events: List[Tuple[str, Any]] = []
        self._acks: Dict[Any, events_protocol.AckFrame] = {}
        #: Every frame received (typed), in order.
        self.frames: List[events_protocol.ServerFrame] = []
        #: The messages of the error frames received.
        self.errors: List[str] = []

    def emit(self, event: str, data: Any = None, timeout: float = 5.0) -> Any:
        """Call the server's handler of `event` with `data` and wait for its ack; then
        wait until what the handler broadcast has been delivered (`get_received` has it).

        Returns:
            The ack's data (what the handler returned).

        Raises:
            EventError: the ack carries an error (the handler raised EventError, failed,
                or there is no handler): its message.
            TimeoutError: no ack in `timeout` seconds.
            ConnectionClosed: the server closed the connection.
        """
        ack = self._call(events_protocol.client_event(event, data, next(self._ids)), timeout)
        self.settle(timeout)
        if ack.error is not None:
            raise EventError(ack.error)
        return ack.data

    def send(self, event: str, data: Any = None) -> None:
        """Send `event` without asking for an ack (fire and forget)."""
        self.conn.send(events_protocol.dumps(events_protocol.client_event(event, data)))

    def join(self, room: str, last: int = 0, timeout: float = 5.0) -> None:
        """Join `room` (first its `last` most recent broadcasts) and wait until the server
        has subscribed: what it replays is then in `get_received`.

        Raises:
            EventError: the server answered with an error frame (bad name, refused by
                the app's join hook).
        """
        self._checked(events_protocol.client_join(room, last), timeout)

    def leave(self, room: str, timeout: float = 5.0) -> None:
        """Leave `room` and wait until the server has read it. Raises as `join`."""
        self._checked(events_protocol.client_leave(room), timeout)

    def get_received(self) -> List[Tuple[str, Any]]:
        """The events received since the last call, as (event, data), oldest first:
        every broadcast published before this call included (it waits for the
        in-process fan-out, at most 5 s)."""
        self.settle()
        out, self._events = self._events, []
        return out

    def sync(self, timeout: float = 5.0) -> None:
        """Wait until the server has read every frame sent so far and the broadcast has
        delivered everything published until now."""
        self._call(events_protocol.client_event(_SYNC_EVENT, None, next(self._ids)), timeout)
        self.settle(timeout)

    def settle(self, timeout: float = 5.0) -> None:
        """Wait until this process's broadcast has handed every message published so
        far to its subscribers, then read what arrived. Raises TimeoutError."""
        wait_delivered(self._broadcast, timeout)
        for message in self.conn.receive_available():
            self._take(message)

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection (see `TestConnection.close`). Idempotent."""
        self.conn.close(code, reason)

    def __enter__(self) -> EventsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def close_code(self) -> Optional[int]:
        return self.conn.close_code

    @property
    def position(self) -> Tuple[Optional[str], Dict[str, int]]:
        """What a client resumes from (`TestClient.events(resume=)`), as ``(epoch, rooms)``
        of the last broadcast received, ``rooms`` mapping each room ("" for the endpoint-wide
        stream) to the seq of its last broadcast."""
        epoch: Optional[str] = None
        rooms: Dict[str, int] = {}
        for frame in self.frames:
            if isinstance(frame, events_protocol.EventFrame) and frame.seq is not None:
                epoch = frame.epoch
                rooms[frame.room or ""] = frame.seq
        return epoch, rooms

    # -- internals ---------------------------------------------------------------------

    def _checked(self, frame: Dict[str, Any], timeout: float) -> None:
        errors = len(self.errors)
        self.conn.send(events_protocol.dumps(frame))
        self.sync(timeout)
        if len(self.errors) > errors:
            raise EventError(self.errors[errors])

    def _call(self, frame: Dict[str, Any], timeout: float) -> events_protocol.AckFrame:
        ack_id = frame["id"]
        self.conn.send(events_protocol.dumps(frame))
        deadline = time.monotonic() + timeout
        while ack_id not in self._acks:
            message = self.conn.receive(max(0.0, deadline - time.monotonic()))
            if message is None:
                raise TimeoutError(f"no ack for {frame['event']!r} in {timeout}s")
            self._take(message)
        return self._acks.pop(ack_id)

    def _take(self, message: Union[str, bytes]) -> None:
        frame = events_protocol.parse_server(message)
        if isinstance(frame, events_protocol.AckFrame):
            self._acks[frame.id] = frame
            return  # acks are answers, not events
        self.frames.append(frame)
        if isinstance(frame, events_protocol.EventFrame):
            self._events.append((frame.event, frame.data))
        elif isinstance(frame, events_protocol.ErrorFrame):
            self.errors.append(frame.message)


# -- the broadcast: wait for the in-process fan-out ------------------------------------------


class _Probe(QueueSubscriber):
    """A subscriber that is never attached: recovering it subscribes nothing, and the
    hub's answer tells how far its fan-out has gone (`Recovered.seq`)."""

    connected = False
    pending_output = 0

    def deliver(self, batch: Batch) -> bool:
        return False



_PROBE = _Probe()


def wait_delivered(broadcast: Broadcast, timeout: float = 5.0) -> None:
    """Block until `broadcast`'s hub in this process has handed every message published
    so far to its subscribers (and applied every join queued before).

    Raises:
        TimeoutError: not within `timeout` seconds.
    """
    if not broadcast.available:
        return
    target = broadcast.position().seq
    deadline = time.monotonic() + timeout
    while _hub_position(broadcast, deadline) < target:
        if time.monotonic() >= deadline:
            raise TimeoutError(f"the in-process broadcast did not deliver up to seq {target} in {timeout}s")


def _hub_position(broadcast: Broadcast, deadline: float) -> int:
    """How far the hub's fan-out has gone (the seq it continues after), asked in its task."""
    done = threading.Event()
    reached: List[int] = []

    def answer(result: Dict[str, Any]) -> None:
        reached.append(result[_PROBE_CHANNEL].seq)
        done.set()

    broadcast.recover(_PROBE, {_PROBE_CHANNEL: None}, answer)
    if not done.wait(max(0.0, deadline - time.monotonic())):
        raise TimeoutError("the in-process broadcast's hub did not answer")
    return reached[0]


# -- the server side of the socket pair: a WSGI request --------------------------------------


def _serve_request(app: Any, environ: Dict[str, Any], sock: socket.socket) -> None:
    """Run one WSGI request as Werkzeug's development server would; answer with HTTP on
    `sock` unless the app upgraded (then the connection owned the socket)."""
    state: Dict[str, Any] = {}

    def start_response(status: str, headers: List[Tuple[str, str]], exc_info: Any = None) -> Any:
        state["status"], state["headers"] = status, headers
        return lambda data: state.setdefault("body", []).append(data)

    try:
        result = app(environ, start_response)
        try:
            body = list(state.pop("body", [])) + [bytes(chunk) for chunk in result]
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        if not str(state.get("status", "")).startswith("101"):
            _write_response(sock, state.get("status", "500 INTERNAL SERVER ERROR"), state.get("headers", []), body)
    except Exception:
        import traceback

        traceback.print_exc(file=sys.stderr)
        _write_response(sock, "500 INTERNAL SERVER ERROR", [], [b"the app raised: see the test's stderr\n"])
    finally:
        sock.close()


def _write_response(sock: socket.socket, status: str, headers: Iterable[Tuple[str, str]], body: List[bytes]) -> None:
    data = b"".join(body)
    head = f"HTTP/1.1 {status}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers
                                              if k.lower() != "content-length")
    head += f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    try:
        sock.sendall(head.encode("latin-1") + data)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def _read_head(sock: socket.socket, timeout: float) -> Tuple[int, Dict[str, str], bytes]:
    """(status, headers with lower-cased names, bytes after the head) of the answer."""
    deadline = time.monotonic() + timeout
    data = b""
    while b"\r\n\r\n" not in data:
        remaining = deadline - time.monotonic()
        ready, _, _ = select.select([sock], [], [], max(0.0, remaining))
        if not ready:
            raise TimeoutError(f"the server did not answer the handshake in {timeout}s")
        chunk = sock.recv(65536)
        if not chunk:
            raise UwsgiWsError(f"the server closed the connection without an answer (got {data[:200]!r})")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers: Dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, rest


def _read_to_end(sock: socket.socket, data: bytes, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    chunks = [data]
    while True:
        ready, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        chunk = sock.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)
