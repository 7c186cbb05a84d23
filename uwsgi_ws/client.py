"""Publishing into a running instance from outside it: `Publisher` and the CLI.

    from uwsgi_ws.client import Publisher

    with Publisher("/run/uwsgi/app.sock") as pub:       # the instance's publish socket
        pub.publish("hello")                            # str: a text message, to every connection
        pub.publish(b"\\x00\\x01", channel="feed")        # bytes: binary, to channel "feed"
        pub.emit("/live", "price", {"eur": 1.08}, to="fx")   # an event to room "fx" of /live

The instance listens there when its config sets the placeholder
``uwsgi-ws-publish-socket=/run/uwsgi/app.sock`` (mode
``uwsgi-ws-publish-socket-mode``, default 0660: the instance's user and
group may publish). Each call returns once the broadcast mule appended the
message to the instance's ring (its seq), so a cron job that exits right
after loses nothing. Events carry seq and epoch like any other (the mule
adds them): clients can resume past them, and SSE delivers them.

With the Redis bridge (``uwsgi-ws-redis-url`` on every instance),
``Publisher(redis_url="redis://...", stream="uwsgi_ws:broadcast")`` writes
the same messages to the stream the bridges read, so every bridged instance
delivers them. Plain messages carry this publisher's own numbering (fields
``o`` its random id, ``n`` 1, 2, 3...; `uwsgi_ws.broadcast.redis`): a retry
after a lost connection is dropped by the readers as a duplicate. Events are
numbered in Redis exactly as the instances number theirs (the stream's one
seq and epoch, docs/protocol.md), so browsers resume past them on any
instance; a retry of the same request gets the seq of the first.

Command line (exit status 0 on success; 1 with the reason on stderr when the
publish fails; 2 for bad usage)::

    python -m uwsgi_ws publish --socket PATH [--channel C] [--binary] DATA
    python -m uwsgi_ws emit --socket PATH --endpoint /live [--room R] EVENT JSON

(``--redis URL [--stream KEY]`` instead of ``--socket``; DATA ``-`` reads stdin.)
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
import threading
import time
from typing import Any, List, Optional, Sequence

from . import settings
from .broadcast import Data, PublishSocket, Refused, encode_request, redact, stream_publish
from .events import Events
from .exceptions import PublishError

__all__ = ["PublishError", "Publisher", "emit_main", "publish_main"]

DEFAULT_TIMEOUT = 10.0


class _Endpoint(Events):
    """An events endpoint known only by its path: `Events.channel` and `Events.emit`
    build the channel name and the event's JSON exactly as the app's endpoint does,
    and publish through the Publisher."""

    def __init__(self, path: str, sink: Any) -> None:  # no app, no routes: never served
        self.path = path
        self._sink = sink

    @property
    def broadcast(self) -> Any:
        return self._sink


class Publisher:
    """A publisher into a uwsgi_ws instance from any process of the host (or, with
    `redis_url`, into every instance bridged through that Redis Stream).

    Thread-safe: calls from several threads are serialised (one connection). Under
    gevent outside uWSGI, monkey-patch sockets for the calls to yield.
    """

    def __init__(self, socket_path: Optional[str] = None, *, redis_url: Optional[str] = None,
                 stream: Optional[str] = None, timeout: float = DEFAULT_TIMEOUT, maxlen: Optional[int] = None) -> None:
        """Args:
            socket_path: the instance's ``uwsgi-ws-publish-socket`` path.
            redis_url: instead, the Redis of the bridge (``redis://host:6379/0``).
            stream: the bridge's stream key (default ``uwsgi-ws-redis-stream``'s
                default, "uwsgi_ws:broadcast").
            timeout: seconds a call keeps trying (the mule being respawned, Redis
                reconnecting) before PublishError.
            maxlen: Redis only: the approximate length Redis trims the stream to
                (default ``uwsgi-ws-redis-maxlen``'s, 100000).

        Raises:
            ValueError: neither or both of socket_path and redis_url; a bad timeout.
            PublishError: the redis package is missing (for redis_url).
        """
        if (socket_path is None) == (redis_url is None):
            raise ValueError("Publisher takes a socket path (the instance's uwsgi-ws-publish-socket) "
                             "or redis_url=..., not both nor neither")
        if not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
        self.timeout = float(timeout)
        self._lock = threading.Lock()
        self._link: Optional[PublishSocket] = None
        self._redis: Optional[_RedisStream] = None
        if socket_path is not None:
            if not isinstance(socket_path, (str, os.PathLike)):
                raise TypeError(f"socket_path is a path (str), not {type(socket_path).__name__}")
            self.socket_path: Optional[str] = os.fspath(socket_path)
            self._link = PublishSocket(self.socket_path)
        else:
            self.socket_path = None
            self._redis = _RedisStream(str(redis_url), stream or settings.setting("redis-stream").default,
                                       maxlen or settings.setting("redis-maxlen").default, self.timeout)

    def publish(self, data: Data, channel: Optional[str] = None) -> int:
        """Broadcast `data` (str: a text message, bytes: binary) on `channel` (None:
        every connection of the instance).

        Returns:
            The message's seq: in the instance's ring (socket), or this publisher's
            own number (Redis).

        Raises:
            PublishError: what is wrong: no such socket, permission denied, the mule
                not running (after `timeout`), too large, a bad channel name; Redis
                unreachable (after `timeout`).
            ValueError: a str with a lone surrogate (RFC 6455 section 5.6).
            TypeError: `data` is neither str nor bytes-like.

        Blocks until the broadcast mule appended the message (or Redis stored it).
        """
        return self._send(encode_request(data, channel))

    def emit(self, endpoint: str, event: str, data: Any = None, to: Optional[str] = None, *,
             to_user: Optional[Any] = None, skip: Optional[str] = None) -> int:
        """Send `event` with `data` (JSON-serialisable) to the clients of the events
        endpoint at path `endpoint` (e.g. "/live"): room `to`, a connection id `to`
        ("<pid>-<n>"), every connection of user `to_user`, or None: every
        connection of the endpoint; `skip`: a connection id that does not get it.
        The same message as the app's `live.emit(event, data, to=to, ...)` (a room's
        with the seq and epoch clients resume with: the instance's, or with
        ``redis_url`` the stream's shared numbering).

        Returns:
            As `publish`.

        Raises:
            PublishError: as `publish`.
            TypeError: `event` is not a str, `data` not JSON-serialisable.
            ValueError: `endpoint` is not a path, a bad room name.
        """
        if not isinstance(endpoint, str) or not endpoint.startswith("/"):
            raise ValueError(f"endpoint is the events endpoint's path, e.g. '/live', not {endpoint!r}")
        if to is not None and not isinstance(to, str):
            raise TypeError(f"to is a room name (str) or None (every connection), not {type(to).__name__}")
        seqs: List[int] = []
        _Endpoint(endpoint, _Sink(self, seqs)).emit(event, data, to, to_user=to_user, skip=skip)
        return seqs[0]

    def disconnect(self, endpoint: str, conn_id: str, code: int = 1000, reason: str = "") -> int:
        """Close connection `conn_id` of the events endpoint at `endpoint` (in whichever
        worker holds it), as the app's `live.disconnect`. Returns as `publish`.
        Raises PublishError, ValueError (a bad path, id or code)."""
        if not isinstance(endpoint, str) or not endpoint.startswith("/"):
            raise ValueError(f"endpoint is the events endpoint's path, e.g. '/live', not {endpoint!r}")
        seqs: List[int] = []
        _Endpoint(endpoint, _Sink(self, seqs)).disconnect(conn_id, code, reason)
        return seqs[0]

    def close_room(self, endpoint: str, room: str) -> int:
        """Make every member of `room` of the events endpoint at `endpoint` leave it,
        as the app's `live.close_room`. Returns as `publish`. Raises PublishError, ValueError."""
        if not isinstance(endpoint, str) or not endpoint.startswith("/"):
            raise ValueError(f"endpoint is the events endpoint's path, e.g. '/live', not {endpoint!r}")
        seqs: List[int] = []
        _Endpoint(endpoint, _Sink(self, seqs)).close_room(room)
        return seqs[0]

    def close(self) -> None:
        """Close the connection (a later call opens a new one). Idempotent."""
        with self._lock:
            if self._link is not None:
                self._link.close()
            if self._redis is not None:
                self._redis.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, request: bytes, event: bool = False) -> int:
        with self._lock:
            if self._redis is not None:
                return self._redis.add(request, event)
            assert self._link is not None and self.socket_path is not None
            self._check_path(self.socket_path)
            try:
                return self._link.send(request, self.timeout)
            except Refused as exc:
                raise PublishError(f"the instance refused the message: {exc}") from None

    @staticmethod
    def _check_path(path: str) -> None:
        """Say at once what is wrong with the path (a missing socket is not retried)."""
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            raise PublishError(f"no such socket {path}: set uwsgi-ws-publish-socket={path} in the instance's "
                               "config (then its broadcast mule listens there) and check the instance runs") from None
        except PermissionError:
            raise PublishError(f"permission denied: cannot reach {path} (uid {os.getuid()}): a directory on the "
                               "way is not searchable") from None
        if not stat.S_ISSOCK(mode):
            raise PublishError(f"{path} is not a socket: give the instance's uwsgi-ws-publish-socket path")


