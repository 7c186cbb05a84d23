"""uwsgi_ws.socketio leaves the concurrency model to uwsgi_ws.runtime (issue 14 item 5).

The Socket.IO modules take what differs per model from the runtime's typed
interface: engineio's primitives (`runtime.primitives_library`), the hand-off's
socket module (`runtime.socket_module`), the refusal of a model without tasks
(`Runtime.HAS_TASKS`, through `primitives_library`). No module of the package
tests the model itself (AST), and the refusal still reaches the user under a
real uWSGI with async cores.
"""

from __future__ import annotations

import ast
import socket

import pytest

from uwsgi_ws import runtime

from harness import ROOT, serve

SOCKETIO = ROOT / "uwsgi_ws" / "socketio"
MODEL_NAMES = {"threads", "gevent", "async", "ugreen", "threading"}
MODEL_ATTRS = {"model", "NAME", "HAS_TASKS", "GREEN", "uwsgi_model", "detect"}


def _names(node: ast.AST) -> set:
    found = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Attribute):
            found.add(sub.attr)
        elif isinstance(sub, ast.Name):
            found.add(sub.id)
    return found


def _model_tests(tree: ast.AST) -> list:
    """Comparisons and conditions that read the model, and gevent imports."""
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.If, ast.IfExp, ast.While, ast.Assert)):
            if _names(node.test) & MODEL_ATTRS:
                hits.append((node.lineno, ast.unparse(node.test)))
        elif isinstance(node, ast.Compare):
            consts = {c.value for c in ast.walk(node) if isinstance(c, ast.Constant) and isinstance(c.value, str)}
            if _names(node) & MODEL_ATTRS or (consts & MODEL_NAMES and _names(node) & {"model", "name", "mode"}):
                hits.append((node.lineno, ast.unparse(node)))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if any(m.split(".")[0] == "gevent" for m in modules):
                hits.append((node.lineno, ast.unparse(node)))
    return hits


def test_no_model_branch_in_the_socketio_modules():
    found = {}
    for path in sorted(SOCKETIO.glob("*.py")):
        hits = _model_tests(ast.parse(path.read_text()))
        if hits:
            found[path.name] = hits
    assert found == {}, f"model checks belong in uwsgi_ws/runtime/: {found}"


def test_the_check_finds_a_model_branch():
    """The AST check above is not vacuous: the forms it replaced are found."""
    old = ('if model == "async":\n    raise ValueError()\n'
           'mode = "gevent" if model == "gevent" else "threading"\n'
           'if not rt.HAS_TASKS:\n    pass\n'
           'def f(model):\n    if model == "gevent":\n        import gevent.socket\n')
    assert {line for line, _ in _model_tests(ast.parse(old))} == {1, 3, 4, 7, 8}


@pytest.mark.parametrize("name, library, module", [("threads", "threading", "socket"),
                                                    ("gevent", "gevent", "gevent.socket")])
def test_the_runtime_names_the_primitives(name, library, module):
    rt = runtime.load(name)
    assert runtime.primitives_library(rt) == library
    sockets = runtime.socket_module(rt)
    assert sockets.__name__ == module and callable(sockets.socket) and sockets.AF_UNIX == socket.AF_UNIX


def test_async_cores_are_refused_with_what_to_do(tmp_path):
    """uWSGI --async --ugreen: SocketIO(app) raises at import, saying which models work;
    uWSGI (--need-app) exits instead of serving an app without Engine.IO."""
    server = serve("socketio_announce_app:app", tmp_path, model="async", ready="none")
    try:
        server.proc.wait(60)
        log = server.log()
        assert "uwsgi_ws.socketio needs background tasks" in log, log
        assert "run uWSGI with --threads or --gevent, not --async/--ugreen" in log, log
    finally:
        server.stop()
