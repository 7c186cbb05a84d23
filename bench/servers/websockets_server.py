"""Peer 1: the ``websockets`` library (asyncio) with ``broadcast()``.

Contract: ``GET /ws`` is a WebSocket whose client only receives;
``POST /publish`` broadcasts the request body (as a text frame) to every
open ``/ws`` connection and answers ``204``.

websockets' HTTP parser accepts only ``GET`` requests without a body, so
``process_request`` cannot see a POST body. Instead we use the documented
``create_connection`` hook of ``websockets.asyncio.server.serve``: a
``ServerConnection`` subclass sniffs the first bytes of each TCP connection.
A connection starting with ``POST`` is served by a ~40-line keep-alive
HTTP/1.1 handler on the same port, in the same event loop; every other
connection is handed to websockets unchanged. The broadcast itself is one
``websockets.asyncio.server.broadcast()`` call per publish.

Usage: ``python websockets_server.py PORT``
"""
from __future__ import annotations

import asyncio
import sys

from websockets.asyncio.server import ServerConnection, broadcast, serve

_NO_CONTENT = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"
_NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"


class SniffingConnection(ServerConnection):
    """A websockets connection that serves ``POST /publish`` itself."""

    _mode: str = "sniff"  # "sniff" until the first bytes, then "ws" or "http"
    _buf: bytes = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Defer websockets' setup (which starts the handshake task) until we
        # know the connection is a WebSocket.
        self._pending_transport = transport

    def data_received(self, data: bytes) -> None:
        if self._mode == "ws":
            super().data_received(data)
            return
        if self._mode == "sniff":
            if data.startswith(b"POST"):
                self._mode = "http"
            else:
                self._mode = "ws"
                super().connection_made(self._pending_transport)
                super().data_received(data)
                return
        self._buf += data
        self._serve_http()

    def _serve_http(self) -> None:
        """Answer every complete request in the buffer (no pipelining limits)."""
        while True:
            head_end = self._buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self._buf[:head_end].decode("latin-1").split("\r\n")
            length = 0
            for line in head[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            end = head_end + 4 + length
            if len(self._buf) < end:
                return
            body, self._buf = self._buf[head_end + 4 : end], self._buf[end:]
            method, path = head[0].split(" ")[:2]
            transport = self._pending_transport
            if method == "POST" and path == "/publish":
                broadcast(self.server.connections, body.decode())
                transport.write(_NO_CONTENT)  # type: ignore[attr-defined]
            else:
                transport.write(_NOT_FOUND)  # type: ignore[attr-defined]

    def eof_received(self) -> bool | None:
        if self._mode == "ws":
            return super().eof_received()
        return None  # let asyncio close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self._mode == "ws":
            super().connection_lost(exc)

    def pause_writing(self) -> None:
        if self._mode == "ws":
            super().pause_writing()

    def resume_writing(self) -> None:
        if self._mode == "ws":
            super().resume_writing()


async def handler(websocket: ServerConnection) -> None:
    """Keep the connection open (reading until close); only ``/ws`` exists."""
    if websocket.request is None or websocket.request.path != "/ws":
        await websocket.close(1008, "unknown path")
        return
    async for _ in websocket:
        pass


async def main(port: int) -> None:
    async with serve(
        handler, "127.0.0.1", port, create_connection=SniffingConnection, backlog=2048
    ) as server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main(int(sys.argv[1])))
    except KeyboardInterrupt:
        pass
