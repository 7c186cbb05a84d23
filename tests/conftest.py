"""Shared fixtures: one real uWSGI per test module and concurrency model.

A test module that takes the `server` fixture declares what to serve:

    APP = "echo_app:app"            # module:callable in tests/apps
    MODELS = ["threads", "gevent"]  # one server per model, started once per module
    EXTRA = ["--sharedarea", "1"]   # optional extra uWSGI options

and each test runs once per model (`server.model` names it). A server's
teardown fails the module if a worker crashed while it ran.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import serve  # noqa: E402


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "server" in metafunc.fixturenames:
        models = getattr(metafunc.module, "MODELS", ["threads", "gevent"])
        metafunc.parametrize("server", models, indirect=True, scope="module")


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    model = request.param
    app = getattr(request.module, "APP", "echo_app:app")
    extra = getattr(request.module, "EXTRA", [])
    instance = serve(app, tmp_path_factory.mktemp(f"uwsgi-{model}"), model=model, extra=extra)
    instance.model = model  # type: ignore[attr-defined]
    yield instance
    instance.stop()
    assert not instance.crashes(), instance.log()
