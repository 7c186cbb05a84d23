"""The packet queue of one Engine.IO session, bounded, and short-cut on WebSockets.

engineio gives each session a queue (``Socket.queue``): senders `put` packets,
and a "writer" takes them (`get`): the polling GET, or after the upgrade a
task that sends each packet on the WebSocket. `Outbox` keeps that contract and
adds:

- **a bound**: `bytes` counts what waits; `EngineServer.send_packet` closes a
  session over its limit as a slow consumer instead of letting it grow;
- **direct writes**: once the session runs on a `uwsgi_ws.Connection` and
  nothing is waiting or in the writer's hands, a packet is framed once (the
  same frame for every client of a broadcast) and handed to the connection's
  non-blocking outbound buffer, skipping the writer task and its wake-up;
- **batches**: inside `EngineServer.batch()` (the manager applying a batch of
  broadcasts) the frames for one client are joined and written once at the end.

Order is kept: a packet goes direct only when nothing queued before it is
still unsent; when the socket does not take all of a direct write, a flush
marker is queued so the writer drains the connection before anything queued
after it.

Thread-safety: `put` may run in any thread/greenlet; `get` in engineio's
writer only (one per session).
"""

from __future__ import annotations

from typing import Any, List, Optional

#: Close code for a slow consumer (RFC 6455 section 7.4.1, 1013 "try again later").
TRY_AGAIN_LATER = 1013
_FLUSH = object()  # queued: the writer drains the connection's buffer here
_BATCH_BYTES = 64 * 1024  # a batch writes a client's frames once they reach this much


def packet_size(item: Any) -> int:
    """Bytes of an engineio packet once encoded (engineio caches the encoding)."""
    if item is None or item is _FLUSH:
        return 0
    return len(item.encode())


class Outbox:
    """engineio's session queue (see the module docstring). `inner` is a queue of
    the worker's model; `server` the `EngineServer` (frames, batches, the runtime)."""

    def __init__(self, inner: Any, server: Any) -> None:
        self._inner = inner
        self._server = server
        self._lock = server.new_lock()
        self._candidate: Any = None  # the connection, until the session is upgraded
        self._session: Any = None
        self._conn: Any = None  # direct writes go here
        self._outstanding = 0  # packets the writer took and has not sent yet
        self._flush_queued = False
        self._pending: List[bytes] = []  # frames deferred by a batch
        self._pending_bytes = 0
        #: Bytes of the packets waiting in the queue.
        self.bytes = 0

    # -- the session's transport --------------------------------------------------

    def attach(self, conn: Any, session: Any) -> None:
        """The session's WebSocket runs on `conn`; direct writes start once the
        session is upgraded and the writer has taken what was queued before."""
        self._candidate, self._session = conn, session

    def detach(self) -> None:
        with self._lock:
            self._candidate = self._conn = None
            self._pending.clear()
            self._pending_bytes = 0

    @property
    def pending_output(self) -> int:
        """Bytes queued here or buffered in the connection, not yet written."""
        conn = self._conn
        return self.bytes + self._pending_bytes + (conn.pending_output if conn is not None else 0)

    def fail_slow(self, code: int, reason: str) -> None:
        """Close the session's WebSocket as a slow consumer (`code`, `reason`), if it
        has one yet (a polling session has none). Never blocks."""
        conn = self._conn
        if conn is not None:
            conn.fail_slow(code, reason)

    def sent(self) -> None:
        """The writer sent one packet it took (ConnectionWebSocket.send calls this)."""
        with self._lock:
            if self._outstanding:
                self._outstanding -= 1

    # -- engineio's queue interface -------------------------------------------------

    def put(self, item: Any, block: bool = True, timeout: Optional[float] = None) -> None:
        conn = self._conn
        if item is not None and conn is not None:
            frame = self._server.frame_of(item)
            with self._lock:
                if self._conn is conn and self._outstanding == 0 and self._inner.qsize() == 0:
                    if self._server.batching():
                        if not self._pending:
                            self._server.defer(self)
                        self._pending.append(frame)
                        self._pending_bytes += len(frame)
                        if self._pending_bytes < _BATCH_BYTES:
                            return
                        frame = b""  # a big batch goes out now, in pieces of _BATCH_BYTES
                    if self._write_locked(frame):
                        return
                    if self._write_locked(frame):
                        return
        with self._lock:
            self.bytes += packet_size(item)
        self._inner.put(item)

    def get(self, block: bool = True, timeout: Optional[float] = None) -> Any:
        while True:
            if self._conn is None and self._candidate is not None and self._session is not None \
                    and self._session.upgraded:
                with self._lock:
                    self._conn = self._candidate
            item = self._inner.get(block, timeout)
            if item is _FLUSH:
                self._inner.task_done()
                self._drain()
                continue
            with self._lock:
                self.bytes -= packet_size(item)
                if item is not None and self._conn is not None:
                    self._outstanding += 1
            return item

    def task_done(self) -> None:
        self._inner.task_done()

    def join(self) -> None:
        self._inner.join()

    def qsize(self) -> int:
        return int(self._inner.qsize())

    def empty(self) -> bool:
        return bool(self._inner.empty())

    # -- writing ------------------------------------------------------------------

    def flush_batch(self) -> None:
        """Write the frames a batch deferred (EngineServer.batch calls this at its end)."""
        with self._lock:
            if self._pending and self._conn is not None:
                self._write_locked(b"")

    def _write_locked(self, frame: bytes) -> bool:
        """Write deferred frames and `frame` to the connection without blocking (lock held).
        False: the connection is closed: the caller queues the packet and the writer
        ends the session."""
        data = b"".join([*self._pending, frame]) if self._pending else frame
        self._pending.clear()
        self._pending_bytes = 0
        if not data:
            return True
        conn = self._conn
        if not conn.send_frame_nowait(data):  # closed (the bound is max_queued_bytes, checked by the server)
            return False
        if conn.pending_output and not self._flush_queued:
            self._flush_queued = True
            self._inner.put(_FLUSH)
        return True

    def _drain(self) -> None:
        """In the writer: block until the connection's buffer is written (or it closed)."""
        with self._lock:
            self._flush_queued = False
            conn = self._conn
        if conn is not None:
            self._server.drain(conn)

