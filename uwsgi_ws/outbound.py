"""A connection's outbound byte stream: one buffer, one lock, one "send now or buffer".

Everything a WebSocket connection writes goes through its `Outbound`: the
handler's messages, the reader's pongs and close frames, and the broadcast
fan-out (the hub, through the connection's subscriber methods). So frames
never interleave, and there is exactly one place that decides between
writing to the socket now and keeping the rest for later.

Data after close (RFC 6455 section 5.5.1: after sending a close frame, an
endpoint sends no more data frames): `close_after` queues the close frame and
shuts the stream for data in one hold of the lock, so a `send` racing a
`close` from another thread or greenlet either goes out before the close
frame or is refused; never after it.

Thread-safety: every method may be called from any thread or greenlet of the
worker. `write` may block (its caller waits for the socket to drain); the
others never block.
"""

from __future__ import annotations

import errno
import socket
from typing import Any, Callable, Optional, Union

Buffer = Union[bytes, bytearray, memoryview]


class Outbound:
    """The outbound stream of one socket.

    Args:
        sock: the connection's socket, non-blocking.
        runtime: the concurrency-model adapter (`uwsgi_ws.runtime`): its Lock and Waiter.
        write_limit: bytes `offer` may leave buffered (a broadcast subscriber past it is slow).
        on_broken: called (without the lock) once when the socket fails.
    """

    # One per connection: slots keep an idle stream to its fields (issue 11, memory).
    __slots__ = (
        "_broken",
        "_data_open",
        "_lock",
        "_on_broken",
        "_out",
        "_reported",
        "_rt",
        "_sock",
        "fd",
        "messages",
        "shared_sent",
        "write_limit",
    )

    def __init__(self, sock: socket.socket, runtime: Any, write_limit: int,
                 on_broken: Callable[[], None]) -> None:
        self._sock = sock
        self.fd = sock.fileno()
        self._rt = runtime
        self._lock = runtime.Lock()
        self._out = bytearray()
        self.write_limit = write_limit
        self._on_broken = on_broken
        self._data_open = True  # False once a close frame is queued (or the socket broke)
        self._broken = False
        #: Data messages handed to this stream (broadcasts included).
        self.messages = 0
        #: Called under the lock when a compressed broadcast batch is written (`end_batch`).
        self.shared_sent: Optional[Callable[[], None]] = None
        self._reported = False  # on_broken was called

    # -- state ----------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Bytes queued but not yet written."""
        return len(self._out)

    @property
    def accepts_data(self) -> bool:
        """False once the close frame is queued or the socket failed."""
        return self._data_open

    # -- writing ---------------------------------------------------------------

    def write(self, data: Union[Buffer, Callable[[], bytes]], messages: int = 0, wait: bool = True) -> bool:
        """Append frames (`messages` data messages; 0 for control frames) to the stream.

        `data` may be a function returning the frames: it is called under the
        stream's lock, so frames whose bytes depend on the ones before them
        (permessage-deflate with context takeover) go out in the order made.
        Writes what the socket takes now and buffers the rest (with no limit:
        the caller is the producer and waits). With `wait`, blocks the calling
        thread or greenlet until the buffer is empty.

        Returns:
            False when data frames are refused (the close frame is already queued,
            or the socket failed); True otherwise.
        """
        with self._lock:
            if messages and not self._data_open:
                return False
            if callable(data):
                data = data()
            if not data:
                return True
            self._send_or_buffer(data)
            self.messages += messages
            pending = bool(self._out)
        if self._broken:
            self._report_broken()
            return not messages
        if pending and wait:
            self.drain()
        return True

    def close_after(self, frame: Buffer) -> None:
        """Queue our close frame (after whatever is queued, even past `write_limit`)
        and refuse data frames from now on. Never blocks."""
        with self._lock:
            self._data_open = False
            if frame:
                self._send_or_buffer(frame)
        if self._broken:
            self._report_broken()

    def offer(self, data: Buffer, messages: int, queued: Optional[Callable[[], None]] = None) -> bool:
        """Queue ready-made data frames without blocking (the broadcast fan-out).
        `queued` is called under the lock once they are queued (so a compressor
        learns of them in write order: permessage-deflate).

        Returns:
            False, queueing nothing, when data is refused (closed) or the buffer
            would pass `write_limit` (a slow consumer).
        """
        with self._lock:
            if not self._data_open:
                return False
            if self._out and len(self._out) + len(data) > self.write_limit:
                return False
            self._send_or_buffer(data)
            self.messages += messages
            if queued is not None:
                queued()
        if self._broken:
            self._report_broken()
            return False
        return True

    def begin_direct(self) -> int:
        """For a batch writer (the native `send_many`): the fd to write to now, with the
        lock taken, when the stream is open with nothing queued; -1 otherwise (use
        `offer`). A non-negative answer must be followed by `end_direct`."""
        if self._out or not self._data_open or not self._lock.acquire(False):
            return -1
        if self._out or not self._data_open:
            self._lock.release()
            return -1
        return self.fd

    def end_direct(self, data: Buffer, result: int, messages: int) -> None:
        """After a direct write of `data` returned `result` (bytes sent, or -errno);
        keeps what was not sent and releases the lock."""
        try:
            if result >= 0:
                if result < len(data):
                    self._out += memoryview(data)[result:]
                self.messages += messages
            elif result == -errno.EAGAIN or result == -errno.EWOULDBLOCK:
                self._out += data
                self.messages += messages
            else:
                self._fail()
        finally:
            self._lock.release()
        if self._broken:
            self._report_broken()

    def end_batch(self, batch: Any, result: int) -> None:
        """`end_direct` for a broadcast batch (`uwsgi_ws.broadcast.Batch`: its `data`,
        `entries`, `compressed`), in one call per delivery (the hub's hot loop); a
        compressed batch is reported to `shared_sent` first, still under the lock.
        The body repeats `end_direct`'s on purpose: one call less per delivery."""
        data = batch.data
        try:
            if batch.compressed and self.shared_sent is not None:
                self.shared_sent()
            if result >= 0:
                if result < len(data):
                    self._out += memoryview(data)[result:]
                self.messages += len(batch.entries)
            elif result == -errno.EAGAIN or result == -errno.EWOULDBLOCK:
                self._out += data
                self.messages += len(batch.entries)
            else:
                self._fail()
        finally:
            self._lock.release()
        if self._broken:
            self._report_broken()

    def flush(self) -> bool:
        """Write what the socket accepts now; True when nothing is left. Never blocks."""
        with self._lock:
            empty = self._flush_locked()
        if self._broken:
            self._report_broken()
        return empty

    def drain(self, timeout_step: float = 1.0) -> None:
        """Block until the buffer is empty or the socket failed."""
        waiter = None  # the rare path (socket buffer full): a waiter of its own per call
        while True:
            if self.flush() or self._broken:
                return
            waiter = waiter or self._rt.Waiter(self.fd)
            waiter.wait(False, True, timeout_step)

    # -- internals (lock held) ---------------------------------------------------

    def _send_or_buffer(self, data: Buffer) -> None:
        if self._out or self._broken:
            if not self._broken:
                self._out += data
            return
        try:
            n = self._sock.send(data, socket.MSG_NOSIGNAL)
        except BlockingIOError:
            n = 0
        except OSError:
            self._fail()
            return
        if n < len(data):
            self._out += memoryview(data)[n:]

    def _flush_locked(self) -> bool:
        if not self._out:
            return True
        try:
            n = self._sock.send(self._out, socket.MSG_NOSIGNAL)
        except BlockingIOError:
            return False
        except OSError:
            self._fail()
            return True
        del self._out[:n]
        return not self._out

    def _fail(self) -> None:
        self._out.clear()
        self._data_open = False
        self._broken = True

    def _report_broken(self) -> None:
        if not self._reported:
            self._reported = True
            self._on_broken()

