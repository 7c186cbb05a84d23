"""A pytest plugin: the ``uwsgi_server`` fixture serves your app under real uWSGI.

Enable it in your top-level ``conftest.py``:

    pytest_plugins = ["uwsgi_ws.testing.plugin"]

(or ``pytest -p uwsgi_ws.testing.plugin``), then name the app and use the fixture:

    import pytest, websocket

    pytestmark = pytest.mark.uwsgi_app("myapp:app")        # or UWSGI_APP = "myapp:app"

    @pytest.mark.parametrize("uwsgi_server", ["threads", "gevent"], indirect=True)
    def test_echo(uwsgi_server):
        conn = websocket.create_connection(uwsgi_server.url + "/echo")   # ws://127.0.0.1:<port>
        ...

The fixture starts uWSGI once per test module and model (``--master``, 2
processes of the model, the broadcast on: ``--sharedarea 4096
--mule=uwsgi_ws.mule:run``, a free port, ``--http-socket``), waits until every
worker has started (``worker_pids()`` lists them all; under ``lazy-apps`` each
has loaded the app) and the instance answers HTTP, yields the running
`server.UWSGI` (``url``, ``http``, ``port``, ``log()``, ``worker_pids()``) and
stops it by pid (SIGINT, then SIGKILL of its process group). The test fails if
a worker crashed meanwhile (its log is in the message). Without
parametrization the model is "threads".

Where the app comes from, first found: the ``uwsgi_app`` marker (``app``, then
keyword options: ``extra=[...]`` more uWSGI options, ``broadcast=False``,
``env={...}``, ``pythonpath=[...]``), the module's ``UWSGI_APP``, the ini option
``uwsgi_ws_app``. The app is imported by uWSGI from the rootdir (put first on
``PYTHONPATH``; it is also the working directory).
"""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
from typing import Any, Dict, Iterator, Sequence

import pytest

from .server import MODELS, UWSGI, serve

#: Seconds the fixture waits for the workers to start and the instance to answer.
READY_TIMEOUT = 60.0

__all__ = ["uwsgi_server"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("uwsgi_ws_app", "the app (module:callable) the uwsgi_server fixture serves", default="")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "uwsgi_app(app, extra=(), broadcast=True, env=None, pythonpath=None): "
        "what the uwsgi_server fixture serves under uWSGI")


@pytest.fixture(scope="module")
def uwsgi_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[UWSGI]:
    """The app under real uWSGI (see the module docstring); one per module and model."""
    model = getattr(request, "param", "threads")
    if model not in MODELS:
        raise pytest.UsageError(f"uwsgi_server: unknown model {model!r}: one of {sorted(MODELS)}")
    marker = request.node.get_closest_marker("uwsgi_app")
    options: Dict[str, Any] = dict(marker.kwargs) if marker is not None else {}
    app = (marker.args[0] if marker is not None and marker.args else None) \
        or getattr(request.module, "UWSGI_APP", None) or request.config.getini("uwsgi_ws_app")
    if not app:
        raise pytest.UsageError("uwsgi_server needs the app: pytest.mark.uwsgi_app('module:app'), "
                                "UWSGI_APP = 'module:app' in the test module, or uwsgi_ws_app in the ini file")
    root = str(request.config.rootpath)
    server = serve(
        app,
        tmp_path_factory.mktemp(f"uwsgi-{model}"),
        model=model,
        extra=options.pop("extra", ()),
        broadcast=options.pop("broadcast", True),
        pythonpath=options.pop("pythonpath", [root]),
        cwd=options.pop("cwd", root),
        **options,
    )
    try:
        wait_ready(server, READY_TIMEOUT)
        yield server
    finally:
        crashes, log = server.crashes(), server.log()
        server.stop()
    assert not crashes, f"a uWSGI worker crashed while the tests ran:\n{log}"


def expected_workers(args: Sequence[str]) -> int:
    """The number of workers uWSGI's arguments ask for (the last ``--processes``/``--workers``/``-p``; 1 if none)."""
    count = 1
    for i, arg in enumerate(args):
        name, eq, value = arg.partition("=")
        if name in ("--processes", "--workers", "-p"):
            text = value if eq else (args[i + 1] if i + 1 < len(args) else "")
            if text.isdigit():
                count = int(text)
    return count


def wait_ready(server: UWSGI, timeout: float = READY_TIMEOUT) -> None:
    """Block until `server`'s workers have all started (``worker_pids()`` lists
    `expected_workers` of them; under ``lazy-apps`` each logged its app ready) and
    a plain HTTP request is answered (any status).

    Raises:
        RuntimeError: uWSGI exited, or was not ready within `timeout` seconds (with its log).
    Blocking; polls the log every 20 ms.
    """
    wanted = expected_workers(server.args)
    lazy = any(a in ("--lazy-apps", "--lazy") or a.startswith(("--lazy-apps=", "--lazy=")) for a in server.args)
    deadline = time.monotonic() + timeout
    while True:
        if server.proc.poll() is not None:
            raise RuntimeError(f"uwsgi exited with {server.proc.returncode}:\n{server.log()}")
        pids = server.worker_pids()
        if len(pids) >= wanted and (not lazy or _apps_ready(server.log(), pids)) and _answers(server):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"uwsgi's {wanted} worker(s) were not serving after {timeout}s "
                               f"(started: {pids}):\n{server.log()}")
        time.sleep(0.02)


def _apps_ready(log: str, pids: Sequence[int]) -> bool:
    """Every worker in `pids` logged its app ready (``WSGI app 0 (...) ready ... pid: N``)."""
    ready = {int(pid) for pid in re.findall(r"WSGI app \d+ \(mountpoint='[^']*'\) ready .*? pid: (\d+)", log)}
    return all(pid in ready for pid in pids)


def _answers(server: UWSGI) -> bool:
    """A worker answers a plain HTTP request (any status) within 2 s."""
    try:
        with urllib.request.urlopen(server.http + "/", timeout=2):
            return True
    except urllib.error.HTTPError:
        return True  # a 404 is an answer
    except OSError:
        return False
