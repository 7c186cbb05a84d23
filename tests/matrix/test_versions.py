"""The uWSGI that serves the tests embeds the interpreter running them and
imports the same Flask and Werkzeug: what makes a version-matrix cell
(tests/matrix/run.py) test the versions it names, not the default .venv's.

Run by the default suite too (there it checks .venv's uWSGI). In a matrix cell,
run.py sets UWSGI_WS_MATRIX_PYTHON (e.g. "3.9") and UWSGI_WS_MATRIX_FLASK
("oldest" with UWSGI_WS_MATRIX_FLASK_PINS, or "newest"), checked here as well.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import sys
from pathlib import Path

import pytest
import websocket

APP = "versions_app:app"
MODELS = ["threads", "gevent"]
EXTRA = ["--pythonpath", str(Path(__file__).resolve().parent)]


@pytest.fixture(scope="module")
def served(server) -> dict:
    conn = websocket.create_connection(server.url + "/versions", timeout=10)
    try:
        return json.loads(conn.recv()) | {"model": server.model}
    finally:
        conn.close()


def test_uwsgi_embeds_the_interpreter_running_the_tests(served):
    assert tuple(served["python"]) == tuple(sys.version_info[:3]), served
    assert os.path.realpath(served["prefix"]) == os.path.realpath(sys.prefix), (
        f"uWSGI's Python runs from {served['prefix']}, the tests from {sys.prefix}: "
        "the uwsgi binary next to this interpreter was built for another environment")
    assert served["uwsgi"] == importlib.metadata.version("uwsgi"), served
    assert served["loop"] == (served["model"] == "gevent"), served


def test_uwsgi_imports_the_flask_and_werkzeug_of_the_tests(served):
    for name in ("flask", "werkzeug", "gevent"):
        assert served[name] == importlib.metadata.version(name), (name, served)


def test_the_matrix_cell_gets_what_it_names(served):
    python = os.environ.get("UWSGI_WS_MATRIX_PYTHON")
    if not python:
        pytest.skip("not in a matrix cell (tests/matrix/run.py sets UWSGI_WS_MATRIX_PYTHON)")
    assert "%d.%d" % tuple(served["python"][:2]) == python, served
    if os.environ.get("UWSGI_WS_MATRIX_FLASK") == "oldest":
        pins = dict(re.fullmatch(r"([\w-]+)==(\S+)", p).groups()  # type: ignore[union-attr]
                    for p in json.loads(os.environ["UWSGI_WS_MATRIX_FLASK_PINS"]))
        assert served["flask"] == pins["flask"] and served["werkzeug"] == pins["werkzeug"], (pins, served)
