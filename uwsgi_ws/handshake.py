"""The RFC 6455 opening handshake, checked on a WSGI environ.

Pure functions: what a request asks for and what the 101 answer says. The
Flask layer turns a `HandshakeError` into an HTTP response before any upgrade.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Dict, List, Optional, Sequence, Tuple

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
SUPPORTED_VERSION = "13"


class HandshakeError(Exception):
    """The request cannot be upgraded: answer `status` with `headers` and the message.

    `reason` is a short token for metrics and logs (e.g. "version", "origin");
    by default it is derived from the status."""

    def __init__(self, status: int, message: str, headers: Optional[List[Tuple[str, str]]] = None,
                 reason: Optional[str] = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or []
        self.reason = reason or {403: "forbidden", 405: "method", 426: "version",
                                 429: "limit", 503: "limit"}.get(status, "bad_request")


def _tokens(value: str) -> List[str]:
    return [t.strip().lower() for t in value.split(",") if t.strip()]


def check_request(environ: Dict[str, object]) -> str:
    """Validate an upgrade request; return its Sec-WebSocket-Key or raise HandshakeError."""
    if environ.get("REQUEST_METHOD") != "GET":
        raise HandshakeError(405, "a WebSocket handshake must be a GET request", [("Allow", "GET")], "method")
    if "websocket" not in _tokens(str(environ.get("HTTP_UPGRADE", ""))):
        raise HandshakeError(400, "missing 'Upgrade: websocket' header", reason="upgrade_header")
    if "upgrade" not in _tokens(str(environ.get("HTTP_CONNECTION", ""))):
        raise HandshakeError(400, "missing 'Connection: Upgrade' header", reason="connection_header")
    version = str(environ.get("HTTP_SEC_WEBSOCKET_VERSION", "")).strip()
    if version != SUPPORTED_VERSION:
        raise HandshakeError(
            426,
            f"unsupported Sec-WebSocket-Version {version!r}: this server speaks version 13",
            [("Sec-WebSocket-Version", SUPPORTED_VERSION)],
            "version",
        )
    key = str(environ.get("HTTP_SEC_WEBSOCKET_KEY", "")).strip()
    try:
        raw = base64.b64decode(key.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raw = b""
    if len(raw) != 16:
        raise HandshakeError(400, "invalid or missing Sec-WebSocket-Key (must be 16 bytes in base64)", reason="key")
    return key


def accept_value(key: str) -> str:
    """The Sec-WebSocket-Accept value for a client key."""
    digest = hashlib.sha1((key + GUID).encode("ascii")).digest()
    return base64.b64encode(digest).decode("ascii")


def select_subprotocol(environ: Dict[str, object], supported: Sequence[str]) -> Optional[str]:
    """The first subprotocol the client offers that the route supports (client's order)."""
    if not supported:
        return None
    offered = [t.strip() for t in str(environ.get("HTTP_SEC_WEBSOCKET_PROTOCOL", "")).split(",") if t.strip()]
    for name in offered:
        if name in supported:
            return name
    return None


def response_headers(key: str, subprotocol: Optional[str]) -> List[Tuple[str, str]]:
    """Headers of the 101 Switching Protocols answer (no extensions are negotiated)."""
    headers = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Accept", accept_value(key)),
    ]
    if subprotocol:
        headers.append(("Sec-WebSocket-Protocol", subprotocol))
    return headers
