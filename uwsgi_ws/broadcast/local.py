"""The in-process broadcast: the same ring and hub, in one process, without uWSGI.

Outside uWSGI there is no mule and no sharedarea, yet the development server
(``flask run``) and the test client (``ws.test_client()``) should publish,
emit, subscribe, join rooms, resume and replay the last n exactly as
production does. So this module lays the very same `ring.BroadcastRing` over
a ``bytearray`` of this process, appends to it under a lock (the writer that
the mule is under uWSGI), and wakes each of the process's hubs (`hub.Hub`,
unchanged) through one end of a socket pair instead of the worker's wake
socket. Fan-out, recovery, slow consumers and seq/epoch are the hub's and the
ring's own code: there is no second implementation to drift.

    publish ──► LocalBroadcast.publish ──► ring (bytearray) ──► hub (socket pair) ──► subscribers
                (lock: the one writer)

What it does not give: other processes. A message published here reaches the
subscribers of this process only (the development server is one process; the
reloader's parent serves nothing). The event history (``uwsgi-ws-history``)
is a mule's: here "last n" and resume are bounded by the ring alone.

When it is used (`wanted`): outside uWSGI, only in a process that serves the
app without uWSGI: the ``flask run`` process (Flask sets ``FLASK_RUN_FROM_CLI``;
Werkzeug's reloader child, ``WERKZEUG_RUN_MAIN``, runs the same command line),
or after `enable` (the
extension calls it on a request of Werkzeug's development server; the test
client at creation). A cron script importing the app still gets the
PublishError that says publishing needs uWSGI, instead of publishing into a
ring that nobody reads.

Thread-safety: every function and method may be called from any thread.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from typing import List, Optional

from .. import frames
from ..exceptions import PublishError, RingError
from .publish import Data, decode_request, encode_request
from .ring import FLAG_BINARY, FLAG_EVENT, BroadcastRing

#: Bytes of the in-process ring (as ``--sharedarea 1024``: 4 MiB).
DEFAULT_SIZE = 4 << 20

_enabled = False
_instance: Optional[LocalBroadcast] = None
_instance_lock = threading.Lock()


def enable() -> None:
    """Use the in-process broadcast in this process from now on (outside uWSGI)."""
    global _enabled
    _enabled = True


def wanted() -> bool:
    """True when this process serves the app without uWSGI (see the module docstring):
    after `enable`, or in the ``flask run`` process itself (its environment variables
    alone would also mark a script the app starts, which inherits them)."""
    if _enabled:
        return True
    started_by_flask = (os.environ.get("FLASK_RUN_FROM_CLI") == "true"
                        or os.environ.get("WERKZEUG_RUN_MAIN") == "true")
    return started_by_flask and _is_flask_cli(sys.argv)


def _is_flask_cli(argv: List[str]) -> bool:
    """True for the command line of ``flask ...`` or ``python -m flask ...`` (the
    reloader's child runs the same)."""
    if not argv:
        return False
    program = os.path.basename(argv[0])
    return program in ("flask", "flask.exe") or argv[0].endswith(os.path.join("flask", "__main__.py"))


def instance() -> LocalBroadcast:
    """This process's in-process broadcast (a forked child gets its own)."""
    global _instance
    found = _instance
    if found is None or found.pid != os.getpid():
        with _instance_lock:
            if _instance is None or _instance.pid != os.getpid():
                _instance = LocalBroadcast()
            found = _instance
    return found


class LocalBroadcast:
    """A broadcast ring in this process's memory, with its single writer.

    Args:
        size: bytes of the ring (at least `ring.MIN_AREA`).
    """

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        self.pid = os.getpid()
        self.ring = BroadcastRing(memoryview(bytearray(size)))
        self.ring.format(0)  # a fresh epoch
        self._lock = threading.Lock()  # the ring's one writer at a time
        self._wakers: List[socket.socket] = []

    def waker(self) -> socket.socket:
        """A new wake socket for a hub (`hub.Hub(..., wake=...)`): readable after each publish.

        Returns:
            The non-blocking reading end of a datagram socket pair; the writing end
            is kept here and gets one byte per publish (dropped when full: the hub
            is already due to read the ring, as with the workers' wake sockets).
        """
        reader, writer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        reader.setblocking(False)
        writer.setblocking(False)
        with self._lock:
            self._wakers.append(writer)
        return reader

    def publish(self, data: Data, channel: Optional[str] = None, event: bool = False) -> int:
        """Append `data` to the ring as the broadcast mule would, and wake the hubs.

        Args:
            data: str (a text frame) or bytes-like (binary).
            channel: the channel (UTF-8, at most 255 bytes); None: every connection.
            event: `data` is an event-protocol JSON object: its seq and epoch are
                added as the mule adds them (layout in `publish`).

        Returns:
            The message's sequence number in the ring (as `publish.publish`).

        Raises:
            PublishError: a bad channel name, a malformed event, or a message over
                the ring's limit (a quarter of the ring).
            ValueError: a str with a lone surrogate (RFC 6455 section 5.6).
            TypeError: `data` is neither str nor bytes-like.

        Never blocks beyond the ring's lock.
        """
        request = encode_request(data, channel, event)
        chan, flags, payload = decode_request(request)
        ring = self.ring
        with self._lock:
            if flags & FLAG_EVENT:  # the single writer: the next seq is write_seq + 1
                payload = payload[:-1] + b',"seq":%d,"epoch":"%d"}' % (ring.write_seq + 1, ring.epoch)
            frame = frames.encode(frames.OP_BINARY if flags & FLAG_BINARY else frames.OP_TEXT, payload)
            limit = ring.max_frame_size(len(chan.encode("utf-8")))
            if len(frame) > limit:
                raise PublishError(f"a message of {len(frame)} bytes (framed) is over the in-process broadcast's "
                                   f"limit of {limit} bytes (a quarter of its {len(ring.buf) >> 20} MiB ring; under "
                                   "uWSGI the limit follows --sharedarea): publish less")
            try:
                seq = ring.append(frame, chan, flags)
            except RingError as exc:
                raise PublishError(str(exc)) from None
            wakers = list(self._wakers)
        for writer in wakers:
            try:
                writer.send(b"w")
            except OSError:  # full: a wake-up is pending anyway
                pass
        return seq


__all__ = ["DEFAULT_SIZE", "LocalBroadcast", "enable", "instance", "wanted"]