class _Sink:
    """What `Events.emit` publishes through: the Publisher, with the event flag."""

    def __init__(self, publisher: Publisher, seqs: List[int]) -> None:
        self._publisher, self._seqs = publisher, seqs

    def publish(self, data: Data, channel: Optional[str] = None, event: bool = False) -> int:
        seq = self._publisher._send(encode_request(data, channel, event), event)
        self._seqs.append(seq)
        return seq


class _RedisStream:
    """XADD publish requests to the bridge's stream as an origin of its own (fields o,
    n, c, f, d of `uwsgi_ws.broadcast.redis`); an event is numbered in Redis as the
    instances number theirs (`redis.add_event`: the stream's one numbering and epoch,
    so a client's position stays valid), idempotent per request number."""

    def __init__(self, url: str, stream: str, maxlen: int, timeout: float) -> None:
        try:
            import redis
        except ImportError:
            raise PublishError("Publisher(redis_url=...) needs the redis package: pip install 'uwsgi_ws[redis]'") \
                from None
        self._redis = redis
        try:
            self._client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        except ValueError as exc:
            raise ValueError(f"redis_url {_redact(url)!r}: {exc}") from None
        self.url, self.stream, self.maxlen, self.timeout = url, stream, maxlen, timeout
        self.epoch = int.from_bytes(os.urandom(8), "little") >> 1 or 1
        self.origin = "%016x" % self.epoch
        # Request numbers, one sequence per kind: the readers count gaps in the plain messages'
        # (o, n) to report loss, while events are numbered by Redis (`n` only makes a retry
        # idempotent), so an event must not take a number from the plain sequence.
        self.numbers = {False: 0, True: 0}

    def add(self, request: bytes, event: bool) -> int:
        self.numbers[event] += 1
        number = self.numbers[event]
        deadline = time.monotonic() + self.timeout
        delay = 0.05
        while True:
            try:
                # the same number again on a retry: a reader drops a duplicate, Redis answers an event's first seq
                return stream_publish(self._client, self.stream, self.maxlen, self.origin, number, request)
            except (self._redis.RedisError, OSError) as exc:
                if time.monotonic() + delay >= deadline:
                    raise PublishError(f"cannot publish to Redis {_redact(self.url)} stream {self.stream!r} after "
                                       f"{self.timeout:g}s: {type(exc).__name__}: {exc}") from None
                time.sleep(delay)  # the same n again: a reader drops it if the first XADD got through
                delay = min(delay * 2, 1.0)

    def close(self) -> None:
        self._client.close()


