"""A worker-local listener of one broadcast channel: the messages published on
it (by any worker, via the mule and the ring) arrive in a queue in this worker.

This is the one place `uwsgi_ws.socketio` touches the broadcast's worker side.
The hub fans out ready-made WebSocket frames to its subscribers without
blocking; a `ChannelListener` is such a subscriber that strips the frame
headers and puts the payloads on a queue instead of writing to a socket.

Frames of the ring are server frames (RFC 6455 section 5.2: unmasked, FIN set,
text or binary); several consecutive frames of one channel may come as one
bytes object.
"""

from __future__ import annotations

import logging
from typing import Any, Iterator, List, Set, Union

log = logging.getLogger("uwsgi_ws.socketio.listener")


def split_frames(data: Union[bytes, memoryview]) -> List[Union[str, bytes]]:
    """The payloads of the unmasked server frames in `data` (str for text frames,
    bytes for binary). Raises ValueError on a masked or truncated frame."""
    view = memoryview(data)
    out: List[Union[str, bytes]] = []
    pos, end = 0, len(view)
    while pos < end:
        if end - pos < 2:
            raise ValueError("truncated frame header")
        b0, b1 = view[pos], view[pos + 1]
        if b1 & 0x80:
            raise ValueError("a broadcast frame is never masked")
        length = b1 & 0x7F
        pos += 2
        if length == 126:
            length = int.from_bytes(view[pos:pos + 2], "big")
            pos += 2
        elif length == 127:
            length = int.from_bytes(view[pos:pos + 8], "big")
            pos += 8
        if pos + length > end:
            raise ValueError("truncated frame payload")
        payload = bytes(view[pos:pos + length])
        pos += length
        out.append(payload.decode("utf-8") if b0 & 0x0F == 0x1 else payload)
    return out


class ChannelListener:
    """Receives the broadcasts of one channel in this worker.

    `queue` is a queue of the worker's model (engineio's ``create_queue()``);
    `batches()` yields what arrives, blocking the calling thread/greenlet.
    The hub calls `enqueue_frame` from its waker task; it never blocks.
    """

    def __init__(self, queue: Any) -> None:
        self.queue = queue
        # What the hub expects of a subscriber (a Connection-like object):
        self.channels: Set[str] = set()
        self.connected = True
        self.pending_output = 0
        self.fd = -1
        self.messages_sent = 0

    # -- the hub's side --------------------------------------------------------

    def enqueue_frame(self, frame: Union[bytes, memoryview], messages: int = 1) -> bool:
        """Take `messages` frames; never blocks. Returns True (a listener is never slow:
        its queue is unbounded, drained by the manager's task)."""
        try:
            payloads = split_frames(frame)
        except ValueError as exc:
            log.error("uwsgi_ws.socketio: dropped an undecodable broadcast frame: %s", exc)
            return True
        for payload in payloads:
            self.queue.put(payload)
        return True

    def fanout_acquire(self) -> bool:
        return False  # no socket: the hub uses enqueue_frame

    def flush(self) -> bool:
        return True

    def fail_slow_consumer(self, code: int, reason: str) -> None:
        # The worker was lapped by the ring: messages were lost for every subscriber.
        log.error("uwsgi_ws.socketio: broadcasts were lost in this worker (%s %s)", code, reason)

    # -- the consumer's side ---------------------------------------------------

    def batches(self, empty: Any) -> Iterator[List[Union[str, bytes]]]:
        """What arrives on the channel, forever, as lists of what has arrived since
        the last one (blocks while there is nothing). `empty`: the queue's Empty."""
        while True:
            batch = [self.queue.get()]
            while True:
                try:
                    batch.append(self.queue.get_nowait())
                except empty:
                    break
            yield batch


def subscribe(hub: Any, listener: ChannelListener, channel: str) -> None:
    """Subscribe `listener` to `channel` on this worker's `hub`. Call it in a request
    (the hub is created there: uWSGI's API from a request context only)."""
    hub.subscribe(listener, channel)  # not attach(): publishes to every connection are not ours
