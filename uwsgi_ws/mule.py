"""The broadcast mule, and `publish()` for every other process of the instance.

Run it with ``--mule=uwsgi_ws.mule:run`` (YAML ``mule: uwsgi_ws.mule:run``)
next to ``--master --sharedarea N``. Workers, spoolers and other mules hand it
publish requests with ``uwsgi.mule_msg``; it frames each message once, appends
it to the broadcast ring (`sharedarea.BroadcastRing`) and wakes the workers
(`wakeup`), once per batch of requests however large the burst.

A publish request is one mule message:

    b"UWS1" | flags u8 | channel_len u8 | channel (UTF-8) | payload

    flags: bit 0 (FLAG_BINARY) binary frame; bit 2 (FLAG_EVENT) the payload is
    a JSON object (UTF-8 text, ending with ``}``) of the event protocol
    (`uwsgi_ws.events`, docs/protocol.md): the mule appends the message's ring
    sequence number and the ring epoch to it, ``,"seq":<seq>,"epoch":"<epoch>"}``,
    before framing it once as a text frame. The ring record keeps the flag.

Scale-out: with ``UWSGI_WS_REDIS_URL`` in the environment the mule also runs
the Redis bridge (`redis_bridge`: two threads that push local messages to a
Redis Stream and append other instances' messages to the ring). The ring
then has two writers in one process, serialised by `_ring_lock`. Without the
variable, `redis_bridge` and `redis` are never imported.

Delivery: a request accepted by ``mule_msg`` stays in the mule's queue while
the mule is down (the master respawns it; the queue survives), and the
respawned mule resumes the ring from its header: nothing accepted is lost or
duplicated, except the one request a mule killed with ``kill -9`` may have
been taking off the queue at that instant.
"""

from __future__ import annotations

import os
import struct
import sys
import threading
import time
from typing import Any, Optional, Union

from . import frames, metrics, wakeup
from .sharedarea import FLAG_BINARY, FLAG_EVENT, BroadcastRing, RingError

PREFIX = b"UWS1"
_REQ = struct.Struct("<4sBB")
DEFAULT_MULE_MSG_SIZE = 65536
_EVENT_TAIL_MAX = len(b',"seq":,"epoch":""') + 20 + 20  # what the mule adds to an event payload
PUBLISH_TIMEOUT = float(os.environ.get("UWSGI_WS_PUBLISH_TIMEOUT", "10"))


class PublishError(RingError):
    """A publish could not be accepted; the message says what to configure or check."""


def encode_request(data: Union[str, bytes, bytearray, memoryview], channel: Optional[str],
                   event: bool = False) -> bytes:
    if isinstance(data, str):
        try:
            flags, payload = 0, data.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise PublishError(f"the text message is not valid Unicode (a lone surrogate at position {exc.start}): "
                               "publish valid str, or bytes for a binary message") from None
    elif isinstance(data, (bytes, bytearray, memoryview)):
        flags, payload = FLAG_BINARY, bytes(data)
    else:
        raise TypeError(f"publish() takes str (a text message) or bytes (binary), not {type(data).__name__}")
    try:
        chan = channel_bytes(None if channel == "" else channel)
    except ValueError as exc:
        raise PublishError(str(exc)) from None
    if event:
        if flags & FLAG_BINARY or not payload.startswith(b"{") or not payload.endswith(b"}"):
            raise PublishError("an event publish takes the text of a JSON object")
        flags |= FLAG_EVENT
    return _REQ.pack(PREFIX, flags, len(chan)) + chan + payload


