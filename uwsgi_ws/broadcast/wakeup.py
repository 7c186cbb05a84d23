"""Wake-ups from the broadcast mule to the workers, one datagram per worker.

Each worker binds a Unix datagram socket in the abstract namespace, named
after the instance (the master's pid) and its worker id; the mule sends one
byte to every worker after each batch of ring appends. A worker drains all
pending bytes at once, and a full socket buffer simply drops the byte (the
worker is already due to read the ring), so a burst of publishes costs at most
one wake-up per worker per batch and never queues in uWSGI's master.

Why not a uWSGI signal: signals travel through the master's queue ("SIGNAL
QUEUE IS FULL" under a fast publisher) and, in threaded workers, their
handlers only run when a core is idle, which never happens while every thread
holds a WebSocket. A socket works the same in every model: the worker's waker
(a thread, or a greenlet under gevent) just waits for it to be readable.
"""

from __future__ import annotations

import os
import socket
from typing import List, Optional, Tuple

from .. import _uwsgi


def _address(worker_id: int) -> bytes:
    return _uwsgi.instance_address("wake", worker_id)


def bind_worker_socket() -> socket.socket:
    """The calling worker's wake socket (non-blocking). Call once per worker process.

    Raises NotUnderUwsgi outside uWSGI."""
    address = _address(_uwsgi.worker_id())
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(address)
    except OSError:
        # A previous incarnation of this worker id still holds it (dying): bind
        # another name; this worker then relies on the hub's fallback poll.
        sock.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(address + b"-%d" % os.getpid())
    sock.setblocking(False)
    return sock


def drain(sock: socket.socket) -> int:
    """Read every pending wake-up byte; returns how many reads it took. Never blocks."""
    n = 0
    while True:
        try:
            sock.recv(64)
        except (BlockingIOError, InterruptedError):
            return n
        n += 1


def take(sock: socket.socket) -> None:
    """Read the pending wake-up: one datagram of a wake socket, or up to 4096 bytes of
    a stream (the hub's kick pair, the in-process broadcast's wake pair). Never blocks.

    For a waiter on a level-triggered poll (every runtime's poller): what is left
    (another datagram of a burst) keeps the socket readable, so the next poll returns
    at once; the usual single wake-up then costs one recv, not a second one failing
    with EAGAIN (a syscall and an exception per message and worker), as `drain` does."""
    try:
        sock.recv(4096)
    except (BlockingIOError, InterruptedError):
        pass


_sender: Optional[socket.socket] = None
_targets: Tuple[int, List[bytes]] = (0, [])  # (numproc, the workers' addresses), made once


def wake_workers() -> None:
    """Send one wake-up byte to every worker of this instance (never blocks)."""
    global _sender, _targets
    if _sender is None:
        _sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        _sender.setblocking(False)
    numproc = _uwsgi.numproc()
    if _targets[0] != numproc:  # the addresses depend only on the master pid and the worker ids
        _targets = (numproc, [_address(worker_id) for worker_id in range(1, numproc + 1)])
    sendto = _sender.sendto
    for address in _targets[1]:
        try:
            sendto(b"w", address)
        except OSError:
            pass  # not bound yet (worker starting) or buffer full (a wake-up is pending)
