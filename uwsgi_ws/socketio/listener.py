"""A worker-local listener of one broadcast channel: the messages published on
it (by any worker, through the broadcast ring) arrive in a queue in this worker.

A `ChannelListener` is a broadcast subscriber (`uwsgi_ws.broadcast.Subscriber`)
with no socket: the hub hands it batches of ring entries from its waker task,
and it puts each entry's payload on a queue, never blocking. The Socket.IO
manager's task takes them from there (`batches`).
"""

from __future__ import annotations

import logging
from typing import Any, Iterator, List, Union

from ..broadcast import Batch, Message, QueueSubscriber

log = logging.getLogger("uwsgi_ws.socketio.listener")


class ChannelListener(QueueSubscriber):
    """Receives the broadcasts of `channel` in this worker.

    `queue` is a queue of the worker's model (engineio's ``create_queue()``);
    `batches()` yields what arrives, blocking the calling thread/greenlet. The
    hub's calls never block: the queue is unbounded, drained by one task that
    only parses and hands packets to non-blocking session queues.
    """

    def __init__(self, queue: Any, channel: str) -> None:
        self.queue = queue
        self.channel = channel

    # -- uwsgi_ws.broadcast.Subscriber --------------------------------------------

    def deliver(self, batch: Batch) -> bool:
        for entry in batch.entries:
            if entry.channel != self.channel:
                continue  # a publish to every connection (channel None) is not ours
            message = Message.of(entry)
            self.queue.put(message.payload if message.binary else message.payload.decode("utf-8"))
        return True

    def fail_slow(self, code: int, reason: str) -> None:
        # The worker fell a whole ring behind: messages were lost for every subscriber.
        log.error("uwsgi_ws.socketio: broadcasts on %r were lost in this worker (%s %s)", self.channel, code, reason)

    @property
    def connected(self) -> bool:
        return True

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


def subscribe(broadcast: Any, listener: ChannelListener) -> None:
    """Subscribe `listener` to its channel on this worker's `broadcast`
    (`uwsgi_ws.broadcast.Broadcast`). Raises RingError when this worker has none."""
    broadcast.attach(listener)
    broadcast.subscribe(listener, listener.channel)