def channel_bytes(channel: Optional[str]) -> bytes:
    """A channel name as the ring stores it: UTF-8, at most 255 bytes; None (every
    connection) is b"". Any character may appear (NUL too). Raises TypeError for
    a non-str, ValueError saying what is wrong for anything else."""
    if channel is None:
        return b""
    if not isinstance(channel, str):
        raise TypeError(f"a channel name is a str (or None: every connection), not {type(channel).__name__}")
    try:
        raw = channel.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"channel name {channel[:40]!r} is not valid Unicode (a lone surrogate at position "
                         f"{exc.start}): a channel name must encode to UTF-8") from None
    if len(raw) > 255:
        raise ValueError(f"channel name {channel[:40]!r}... is {len(raw)} bytes in UTF-8: at most 255")
    return raw


def decode_request(message: bytes) -> tuple:
    """(channel, flags, payload) of a publish request; ValueError if it is not one."""
    if len(message) < _REQ.size or message[:4] != PREFIX:
        raise ValueError("not a uwsgi_ws publish request")
    _, flags, clen = _REQ.unpack_from(message, 0)
    start = _REQ.size
    return message[start:start + clen].decode("utf-8"), flags, message[start + clen:]


def uwsgi_option(name: str) -> Optional[str]:
    """The value of uWSGI option (or placeholder) `name` as text, the last one when
    repeated; None when unset, a bare flag, or outside uWSGI."""
    try:
        import uwsgi
    except ImportError:
        return None
    value = (getattr(uwsgi, "opt", {}) or {}).get(name)
    if isinstance(value, (list, tuple)):
        value = value[-1]
    if isinstance(value, bytes):
        value = value.decode()
    return None if value in (None, True) else str(value)


def mule_msg_size() -> int:
    value = uwsgi_option("mule-msg-size")
    try:
        return int(value) if value is not None else DEFAULT_MULE_MSG_SIZE
    except ValueError:
        return DEFAULT_MULE_MSG_SIZE


_ring: Optional[BroadcastRing] = None
# Held by every append to the ring in the broadcast mule: its main loop and the
# Redis bridge's inbox thread are the ring's writers.
_ring_lock = threading.Lock()
_bridge: Any = None  # the running redis_bridge.Bridge, if configured
_history: Any = None  # the running history.Server, if uwsgi-ws-history is set


def _shared_ring() -> BroadcastRing:
    global _ring
    if _ring is None:
        _ring = BroadcastRing.from_sharedarea()
    return _ring


def _sleep(seconds: float) -> None:
    try:
        import uwsgi

        if getattr(uwsgi, "loop", None) in (b"gevent", "gevent"):
            import gevent

            gevent.sleep(seconds)
            return
    except ImportError:
        pass
    time.sleep(seconds)


def publish(data: Union[str, bytes], channel: Optional[str] = None, event: bool = False) -> int:
    """Broadcast `data` (str: text frame, bytes: binary) on `channel` (None: to every
    WebSocket of the instance). Callable from any process of the instance:
    workers (any thread or greenlet), spoolers, mules.

    Blocks while the mule's queue is full (e.g. while the mule respawns), up to
    $UWSGI_WS_PUBLISH_TIMEOUT seconds (default 10), then raises PublishError; it
    never drops a message silently. Returns the size of the request.
    `event=True`: `data` is an event-protocol JSON object that the mule completes
    with its seq and epoch (see FLAG_EVENT above).
    """
    try:
        return _publish(data, channel, event)
    except PublishError:
        metrics.local().add(metrics.PUBLISH_FAILED)
        raise


