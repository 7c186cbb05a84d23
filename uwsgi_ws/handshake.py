"""The RFC 6455 opening handshake, checked on a WSGI environ.

Pure functions: what a request asks for and what the 101 answer says. The
Flask layer turns a `HandshakeError` into an HTTP response before any upgrade.
Extension negotiation (RFC 6455 section 9.1, RFC 7692 sections 5 and 7) is
here too: a malformed or unacceptable offer is declined, never an error.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Dict, List, Optional, Sequence, Tuple

from .deflate import NAME as DEFLATE
from .deflate import DeflateOptions, DeflateParams
from .exceptions import HandshakeRefused

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
SUPPORTED_VERSION = "13"


#: The request cannot be upgraded (the package's one refusal type: `exceptions.HandshakeRefused`).
HandshakeError = HandshakeRefused


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


def response_headers(key: str, subprotocol: Optional[str],
                     extensions: Optional[str] = None) -> List[Tuple[str, str]]:
    """Headers of the 101 Switching Protocols answer.

    Args:
        key: the request's Sec-WebSocket-Key.
        subprotocol: the selected subprotocol, or None.
        extensions: the Sec-WebSocket-Extensions value (e.g. `DeflateParams.response`), or None.
    Returns:
        (name, value) pairs.
    """
    headers = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Accept", accept_value(key)),
    ]
    if subprotocol:
        headers.append(("Sec-WebSocket-Protocol", subprotocol))
    if extensions:
        headers.append(("Sec-WebSocket-Extensions", extensions))
    return headers


# -- extensions (RFC 6455 section 9.1; RFC 7692) ------------------------------

_TCHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")

Offer = Tuple[str, List[Tuple[str, Optional[str]]]]


def _split_quoted(value: str, sep: str) -> Optional[List[str]]:
    """Split on `sep` outside quoted strings; None if a quote is unbalanced."""
    parts, cur, quoted, escaped = [], [], False, False
    for ch in value:
        if quoted:
            cur.append(ch)
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
            cur.append(ch)
        elif ch == sep:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if quoted:
        return None
    parts.append("".join(cur))
    return parts


def _token(text: str) -> bool:
    return bool(text) and all(c in _TCHARS for c in text)


def _param(text: str) -> Optional[Tuple[str, Optional[str]]]:
    name, eq, value = text.partition("=")
    name = name.strip()
    if not _token(name):
        return None
    if not eq:
        return name.lower(), None
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        inner = value[1:-1]
        out, escaped = [], False
        for ch in inner:
            if escaped:
                out.append(ch)
                escaped = False
            elif ch == "\\":
                escaped = True
            else:
                out.append(ch)
        value = "".join(out)
    if not _token(value):
        return None  # RFC 6455 9.1: a quoted value must still be a token once unquoted
    return name.lower(), value


def parse_extensions(header: str) -> List[Optional[Offer]]:
    """The offers of a Sec-WebSocket-Extensions value (RFC 6455 section 9.1), in order.

    Several headers are one comma-separated list (WSGI joins them so). Each
    element is (lower-case name, [(lower-case param, value or None), ...]), or
    None where the element is malformed (the caller declines it).
    """
    elements = _split_quoted(header, ",")
    if elements is None:
        return [None]
    offers: List[Optional[Offer]] = []
    for element in elements:
        if not element.strip():
            continue  # RFC 7230 7: empty list elements are allowed and ignored
        pieces = _split_quoted(element, ";")
        assert pieces is not None  # quotes balanced in the whole header
        name = pieces[0].strip()
        params = [_param(p) for p in pieces[1:]]
        if not _token(name) or any(p is None for p in params):
            offers.append(None)
            continue
        offers.append((name.lower(), [p for p in params if p is not None]))
    return offers


def _window_bits(value: Optional[str]) -> Optional[int]:
    """8-15 written without leading zeros (RFC 7692 sections 7.1.2.1/7.1.2.2), else None."""
    if value is None or not value.isdigit() or value.startswith("0") or len(value) > 2:
        return None
    bits = int(value)
    return bits if 8 <= bits <= 15 else None


def _accept_deflate(params: List[Tuple[str, Optional[str]]], options: DeflateOptions) -> Optional[DeflateParams]:
    """Accept one permessage-deflate offer (RFC 7692 section 7.1), or None to decline it."""
    seen = set()
    server_nct = client_nct = False
    server_bits: Optional[int] = None
    client_bits: Optional[int] = None
    client_bits_offered = False
    for name, value in params:
        if name in seen:
            return None  # 7.1: a parameter given twice declines the offer
        seen.add(name)
        if name == "server_no_context_takeover" and value is None:
            server_nct = True
        elif name == "client_no_context_takeover" and value is None:
            client_nct = True
        elif name == "server_max_window_bits":
            server_bits = _window_bits(value)
            if server_bits is None:
                return None
        elif name == "client_max_window_bits":
            client_bits_offered = True
            if value is not None:
                client_bits = _window_bits(value)
                if client_bits is None:
                    return None
        else:
            return None  # unknown parameter, or a value where none is allowed
    response = [DEFLATE]
    if server_nct:
        response.append("server_no_context_takeover")
    if client_nct:
        response.append("client_no_context_takeover")
    # 7.1.2.1: the server may name its window even if the client did not ask.
    server_window = min(server_bits or 15, options.server_max_window_bits)
    if server_bits is not None or server_window < 15:
        response.append(f"server_max_window_bits={server_window}")
    # 7.1.2.2: the client's window can be limited only if it said it supports that.
    client_window = 15
    if client_bits_offered:
        client_window = min(client_bits or 15, options.client_max_window_bits)
        if client_window < (client_bits or 15) or client_bits is not None:
            response.append(f"client_max_window_bits={client_window}")
    return DeflateParams(
        server_no_context_takeover=server_nct,
        client_no_context_takeover=client_nct,
        server_max_window_bits=server_window,
        client_max_window_bits=client_window,
        response="; ".join(response),
        options=options,
    )


def negotiate_deflate(environ: Dict[str, object], options: Optional[DeflateOptions]) -> Optional[DeflateParams]:
    """The permessage-deflate parameters to use, or None (not offered, all offers
    declined, or `options` is None: compression off).

    The first acceptable offer wins (the client lists them by preference, RFC
    7692 section 5); malformed ones and ones with unknown or invalid
    parameters are skipped. Never raises for a bad header.
    """
    if options is None:
        return None
    header = str(environ.get("HTTP_SEC_WEBSOCKET_EXTENSIONS", ""))
    if not header.strip():
        return None
    for offer in parse_extensions(header):
        if offer is None or offer[0] != DEFLATE:
            continue
        params = _accept_deflate(offer[1], options)
        if params is not None:
            return params
    return None
