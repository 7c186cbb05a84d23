"""`app.run(**uwsgi_options)`: launch uWSGI serving this app, as Flask-uWSGI-WebSocket does.

Without a concurrency option (``threads``, ``gevent``, ``async``, ...) the model
follows the extension's class (`model_defaults`): ``GeventWebSocket`` gets
``gevent=100``, ``AsyncWebSocket`` ``async=100, ugreen=True``, any other
``threads=16, enable_threads=True``; so ``app.run()``, as the seed libraries'
examples start their apps, serves more than one WebSocket at a time. The
broadcast (``publish``/``subscribe``) comes too, as conf/broadcast.* sets it up
(`broadcast_defaults`: a 4096-page sharedarea and the broadcast mule as a
*file*, conf/broadcast_mule.py, which also works under lazy-apps), unless
``broadcast=False``, the async model, or the caller's own ``sharedarea``/``mule``.
What was added is said on stderr before uWSGI starts (`DEFAULTS_NOTE`).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from flask import Flask

from . import _uwsgi, settings

logger = logging.getLogger("uwsgi_ws.run")

#: uWSGI options that choose a concurrency model: one of them given (even False), app.run adds none.
MODEL_OPTIONS = ("threads", "gevent", "async", "ugreen", "asyncio", "greenlet", "loop")
#: The model app.run picks by the extension's class `model` attribute (None: plain WebSocket...).
MODEL_DEFAULTS: Dict[Optional[str], Dict[str, Any]] = {
    "gevent": {"gevent": 100},
    "async": {"async": 100, "ugreen": True},
    None: {"threads": 16, "enable_threads": True},
}
MODEL_DEFAULTS["threads"] = MODEL_DEFAULTS[None]
#: The broadcast mule file shipped with the configs (conf/broadcast.* name it `%dbroadcast_mule.py`).
MULE_FILE = Path(__file__).resolve().parent / "conf" / "broadcast_mule.py"
#: Said on stderr before uWSGI starts when app.run added options: {added} is the list.
DEFAULTS_NOTE = ("uwsgi_ws: app.run() adds {added} (pass a concurrency option such as threads=8 or "
                 "gevent=1000 to choose the model, broadcast=False to leave the broadcast out)")


#: A placeholder app.run sets on the uWSGI it starts: the script's module-level app.run(),
#: run again as uWSGI imports the script, is expected there (no warning).
STARTED_BY_RUN = "app-run-by-uwsgi-ws"  # not a setting (no uwsgi-ws- prefix): a marker
#: Said when app.run() runs in the top-level code of a module being imported by another
#: program (not the script `python app.py` runs): {module}, {program}.
IGNORED_AT_IMPORT = ("uwsgi_ws: ignoring app.run() at the top level of {module}, imported by {program} (flask "
                     "run, pytest, a WSGI server): starting uWSGI would replace that process. Put app.run() under "
                     "`if __name__ == \"__main__\":` to run the app with `python app.py`.")


def _importing_module() -> Optional[str]:
    """The module whose top-level code called app.run() while being imported by another
    program, or None: the first frame outside uwsgi_ws that is a module's body (code
    ``<module>``) whose ``__name__`` is not ``"__main__"``. A call from a function (a
    console script's ``main()``) or from the script itself returns None."""
    frame = sys._getframe(1)
    while frame is not None and str(frame.f_globals.get("__name__", "")).split(".")[0] == "uwsgi_ws":
        frame = frame.f_back  # type: ignore[assignment]
    if frame is None or frame.f_code.co_name != "<module>":
        return None
    name = str(frame.f_globals.get("__name__", ""))
    return None if name == "__main__" else name


def model_defaults(app: Flask, options: Dict[str, Any]) -> Dict[str, Any]:
    """The concurrency options app.run adds: none when `options` name a model (even as
    False: ``threads=False`` asks for a worker without one), else by the class of the
    app's uwsgi_ws extension (`MODEL_DEFAULTS`; no extension: threads)."""
    if any(name in options for name in MODEL_OPTIONS):
        return {}
    extension = app.extensions.get("uwsgi_ws")
    return dict(MODEL_DEFAULTS.get(getattr(extension, "model", None), MODEL_DEFAULTS[None]))


def broadcast_defaults(options: Dict[str, Any], broadcast: Optional[bool]) -> Dict[str, Any]:
    """The broadcast options app.run adds, as conf/broadcast.* does: a sharedarea of 4096
    pages (16 MiB ring), the broadcast mule as a file (`MULE_FILE`), its reload mercy
    and message size. None when `broadcast` is False, when `options` already set
    ``sharedarea`` or ``mule``, or (unless `broadcast` is True) under the async model,
    which has no broadcast (conf/async.yaml)."""
    if broadcast is False or "sharedarea" in options or "mule" in options:
        return {}
    if broadcast is None and (options.get("async") or options.get("ugreen")) and not options.get("gevent"):
        return {}
    return {"sharedarea": 4096, "mule": str(MULE_FILE), "mule_reload_mercy": 10, "mule_msg_size": 262144}


def added_options(app: Flask, options: Dict[str, Any], broadcast: Optional[bool] = None) -> Dict[str, Any]:
    """What app.run adds to the caller's `options`: `model_defaults` then `broadcast_defaults`."""
    model = model_defaults(app, options)
    return {**model, **broadcast_defaults({**model, **options}, broadcast)}


def uwsgi_args(app: Flask, host: str = "127.0.0.1", port: int = 5000, debug: bool = False,
               broadcast: Optional[bool] = None, **options: Any) -> List[str]:
    """The uwsgi command line for `app.run(...)`: `--http-socket host:port --master`, the
    app's file and callable, then each option as `--name value` (True: a bare flag;
    False/None: left out; lists: repeated), after the defaults (`model_defaults`,
    `broadcast_defaults`: `options` always win). uwsgi_ws's own options, unknown to
    uWSGI's command line (`uwsgi_ws_history=1000`), go through ``--set-placeholder``.

    Raises:
        RuntimeError: the `__main__` module has no file (an interactive session, ``python -c``).
    """
    options = {**added_options(app, options, broadcast), **options}
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if not path:
        raise RuntimeError("app.run() starts uWSGI on the script that calls it: call it from a script "
                           "run as `python app.py` (under `if __name__ == \"__main__\":`), not from an "
                           "interactive session or `python -c`")
    callable_name = next((k for k, v in vars(main).items() if v is app), "app")
    args = ["--http-socket", f"{host}:{port}", "--master", "--wsgi-file", os.path.abspath(path),
            "--callable", callable_name, "--die-on-term", "--need-app", "--py-call-osafterfork",
            "--set-placeholder", f"{STARTED_BY_RUN}=1"]
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


def run(app: Flask, host: str = "127.0.0.1", port: int = 5000, debug: bool = False,
        broadcast: Optional[bool] = None, **options: Any) -> None:
    """Replace this process with uWSGI serving `app` (`python app.py`; never returns).

    Called while something imports the app, it returns at once instead, as
    Flask's own ``app.run()`` does under ``flask run``: uWSGI itself (an
    ``app.run()`` at module level, without ``if __name__ == "__main__":``; said
    as a warning unless this uWSGI was started by ``app.run()``), ``flask run``,
    pytest or a WSGI server importing the module (`IGNORED_AT_IMPORT` on stderr).

    Raises:
        RuntimeError: uwsgi is not installed, or the app does not come from a script file.
    """
    if _uwsgi.available():
        if _uwsgi.option(STARTED_BY_RUN) is None:  # python app.py's own uWSGI importing app.py: expected
            logger.warning("app.run() was called while uWSGI imports the app: uWSGI already serves it, so "
                           "the call is ignored. Put app.run() under `if __name__ == \"__main__\":` (it is "
                           "for `python app.py`), or leave it out when uWSGI starts the app.")
        return
    importer = _importing_module()
    if importer is not None or os.environ.get("FLASK_RUN_FROM_CLI") == "true":
        # flask run, pytest, a WSGI server importing the app: starting uWSGI would replace that process
        sys.stderr.write(IGNORED_AT_IMPORT.format(module=importer or "the app", program=os.path.basename(
            sys.argv[0]) if sys.argv and sys.argv[0] else "python") + "\n")
        sys.stderr.flush()
        return
    binary = shutil.which("uwsgi", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    if binary is None:
        raise RuntimeError("uwsgi is not installed: pip install uwsgi (not pyuwsgi, which has no SSL)")
    added = added_options(app, options, broadcast)
    args = uwsgi_args(app, host, port, debug, broadcast, **options)
    if added:
        listed = ", ".join(f"{name}={value}" for name, value in added.items())
        sys.stderr.write(DEFAULTS_NOTE.format(added=listed) + "\n")
        sys.stderr.flush()
    os.execv(binary, [binary, *args])


def wrap_debug(app: Flask) -> None:
    """Under `app.run(debug=True)`: Werkzeug's debugger around the app (called at import)."""
    if settings.get("debug") and not getattr(app, "_uwsgi_ws_debug", False):
        from werkzeug.debug import DebuggedApplication

        app.debug = True
        app.wsgi_app = DebuggedApplication(app.wsgi_app, evalex=True)  # type: ignore[method-assign]
        app._uwsgi_ws_debug = True  # type: ignore[attr-defined]
