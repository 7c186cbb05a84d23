"""The instance-wide broadcast, behind one face: `Broadcast`.

    publish ──► broadcast mule ──► ring (sharedarea) ──► each worker's hub ──► subscribers
                 (mule.py)          (ring.py)            (hub.py, woken by wakeup.py)
                     │  └── history.py (per room, beyond the ring)
                     └───── redis.py (other instances, through a Redis Stream)

Callers (the Flask extension, the events layer, the Socket.IO layer) use only
`Broadcast`: publish, the current position, subscribe (plain), and recover
(subscribe after a position or with the last n messages, from the ring and the
mule's history, with no gap and no duplicate). They never see the ring, the
hub or the history, as centrifuge's node sees storage only as a Broker.

Subscribers implement `hub.Subscriber`.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Dict, NamedTuple, Optional, Sequence, Set, Tuple

from .. import _uwsgi
from ..exceptions import PublishError, RingError
from . import history, local
from .hub import After, Batch, Done, Hub, Last, Recovered, Recovery, Subscriber
from .publish import Data, channel_bytes, mule_problem  # noqa: F401  (part of the face)
from .publish import publish as _publish
from .ring import Entry

__all__ = ["After", "Batch", "Broadcast", "Entry", "Last", "Position", "Recovered", "Recovery", "Subscriber",
           "channel_bytes", "for_process"]


class Position(NamedTuple):
    """A point of the instance's message stream: `epoch` names the ring (a new one
    on each fresh start), `seq` the last message appended to it."""

    epoch: int
    seq: int


class Broadcast:
    """This process's access to the instance broadcast. One per process (`for_process`).

    `publish` works in every process of the instance; the subscriber side
    (`attach`, `subscribe`, `recover`) needs a worker with a broadcast ring and a
    model with background tasks: `available` says so.
    """

    def __init__(self, runtime: Any) -> None:
        self._rt = runtime
        self._hub: Optional[Hub] = None
        self._problem: Optional[str] = None
        self._lock = threading.Lock()  # never held across a yield: fine in every model

    # -- publishing (any process, any thread) -----------------------------------------

    def publish(self, data: Data, channel: Optional[str] = None, event: bool = False) -> int:
        """Broadcast `data` to every subscriber of `channel` (None: every connection of
        the instance), in every worker.

        Returns:
            The message's sequence number in the ring (it is there when this returns).

        Raises:
            PublishError: with the option to set when it can't (see `publish.publish`).
            TypeError: `data` is not str or bytes-like.

        Any thread (uWSGI's or your own), greenlet or process of the instance: it
        goes through the broadcast mule's publish socket. Blocks the calling thread
        or greenlet (never the worker) until the mule appended the message.
        Outside uWSGI, in a process serving the app (``flask run``, the test
        client), the in-process broadcast takes it (`local`).
        """
        if not _uwsgi.available() and local.wanted():
            return local.instance().publish(data, channel, event)
        return _publish(data, channel, event, runtime=self._rt)

    # -- subscribing (workers) ---------------------------------------------------------

    @property
    def available(self) -> bool:
        """True when this worker can deliver broadcasts (a ring, a model with tasks)."""
        return self._get_hub() is not None

    @property
    def problem(self) -> str:
        """Why `available` is False (the option to add)."""
        self._get_hub()
        return self._problem or ""

    def _get_hub(self) -> Optional[Hub]:
        # Outside uWSGI the answer may change (`local.enable` at the first dev-server request).
        if self._hub is None and (self._problem is None or not _uwsgi.available()):
            with self._lock:
                if self._hub is None and (self._problem is None or not _uwsgi.available()):
                    self._hub, self._problem = self._make_hub()
        return self._hub

    def _make_hub(self) -> Tuple[Optional[Hub], Optional[str]]:
        if not self._rt.HAS_TASKS:
            return None, "the async (ugreen) model has no background tasks: use --gevent or --threads"
        if not _uwsgi.available():
            if local.wanted():  # flask run, the test client: the same hub on an in-process ring
                shared = local.instance()
                return Hub(self._rt, shared.ring, wake=shared.waker()), None
            return None, ("broadcast needs uWSGI: run the app under uwsgi (or app.run()); "
                          "outside it, flask run and ws.test_client() use an in-process broadcast")
        from .publish import shared_ring

        try:
            ring = shared_ring()
        except RingError as exc:
            return None, str(exc)
        return Hub(self._rt, ring), None

    def _hub_or_raise(self) -> Hub:
        hub = self._get_hub()
        if hub is None:
            raise RingError(f"broadcast is not available in this worker: {self._problem}")
        return hub

    def position(self) -> Position:
        """The current position of the instance's stream. Raises RingError when unavailable."""
        ring = self._hub_or_raise().ring
        return Position(ring.epoch, ring.write_seq)

    def attach(self, sub: Subscriber) -> None:
        """Make `sub` a member: it receives channel-None broadcasts and may subscribe.
        Raises RingError when unavailable."""
        self._hub_or_raise().attach(sub)

    def detach(self, sub: Subscriber) -> None:
        """`sub` receives nothing more. Idempotent; a no-op when unavailable."""
        if self._hub is not None:
            self._hub.detach(sub)

    def subscribe(self, sub: Subscriber, channel: str) -> Any:
        """Add `sub` to `channel` now (live only); a context manager that unsubscribes.
        Raises ValueError for a bad name, RingError when unavailable."""
        return self._hub_or_raise().subscribe(sub, channel)

    def unsubscribe(self, sub: Subscriber, channel: str, ordered: bool = False) -> None:
        """Remove `sub` from `channel` (with `ordered`: after its recoveries queued so far)."""
        if self._hub is not None:
            self._hub.unsubscribe(sub, channel, ordered)

    def channels(self, sub: Subscriber) -> Set[str]:
        """The channels `sub` receives now."""
        return self._hub.channels(sub) if self._hub is not None else set()

    def subscriber_count(self, channel: Optional[str] = None) -> int:
        """Subscribers of `channel` in this worker (None: every attached one); 0 when unavailable."""
        return self._hub.count(channel) if self._hub is not None else 0

    def stats(self) -> Dict[str, int]:
        """This worker's fan-out counters: delivered (messages x subscribers),
        slow_consumers (closed with 1013), lapped (times this worker fell behind the
        ring), subscribers (attached now), compressions (broadcast messages compressed
        for permessage-deflate subscribers: once per message and parameter set). All 0
        when unavailable."""
        hub = self._hub
        if hub is None:
            return {"delivered": 0, "slow_consumers": 0, "lapped": 0, "subscribers": 0, "compressions": 0}
        return {"delivered": hub.delivered, "slow_consumers": hub.slow_consumers, "lapped": hub.lapped,
                "subscribers": hub.count(None), "compressions": hub.compressions}

    def recover(self, sub: Subscriber, plan: Dict[str, Recovery], done: Optional[Done] = None) -> None:
        """Subscribe `sub` to each channel of `plan` with its recovery: None (live from
        now), `After(seq)` (every message after seq: resume), `Last(n)` (the last n).

        Messages the ring no longer holds come from the mule's history when it is on
        (``uwsgi-ws-history``); `done` gets {channel: Recovered} (ok False: some were
        gone; `seq` is then the oldest message still kept). Blocks this thread or
        greenlet only while asking the history (when the ring cannot serve the plan).
        Raises RingError when unavailable.
        """
        hub = self._hub_or_raise()
        oldest = hub.ring.min_seq
        ask_after = {c: r.seq for c, r in plan.items() if isinstance(r, After) and r.seq + 1 < oldest}
        ask_last = {c: r.n for c, r in plan.items() if isinstance(r, Last)}
        preface: Sequence[Entry] = ()
        gone: Dict[str, int] = {}
        if (ask_after or ask_last) and _uwsgi.available():  # the history is the mule's
            reply = history.fetch(self._rt, ask_after, ask_last)
            if reply is not None:
                preface, gone = reply.entries, reply.gone
                for channel in (*ask_after, *ask_last):
                    if channel not in gone:
                        plan[channel] = After(reply.through)

        def finish(result: Dict[str, Recovered]) -> None:
            for channel, oldest_kept in gone.items():  # the oldest the history still has
                if channel in result and not result[channel].ok:
                    result[channel] = Recovered(False, oldest_kept)
            if done is not None:
                done(result)

        hub.recover(sub, list(plan.items()), finish, preface)


_instances: Dict[Tuple[int, int], Broadcast] = {}
_instances_lock = threading.Lock()


def for_process(runtime: Any) -> Broadcast:
    """This process's `Broadcast` for `runtime` (one per process: a forked worker
    gets its own)."""
    key = (os.getpid(), id(runtime))
    found = _instances.get(key)
    if found is None:
        with _instances_lock:
            found = _instances.setdefault(key, Broadcast(runtime))
    return found


def publish(data: Data, channel: Optional[str] = None, event: bool = False) -> int:
    """`Broadcast.publish` for this process, in the model uWSGI runs (any process of
    the instance: workers, mules, spoolers). See `Broadcast.publish`."""
    from .. import runtime

    return for_process(runtime.load(runtime.detect())).publish(data, channel, event)


__all__ += ["PublishError", "publish"]
