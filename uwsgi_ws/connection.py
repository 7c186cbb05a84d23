"""One WebSocket connection on a socket the package owns after the handshake.

The protocol engine (`protocol.Protocol`) decides what the bytes mean; this
module moves them. Reading happens in one place per connection: a background
task (thread or greenlet) in the threads and gevent models, the handler itself
while it waits in `receive` in the async model. Writes from the handler, the
reader (pongs, close frames) and the broadcast fan-out go through one
outbound buffer guarded by one lock, so frames never interleave.

Thread-safety: `send*`, `ping`, `close` and the read side may be used from
different threads/greenlets at once; one consumer should call `receive`.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from typing import Any, Dict, Iterator, Optional, Set, Union

from . import frames, metrics
from .metrics import BYTES_IN, BYTES_OUT, MESSAGES_IN, MESSAGES_OUT
from .protocol import (
    ABNORMAL,
    INTERNAL_ERROR,
    NORMAL,
    Close,
    Message,
    Pong,
    Protocol,
    State,
)

_CLOSED = object()  # inbox sentinel
_READ_SIZE = 65536


class ConnectionClosed(Exception):
    """The WebSocket is closed; `code` and `reason` are from the closing handshake
    (1006 when the transport was lost without one)."""

    def __init__(self, code: Optional[int], reason: str = "") -> None:
        super().__init__(f"WebSocket closed with code {code}" + (f": {reason}" if reason else ""))
        self.code = code
        self.reason = reason


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
    ) -> None:
        self.environ = environ
        self._sock = sock
        self.fd = sock.fileno()
        self._rt = runtime
        self._waiter = runtime.Waiter(self.fd)  # the reader's own
        self._protocol = Protocol(max_message_size)
        self._plock = runtime.Lock()  # the protocol engine
        self._wlock = runtime.Lock()  # the outbound buffer and socket writes
        self._out = bytearray()
        self._inbox = runtime.Queue()
        self._done = runtime.Event()  # set once the reader has seen the end
        self._resume = runtime.Event()  # inbox drained below max_queue
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.close_timeout = close_timeout
        self.max_queue = max_queue
        self.write_limit = write_limit
        now = time.monotonic()
        self._next_ping = now + ping_interval if ping_interval else None
        self._ping_payload: Optional[bytes] = None
        self._pong_deadline: Optional[float] = None
        self._close_deadline: Optional[float] = None
        self._reader = None
        self._slow = False
        self._metrics = metrics.local()
        #: Data messages received from / sent to this connection (broadcasts included).
        self.messages_received = 0
        self.messages_sent = 0
        #: Broadcast channels this connection receives (managed by the hub).
        self.channels: Set[str] = set()
        self.hub: Any = None

    # -- life cycle (the package's side) ----------------------------------

    def start(self) -> None:
        """Start the background reader (threads and gevent models)."""
        if self._rt.HAS_TASKS:
            self._reader = self._rt.spawn(self._read_loop)

    def finish(self, code: int = NORMAL, reason: str = "") -> None:
        """End of the handler: close if still open, wait for the handshake, stop
        reading. After this the package may hand the fd back to uWSGI."""
        if self._protocol.state is State.OPEN:
            self.close(code, reason)
        elif not self._done.is_set() and self._rt.HAS_TASKS:
            self._done.wait(self.close_timeout)
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the reader if it still waits
        except OSError:
            pass
        if self._reader is not None:
            self._reader.join(self.close_timeout + 1)
        with self._plock:
            self._protocol.abort()

    # -- receiving ---------------------------------------------------------

    def receive(self, timeout: Optional[float] = None) -> Union[str, bytes, None]:
        """The next message (`str` or `bytes`), or None after `timeout` seconds.

        Raises ConnectionClosed once the connection is closed and every
        message received before the close has been returned.
        """
        if not self._rt.HAS_TASKS:
            return self._receive_inline(timeout)
        try:
            if timeout is not None and timeout <= 0:
                item = self._inbox.get_nowait()
            else:
                item = self._inbox.get(timeout=timeout)
        except self._rt.Empty:
            return None
        return self._unwrap(item)

    def recv(self, timeout: Optional[float] = None) -> Union[str, bytes, None]:
        """Alias of `receive` (Flask-uWSGI-WebSocket and flask-sock name it so)."""
        return self.receive(timeout)

    def recv_nb(self) -> Union[str, bytes, None]:
        """The next message if one is waiting, else None; never blocks."""
        return self.receive(0)

    def __iter__(self) -> Iterator[Union[str, bytes]]:
        """Messages until the connection closes; the loop simply ends then."""
        while True:
            try:
                message = self.receive()
            except ConnectionClosed:
                return
            if message is not None:
                yield message

    iter_data = __iter__

    def _unwrap(self, item: object) -> Union[str, bytes]:
        if item is _CLOSED:
            self._inbox.put(_CLOSED)  # later calls raise too
            raise ConnectionClosed(self.close_code, self.close_reason)
        if self.max_queue and not self._resume.is_set() and self._inbox.qsize() < self.max_queue:
            self._resume.set()
        return item  # type: ignore[return-value]

    # -- sending -----------------------------------------------------------

    def send(self, data: Union[str, bytes, bytearray, memoryview]) -> None:
        """Send a text frame for `str`, a binary frame for bytes-like data."""
        self._send_frame(frames.encode_message(data))

    def send_text(self, data: str) -> None:
        self._send_frame(frames.encode(frames.OP_TEXT, data.encode("utf-8")))

    def send_binary(self, data: Union[bytes, bytearray, memoryview]) -> None:
        self._send_frame(frames.encode(frames.OP_BINARY, bytes(data)))

    send_bytes = send_binary

    def send_from_sharedarea(self, id: int, pos: int, length: int = 0) -> None:
        """Send `length` bytes (0: to the end) of uWSGI sharedarea `id` from `pos`
        as a text frame. Unlike the uWSGI core, this honours `pos`."""
        self._send_frame(frames.encode(frames.OP_TEXT, _sharedarea_bytes(id, pos, length)))

    def send_binary_from_sharedarea(self, id: int, pos: int, length: int = 0) -> None:
        """As `send_from_sharedarea`, in a binary frame."""
        self._send_frame(frames.encode(frames.OP_BINARY, _sharedarea_bytes(id, pos, length)))

    def ping(self, data: Union[str, bytes] = b"") -> None:
        """Send a ping (at most 125 bytes of payload); the pong is handled for you."""
        payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        with self._plock:
            self._check_open()
            self._protocol.ping(payload)
            out = self._protocol.data_to_send()
        self._write(out, wait=True)

    def close(self, code: int = NORMAL, reason: str = "") -> None:
        """Start the closing handshake and wait (up to `close_timeout`) for the peer's answer."""
        with self._plock:
            self._protocol.close(code, reason)
            out = self._protocol.data_to_send()
        if out:
            try:
                self._write(out, wait=False)
            except ConnectionClosed:
                pass
        self._close_deadline = time.monotonic() + self.close_timeout
        if self._rt.HAS_TASKS:
            if not self._done.wait(self.close_timeout):
                self._abort("no close frame from the peer in time")
        else:
            while self._protocol.state is not State.CLOSED:
                self._pump(self._close_deadline - time.monotonic())
                if time.monotonic() >= self._close_deadline:
                    self._abort("no close frame from the peer in time")

    # -- state -------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once a close frame was sent or received, or the transport is gone."""
        return self._protocol.state is not State.OPEN

    @property
    def connected(self) -> bool:
        return self._protocol.state is State.OPEN

    @property
    def close_code(self) -> Optional[int]:
        """The close code once closed (1006 if the transport was lost), else None."""
        p = self._protocol
        return p.close_code if p.state is State.CLOSED else None

    @property
    def close_reason(self) -> str:
        return self._protocol.close_reason if self._protocol.state is State.CLOSED else ""

    @property
    def closed_by(self) -> str:
        """Who sent the first close frame: "server", "client", or "none" (the
        transport was lost with no close frame either way, or still open)."""
        return self._protocol.close_initiator or "none"

    # -- broadcast support (used by the hub) ---------------------------------

    def subscribe(self, channel: str):
        """Receive broadcasts published on `channel` (a context manager that unsubscribes)."""
        if self.hub is None:
            raise RuntimeError("this connection is not attached to a WebSocket extension")
        return self.hub.subscribe(self, channel)

    def unsubscribe(self, channel: str) -> None:
        if self.hub is not None:
            self.hub.unsubscribe(self, channel)

    def enqueue_frame(self, frame: Union[bytes, memoryview], messages: int = 1) -> bool:
        """Queue a ready-made frame (`messages` data messages) without blocking
        (broadcast fan-out; the caller counts the instance metrics).

        Returns False if the connection is closed or its outbound buffer would
        exceed `write_limit` (a slow consumer); the frame is then not queued.
        """
        with self._wlock:
            if self._protocol.state is not State.OPEN:
                return False
            if self._out:
                if len(self._out) + len(frame) > self.write_limit:
                    return False
                self._out += frame
                self.messages_sent += messages
                return True
            try:
                n = self._sock.send(frame, socket.MSG_NOSIGNAL)
            except BlockingIOError:
                n = 0
            except OSError:
                self._broken()
                return False
            if n < len(frame):
                self._out += frame[n:]
            self.messages_sent += messages
            return True

    def fanout_acquire(self) -> bool:
        """For the hub's batch send: take the write lock without waiting if the
        connection is open with nothing queued. The caller writes the frame to
        `fd` itself, reports a short write with `fanout_rest`, then calls
        `fanout_release`. False: use `enqueue_frame` instead."""
        if self._out or self._protocol.state is not State.OPEN or not self._wlock.acquire(False):
            return False
        if self._out or self._protocol.state is not State.OPEN:
            self._wlock.release()
            return False
        return True

    def fanout_rest(self, frame: Union[bytes, memoryview], result: int) -> None:
        """After a batch send of `frame` returned `result` (bytes sent, or -errno)."""
        if result >= 0:
            self._out += memoryview(frame)[result:]
        elif result == -errno.EAGAIN or result == -errno.EWOULDBLOCK:
            self._out += frame
        else:
            self._broken()

    def fanout_release(self) -> None:
        self._wlock.release()

    @property
    def pending_output(self) -> int:
        """Bytes queued but not yet written."""
        return len(self._out)

    def flush(self) -> bool:
        """Write what the socket accepts now; True when nothing more is to be flushed."""
        with self._wlock:
            empty = self._flush_locked()
        if self._slow:
            # A slow consumer gets its close frame if it drains in time, then TCP is shut.
            if empty or time.monotonic() >= (self._close_deadline or 0):
                self._abort("slow consumer")
                return True
            return False
        return empty

    def fail_slow_consumer(self, code: int, reason: str) -> None:
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
        with self._wlock:
            self._out += out
        self._metrics.add(BYTES_OUT, len(out))
        self.flush()

    # -- internals: writing -------------------------------------------------

    def _check_open(self) -> None:
        if self._protocol.state is not State.OPEN:
            raise ConnectionClosed(*self._protocol.pending_close)

    def _send_frame(self, frame: bytes) -> None:
        self._check_open()
        self._write(frame, wait=True, messages=1)

    def _write(self, data: bytes, wait: bool, messages: int = 0) -> None:
        """Append to the outbound stream (`messages` data messages, counted); with
        `wait`, block until all of it is written."""
        if not data:
            return
        with self._wlock:
            if self._out:
                self._out += data
            else:
                try:
                    n = self._sock.send(data, socket.MSG_NOSIGNAL)
                except BlockingIOError:
                    n = 0
                except OSError:
                    self._broken()
                    raise ConnectionClosed(ABNORMAL, "connection lost while writing")
                if n < len(data):
                    self._out += memoryview(data)[n:]
            self.messages_sent += messages
            pending = bool(self._out)
        self._metrics.add2(BYTES_OUT, len(data), MESSAGES_OUT, messages)
        if pending and wait:
            self._drain()

    def _drain(self) -> None:
        """Block until the outbound buffer is empty (or the connection is lost)."""
        waiter = None  # rare path (socket buffer full): a waiter of its own per call
        while True:
            with self._wlock:
                if self._flush_locked():
                    return
            if self._protocol.state is State.CLOSED:
                raise ConnectionClosed(self.close_code, self.close_reason)
            waiter = waiter or self._rt.Waiter(self.fd)
            waiter.wait(False, True, 1.0)

    def _flush_locked(self) -> bool:
        if not self._out:
            return True
        try:
            n = self._sock.send(self._out, socket.MSG_NOSIGNAL)
        except BlockingIOError:
            return False
        except OSError:
            self._out.clear()
            self._broken()
            return True
        del self._out[:n]
        return not self._out

    def _broken(self) -> None:
        """The socket failed: stop everything; the reader sees EOF."""
        self._out.clear()
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
        if not self._rt.HAS_TASKS:
            self._end()

    # -- internals: reading -------------------------------------------------

    def _read_loop(self) -> None:
        """Background reader: feed the engine, answer pings, keep alive, queue messages."""
        try:
            while self._protocol.state is not State.CLOSED:
                self._pump(None)
                if self.max_queue and self._inbox.qsize() >= self.max_queue:
                    self._resume.clear()
                    while (self._inbox.qsize() >= self.max_queue
                           and self._protocol.state is not State.CLOSED):
                        self._resume.wait(1.0)
        except Exception:  # never let a reader die silently with the socket open
            with self._plock:
                self._protocol.fail(INTERNAL_ERROR, "internal error")
                self._protocol.abort()
            raise
        finally:
            self._end()

    def _pump(self, timeout: Optional[float]) -> None:
        """Wait for input, output room or a timer (at most `timeout`), then act on it."""
        now = time.monotonic()
        deadline = self._next_deadline()
        wait_for = None if deadline is None else max(0.0, deadline - now)
        if timeout is not None:
            wait_for = timeout if wait_for is None else min(wait_for, timeout)
        want_write = bool(self._out) and self._rt.HAS_TASKS
        readable, writable = self._waiter.wait(True, want_write, wait_for)
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
        if self._protocol.state is State.CLOSED:
            self._end()
        return True

    def _feed(self, data: bytes) -> None:
        with self._plock:
            protocol = self._protocol
            protocol.receive_data(data)
            out = protocol.data_to_send()
            events = protocol.events_received()
            failed = protocol.failed
            if protocol.state is State.CLOSING and self._close_deadline is None:
                self._close_deadline = time.monotonic() + self.close_timeout
        if out:
            try:
                self._write(out, wait=False)
            except ConnectionClosed:
                pass
            if failed:
                # RFC 6455 7.1.7: after failing, close TCP; read on until EOF or the deadline.
                self._closing_handshake_done()
        received = 0
        for event in events:
            if type(event) is Message:
                received += 1
                self._inbox.put(event.data)
            elif type(event) is Pong:
                if self._ping_payload is not None and event.payload == self._ping_payload:
                    self._ping_payload = self._pong_deadline = None
            elif type(event) is Close:
                self._closing_handshake_done()
        self.messages_received += received
        self._metrics.add2(BYTES_IN, len(data), MESSAGES_IN, received)

    def _closing_handshake_done(self) -> None:
        # RFC 6455 7.1.1: the server closes the TCP connection first.
        with self._wlock:
            self._flush_locked()
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

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
                try:
                    self._write(out, wait=False)
                except ConnectionClosed:
                    pass

    def _fail(self, code: int, reason: str) -> None:
        with self._plock:
            self._protocol.fail(code, reason)
            out = self._protocol.data_to_send()
        self._close_deadline = time.monotonic() + self.close_timeout
        try:
            self._write(out, wait=False)
        except ConnectionClosed:
            pass
        self._closing_handshake_done()

    def _end(self) -> None:
        """The reader is done: wake the consumer and whoever waits in `close`."""
        if not self._done.is_set():
            self._done.set()
            self._inbox.put(_CLOSED)
            self._resume.set()
            if self.hub is not None:
                self.hub.detach(self)

    # -- the async model: protocol work inline, in the handler -------------

    def _receive_inline(self, timeout: Optional[float]) -> Union[str, bytes, None]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                return self._unwrap(self._inbox.get_nowait())
            except self._rt.Empty:
                pass
            if self._protocol.state is State.CLOSED:
                self._end()
                continue
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                if self._read_available():  # recv_nb and expired timeouts still see what arrived
                    continue
                return None
            self._pump(remaining)
            if self._protocol.state is State.CLOSED:
                self._end()


def _sharedarea_bytes(id: int, pos: int, length: int) -> bytes:
    import uwsgi

    area = uwsgi.sharedarea_memoryview(id)
    if pos < 0 or pos > len(area):
        raise ValueError(f"position {pos} is outside sharedarea {id} ({len(area)} bytes)")
    end = len(area) if length <= 0 else pos + length
    if end > len(area):
        raise ValueError(f"{length} bytes from {pos} run past the end of sharedarea {id} ({len(area)} bytes)")
    return bytes(area[pos:end])