def _redact(url: str) -> str:
    return redact(url)


# -- command line ------------------------------------------------------------------------


def _target(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--socket", metavar="PATH", help="the instance's publish socket (uwsgi-ws-publish-socket)")
    where.add_argument("--redis", metavar="URL", help="the Redis of the bridge, instead of a socket")
    parser.add_argument("--stream", metavar="KEY",
                        help="with --redis: the bridge's stream (default uwsgi_ws:broadcast)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                        help=f"keep trying this long (default {DEFAULT_TIMEOUT:g})")


def _publisher(args: argparse.Namespace) -> Publisher:
    if args.socket is not None:
        return Publisher(args.socket, timeout=args.timeout)
    return Publisher(redis_url=args.redis, stream=args.stream, timeout=args.timeout)


def _fail(prog: str, message: str, status: int = 1) -> int:
    sys.stderr.write(f"{prog}: error: {message}\n")
    return status


def publish_main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m uwsgi_ws publish``: exit status 0 (the seq on stdout), 1 when the
    publish failed (the reason on stderr), 2 for bad usage."""
    parser = argparse.ArgumentParser(prog="python -m uwsgi_ws publish",
                                     description="Broadcast one message into a running uwsgi_ws instance.")
    _target(parser)
    parser.add_argument("--channel", help="the channel (default: every connection)")
    parser.add_argument("--binary", action="store_true", help="send DATA as a binary message (its UTF-8 bytes)")
    parser.add_argument("data", metavar="DATA", help="the message ('-': read it from stdin)")
    args = parser.parse_args(argv)
    if args.data == "-":
        raw = sys.stdin.buffer.read()
        data: Data = raw if args.binary else raw.decode("utf-8", "surrogateescape")
    else:
        data = os.fsencode(args.data) if args.binary else args.data
    try:
        with _publisher(args) as pub:
            seq = pub.publish(data, channel=args.channel)
    except (PublishError, ValueError, TypeError) as exc:
        return _fail(parser.prog, str(exc))
    sys.stdout.write(f"{seq}\n")
    return 0


def emit_main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m uwsgi_ws emit``: as `publish_main`, for an event of an events endpoint."""
    parser = argparse.ArgumentParser(prog="python -m uwsgi_ws emit",
                                     description="Emit one event to the clients of an events endpoint "
                                     "of a running uwsgi_ws instance.")
    _target(parser)
    parser.add_argument("--endpoint", required=True, help="the events endpoint's path, e.g. /live")
    parser.add_argument("--room", help="the room, or a connection id '<pid>-<n>' "
                        "(default: every connection of the endpoint)")
    parser.add_argument("--user", help="instead of --room: every connection of this user (the identity's user key)")
    parser.add_argument("--skip", metavar="ID", help="a connection id that does not get it")
    parser.add_argument("event", metavar="EVENT", help="the event name")
    parser.add_argument("json", metavar="JSON", help="the event's data, as JSON ('-': read it from stdin)")
    args = parser.parse_args(argv)
    text = sys.stdin.read() if args.json == "-" else args.json
    try:
        data = json.loads(text)
    except ValueError as exc:
        return _fail(parser.prog, f"JSON is not valid JSON ({exc}): quote it for the shell, e.g. "
                     "'{\"price\": 1.08}'", 2)
    try:
        with _publisher(args) as pub:
            seq = pub.emit(args.endpoint, args.event, data, to=args.room, to_user=args.user, skip=args.skip)
    except (PublishError, ValueError, TypeError) as exc:
        return _fail(parser.prog, str(exc))
    sys.stdout.write(f"{seq}\n")
    return 0


