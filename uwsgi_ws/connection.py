"""One WebSocket connection on a socket the package owns after the handshake.

The protocol engine (`protocol.Protocol`) decides what the bytes mean; this
module moves them. A connection has no task of its own: the task waiting in
`receive` (or `close`) reads, and between those waits the worker's one fd
watcher (`runtime.fd_watcher()`) reads, answers pings, keeps the timers and
flushes queued output in its own task (`_Reader`). So an idle connection costs
its handler's task and nothing more. Everything written
(the handler's messages, the reader's pongs and close frames, the broadcast
fan-out) goes through one `outbound.Outbound`, so frames never interleave and
no data frame follows our close frame.

To the broadcast hub a connection is a `uwsgi_ws.broadcast.Subscriber`:
`deliver`, `begin_direct`/`end_direct`, `flush`, `fail_slow`.

Thread-safety: `send*`, `ping`, `close` and the read side may be used from
different threads/greenlets at once; one consumer should call `receive`.
"""

from __future__ import annotations

import collections
import itertools
import os
import socket
import time
from typing import TYPE_CHECKING, Any, Deque, Dict, Iterator, Optional, Set, Union

from . import _uwsgi, frames, metrics
from .exceptions import ConnectionClosed, ConnectionClosedError, ConnectionClosedOK
from .metrics import BYTES_IN, BYTES_OUT, MESSAGES_IN, MESSAGES_OUT
from .outbound import Outbound
from .protocol import ABNORMAL, INTERNAL_ERROR, NORMAL, Close, Message, Pong, Protocol, State

if TYPE_CHECKING:
    from .broadcast import Batch, Broadcast
    from .deflate import DeflateOptions

__all__ = ["Connection", "ConnectionClosed", "ConnectionClosedError", "ConnectionClosedOK", "LegacyConnection"]

_CLOSED = object()  # inbox sentinel
_NO_INBOX: Deque[object] = ()  # type: ignore[assignment]  # shared until the first message (an empty deque is 0.7 KiB)
_DEFAULT: Any = object()  # receive(): use the connection's receive_timeout
_READ_SIZE = 65536
Data = Union[str, bytes, bytearray, memoryview]


