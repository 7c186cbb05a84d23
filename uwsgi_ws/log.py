"""The package's loggers: ``uwsgi_ws.<module>``, one per module (`get(__name__)`).

uWSGI writes what a process prints to stderr into its log, but Python's
logging is unconfigured in most uWSGI apps, which would hide the lines an
operator needs (the broadcast mule starting, a worker lapped, the Redis
bridge's state). So, while the application has configured no handler of
its own on the root logger, a fallback handler writes to stderr, as
``uwsgi_ws: <message>``:

- WARNING and above from every ``uwsgi_ws.*`` logger;
- INFO from the process-level loggers (``uwsgi_ws.broadcast.*``,
  ``uwsgi_ws.shutdown``, ``uwsgi_ws.startup``, ``uwsgi_ws.runtime``): one line per
  event of a process, never one per connection; and ``uwsgi_ws.admin``, the
  operator page's actions (an audit trail: who emitted, who disconnected whom).

Per-connection lines (``uwsgi_ws.metrics``: one per close and per refused
upgrade, INFO) appear once the application configures logging. Once the root
logger has a handler, the fallback stays silent and records propagate as
usual: configure ``logging.getLogger("uwsgi_ws")`` like any library's.
"""

from __future__ import annotations

import logging
import sys

ROOT = "uwsgi_ws"
_PROCESS_LEVEL = ("uwsgi_ws.broadcast", "uwsgi_ws.shutdown", "uwsgi_ws.startup", "uwsgi_ws.runtime",
                  "uwsgi_ws.admin")  # the operator's actions are an audit trail


class _Fallback(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to stderr only while the root logger has no handler."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self.setFormatter(logging.Formatter("uwsgi_ws: %(message)s"))

    def filter(self, record: logging.LogRecord) -> bool:
        if logging.getLogger().handlers:
            return False
        return record.levelno >= logging.WARNING or (
            record.levelno >= logging.INFO and record.name.startswith(_PROCESS_LEVEL))

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr  # follow a replaced sys.stderr
        super().emit(record)


_root = logging.getLogger(ROOT)
if not any(isinstance(h, _Fallback) for h in _root.handlers):
    _root.addHandler(_Fallback())
    for _name in _PROCESS_LEVEL:  # their INFO lines are rare: on unless the app set a level
        if logging.getLogger(_name).level == logging.NOTSET:
            logging.getLogger(_name).setLevel(logging.INFO)


def get(name: str) -> logging.Logger:
    """The logger of module `name` (pass ``__name__``): ``uwsgi_ws.<module>``."""
    return logging.getLogger(name if name.startswith(ROOT) else f"{ROOT}.{name}")
