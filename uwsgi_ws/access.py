"""Who may connect: the Origin rules and the connection counts.

Both are checked before the upgrade (or before an event stream starts), so a
refused client gets a plain HTTP answer (403, 503) and never a half-open
socket. Pure Python, no Flask: `uwsgi_ws.admission` runs them, in the one
order every transport shares, and turns a refusal into a response.

Origin policy (cross-site WebSocket hijacking): a browser lets any page open a
WebSocket to any host and sends that host's cookies along; the only thing that
tells the server which site the page came from is the ``Origin`` header, which
a browser always sends on a WebSocket handshake and a page cannot forge. The
default policy allows only same-origin pages: the Origin's host and port must
be the request's ``Host``. The scheme is not compared (TLS often ends at a
proxy in front of uWSGI, which then sees ``http`` for an ``https`` page), and
a Host without a port matches the Origin scheme's default port. A handshake
without an Origin is allowed: it does not come from a browser, and a
non-browser client can send any Origin it likes, so refusing it protects
nothing; authenticate such clients (`WebSocket.before_connect`).
"""

from __future__ import annotations

import re
import threading
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple, Union
from urllib.parse import urlsplit

from .exceptions import HandshakeRefused

_DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}
# A DNS name (browsers send IDNs as punycode), an IPv4 address, or an IPv6 one (brackets removed).
_HOST = re.compile(r"[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?|[0-9a-f:.]*:[0-9a-f:.]*")

ORIGIN_OPTION_HELP = (
    "allow it with WebSocket(app, allowed_origins=[...]) or the Flask config "
    "UWSGI_WS_ALLOWED_ORIGINS, e.g. ['https://example.com', 'https://*.example.com'] or '*' for any"
)


#: The handshake is refused before the upgrade (`exceptions.HandshakeRefused`).
Refused = HandshakeRefused


def _split_host(value: str) -> Optional[Tuple[str, Optional[int]]]:
    """("host", port or None) of a Host header or an origin's netloc; None if malformed."""
    try:
        parts = urlsplit("//" + value.strip())
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not host or parts.username is not None or parts.path or parts.query or parts.fragment:
        return None
    if not _HOST.fullmatch(host.lower()):
        return None
    return host.lower(), port


def parse_origin(value: str) -> Optional[Tuple[str, str, Optional[int]]]:
    """(scheme, host, port or None) of an Origin value; None for "null" or anything malformed."""
    value = value.strip()
    scheme, sep, netloc = value.partition("://")
    if not sep or not scheme or "/" in netloc:
        return None
    hostport = _split_host(netloc)
    if hostport is None:
        return None
    return scheme.lower(), hostport[0], hostport[1]


class OriginPolicy:
    """Which Origin values may open a WebSocket. Immutable; thread-safe.

    `allowed` is None (same-origin only), ``"*"`` (any origin), or an iterable
    of origins such as ``"https://example.com"``, ``"http://localhost:5000"``,
    ``"https://*.example.com"`` (any subdomain, not the domain itself), the
    literal ``"null"`` (sandboxed frames, file: pages), or ``"*"``. Same-origin
    pages are always allowed. A malformed entry raises ValueError at once.
    """

    def __init__(self, allowed: Union[str, Iterable[str], None] = None) -> None:
        if isinstance(allowed, str):
            allowed = [allowed]
        entries = list(allowed or [])
        self.any = False
        self.allow_null = False
        self._exact: Set[Tuple[str, str, Optional[int]]] = set()
        self._wildcards: List[Tuple[str, str, int]] = []
        for entry in entries:
            if not isinstance(entry, str):
                raise ValueError(f"allowed_origins entries are str, not {type(entry).__name__}: {entry!r}")
            if entry.strip() == "*":
                self.any = True
                continue
            if entry.strip() == "null":
                self.allow_null = True
                continue
            wildcard = "://*." in entry
            parsed = parse_origin(entry.replace("://*.", "://", 1) if wildcard else entry)
            if parsed is None or entry.rstrip().endswith("/"):
                raise ValueError(
                    f"allowed_origins entry {entry!r} is not an origin: write scheme://host[:port] with no path, "
                    "e.g. 'https://example.com', 'http://localhost:5000', 'https://*.example.com', or '*'"
                )
            scheme, host, port = parsed
            key = (scheme, host, port or _DEFAULT_PORTS.get(scheme, 0))
            if wildcard:
                self._wildcards.append(key)
            else:
                self._exact.add(key)

    def allows(self, origin: Optional[str], host: Optional[str]) -> bool:
        """Whether a handshake with this Origin header (None: absent) and Host header may proceed."""
        if origin is None or self.any:
            return True
        if origin.strip() == "null":
            return self.allow_null
        parsed = parse_origin(origin)
        if parsed is None:
            return False
        scheme, o_host, o_port = parsed
        port = o_port or _DEFAULT_PORTS.get(scheme, 0)
        if host:
            req = _split_host(host)
            if req is not None and req[0] == o_host and (req[1] or _DEFAULT_PORTS.get(scheme, 0)) == port:
                return True
        if (scheme, o_host, port) in self._exact:
            return True
        for w_scheme, w_host, w_port in self._wildcards:
            if scheme == w_scheme and port == w_port and o_host.endswith("." + w_host):
                return True
        return False

    def check(self, environ: Dict[str, Any]) -> None:
        """Raise Refused(403) unless the request's Origin is allowed."""
        origin = environ.get("HTTP_ORIGIN")
        host = environ.get("HTTP_HOST")
        if host is None and environ.get("SERVER_NAME"):
            host = f"{environ['SERVER_NAME']}:{environ.get('SERVER_PORT', '')}".rstrip(":")
        if not self.allows(origin, host):
            raise Refused(
                403,
                f"Origin {origin!r} may not connect to {host!r} (a WebSocket or an event stream; "
                "only same-origin pages may by default): "
                + ORIGIN_OPTION_HELP,
            )


class WorkerCount:
    """Open WebSockets of this worker process (every extension's). Thread- and
    greenlet-safe (the critical sections never yield)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0

    def try_acquire(self, limit: Optional[int]) -> bool:
        """Count one more connection unless `limit` (None: none) is reached."""
        with self._lock:
            if limit is not None and self.value >= limit:
                return False
            self.value += 1
            return True

    def release(self) -> None:
        with self._lock:
            self.value -= 1


#: This process's count; each worker starts from the master's zero at the fork.
worker_connections = WorkerCount()


def instance_connections(own: int) -> int:
    """Open WebSockets of the whole uWSGI instance: `own` (this worker's count,
    handshakes in progress included) plus the open connections of every other
    live worker (`metrics.open_connections`). Takes no lock: another worker's
    handshakes still in progress are not seen, so a burst spread over N workers
    may pass `max_connections` by at most N - 1 at that instant. Blocks nowhere;
    callable from any thread or greenlet of a worker."""
    from . import _uwsgi, metrics

    return own + metrics.open_connections(exclude_worker=_uwsgi.worker_id())


def limit_refusal(what: str, limit: int, option: str, retry_after: int) -> Refused:
    """The 503 for a full worker or instance, with Retry-After."""
    return Refused(
        503,
        f"too many WebSocket connections: {what} is at its limit of {limit}; retry later "
        f"(the server's operator can raise {option})",
        [("Retry-After", str(int(retry_after)))],
    )
