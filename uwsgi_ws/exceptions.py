"""Every exception the package raises on purpose, under one root (`UwsgiWsError`)::

    UwsgiWsError
    ├── ConnectionClosed            the WebSocket is closed (code, reason)
    │   ├── ConnectionClosedOK      ... with 1000 or 1001
    │   └── ConnectionClosedError   ... with any other code (1006: no closing handshake)
    ├── BroadcastError              the broadcast cannot do what was asked
    │   ├── RingError               the ring cannot be used (no/too small --sharedarea, ...)
    │   └── PublishError            a publish was not accepted (size, no mule, queue full)
    │       └── Refused             ... refused by the instance (broadcast.publish)
    ├── HandshakeRefused            an upgrade (or an event stream) answered with plain HTTP
    ├── UpgradeRefused              the test client's upgrade got plain HTTP (testing.client)
    ├── EventError                  raised by an event handler: an error ack to the client
    ├── NotUnderUwsgi               also a RuntimeError: a uWSGI facility used outside uWSGI (_uwsgi)
    └── ConfigError                 also a ValueError: a setting has a value the package cannot use
        └── MetricsError            the metrics table cannot be set up as configured (metrics)

The classes that live next to their code (in parentheses) subclass these; only
`broadcast.ring.Lapped`, an internal signal its callers always catch (a reader
overtaken by the writer), is not one of them. tests/test_exceptions.py holds every
exception class of the package to this tree.

Each message says what to change (the option, the call) where there is something
to change. Modeled on websockets.exceptions (one hierarchy; a clean close told
apart from an error).
"""

from __future__ import annotations

from typing import List, Optional, Tuple

__all__ = [
    "BroadcastError",
    "ConfigError",
    "ConnectionClosed",
    "ConnectionClosedError",
    "ConnectionClosedOK",
    "EventError",
    "HandshakeRefused",
    "PublishError",
    "RingError",
    "UwsgiWsError",
]


class UwsgiWsError(Exception):
    """The root of the package's exceptions."""


class ConnectionClosed(UwsgiWsError):
    """The WebSocket is closed; `code` and `reason` are from the closing handshake
    (1006 when the transport was lost without one; RFC 6455 section 7.1.5).

    Raised by `receive` (once every message received before the close was
    returned) and by `send`, `ping` after the close. Built with `ConnectionClosed(code,
    reason)`, it is an instance of `ConnectionClosedOK` (1000, 1001) or
    `ConnectionClosedError` (any other code).
    """

    def __new__(cls, code: Optional[int] = None, reason: str = "") -> ConnectionClosed:
        if cls is ConnectionClosed:
            cls = ConnectionClosedOK if code in (1000, 1001) else ConnectionClosedError
        return super().__new__(cls)

    def __init__(self, code: Optional[int] = None, reason: str = "") -> None:
        super().__init__(f"WebSocket closed with code {code}" + (f": {reason}" if reason else ""))
        self.code = code
        self.reason = reason

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (ConnectionClosed, (self.code, self.reason))


class ConnectionClosedOK(ConnectionClosed):
    """Closed normally: 1000 (normal closure) or 1001 (going away)."""


class ConnectionClosedError(ConnectionClosed):
    """Closed with an error code, or the transport was lost (1006)."""


class BroadcastError(UwsgiWsError):
    """The broadcast cannot do what was asked; the message says what to configure."""


class RingError(BroadcastError):
    """The broadcast ring cannot be used as asked (no or too small --sharedarea, a
    channel name too long, ...); the message names the option to set."""


class PublishError(BroadcastError):
    """A publish was not accepted: over a size limit, no broadcast mule, or its queue
    stayed full; the message says what to configure or check."""


class HandshakeRefused(UwsgiWsError):
    """The request is not upgraded: it is answered `status` with `headers` and the
    message (plain HTTP: a bad handshake 400/405/426, the Origin policy 403, a
    connection limit 503 + Retry-After).

    `reason` is a short token for metrics and logs ("version", "origin", "limit", ...);
    by default it is derived from the status. (`handshake.HandshakeError` and
    `access.Refused` are this class.)"""

    def __init__(self, status: int, message: str, headers: Optional[List[Tuple[str, str]]] = None,
                 reason: Optional[str] = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or []
        self.reason = reason or {403: "forbidden", 405: "method", 426: "version",
                                 429: "limit", 503: "limit"}.get(status, "bad_request")


class EventError(UwsgiWsError):
    """Raise in an event handler to answer the client with an error ack carrying this
    message (any other exception is logged and answered ``"internal error"``)."""


class ConfigError(UwsgiWsError, ValueError):
    """A setting has a value the package cannot use; the message says what to write."""
