"""The broadcast mule: the ring's writer (``--mule=uwsgi_ws.mule:run``).

Run it next to ``--master --sharedarea N``. Workers, spoolers and other mules
hand it publish requests (`uwsgi_ws.broadcast.publish`, which documents the
request format) with ``uwsgi.mule_msg``; it frames each message once, appends
it to the broadcast ring (`ring.BroadcastRing`) and wakes the workers
(`wakeup`), once per batch of requests however large the burst.

Scale-out: with ``uwsgi-ws-redis-url`` set (a uWSGI placeholder, or the
environment variable ``UWSGI_WS_REDIS_URL``) the mule also runs the Redis
bridge (`redis`: two threads that push local messages to a Redis Stream and
append other instances' messages to the ring). The ring then has two writers
in one process, serialised by `_ring_lock`. Without the setting, the bridge
and the ``redis`` package are never imported.

Delivery: a request accepted by ``mule_msg`` stays in the mule's queue while
the mule is down (the master respawns it; the queue survives), and the
respawned mule resumes the ring from its header: nothing accepted is lost or
duplicated, except the one request a mule killed with ``kill -9`` may have
been taking off the queue at that instant.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Optional

from .. import _uwsgi, frames, metrics, settings
from ..exceptions import RingError
from ..log import get as _logger
from . import wakeup
from .publish import DEFAULT_MULE_MSG_SIZE, decode_request, mule_msg_size, set_local_sink, shared_ring
from .ring import FLAG_BINARY, FLAG_EVENT, BroadcastRing

log = _logger(__name__)
# Held by every append to the ring in the broadcast mule: its main loop and the
# Redis bridge's inbox thread are the ring's writers.
_ring_lock = threading.Lock()
_bridge: Any = None  # the running redis.Bridge, if configured
_history: Any = None  # the running history.Server, if uwsgi-ws-history is set


def _append_local(ring: BroadcastRing, request: bytes) -> Optional[int]:
    """Append a local publish request to the ring (the broadcast mule only; any thread)."""
    with _ring_lock:
        seq = _append(ring, request)
        if seq is not None and _bridge is not None:
            _bridge.count_local()
    return seq


def _append(ring: BroadcastRing, request: bytes) -> Optional[int]:
    try:
        channel, flags, payload = decode_request(request)
    except ValueError:
        return None
    if flags & FLAG_EVENT:  # single writer (under _ring_lock): the next seq is write_seq + 1
        payload = payload[:-1] + b',"seq":%d,"epoch":"%d"}' % (ring.write_seq + 1, ring.epoch)
    frame = frames.encode(frames.OP_BINARY if flags & FLAG_BINARY else frames.OP_TEXT, payload)
    seq = ring.append(frame, channel, flags)
    if _history is not None and flags & FLAG_EVENT:
        _history.append(seq, channel, frame)
    return seq


def _publish_here(ring: BroadcastRing, request: bytes) -> None:
    """`publish()` called inside the mule (its own code, a thread of its): straight to the ring."""
    _append_local(ring, request)
    metrics.local().add(metrics.PUBLISHED)
    wakeup.wake_workers()
    if _bridge is not None:
        _bridge.notify()


def run() -> None:
    """The broadcast mule's main loop (``--mule=uwsgi_ws.mule:run``); never returns."""
    uwsgi = _uwsgi.api()
    try:
        ring = shared_ring()
        ring.format(_uwsgi.mule_id())
    except RingError as exc:
        # uWSGI neither prints what a mule callable raises nor waits before respawning
        # it: say why once, then stay (publishers get the same error themselves).
        log.error("the broadcast mule cannot run: %s", exc)
        while True:
            time.sleep(3600)
    set_local_sink(lambda request: _publish_here(ring, request))
    size = max(mule_msg_size(), DEFAULT_MULE_MSG_SIZE) + 64
    log.info("broadcast mule %d serving ring epoch %x at message %d", _uwsgi.mule_id(), ring.epoch, ring.write_seq)
    _start_history(ring)
    _start_bridge(ring)
    counts = metrics.local()
    # With --enable-metrics this mule also copies the metrics into uWSGI's (the stats server).
    mirror = metrics.mirror_enabled()
    timeout = int(metrics.MIRROR_INTERVAL) if mirror else -1
    mirrored = 0.0
    while True:
        message = uwsgi.mule_get_msg(signals=True, farms=False, buffer_size=size, timeout=timeout)
        appended = dropped = 0
        # None: a signal was handled; b"": the timeout passed (uWSGI returns an empty message).
        while message:
            try:
                if _append_local(ring, message) is not None:
                    appended += 1
                else:
                    dropped += 1
            except RingError as exc:
                dropped += 1
                log.warning("dropped a publish request: %s", exc)
            if appended >= 4096:
                break
            message = uwsgi.mule_get_msg(signals=True, farms=False, buffer_size=size, timeout=0)
        if appended or dropped:  # counted before the wake-up: a scrape never sees more delivered
            counts.add2(metrics.PUBLISHED, appended, metrics.DROPPED_MULE, dropped)
        if appended:
            wakeup.wake_workers()
            if _bridge is not None:
                _bridge.notify()
        if mirror and time.monotonic() - mirrored >= metrics.MIRROR_INTERVAL:
            mirrored = time.monotonic()
            metrics.mirror_to_uwsgi()


def _start_history(ring: BroadcastRing) -> None:
    """Keep the event history when uwsgi-ws-history is set (`history`)."""
    global _history
    from . import history

    try:
        per_channel, max_bytes = settings.get("history"), settings.get("history-size")
    except ValueError as exc:
        log.error("no broadcast history: %s", exc)
        return
    if per_channel <= 0:
        return
    with _ring_lock:
        kept = history.load(ring, per_channel, max_bytes)
        try:
            _history = history.Server(kept, ring, _ring_lock)
        except OSError as exc:
            log.error("no broadcast history: cannot listen on %r: %s", history.address(), exc)
            return
    log.info("broadcast history: the last %d events per room, at most %d bytes (%d loaded from the ring)",
             per_channel, max_bytes, kept.count)


def _start_bridge(ring: BroadcastRing) -> None:
    """Start the Redis bridge when a Redis URL is set (nothing imported otherwise)."""
    global _bridge
    if not settings.get("redis-url"):
        return
    from . import redis

    wakeup.wake_workers()  # creates the wake-up socket here, before the bridge's threads use it
    _bridge = redis.start(ring, _ring_lock)
