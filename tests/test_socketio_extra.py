"""The `socketio` extra (setup.py) pins what uwsgi_ws.socketio was tested with.

uwsgi_ws/socketio/ relies on python-engineio's driver table, session queue
interface and `_handle_connect`, on disconnect reasons (`Server.reason`,
python-engineio 4.11 / python-socketio 5.12) and on Flask-SocketIO's `init_app`
internals: versions below the tested ones are not claimed, and the next major
versions may change those hooks. This reads setup.py as text (the installed
metadata of an editable install is as old as its last `pip install`) and checks
that the versions in .venv, which the suite runs against, are inside the bounds.
"""

from __future__ import annotations

import ast
from importlib import metadata

from packaging.requirements import Requirement
from packaging.version import Version

from harness import ROOT

EXPECTED = {
    "flask-socketio": ">=5.7,<6",
    "python-socketio": ">=5.18,<6",
    "python-engineio": ">=4.15,<5",
}


def socketio_extra() -> list[Requirement]:
    """setup.py's ``SOCKETIO = [...]`` (the list the `socketio` and `test` extras use)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["SOCKETIO"]:
            return [Requirement(text) for text in ast.literal_eval(node.value)]
    raise AssertionError("setup.py has no SOCKETIO = [...] list")


def test_the_extra_names_the_tested_bounds():
    found = {req.name.lower(): req.specifier for req in socketio_extra()}
    assert set(found) == set(EXPECTED), found
    for name, spec in EXPECTED.items():
        assert found[name] == Requirement(f"{name}{spec}").specifier, (name, str(found[name]))


def test_the_installed_versions_are_inside_the_bounds():
    for req in socketio_extra():
        installed = Version(metadata.version(req.name))
        assert req.specifier.contains(installed), f"{req.name} {installed} in .venv is outside {req}"


def test_the_api_the_code_uses_is_there():
    """What the lower bounds are for: the hooks uwsgi_ws.socketio overrides or calls."""
    import engineio
    import flask_socketio
    import socketio

    server = engineio.Server(async_mode="threading")
    assert hasattr(server, "reason") and hasattr(server.reason, "TRANSPORT_ERROR")
    for hook in ("_handle_connect", "create_queue", "send_packet", "generate_id", "get_queue_empty_exception"):
        assert callable(getattr(engineio.Server, hook, None)), hook
    assert callable(getattr(socketio.Server, "_engineio_server_class", None))
    assert callable(getattr(socketio, "PubSubManager", None))
    assert callable(getattr(flask_socketio.SocketIO, "init_app", None))
