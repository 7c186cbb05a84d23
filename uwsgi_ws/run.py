"""`app.run(**uwsgi_options)`: launch uWSGI serving this app, as Flask-uWSGI-WebSocket does."""

from __future__ import annotations

import logging
import os
import shutil
import sys
from typing import Any, List

from flask import Flask

from . import _uwsgi, settings

logger = logging.getLogger("uwsgi_ws.run")


def uwsgi_args(app: Flask, host: str = "127.0.0.1", port: int = 5000, debug: bool = False,
               **options: Any) -> List[str]:
    """The uwsgi command line for `app.run(...)`: `--http-socket host:port --master`, the
    app's file and callable, then each option as `--name value` (True: a bare flag;
    False/None: left out; lists: repeated). uwsgi_ws's own options, unknown to
    uWSGI's command line (`uwsgi_ws_history=1000`), go through ``--set-placeholder``."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if not path:
        raise RuntimeError("app.run() starts uWSGI on the script that calls it: call it from a script "
                           "run as `python app.py` (under `if __name__ == \"__main__\":`), not from an "
                           "interactive session or `python -c`")
    callable_name = next((k for k, v in vars(main).items() if v is app), "app")
    args = ["--http-socket", f"{host}:{port}", "--master", "--wsgi-file", os.path.abspath(path),
            "--callable", callable_name, "--die-on-term", "--need-app", "--py-call-osafterfork"]
    if debug:
        # One worker: the debugger's state lives in one process. The concurrency
        # model stays (`gevent=100`, `threads=8`): without it the worker would
        # serve one WebSocket at a time.
        for key in ("processes", "workers"):
            options.pop(key, None)
        options["processes"] = 1
        args += ["--env", "UWSGI_WS_DEBUG=1"]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if name.startswith("uwsgi_ws_") and v is not None and v is not False:
                args += ["--set-placeholder", f"{flag[2:]}={v}"]
            elif v is True:
                args.append(flag)
            elif v is not False and v is not None:
                args.append(f"{flag}={v}")
    return args


def run(app: Flask, host: str = "127.0.0.1", port: int = 5000, debug: bool = False, **options: Any) -> None:
    """Replace this process with uWSGI serving `app` (`python app.py`; never returns).

    Called while uWSGI itself imports the app (an ``app.run()`` at module
    level, without ``if __name__ == "__main__":``) it only logs a warning and
    returns: uWSGI is already serving the app.

    Raises:
        RuntimeError: uwsgi is not installed, or the app does not come from a script file.
    """
    if _uwsgi.available():
        logger.warning("app.run() was called while uWSGI imports the app: uWSGI already serves it, so "
                       "the call is ignored. Put app.run() under `if __name__ == \"__main__\":` (it is "
                       "for `python app.py`), or leave it out when uWSGI starts the app.")
        return
    binary = shutil.which("uwsgi", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    if binary is None:
        raise RuntimeError("uwsgi is not installed: pip install uwsgi (not pyuwsgi, which has no SSL)")
    args = uwsgi_args(app, host, port, debug, **options)
    os.execv(binary, [binary, *args])


def wrap_debug(app: Flask) -> None:
    """Under `app.run(debug=True)`: Werkzeug's debugger around the app (called at import)."""
    if settings.get("debug") and not getattr(app, "_uwsgi_ws_debug", False):
        from werkzeug.debug import DebuggedApplication

        app.debug = True
        app.wsgi_app = DebuggedApplication(app.wsgi_app, evalex=True)  # type: ignore[method-assign]
        app._uwsgi_ws_debug = True  # type: ignore[attr-defined]