def _publish(data: Union[str, bytes], channel: Optional[str], event: bool = False) -> int:
    try:
        import uwsgi
    except ImportError:
        raise PublishError(
            "publish() needs uWSGI: run the app under uwsgi with --master, --sharedarea 4096 "
            "and --mule=uwsgi_ws.mule:run"
        ) from None
    request = encode_request(data, channel, event)
    limit = mule_msg_size()
    if len(request) > limit:
        chan_len = request[5]
        raise PublishError(
            f"a message of {len(request) - _REQ.size - chan_len} bytes is over the limit: --mule-msg-size={limit} "
            f"leaves room for {limit - _REQ.size - chan_len} bytes"
            + (f" (with this {chan_len}-byte channel name)" if chan_len else "")
            + ": raise --mule-msg-size (and --sharedarea) or send less"
        )
    ring = _shared_ring()
    chan_len = request[5]
    payload_size = len(request) - _REQ.size - chan_len + (_EVENT_TAIL_MAX if event else 0)
    frame_size = frames.header_size(payload_size) + payload_size
    if frame_size > ring.max_frame_size(chan_len):
        raise PublishError(
            f"message of {frame_size} bytes (framed) is over the broadcast ring's limit of "
            f"{ring.max_frame_size(chan_len)} bytes (a quarter of the ring): raise --sharedarea"
        )
    deadline = time.monotonic() + PUBLISH_TIMEOUT
    delay = 0.001
    while True:
        mule_id = ring.mule_id
        if mule_id:
            if uwsgi.mule_id() == mule_id:  # the broadcast mule publishing itself
                _append_local(ring, request)
                metrics.local().add(metrics.PUBLISHED)
                wakeup.wake_workers()
                if _bridge is not None:
                    _bridge.notify()
                return len(request)
            if uwsgi.mule_msg(request, mule_id):
                return len(request)
            metrics.local().add(metrics.QUEUE_FULL)
            reason = f"the broadcast mule's queue (mule {mule_id}) stayed full"
        else:
            reason = "the broadcast mule did not start (add --mule=uwsgi_ws.mule:run and --master)"
        if time.monotonic() >= deadline:
            raise PublishError(f"publish failed after {PUBLISH_TIMEOUT:g}s: {reason}")
        _sleep(delay)
        delay = min(delay * 2, 0.05)


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


def run() -> None:
    """The broadcast mule's main loop (``--mule=uwsgi_ws.mule:run``); never returns."""
    import uwsgi

    try:
        ring = _shared_ring()
        ring.format(uwsgi.mule_id())
    except RingError as exc:
        # uWSGI neither prints what a mule callable raises nor waits before respawning
        # it: say why once, then stay (publishers get the same error themselves).
        print(f"uwsgi_ws: the broadcast mule cannot run: {exc}", file=sys.stderr, flush=True)
        while True:
            time.sleep(3600)
    size = max(mule_msg_size(), DEFAULT_MULE_MSG_SIZE) + 64
    print(f"uwsgi_ws: broadcast mule {uwsgi.mule_id()} serving ring epoch {ring.epoch:x} "
          f"at message {ring.write_seq}", flush=True)
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
                print(f"uwsgi_ws: dropped a publish request: {exc}", flush=True)
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
    """Keep the event history when uwsgi-ws-history is set (`uwsgi_ws.history`)."""
    global _history
    from . import history

    try:
        per_channel, max_bytes = history.settings()
    except ValueError as exc:
        print(f"uwsgi_ws: no broadcast history: {exc}", file=sys.stderr, flush=True)
        return
    if per_channel <= 0:
        return
    with _ring_lock:
        kept = history.load(ring, per_channel, max_bytes)
        try:
            _history = history.Server(kept, ring, _ring_lock)
        except OSError as exc:
            print(f"uwsgi_ws: no broadcast history: cannot listen on {history.address()!r}: {exc}",
                  file=sys.stderr, flush=True)
            return
    print(f"uwsgi_ws: broadcast history: the last {per_channel} events per room, at most {max_bytes} bytes "
          f"({kept.count} loaded from the ring)", flush=True)


def _start_bridge(ring: BroadcastRing) -> None:
    """Start the Redis bridge when UWSGI_WS_REDIS_URL is set (nothing imported otherwise)."""
    global _bridge
    if not os.environ.get("UWSGI_WS_REDIS_URL"):
        return
    from . import redis_bridge

    wakeup.wake_workers()  # creates the wake-up socket here, before the bridge's threads use it
    _bridge = redis_bridge.start(ring, _ring_lock)
