"""Start the threads uwsgi_ws runs inside a uWSGI process, with every signal blocked.

uWSGI blocks all signals in the threads it starts itself (core threads 1..n-1,
core/utils.c ``uwsgi_setup_thread_req``: "block all signals on new threads"), so
its handlers run in the process's main thread. A thread started by Python
inherits the mask of the thread that starts it: one started from the main
thread (uWSGI's post-fork hook, core 0, the mule's loop) had SIGINT and SIGTERM
unblocked, and the kernel could run uWSGI's handler there. That handler
(``end_me``) calls ``exit()``, whose atexit hook runs ``Py_Finalize`` in an idle
worker or a mule; from a thread other than the main one, ``threading._shutdown``
then waits for the main thread to end, which it never does: the process hung
until the master killed it at ``worker-reload-mercy`` (seen in CI: a threaded
worker with no WebSocket kept a full shutdown waiting; tests/test_worker_stops.py).

So every thread of ours is started with all signals blocked: the creating thread
blocks them, starts the thread (which inherits the mask) and restores its own
mask at once. Under gevent with ``threading`` monkey-patched the "thread" is a
greenlet and nothing is inherited: the main thread's mask is restored unchanged.
"""

from __future__ import annotations

import signal
import threading
from typing import Callable


def start(target: Callable[..., object], *args: object, name: str) -> threading.Thread:
    """Start a daemon thread running ``target(*args)`` with every signal blocked.

    Args:
        target: the thread's function.
        *args: its arguments.
        name: the thread's name (``threading.Thread.name``).

    Returns:
        The started thread.

    Never blocks; any thread. Signals that arrive meanwhile stay pending for the
    process and go to a thread that does not block them (uWSGI's main thread).
    """
    thread = threading.Thread(target=target, args=args, name=name, daemon=True)
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    try:
        thread.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    return thread
