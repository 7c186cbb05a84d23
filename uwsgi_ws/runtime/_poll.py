"""The fd waiter shared by the threads and gevent adapters: a poll object kept
per connection, so its registration survives between waits."""

from __future__ import annotations

import select
from typing import Any, Optional, Tuple

_ERR = select.POLLERR | select.POLLHUP | select.POLLNVAL


class PollWaiter:
    """Waits for one fd to be readable and/or writable on `poll` (a `select.poll`
    or `gevent.select.poll` object). One user at a time: not shared."""

    def __init__(self, fd: int, poll: Any) -> None:
        self._fd = fd
        self._poll = poll
        self._mask = 0

    def wait(self, read: bool, write: bool, timeout: Optional[float]) -> Tuple[bool, bool]:
        """Block until ready or `timeout` seconds (None: forever); returns (readable, writable)."""
        mask = (select.POLLIN if read else 0) | (select.POLLOUT if write else 0)
        if mask != self._mask:
            if self._mask:
                self._poll.modify(self._fd, mask)
            else:
                self._poll.register(self._fd, mask)
            self._mask = mask
        ms = None if timeout is None else max(0, int(timeout * 1000 + 0.999))
        events = self._poll.poll(ms)
        if not events:
            return False, False
        ev = events[0][1]
        err = bool(ev & _ERR)
        return bool(ev & select.POLLIN) or (err and read), bool(ev & select.POLLOUT) or (err and write)
