"""The broadcast mule's entry point, kept stable for configs: ``--mule=uwsgi_ws.mule:run``.

Also `publish` and `PublishError`, for code running in a mule or spooler
(``from uwsgi_ws.mule import publish``). The mule itself is
`uwsgi_ws.broadcast.mule`.
"""

from __future__ import annotations

from . import startup
from .broadcast import publish
from .broadcast.mule import run as _run
from .exceptions import PublishError

__all__ = ["PublishError", "publish", "run"]


def run() -> None:
    """Run the broadcast mule (`uwsgi_ws.broadcast.mule.run`; never returns), after
    saying whether the master's threads it inherited will stall its exit
    (`startup.check_inherited_threads`)."""
    startup.check_inherited_threads()
    _run()