class Connection:
    """A WebSocket connection handed to a route handler.

    Created by the package after the handshake; not meant to be built by
    applications. `receive` blocks the caller (thread or greenlet); `send`
    blocks until the frame is written or buffered within `write_limit`.
    """

    def __init__(
        self,
        sock: socket.socket,
        environ: Dict[str, Any],
        runtime: Any,
        *,
        max_message_size: Optional[int] = 1 << 20,
        ping_interval: Optional[float] = 20.0,
        ping_timeout: Optional[float] = 20.0,
        close_timeout: float = 5.0,
        max_queue: int = 16,
        write_limit: int = 1 << 20,
        broadcast: Optional[Broadcast] = None,
        receive_timeout: Optional[float] = None,
        protocol: Optional[Protocol] = None,
    ) -> None:
        self.environ = environ
        self._sock = sock
        self.fd = sock.fileno()
        self._rt = runtime
        self._waiter = runtime.Waiter(self.fd)  # the reader's own
        self._protocol = protocol if protocol is not None else Protocol(max_message_size)
        self._plock = runtime.Lock()  # the protocol engine
        self._outbound = Outbound(sock, runtime, write_limit, self._broken)
        self._outbound.shared_sent = self._protocol.shared_frame_sent
        # The hub's per-delivery calls go straight to the outbound stream.
        self.begin_direct = self._outbound.begin_direct  # type: ignore[method-assign]
        self.end_direct = self._outbound.end_batch  # type: ignore[method-assign]
        # Messages read and not yet returned by `receive` (no task ever blocks on it:
        # the receiving task reads itself), then _CLOSED. Made at the first message
        # (`_push`): most of an idle connection's life it holds nothing.
        self._inbox: Deque[object] = _NO_INBOX
        self._ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.close_timeout = close_timeout
        self.max_queue = max_queue
        now = time.monotonic()
        self._next_ping = now + ping_interval if ping_interval else None
        self._ping_payload: Optional[bytes] = None
        self._pong_deadline: Optional[float] = None
        self._close_deadline: Optional[float] = None
        self._slow = False
        self._metrics = metrics.local()
        self._broadcast = broadcast
        self._reader = _Reader(self)
        self._ended = False
        #: Data messages received from this connection.
        self.messages_received = 0
        #: The default `receive()` timeout in seconds (None: wait for ever); the
        #: extension's `timeout` option (Flask-uWSGI-WebSocket's name).
        self.receive_timeout = receive_timeout
        #: This connection's id, unique in the uWSGI instance while it is open:
        #: "<worker pid>-<number>" (Flask-uWSGI-WebSocket's `ws.id`).
        self.id = _next_id()

    @property
    def ping_interval(self) -> Optional[float]:
        """Seconds between keepalive pings (None: none); setting it restarts the interval."""
        return self._ping_interval

    @ping_interval.setter
    def ping_interval(self, value: Optional[float]) -> None:
        self._ping_interval = value
        self._next_ping = time.monotonic() + value if value else None

    @property
    def write_limit(self) -> int:
        """Bytes of broadcasts buffered before this connection counts as a slow consumer."""
        return self._outbound.write_limit

    @write_limit.setter
    def write_limit(self, value: int) -> None:
        self._outbound.write_limit = value

    @property
    def messages_sent(self) -> int:
        """Data messages sent to this connection (broadcasts included)."""
        return self._outbound.messages

    # -- life cycle (the package's side) ----------------------------------

    def start(self) -> None:
        """Start reading (a background task in the threads and gevent models)."""
        if self._broadcast is not None and self._broadcast.available:
            self._broadcast.attach(self)
        self._reader.start()

    def finish(self, code: int = NORMAL, reason: str = "") -> None:
        """End of the handler: close if still open, wait for the handshake, stop
        reading. After this the package may hand the fd back to uWSGI."""
        if self._protocol.state is State.OPEN:
            self.close(code, reason)
        else:
            self._reader.wait_done(self.close_timeout)
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the reader if it still waits
        except OSError:
            pass
        self._reader.join(self.close_timeout + 1)
        with self._plock:
            self._protocol.abort()
        self._leave_broadcast()

    # -- receiving ---------------------------------------------------------

    def receive(self, timeout: Optional[float] = _DEFAULT) -> Union[str, bytes, None]:
        """The next message: `str` (text) or `bytes` (binary).

        Args:
            timeout: seconds to wait; None waits for ever, 0 never blocks; by default
                `receive_timeout` (the extension's `timeout` option; None unless set).

        Returns:
            The message, or None when `timeout` passed first.

        Raises:
            ConnectionClosed: the connection is closed and every message received
                before the close has been returned.

        Blocks the calling thread or greenlet.
        """
        return self._reader.receive(self.receive_timeout if timeout is _DEFAULT else timeout)

    def recv(self, timeout: Optional[float] = _DEFAULT) -> Union[str, bytes, None]:
        """Alias of `receive` (Flask-uWSGI-WebSocket and flask-sock name it so)."""
        return self.receive(timeout)

    def recv_nb(self) -> Union[str, bytes, None]:
        """The next message if one is waiting, else None; never blocks."""
        return self.receive(0)

    def __iter__(self) -> Iterator[Union[str, bytes]]:
        """Messages until the connection closes; the loop simply ends then."""
        while True:
            try:
                message = self.receive(None)
            except ConnectionClosed:
                return
            if message is not None:
                yield message

    iter_data = __iter__

    def _unwrap(self, item: object) -> Union[str, bytes]:
        if item is _CLOSED:
            self._push(_CLOSED)  # later calls raise too
            raise ConnectionClosed(self.close_code, self.close_reason)
        return item  # type: ignore[return-value]

    # -- sending -----------------------------------------------------------

    def send(self, data: Data) -> None:
        """Send a text frame for `str`, a binary frame for bytes-like data.

        Raises:
            ConnectionClosed: the connection is closed (or closing: no data frame
                follows a close frame, RFC 6455 section 5.5.1).
            TypeError: `data` is neither str nor bytes-like.
            ValueError: a str that is not valid Unicode (a lone surrogate: a text
                frame must be UTF-8, RFC 6455 section 5.6).

        Blocks until the frame is written (or buffered past a full socket and drained).
        """
        if not isinstance(data, (str, bytes, bytearray, memoryview)):
            raise TypeError(f"send() takes str (a text frame) or bytes (binary), not {type(data).__name__}")
        protocol = self._protocol
        self._send(lambda: protocol.frame_message(data))

    def send_text(self, data: str) -> None:
        """Send `data` in a text frame. Raises ConnectionClosed, TypeError (not a str)."""
        if not isinstance(data, str):
            raise TypeError(f"send_text() takes a str, not {type(data).__name__}")
        self.send(data)

    def send_binary(self, data: Union[bytes, bytearray, memoryview]) -> None:
        """Send `data` in a binary frame. Raises ConnectionClosed, TypeError (not bytes-like)."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"send_binary() takes bytes-like data, not {type(data).__name__}")
        self.send(data)

    def send_bytes(self, data: Union[str, bytes, bytearray, memoryview]) -> None:
        """Send `data` in a binary frame; a `str` is sent as its UTF-8 bytes
        (flask-websockets' name: its examples echo whatever `iter_data` yields).
        Raises ConnectionClosed, TypeError (neither str nor bytes-like)."""
        self.send_binary(frames.utf8(data, "send_bytes() text") if isinstance(data, str) else data)

    def send_from_sharedarea(self, id: int, pos: int, length: int = 0) -> None:
        """Send `length` bytes (0: to the end) of uWSGI sharedarea `id` from `pos`
        as a text frame. Unlike the uWSGI core, this honours `pos`.

        Raises:
            ValueError: the range is outside the sharedarea, or its bytes are not
                UTF-8 (a text frame must be; RFC 6455 section 8.1).
            ConnectionClosed: the connection is closed.
        """
        raw = _sharedarea_bytes(id, pos, length)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"sharedarea {id} bytes {pos}..{pos + len(raw)} are not UTF-8 (at byte "
                             f"{pos + exc.start}): a text frame must be; use send_binary_from_sharedarea") from None
        self.send(text)

    def send_binary_from_sharedarea(self, id: int, pos: int, length: int = 0) -> None:
        """As `send_from_sharedarea`, in a binary frame."""
        self.send(_sharedarea_bytes(id, pos, length))

    def ping(self, data: Union[str, bytes] = b"") -> None:
        """Send a ping; the pong is handled for you.

        Raises:
            ValueError: more than 125 bytes of payload (RFC 6455 section 5.5).
            ConnectionClosed: the connection is closed.
        """
        payload = frames.utf8(data, "a ping's text") if isinstance(data, str) else bytes(data)
        with self._plock:
            self._check_open()
            self._protocol.ping(payload)
            out = self._protocol.data_to_send()
        self._write(out, wait=True)

    def close(self, code: int = NORMAL, reason: Union[str, int] = "", *, message: Optional[str] = None) -> None:
        """Start the closing handshake and wait (up to `close_timeout`) for the peer's answer.

        Args:
            code: the close code (RFC 6455 section 7.4: 1000-1003, 1007-1013, 3000-4999).
            reason: the close reason (UTF-8, cut to 123 bytes on a character).
            message: flask-websockets' spelling, ``close(reason=1000, message="bye")``:
                `reason` is then the code and `message` the reason.

        Raises:
            ValueError: a code no peer may receive (the same rule as the decoder's).
            TypeError: a code that is not an int, a reason that is not a str.
        """
        if message is not None or isinstance(reason, int):
            if not isinstance(reason, int) or isinstance(reason, bool) or code != NORMAL:
                raise TypeError("close(reason=<code>, message=<text>) is flask-websockets' spelling; "
                                "otherwise write close(code, reason)")
            code, reason = reason, message or ""
        with self._plock:
            self._protocol.close(code, reason)
            out = self._protocol.data_to_send()
        self._outbound.close_after(out)
        self._metrics.add(BYTES_OUT, len(out))
        self._close_deadline = time.monotonic() + self.close_timeout
        self._reader.wait_closed(self._close_deadline)

    def close_nowait(self, code: int = NORMAL, reason: str = "") -> None:
        """Queue the close frame and shut our side of TCP; wait for nothing (the
        worker is about to exit). Never blocks. Raises ValueError as `close` does."""
        self._fail(code, reason)

    # -- state -------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once a close frame was sent or received, or the transport is gone."""
        return self._protocol.state is not State.OPEN

    @property
    def connected(self) -> bool:
        """True while the connection is open (no close frame sent or received)."""
        return self._protocol.state is State.OPEN

    @property
    def close_code(self) -> Optional[int]:
        """The close code once closed (1006 if the transport was lost), else None."""
        p = self._protocol
        return p.close_code if p.state is State.CLOSED else None

    @property
    def close_reason(self) -> str:
        """The close reason once closed ("" until then)."""
        return self._protocol.close_reason if self._protocol.state is State.CLOSED else ""

    @property
    def closed_by(self) -> str:
        """Who sent the first close frame: "server", "client", or "none" (the
        transport was lost with no close frame either way, or still open)."""
        return self._protocol.close_initiator or "none"

    # -- channels ------------------------------------------------------------

    @property
    def channels(self) -> Set[str]:
        """The broadcast channels this connection receives now (a copy)."""
        return self._broadcast.channels(self) if self._broadcast is not None else set()

    def subscribe(self, channel: str) -> Any:
        """Receive broadcasts published on `channel`; a context manager that unsubscribes.

        Raises:
            ValueError: not a valid channel name (empty, not UTF-8, over 255 bytes).
            RingError: broadcast is not available here (the message names the option:
                --sharedarea, --mule=uwsgi_ws.mule:run, a model with background tasks).
        """
        from .exceptions import RingError

        if self._broadcast is None or not self._broadcast.available:
            problem = self._broadcast.problem if self._broadcast is not None else "no broadcast"
            raise RingError(f"subscribe({channel!r}) needs the broadcast: {problem}")
        return self._broadcast.subscribe(self, channel)

    def unsubscribe(self, channel: str) -> None:
        """Stop receiving `channel` (a no-op when not subscribed)."""
        if self._broadcast is not None:
            self._broadcast.unsubscribe(self, channel)

    # -- the broadcast hub's side (uwsgi_ws.broadcast.Subscriber) -------------

    def deliver(self, batch: Batch) -> bool:
        """Queue the batch's frames without blocking; False (nothing queued) when closed
        or over `write_limit`. The hub counts the instance metrics."""
        if batch.compressed:  # the engine learns of the shared frames in write order
            return self._outbound.offer(batch.data, len(batch.entries), queued=self._protocol.shared_frame_sent)
        return self._outbound.offer(batch.data, len(batch.entries))

    def shared_deflate(self) -> Optional[DeflateOptions]:
        """The permessage-deflate settings of the broadcast frames this connection
        takes as they are (compressed once for all connections with equal ones),
        or None: not negotiated."""
        codec = self._protocol.deflate
        return codec.shared_options if codec is not None else None

    def begin_direct(self) -> int:
        """The fd for the hub's direct batch write, or -1 (see `Outbound.begin_direct`).
        Replaced in `__init__` by the outbound's own method (one call per delivery)."""
        return self._outbound.begin_direct()

    def end_direct(self, batch: Batch, result: int) -> None:
        """After the hub's direct write (see `Outbound.end_batch`, which replaces this in
        `__init__`: one call per delivery)."""
        self._outbound.end_batch(batch, result)

    def send_frame_nowait(self, frame: bytes) -> bool:
        """Queue one ready-made data frame without blocking (past `write_limit` too);
        False when closed. For the events layer's notices, from the hub's task."""
        return self._outbound.write(frame, 1, wait=False)

    @property
    def pending_output(self) -> int:
        """Bytes queued but not yet written."""
        return self._outbound.pending

    def fileno(self) -> int:
        """The connection's socket file descriptor (for `select`-style waits; never close it)."""
        return self.fd

    def flush(self) -> bool:
        """Write what the socket accepts now; True when nothing more is to be flushed."""
        empty = self._outbound.flush()
        if self._slow:
            # A slow consumer gets its close frame if it drains in time, then TCP is shut.
            if empty or time.monotonic() >= (self._close_deadline or 0):
                self._abort("slow consumer")
                return True
            return False
        return empty

    def fail_slow(self, code: int, reason: str) -> None:
        """Close a connection that cannot keep up: the close frame goes after what is
        already queued (even past `write_limit`); TCP is shut once it is written or
        after `close_timeout`. Never blocks."""
        with self._plock:
            if self._protocol.state is not State.OPEN:
                return
            self._protocol.fail(code, reason)
            out = self._protocol.data_to_send()
        self._close_deadline = time.monotonic() + self.close_timeout
        self._slow = True
        self._outbound.close_after(out)
        self._metrics.add(BYTES_OUT, len(out))
        self.flush()

    fail_slow_consumer = fail_slow

    # -- internals: writing -------------------------------------------------

    def _check_open(self) -> None:
        if self._protocol.state is not State.OPEN:
            raise ConnectionClosed(*self._protocol.pending_close)

    def _send(self, make_frame: Any) -> None:
        """Queue one data message made under the outbound lock; wait until written."""
        self._check_open()
        size = [0]

        def frame() -> bytes:
            data: bytes = make_frame()
            size[0] = len(data)
            return data

        if not self._outbound.write(frame, 1, wait=True):
            if self._protocol.state is State.OPEN:  # the socket failed under us
                raise ConnectionClosed(ABNORMAL, "connection lost while writing")
            raise ConnectionClosed(*self._protocol.pending_close)
        self._metrics.add2(BYTES_OUT, size[0], MESSAGES_OUT, 1)

    def _write(self, data: bytes, wait: bool) -> None:
        """Queue control frames (pongs, pings); with `wait`, until written."""
        if data:
            self._outbound.write(data, 0, wait=wait)
            self._metrics.add(BYTES_OUT, len(data))

    def _broken(self) -> None:
        """The socket failed: stop everything; the reader sees EOF."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _abort(self, reason: str) -> None:
        with self._plock:
            self._protocol.abort(reason)
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._reader.aborted()

    def _is_closed(self) -> bool:
        """The engine's state read anew (a method: callers poll it across I/O)."""
        return self._protocol.state is State.CLOSED

    def _leave_broadcast(self) -> None:
        if self._broadcast is not None:
            self._broadcast.detach(self)

    # -- internals: reading (called by the reader) ---------------------------

    def _pump(self, timeout: Optional[float], want_write: bool) -> None:
        """Wait for input, output room or a timer (at most `timeout`), then act on it."""
        now = time.monotonic()
        deadline = self._next_deadline()
        wait_for = None if deadline is None else max(0.0, deadline - now)
        if timeout is not None:
            wait_for = timeout if wait_for is None else min(wait_for, timeout)
        readable, writable = self._waiter.wait(True, want_write and bool(self._outbound.pending), wait_for)
        if writable:
            self.flush()
        if readable:
            try:
                data = self._sock.recv(_READ_SIZE)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                data = b""
            if data is not None:
                self._feed(data)
        self._on_timers(time.monotonic())

    def _read_available(self) -> bool:
        """Feed whatever the socket holds right now, without waiting; True if anything came."""
        try:
            data = self._sock.recv(_READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            data = b""
        self._feed(data)
        return True

    def _feed(self, data: bytes) -> None:
        with self._plock:
            protocol = self._protocol
            protocol.receive_data(data)
            out = protocol.data_to_send()
            events = protocol.events_received()
            failed = protocol.failed
            closing = protocol.state is not State.OPEN
            if protocol.state is State.CLOSING and self._close_deadline is None:
                self._close_deadline = time.monotonic() + self.close_timeout
        if out:
            if closing:  # our close frame (an echo, or a failure): no data after it
                self._outbound.close_after(out)
                self._metrics.add(BYTES_OUT, len(out))
            else:
                self._write(out, wait=False)
            if failed:
                # RFC 6455 7.1.7: after failing, close TCP; read on until EOF or the deadline.
                self._closing_handshake_done()
        received = 0
        for event in events:
            if type(event) is Message:
                received += 1
                self._push(event.data)
            elif type(event) is Pong:
                if self._ping_payload is not None and event.payload == self._ping_payload:
                    self._ping_payload = self._pong_deadline = None
            elif type(event) is Close:
                self._closing_handshake_done()
        self.messages_received += received
        self._metrics.add2(BYTES_IN, len(data), MESSAGES_IN, received)

    def _closing_handshake_done(self) -> None:
        # RFC 6455 7.1.1: the server closes the TCP connection first.
        self._outbound.flush()
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _resumed(self) -> None:
        """Reading resumes after a `max_queue` pause: a pong may wait behind what was not
        read, so the peer gets a full `ping_timeout` again (the delay was ours)."""
        if self._pong_deadline is not None and self.ping_timeout:
            self._pong_deadline = max(self._pong_deadline, time.monotonic() + self.ping_timeout)

    def _next_deadline(self) -> Optional[float]:
        candidates = [t for t in (self._next_ping, self._pong_deadline, self._close_deadline) if t is not None]
        return min(candidates) if candidates else None

    def _on_timers(self, now: float) -> None:
        state = self._protocol.state
        if state is State.CLOSED:
            return
        if self._close_deadline is not None and now >= self._close_deadline and state is State.CLOSING:
            with self._plock:
                self._protocol.abort("no close frame from the peer in time")
            self._closing_handshake_done()
            return
        if self._pong_deadline is not None and now >= self._pong_deadline:
            self._pong_deadline = None
            self._fail(INTERNAL_ERROR, "keepalive ping timeout")
            return
        if self._next_ping is not None and now >= self._next_ping and state is State.OPEN:
            self._next_ping = now + (self.ping_interval or 0)
            if self._ping_payload is None:
                self._ping_payload = os.urandom(4)
                if self.ping_timeout:
                    self._pong_deadline = now + self.ping_timeout
                with self._plock:
                    self._protocol.ping(self._ping_payload)
                    out = self._protocol.data_to_send()
                self._write(out, wait=False)

    def _fail(self, code: int, reason: str) -> None:
        with self._plock:
            self._protocol.fail(code, reason)
            out = self._protocol.data_to_send()
        self._close_deadline = time.monotonic() + self.close_timeout
        self._outbound.close_after(out)
        self._metrics.add(BYTES_OUT, len(out))
        self._closing_handshake_done()

    def _end(self) -> None:
        """Reading is over: wake the consumer and whoever waits in `close`."""
        with self._plock:
            if self._ended:
                return
            self._ended = True
        self._push(_CLOSED)
        self._leave_broadcast()

    def _push(self, item: object) -> None:
        """Append to the inbox, making it at the first item. The reading task and the
        task that ends the connection may push at once (threads): the deque is made
        under the engine lock, so neither item lands in a deque the other replaces."""
        inbox = self._inbox
        if inbox is _NO_INBOX:
            with self._plock:
                if self._inbox is _NO_INBOX:
                    self._inbox = collections.deque()
                inbox = self._inbox
        inbox.append(item)


class LegacyConnection(Connection):
    """A `Connection` with Flask-uWSGI-WebSocket's end-of-connection behaviour, for its
    classes `GeventWebSocket` and `AsyncWebSocket` (uwsgi_ws.extension), so its
    examples run unchanged: the chat that keeps ``users[ws.id] = ws``, loops on
    ``msg = ws.receive()`` until it is None, then ``del users[ws.id]``.

    - `receive` (`recv`, `recv_nb`) returns None once when the connection is closed
      and every message before the close was returned (Flask-uWSGI-WebSocket's
      ``recv()`` returns None on the IOError of a closed socket; its gevent client
      queues a None); a later call raises ConnectionClosed, so a handler that
      ignores None ends instead of spinning.
    - A send to a closed connection from another handler's task (a chat writing to
      ``users[id]`` while that user leaves) is dropped, as Flask-uWSGI-WebSocket's
      gevent client queues it and never raises: the sender's connection is not
      failed with 1011. From the connection's own handler it raises
      ConnectionClosed before any type check (``ws.send(ws.receive())`` at the
      close ends the handler quietly, not with a TypeError for None).

    `WebSocket` (uwsgi_ws's own API) keeps `Connection`: receive raises
    ConnectionClosed at the close (docs/migration.md says how to clean up there).
    Thread-safety as `Connection`.
    """

    def __init__(self, sock: socket.socket, environ: Dict[str, Any], runtime: Any, **options: Any) -> None:
        super().__init__(sock, environ, runtime, **options)
        self._owner = runtime.current_task()  # the handler's task (the upgrade runs in it)
        self._none_returned = False

    def receive(self, timeout: Optional[float] = _DEFAULT) -> Union[str, bytes, None]:
        """As `Connection.receive`, but None (once) instead of ConnectionClosed at the close."""
        try:
            return super().receive(timeout)
        except ConnectionClosed:
            if self._none_returned:
                raise
            self._none_returned = True
            return None

    def send(self, data: Data) -> None:
        """As `Connection.send`; on a closed connection: dropped when called from another
        handler's task, ConnectionClosed from this connection's own (see the class)."""
        if self._protocol.state is not State.OPEN:
            if self._dropped():
                return
            raise ConnectionClosed(*self._protocol.pending_close)
        try:
            super().send(data)
        except ConnectionClosed:
            if not self._dropped():
                raise

    def _dropped(self) -> bool:
        return bool(self._rt.current_task() != self._owner)


class _Reader:
    """Who reads the socket, one task at a time (the read lock says which):

    - the task waiting in `receive`, `close` or `finish` reads itself (the handler's
      own task: a connection needs no task of its own);
    - between those waits, the worker's fd watcher (`runtime.fd_watcher()`: a
      libev watcher on the gevent hub, one epoll thread for the threads model, none
      in the async model) watches the fd, the output still queued and the timers
      (keepalive, close deadline), and does the same work in its own task.

    Every holder of the read lock arms the watcher again after releasing it (the
    watcher skips a connection whose lock is held), so exactly one of them watches.
    While `max_queue` messages wait in the inbox nothing reads (back-pressure); the
    next `receive` reads again.
    """

    __slots__ = ("_conn", "_finished", "_lock", "_paused", "_watcher")  # one per connection

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._lock = conn._rt.Lock()
        self._watcher = conn._rt.fd_watcher()
        self._finished = False
        self._paused = False

    def fileno(self) -> int:
        return self._conn.fd

    def __repr__(self) -> str:
        return f"<uwsgi_ws connection {self._conn.id}>"

    def start(self) -> None:
        self._rearm()

    # -- the lock and the watcher ------------------------------------------------

    def _acquire(self, timeout: Optional[float]) -> bool:
        if timeout is None:
            return bool(self._lock.acquire())
        return bool(self._lock.acquire(True, max(0.0, timeout)))

    def _release(self) -> None:
        self._lock.release()
        self._rearm()

    def _rearm(self) -> None:
        """Let the watcher read (and flush, and keep the timers) until a task takes over."""
        conn = self._conn
        if self._finished or conn._ended:
            self._watcher.unwatch(self)
            return
        read = not (conn.max_queue and len(conn._inbox) >= conn.max_queue)
        if self._paused and read:
            conn._resumed()
        self._paused = not read
        write = bool(conn._outbound.pending)
        deadline = conn._next_deadline() if read else conn._close_deadline
        if read or write or deadline is not None:
            self._watcher.watch(self, read, write, deadline)
        else:
            self._watcher.unwatch(self)

    def on_ready(self, readable: bool, writable: bool) -> None:
        """The watcher's callback (in its task): do what the fd or a timer asks, never block."""
        if not self._lock.acquire(False):
            return  # a task reads now; it arms the watcher again when done
        conn = self._conn
        try:
            if writable:
                conn.flush()
            if readable and not self._paused:
                conn._read_available()
            conn._on_timers(time.monotonic())
            if conn._is_closed():
                conn._end()
        except Exception:  # never leave a connection open that nothing reads
            with conn._plock:
                conn._protocol.fail(INTERNAL_ERROR, "internal error")
                conn._protocol.abort()
            self._lock.release()
            conn._end()
            raise
        self._release()

    # -- the tasks that wait --------------------------------------------------------

    def receive(self, timeout: Optional[float]) -> Union[str, bytes, None]:
        conn = self._conn
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            # Checked before popping: an IndexError's traceback would make this frame a
            # frame object, kept (0.2 KiB) for as long as the connection waits here.
            inbox = conn._inbox  # made at the first message: read it anew
            if inbox:
                try:
                    item = inbox.popleft()
                except IndexError:  # another consumer took it (one consumer is the contract)
                    pass
                else:
                    if self._paused:
                        self._rearm()
                    return conn._unwrap(item)
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                # recv_nb and expired timeouts still see what arrived
                if self._lock.acquire(False):
                    try:
                        self._watcher.unwatch(self)
                        conn._read_available()
                        if conn._is_closed():
                            conn._end()
                    finally:
                        self._release()
                    if conn._inbox:
                        continue
                return None
            if not self._acquire(remaining):
                continue  # held until our deadline: the loop returns None
            try:
                self._watcher.unwatch(self)
                if self._paused:
                    self._paused = False
                    conn._resumed()
                while not conn._inbox:
                    if conn._is_closed():
                        conn._end()
                        break
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        break
                    conn._pump(remaining, want_write=True)
                    if conn._is_closed():
                        conn._end()
            finally:
                self._release()

    def read_until_closed(self, deadline: float, abort: bool) -> None:
        """Read (or let the reading task read) until the engine is CLOSED or `deadline`;
        with `abort`, give up on the peer then. Takes the read lock even when already
        CLOSED, so whoever read the close has also written its answer."""
        conn = self._conn
        while True:
            got = self._acquire(deadline - time.monotonic())
            if got:
                try:
                    self._watcher.unwatch(self)
                    while not conn._is_closed() and time.monotonic() < deadline:
                        conn._pump(deadline - time.monotonic(), want_write=True)
                    if conn._is_closed():
                        conn._end()
                finally:
                    self._release()
            if conn._is_closed():
                return
            if time.monotonic() >= deadline:
                if abort:
                    conn._abort("no close frame from the peer in time")
                return

    def wait_closed(self, deadline: float) -> None:
        self.read_until_closed(deadline, abort=True)

    def wait_done(self, timeout: float) -> None:
        self.read_until_closed(time.monotonic() + timeout, abort=False)

    def join(self, timeout: float) -> None:
        """The end: nothing reads or watches from now on (the fd goes back to uWSGI)."""
        got = self._acquire(timeout)
        self._finished = True
        self._watcher.forget(self)
        if got:
            self._lock.release()

    def aborted(self) -> None:
        self._conn._end()


_ids = itertools.count(1)


def _next_id() -> str:
    return f"{os.getpid()}-{next(_ids)}"


def _sharedarea_bytes(id: int, pos: int, length: int) -> bytes:
    area = _uwsgi.api().sharedarea_memoryview(id)
    if pos < 0 or pos > len(area):
        raise ValueError(f"position {pos} is outside sharedarea {id} ({len(area)} bytes)")
    end = len(area) if length <= 0 else pos + length
    if end > len(area):
        raise ValueError(f"{length} bytes from {pos} run past the end of sharedarea {id} ({len(area)} bytes)")
    return bytes(area[pos:end])
