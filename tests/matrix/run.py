#!/usr/bin/env python3
"""The version matrix: the core tests on every supported Python, and on the
oldest and newest supported Flask, each under a uWSGI compiled for that Python.

    python tests/matrix/run.py                 # every cell (what `make matrix` runs)
    python tests/matrix/run.py py3.9 py3.13    # some cells
    python tests/matrix/run.py --list          # the cells, their interpreters and pins

Each cell is a virtualenv under `.venv/matrix/<cell>/` (so `make clean` removes
it) holding the package (editable: the tests import this checkout), its gevent
extra, a uWSGI that pip compiled from its sdist for the cell's interpreter (with
OpenSSL, checked as `make venv` does) and the few test dependencies the selected
tests need. A stamp records what the venv was built from (the interpreter, the
pins, setup.py and pyproject.toml); an unchanged cell is reused as it is, so a
second run costs only the tests. pip's wheel cache keeps the compiled uWSGI,
so a rebuilt cell does not compile it again.

The default interpreter's full suite is `make test` itself (.venv); the cells
here run TESTS only: the engine (pure properties and behind uWSGI), the
handshake, Flask routing and contexts, end-to-end echo and broadcast, in the threads and
gevent models (async too where those files include it), plus
tests/matrix/test_versions.py, which checks that the uWSGI serving the tests
embeds the cell's interpreter and imports the cell's Flask.

Interpreters are found as `pythonX.Y` on PATH or under pyenv
($PYENV_ROOT/versions/X.Y.*); a missing one fails the run and says how to get
it or how to leave the cell out (`MATRIX=` on the make command line).
Exit status: 0 when every selected cell passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MATRIX_DIR = ROOT / ".venv" / "matrix"

# The selection every cell runs (paths and node ids relative to ROOT). A file that
# moves must move here too: pytest fails the cell on a path it cannot find.
TESTS: list[str] = [
    "tests/matrix/test_versions.py",          # the cell's uWSGI embeds the cell's Python and Flask
    "tests/test_fuzz_protocol.py",            # the engine: properties against the reference model
    "tests/test_protocol.py",                 # the engine behind real uWSGI
    "tests/test_routing.py",                  # the handshake, Flask routing, refusals
    "tests/test_context.py",                  # Flask's request and app contexts in a handler
    "tests/test_echo.py",                     # end-to-end echo
    "tests/test_broadcast.py::test_every_message_reaches_every_client_once_and_in_order",
    "tests/test_broadcast.py::test_channels_subscribe_leave_and_raise",
]

# What the selected tests import besides the package (a subset of setup.py's
# `test` extra: no browser, Redis, fuzzing engine or Autobahn driver).
TEST_DEPS: list[str] = ["pytest", "websocket-client", "websockets", "hypothesis", "requests"]


@dataclass(frozen=True)
class Cell:
    """One virtualenv of the matrix: an interpreter version and pins."""

    name: str
    python: str                      # "3.9": found as python3.9 or under pyenv
    pins: tuple[str, ...] = ()       # pip requirement specifiers (constraints)
    expect_flask: str = ""           # "oldest"/"newest": what test_versions checks
    note: str = ""
    env: dict[str, str] = field(default_factory=dict)


def oldest_flask() -> tuple[str, ...]:
    """The oldest supported Flask: the one setup.py's `flask>=X.Y[.Z]` floor names (so the
    cell follows the claim), with setup.py's `werkzeug>=` floor when it declares one, else
    the first Werkzeug of the same X.Y line (Flask and Werkzeug release in step; pip
    would otherwise pair it with a Werkzeug it predates). Werkzeug 2.0.0 itself fails
    (400 on a browser's `Connection: keep-alive, Upgrade`): a 2.0 floor needs werkzeug>=2.0.3."""
    setup = (ROOT / "setup.py").read_text()
    pins = []
    for name in ("flask", "werkzeug"):
        match = re.search(rf"""["']{name}\s*>=\s*(\d+)\.(\d+)(?:\.(\d+))?""", setup, re.I)
        if match:
            pins.append((match.group(1), match.group(2), match.group(3) or "0"))
        elif name == "flask":
            raise SystemExit("tests/matrix/run.py: no `flask>=X.Y` in setup.py's install_requires")
        else:
            pins.append((pins[0][0], pins[0][1], "0"))
    (fm, fn, fp), (wm, wn, wp) = pins
    return (f"flask=={fm}.{fn}.{fp}", f"werkzeug=={wm}.{wn}.{wp}")


OLDEST_FLASK = oldest_flask()

CELLS: list[Cell] = [
    Cell("py3.9", "3.9", note="oldest supported Python"),
    Cell("py3.10", "3.10"),
    Cell("py3.12", "3.12"),
    Cell("py3.13", "3.13", expect_flask="newest", note="newest Python, newest Flask"),
    Cell("flask-oldest", "3.9", pins=OLDEST_FLASK, expect_flask="oldest",
         note="oldest supported Flask and Werkzeug"),
]


def log(message: str) -> None:
    print(f"[matrix] {message}", flush=True)


def find_python(version: str) -> str | None:
    """An interpreter of `version` ("3.9"): pyenv's first (its shims may refuse
    a version that is not selected), then `pythonX.Y` on PATH; verified by running it."""
    candidates: list[str] = []
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    versions = pyenv_root / "versions"
    if versions.is_dir():
        found = sorted(
            (p for p in versions.glob(f"{version}.*") if p.name.replace(".", "").isdigit()),
            key=lambda p: [int(x) for x in p.name.split(".")],
            reverse=True,
        )
        candidates += [str(p / "bin" / f"python{version}") for p in found]
    on_path = shutil.which(f"python{version}")
    if on_path:
        candidates.append(on_path)
    for candidate in candidates:
        try:
            out = subprocess.run(
                [candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                capture_output=True, text=True, timeout=30,
            )
        except OSError:
            continue
        if out.returncode == 0 and out.stdout.strip() == version:
            return candidate
    return None


def fingerprint(cell: Cell, python: str) -> str:
    """What the cell's venv is built from; a change rebuilds it."""
    version = subprocess.run([python, "-VV"], capture_output=True, text=True).stdout.strip()
    h = hashlib.sha256()
    for part in (cell.name, python, version, json.dumps(cell.pins), json.dumps(TEST_DEPS)):
        h.update(part.encode() + b"\0")
    for name in ("setup.py", "pyproject.toml"):
        path = ROOT / name
        h.update(path.read_bytes() if path.exists() else b"")
    return h.hexdigest()


def run(cmd: list[str], **kwargs: object) -> None:
    log("$ " + " ".join(cmd))
    subprocess.run(cmd, check=True, **kwargs)  # type: ignore[call-overload]


def uwsgi_has_ssl(venv: Path) -> bool:
    out = subprocess.run([str(venv / "bin" / "uwsgi"), "--help"], capture_output=True, text=True)
    return "--ssl-socket" in out.stdout


def build(cell: Cell, python: str) -> Path:
    """Create or reuse the cell's venv; returns its directory."""
    venv = MATRIX_DIR / cell.name
    stamp = venv / ".matrix-stamp"
    want = fingerprint(cell, python)
    if stamp.exists() and stamp.read_text() == want and (venv / "bin" / "uwsgi").exists():
        log(f"{cell.name}: reusing {venv.relative_to(ROOT)}")
        return venv
    if venv.exists():
        shutil.rmtree(venv)
    log(f"{cell.name}: building {venv.relative_to(ROOT)} with {python}")
    run([python, "-m", "venv", str(venv)])
    py = str(venv / "bin" / "python")
    pip = [py, "-m", "pip", "--disable-pip-version-check", "-q"]
    run([*pip, "install", "-U", "pip", "setuptools", "wheel"])
    constraints = venv / "constraints.txt"
    constraints.write_text("".join(pin + "\n" for pin in cell.pins))
    # Unpinned cells ask for the newest releases (-U): a rebuilt cell follows
    # new Flask and Werkzeug releases, which is what "newest supported" means.
    run([*pip, "install", "-U", "-c", str(constraints), "-e", f"{ROOT}[gevent]", *TEST_DEPS, *cell.pins],
        cwd=str(ROOT))
    if not uwsgi_has_ssl(venv):
        # A wheel cached before the OpenSSL headers were installed: rebuild it.
        log(f"{cell.name}: uWSGI came without SSL: rebuilding it from source")
        run([*pip, "install", "--no-cache-dir", "--force-reinstall", "--no-deps", "--no-binary", "uwsgi",
             "uwsgi>=2.0.31"])
        if not uwsgi_has_ssl(venv):
            raise SystemExit(f"{cell.name}: uWSGI has no SSL support; are the OpenSSL headers installed?")
    stamp.write_text(want)
    return venv


def ensure_newest(cell: Cell, venv: Path) -> None:
    """A reused "newest" cell follows Flask and Werkzeug releases made since it was built."""
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    out = subprocess.run([*pip, "list", "--outdated", "--format", "json"], capture_output=True, text=True)
    try:
        outdated = {p["name"].lower(): p["latest_version"] for p in json.loads(out.stdout or "[]")}
    except ValueError:
        outdated = {}
    stale = sorted(n for n in ("flask", "werkzeug") if n in outdated)
    if stale:
        log(f"{cell.name}: newer releases of {', '.join(stale)}: upgrading")
        run([*pip, "-q", "install", "-U", *stale])


def versions(venv: Path) -> str:
    code = (
        "import sys, importlib.metadata as m\n"
        "print('Python %d.%d.%d' % sys.version_info[:3], *('%s %s' % (n, m.version(n))"
        " for n in ('uWSGI', 'Flask', 'Werkzeug', 'gevent')))"
    )
    out = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True)
    return out.stdout.strip() or out.stderr.strip()


def test(cell: Cell, venv: Path, extra: list[str]) -> tuple[bool, str]:
    env = dict(os.environ)
    env.update(cell.env)
    # The default run (make test) gives the engine's properties 300 examples each;
    # a cell checks the interpreter, so 100 keep the same properties at a third of the time.
    env.setdefault("FUZZ_EXAMPLES", "100")
    env["UWSGI_WS_MATRIX_CELL"] = cell.name
    env["UWSGI_WS_MATRIX_PYTHON"] = cell.python
    env["UWSGI_WS_MATRIX_FLASK"] = cell.expect_flask
    env["UWSGI_WS_MATRIX_FLASK_PINS"] = json.dumps(list(cell.pins))
    env.pop("VIRTUAL_ENV", None)
    cmd = [str(venv / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS, *extra]
    log(f"{cell.name}: " + " ".join(cmd[1:]))
    proc = subprocess.Popen(cmd, cwd=str(ROOT), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    last = ""
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(f"  {cell.name} | {line}")
        if line.strip():
            last = line.strip()
    return proc.wait() == 0, last


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cells", nargs="*", help="cell names (default: all)")
    parser.add_argument("--list", action="store_true", help="list the cells and exit")
    parser.add_argument("--build-only", action="store_true", help="build the venvs, run no test")
    parser.add_argument("--pytest-args", default="", help="more pytest arguments, space separated")
    args = parser.parse_args(argv)

    by_name = {c.name: c for c in CELLS}
    unknown = [n for n in args.cells if n not in by_name]
    if unknown:
        parser.error(f"unknown cell(s) {unknown}; the cells are: {', '.join(by_name)}")
    cells = [by_name[n] for n in args.cells] or CELLS

    if args.list:
        for c in cells:
            print(f"{c.name:14} python{c.python:5} {find_python(c.python) or 'NOT FOUND':45} "
                  f"{' '.join(c.pins) or '(newest releases)'}  {c.note}")
        return 0

    pythons = {c.name: find_python(c.python) for c in cells}
    missing = sorted({c.python for c in cells if not pythons[c.name]})
    if missing:
        for version in missing:
            print(f"error: no Python {version} interpreter (python{version} on PATH or under pyenv).\n"
                  f"  Install it (`pyenv install {version}`), or leave its cells out, e.g.\n"
                  f"  `make test MATRIX=\"{' '.join(c.name for c in cells if c.python != version)}\"`"
                  f" (`MATRIX=` runs none).", file=sys.stderr)
        return 1

    results: list[tuple[Cell, bool, str, str, float]] = []
    for cell in cells:
        started = time.monotonic()
        python = pythons[cell.name]
        assert python is not None
        try:
            venv = build(cell, python)
        except (subprocess.CalledProcessError, SystemExit) as exc:
            results.append((cell, False, "", f"venv build failed: {exc}", time.monotonic() - started))
            continue
        if cell.expect_flask == "newest":
            ensure_newest(cell, venv)
        installed = versions(venv)
        log(f"{cell.name}: {installed}")
        if args.build_only:
            results.append((cell, True, installed, "built", time.monotonic() - started))
            continue
        ok, summary = test(cell, venv, args.pytest_args.split())
        results.append((cell, ok, installed, summary, time.monotonic() - started))

    print("\n== version matrix ==")
    for cell, ok, installed, summary, seconds in results:
        print(f"{'PASS' if ok else 'FAIL'}  {cell.name:13} {seconds:6.0f} s  {installed}\n"
              f"      {summary}")
    failed = [cell.name for cell, ok, *_ in results if not ok]
    if failed:
        print(f"matrix: {len(failed)} of {len(results)} cells failed: {', '.join(failed)}")
        return 1
    print(f"matrix: all {len(results)} cells passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
