"""One exception hierarchy: every exception class the package defines derives from
`uwsgi_ws.exceptions.UwsgiWsError` (as websockets.exceptions.WebSocketException),
so `except UwsgiWsError` catches whatever the package raises on purpose; the tree in
uwsgi_ws/exceptions.py's docstring names each of them."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import pkgutil
import re

import uwsgi_ws
from uwsgi_ws._uwsgi import NotUnderUwsgi
from uwsgi_ws.exceptions import ConfigError, UwsgiWsError

# Internal signals that never leave the package (their callers catch them), with the reason.
INTERNAL = {
    "uwsgi_ws.broadcast.ring.Lapped": "a ring reader overtaken by the writer; every reader catches it and resyncs",
}


# Modules that import only inside uWSGI (checked by their source instead: no exception class).
UWSGI_ONLY = {"uwsgi_ws.runtime.ugreen"}


def package_exceptions() -> dict:
    found, skipped = {}, set()
    for info in pkgutil.walk_packages(uwsgi_ws.__path__, "uwsgi_ws."):
        if info.name.endswith("__main__"):
            continue
        try:
            module = importlib.import_module(info.name)
        except NotUnderUwsgi:
            skipped.add(info.name)
            source = importlib.util.find_spec(info.name).loader.get_source(info.name)
            assert not re.search(r"^class \w+\([^)]*(Error|Exception)", source, re.M), info.name
            continue
        for name, value in vars(module).items():
            if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == info.name:
                found[f"{info.name}.{name}"] = value
    assert skipped == UWSGI_ONLY, skipped
    return found


def test_every_exception_of_the_package_is_under_the_root():
    found = package_exceptions()
    assert "uwsgi_ws.metrics.table.MetricsError" in found and "uwsgi_ws._uwsgi.NotUnderUwsgi" in found
    outside = sorted(name for name, cls in found.items() if not issubclass(cls, UwsgiWsError) and name not in INTERNAL)
    assert outside == [], f"exceptions outside UwsgiWsError: {outside}"
    assert set(INTERNAL) <= set(found), "a stale INTERNAL entry"


def test_the_tree_in_the_docstring_names_every_public_exception():
    import uwsgi_ws.exceptions as exceptions

    found = package_exceptions()
    for name, cls in found.items():
        if name in INTERNAL:
            continue
        assert re.search(rf"\b{cls.__name__}\b", exceptions.__doc__.split("\n\n")[1]), f"{name} is missing from the tree"


def test_the_old_bases_still_catch():
    from uwsgi_ws._uwsgi import NotUnderUwsgi
    from uwsgi_ws.metrics import MetricsError

    assert issubclass(NotUnderUwsgi, RuntimeError)  # what it was before it joined the tree
    assert issubclass(MetricsError, ConfigError) and issubclass(MetricsError, ValueError)
