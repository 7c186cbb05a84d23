"""The worker's fd watcher: one task per worker watches the connections whose
handler is busy elsewhere (not waiting in `receive`), so a connection needs no
task of its own beside its handler.

A watch is one-shot: `watch(client, read, write, deadline)` arms it; once the fd
is ready (or `deadline`, a `time.monotonic()` instant, passes) the watch is
disarmed and `client.on_ready(readable, writable)` runs in the watcher's task;
the client arms it again if it wants more. `unwatch` disarms. Re-arming with the
same deadline reuses its timer entry, so a connection that arms on every
`receive` does not grow the timer heap.

The model adapters (`gevent`, `threads`) subclass `WatcherBase` with how to arm
an fd and how to wait; the bookkeeping here is shared.

Thread-safety: `watch` and `unwatch` may be called from any thread or greenlet;
`on_ready` runs in the watcher's own task, one client at a time.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from ..log import get as _logger

log = _logger("uwsgi_ws.runtime")


class WatcherBase:
    """Shared bookkeeping: which clients are armed, and their deadlines (a heap)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # never held across a wait or a callback
        self._armed: Dict[Any, Any] = {}  # client -> the model's fd registration (or None: timer only)
        self._timer: Dict[Any, Tuple[float, int]] = {}  # client -> its pending heap entry
        self._heap: List[Tuple[float, int, Any]] = []
        self._seq = itertools.count()

    # -- the public side ----------------------------------------------------------

    def watch(self, client: Any, read: bool, write: bool, deadline: Optional[float]) -> None:
        """Arm one watch of `client.fileno()` (replacing any armed one). Never blocks."""
        earlier = False
        with self._lock:
            old = self._armed.pop(client, _NONE)
            if old is not _NONE and old is not None:
                self._disarm(client, old)
            self._armed[client] = self._arm(client, read, write) if (read or write) else None
            if deadline is not None:
                entry = self._timer.get(client)
                if entry is None or entry[0] != deadline:
                    seq = next(self._seq)
                    self._timer[client] = (deadline, seq)
                    earlier = not self._heap or deadline < self._heap[0][0]
                    heapq.heappush(self._heap, (deadline, seq, client))
        if earlier:
            self._wake()

    def unwatch(self, client: Any) -> None:
        """Disarm `client`'s watch (a no-op when none is armed). Never blocks."""
        with self._lock:
            old = self._armed.pop(client, _NONE)
            if old is not _NONE and old is not None:
                self._disarm(client, old)

    def forget(self, client: Any) -> None:
        """`client` is gone for good: disarm and drop its timer."""
        with self._lock:
            old = self._armed.pop(client, _NONE)
            if old is not _NONE and old is not None:
                self._disarm(client, old)
            self._timer.pop(client, None)

    @property
    def watched(self) -> int:
        """Clients armed now (for tests and the admin page)."""
        return len(self._armed)

    # -- for the model's task -----------------------------------------------------

    def _fired(self, client: Any, registration: Any, readable: bool, writable: bool) -> bool:
        """The fd of `client` is ready: disarm. True when this registration was still armed."""
        with self._lock:
            if self._armed.get(client, _NONE) is not registration:
                return False
            del self._armed[client]
            self._disarm(client, registration)
        return True

    def _timeout(self) -> Optional[float]:
        """Seconds until the next deadline (None: none)."""
        with self._lock:
            if not self._heap:
                return None
            return max(0.0, self._heap[0][0] - time.monotonic())

    def _expired(self) -> List[Any]:
        """Clients whose deadline passed while armed (disarmed now)."""
        now = time.monotonic()
        due: List[Any] = []
        with self._lock:
            heap = self._heap
            while heap and heap[0][0] <= now:
                deadline, seq, client = heapq.heappop(heap)
                if self._timer.get(client) != (deadline, seq):
                    continue  # replaced by a later deadline, or forgotten
                del self._timer[client]
                registration = self._armed.pop(client, _NONE)
                if registration is _NONE:
                    continue  # a task reads it now and keeps its own timers
                if registration is not None:
                    self._disarm(client, registration)
                due.append(client)
        return due

    @staticmethod
    def _call(client: Any, readable: bool, writable: bool) -> None:
        try:
            client.on_ready(readable, writable)
        except Exception:
            log.exception("uwsgi_ws: the fd watcher's callback failed for %r", client)

    # -- the model's part -------------------------------------------------------------

    def _arm(self, client: Any, read: bool, write: bool) -> Any:
        raise NotImplementedError

    def _disarm(self, client: Any, registration: Any) -> None:
        raise NotImplementedError

    def _wake(self) -> None:
        raise NotImplementedError


_NONE: Any = object()
