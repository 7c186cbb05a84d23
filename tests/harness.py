"""Start and stop real uWSGI processes for the tests.

The code is `uwsgi_ws.testing.server` (shipped for users' integration tests,
with the pytest plugin `uwsgi_ws.testing.plugin`); this module adds the
suite's paths (the checkout and tests/apps on PYTHONPATH) and the helpers only
this suite uses. Nothing here mocks uWSGI: tests talk to the real server over
loopback.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from uwsgi_ws.testing.server import MODELS, free_port, uwsgi_binary, wait_for
from uwsgi_ws.testing.server import UWSGI as _UWSGI
from uwsgi_ws.testing.server import serve as _serve

__all__ = ["APPS", "MODELS", "ROOT", "UWSGI", "free_port", "read_reports", "serve", "survives", "uwsgi_binary",
           "wait_for"]

ROOT = Path(__file__).resolve().parent.parent
APPS = Path(__file__).resolve().parent / "apps"


class UWSGI(_UWSGI):
    """`uwsgi_ws.testing.server.UWSGI` with the checkout and tests/apps first on
    PYTHONPATH and the checkout as the working directory."""

    def __init__(self, args: Sequence[str], tmp_path: Path, **kwargs: object) -> None:
        kwargs.setdefault("pythonpath", (str(ROOT), str(APPS)))
        kwargs.setdefault("cwd", str(ROOT))
        super().__init__(args, tmp_path, **kwargs)  # type: ignore[arg-type]


def serve(
    app: str,
    tmp_path: Path,
    model: str = "threads",
    extra: Iterable[str] = (),
    **kwargs: object,
) -> _UWSGI:
    """Serve `app` ("module:callable", importable from tests/apps) with a model from
    MODELS (`uwsgi_ws.testing.server.serve` with this suite's paths)."""
    kwargs.setdefault("pythonpath", (str(ROOT), str(APPS)))
    kwargs.setdefault("cwd", str(ROOT))
    return _serve(app, tmp_path, model, extra, **kwargs)  # type: ignore[arg-type]


def read_reports(path: Path, count: int = 1, timeout: float = 10.0) -> list:
    """The JSON lines a test app appended to `path`, once there are at least `count`."""
    import json

    def complete_lines() -> list:
        if not path.exists():
            return []
        lines = path.read_text().split("\n")[:-1]  # the last piece may be half written
        found = [json.loads(line) for line in lines if line.strip()]
        return found if len(found) >= count else []

    return wait_for(complete_lines, timeout, f"{count} report line(s) in {path}")


@contextlib.contextmanager
def survives(server: UWSGI) -> Iterator[None]:
    """A connection opened before the block still echoes (on `/echo`) after it; the
    single worker keeps its pid (no respawn) and nothing crashed."""
    import websocket

    witness = websocket.create_connection(server.url + "/echo", timeout=5)
    try:
        witness.send("before")
        assert witness.recv() == "before"
        pids = wait_for(server.worker_pids, 5, "the worker's spawn line")
        assert len(pids) == 1, server.log()
        yield
        witness.send("after")
        assert witness.recv() == "after"
    finally:
        witness.close()
    assert server.worker_pids() == pids
    assert server.crashes() == []
