"""The package you ship: `python -m build` gives an sdist and a wheel; the sdist builds and runs its
own tests; a wheel built without a compiler works on the pure path and says so; the installed
configs are found with `python -m uwsgi_ws conf`; the README's Quick start runs in a fresh
virtualenv after one `pip install "<checkout>[gevent]"` (both ways it shows).

Builds run the real `python -m build` (isolated, as a user would); the fresh virtualenv installs
from pip's index and cache (uWSGI's wheel, built once by `make venv`, comes from the cache).
"""

from __future__ import annotations

import email
import os
import re
import shutil
import subprocess
import sys
import tarfile
import urllib.request
import zipfile
from pathlib import Path

import pytest
import websocket

import uwsgi_ws

from harness import APPS, ROOT, UWSGI, free_port


def run(cmd, cwd=ROOT, env=None, timeout=900) -> subprocess.CompletedProcess:
    full = dict(os.environ)
    full.pop("PYTHONPATH", None)
    full.update(env or {})
    done = subprocess.run([str(c) for c in cmd], cwd=str(cwd), env=full, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, f"{cmd}: exit {done.returncode}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> dict:
    """`python -m build` of the checkout: {"sdist": path, "wheel": path}."""
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "build", "--outdir", out, ROOT])
    sdists, wheels = list(out.glob("*.tar.gz")), list(out.glob("*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, list(out.iterdir())
    return {"sdist": sdists[0], "wheel": wheels[0]}


# What the package and the test apps import, reached from a bare virtualenv.
NEEDED = ("flask", "werkzeug", "jinja2", "markupsafe", "itsdangerous", "click", "blinker", "wsproto", "h11", "yaml")


def bare_venv(root: Path) -> Path:
    """A virtualenv of this Python's base without pip whose site-packages reach the packages in
    NEEDED (symlinks to this environment's copies) and nothing else of this environment."""
    base = subprocess.run([sys.executable, "-c", "import sys; print(sys.base_prefix)"], capture_output=True,
                          text=True, check=True).stdout.strip()
    venv = root / "venv"
    run([Path(base) / "bin" / "python3", "-m", "venv", "--without-pip", venv])
    ours = Path(next(p for p in sys.path if p.endswith("site-packages")))
    links = root / "deps"
    links.mkdir()
    for name in NEEDED:
        (links / name).symlink_to(ours / name)
    (next(venv.glob("lib/python*/site-packages")) / "deps.pth").write_text(f"{links}\n")
    return venv


def wheel_metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        return email.message_from_bytes(zf.read(name))


def test_wheel_holds_the_package_its_configs_and_metadata(dist):
    with zipfile.ZipFile(dist["wheel"]) as zf:
        names = set(zf.namelist())
    for needed in ("uwsgi_ws/__init__.py", "uwsgi_ws/py.typed", "uwsgi_ws/static/uwsgi_ws.js",
                   "uwsgi_ws/conf/threads.yaml", "uwsgi_ws/conf/gevent.yaml", "uwsgi_ws/conf/broadcast.yaml",
                   "uwsgi_ws/conf/broadcast.ini", "uwsgi_ws/conf/broadcast_mule.py", "uwsgi_ws/conf/metrics.yaml",
                   "uwsgi_ws/conf/nginx.conf", "uwsgi_ws/conf/haproxy.cfg", "uwsgi_ws/check.py",
                   "uwsgi_ws/__main__.py"):
        assert needed in names, needed
    assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith(".dist-info/LICENSE") for n in names)
    assert not any(n.startswith(("tests/", "examples/", "vassals")) for n in names)
    meta = wheel_metadata(dist["wheel"])
    assert meta["Version"] == uwsgi_ws.__version__
    assert meta["Requires-Python"] == ">=3.9"
    requires = meta.get_all("Requires-Dist")
    runtime = sorted(re.split(r"[<>=\[ ;]", r, maxsplit=1)[0].lower() for r in requires if "extra ==" not in r)
    assert runtime == ["flask", "pyyaml", "uwsgi", "wsproto"], requires
    assert {"gevent", "redis", "socketio", "test"} <= set(meta.get_all("Provides-Extra"))
    assert any(r.startswith("gevent") and 'extra == "gevent"' in r for r in requires), requires
    assert "Framework :: Flask" in meta.get_all("Classifier")


def test_sdist_holds_what_builds_and_tests_it(dist):
    with tarfile.open(dist["sdist"]) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    # every file git tracks (the tests, their apps and JS clients, examples, vassals, docs, bench,
    # the lint configs, the CI entry point) but .gitignore, so `make test` runs from the sdist
    tracked = set(run(["git", "ls-files"], cwd=ROOT).stdout.split()) - {".gitignore"}
    assert tracked - names == set(), sorted(tracked - names)[:20]
    litter = [n for n in names if "__pycache__" in n or n.endswith((".so", ".pyc")) or "node_modules" in n]
    assert not litter, litter[:10]


def test_sdist_builds_a_wheel_and_passes_its_own_tests(dist, tmp_path):
    with tarfile.open(dist["sdist"]) as tf:
        tf.extractall(tmp_path)
    root = next(tmp_path.iterdir())
    run([sys.executable, "-m", "build", "--wheel", "--outdir", tmp_path / "wheel", root])
    assert len(list((tmp_path / "wheel").glob("*.whl"))) == 1
    # its own tests, importing the package from the unpacked sdist (not this checkout)
    where = run([sys.executable, "-c", "import uwsgi_ws; print(uwsgi_ws.__file__)"], cwd=root,
                env={"PYTHONPATH": str(root)}).stdout.strip()
    assert where.startswith(str(root)), where
    done = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_check.py",
                "tests/test_echo.py", "tests/test_routing.py", "tests/test_broadcast.py", "tests/test_events.py"],
               cwd=root, env={"PYTHONPATH": str(root)}, timeout=900)
    assert re.search(r"\d+ passed", done.stdout) and "failed" not in done.stdout, done.stdout[-3000:]


def test_wheel_built_without_a_compiler_uses_the_pure_path_and_says_so(dist, tmp_path):
    """CC=false: the C speed-up cannot build; the build goes on, the wheel works and says it once."""
    with tarfile.open(dist["sdist"]) as tf:
        tf.extractall(tmp_path / "src")
    root = next((tmp_path / "src").iterdir())
    done = run([sys.executable, "-m", "build", "--wheel", "--outdir", tmp_path / "wheel", root],
               env={"CC": "false", "LDSHARED": "false"})
    assert "building 'uwsgi_ws._speedups' extension" in done.stdout + done.stderr
    wheel = next((tmp_path / "wheel").glob("*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        assert not [n for n in zf.namelist() if "_speedups" in n and n.endswith(".so")]
    # A virtualenv of its own (not this one: its editable install of the checkout would answer
    # `uwsgi_ws._speedups`), reaching the dependencies of this one, with the wheel installed into it.
    venv = bare_venv(tmp_path)
    target = next(venv.glob("lib/python*/site-packages"))
    run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", target, wheel])
    python = venv / "bin" / "python"
    printed = run([python, "-m", "uwsgi_ws", "conf"], cwd=tmp_path).stdout.strip()
    assert printed == str(target / "uwsgi_ws" / "conf")
    # serve a broadcast app from the installed wheel, with the installed configs
    conf = target / "uwsgi_ws" / "conf"
    server = UWSGI(["--virtualenv", str(venv), "--chdir", str(tmp_path), "--yaml", str(conf / "threads.yaml"),
                    "--yaml", str(conf / "broadcast.yaml"), "--http-socket", "127.0.0.1:{port}",
                    "--module", "broadcast_app:app", "--processes", "2", "--threads", "8"],
                   tmp_path, env={"PYTHONPATH": str(APPS)})  # not this checkout (the harness's default)
    try:
        server.wait_for_log(r"spawned uWSGI mule 1", 30)
        sub = websocket.create_connection(server.url + "/sub/x", timeout=10)
        try:
            assert sub.recv().startswith("ready:")
            got = None
            for _ in range(50):
                req = urllib.request.Request(server.http + "/publish/x", data=b"pure", method="POST")
                assert urllib.request.urlopen(req, timeout=10).status == 204
                sub.settimeout(0.5)
                try:
                    got = sub.recv()
                    break
                except websocket.WebSocketTimeoutException:
                    continue
            assert got == "pure", server.log()
        finally:
            sub.close()
        log = server.log()
        assert f"{target}/uwsgi_ws/conf/broadcast_mule.py" in log or "broadcast mule" in log
        assert log.count("broadcasts use the pure-Python path") == 1, log
    finally:
        server.stop()
    assert not server.crashes(), server.log()


# -- the README's Quick start in a fresh virtualenv --------------------------------------------------


def readme_quick_start() -> tuple[str, str]:
    """The Quick start's Python block and its `uwsgi ...` command line, as the README shows them."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    command = re.search(r"```(?:sh|console)?\n(uwsgi .*?)```", section, re.S).group(1)
    return code, " ".join(command.replace("\\\n", " ").split())


def test_install_then_quick_start_runs_both_ways(tmp_path):
    code, command = readme_quick_start()
    assert 'pip install "/path/to/uwsgi_ws[gevent]"' in (ROOT / "README.md").read_text()
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv])
    pip = [venv / "bin" / "python", "-m", "pip", "install", "-q"]
    run([*pip, f"{ROOT}[gevent]"], cwd=tmp_path, timeout=1800)
    python, uwsgi = venv / "bin" / "python", venv / "bin" / "uwsgi"
    assert uwsgi.exists()
    project = tmp_path / "project"
    project.mkdir()

    def check(server: UWSGI) -> None:
        ws = websocket.create_connection(server.url + "/echo", timeout=10)
        try:
            ws.send("hello")
            assert ws.recv() == "hello"
        finally:
            ws.close()
        sub = websocket.create_connection(server.url + "/ticker/ACME", timeout=10)
        try:
            got = None
            for _ in range(50):  # the handler subscribes after the upgrade: publish until it arrives
                req = urllib.request.Request(server.http + "/price/ACME", data=b"42.0", method="POST")
                assert urllib.request.urlopen(req, timeout=10).status == 204
                sub.settimeout(0.5)
                try:
                    got = sub.recv()
                    break
                except websocket.WebSocketTimeoutException:
                    continue
            assert got == "42.0", server.log()
        finally:
            sub.close()

    # 1. python app.py (app.run)
    port = free_port()
    (project / "app.py").write_text(code.replace("port=8000", f"port={port}"))
    server = UWSGI([str(project / "app.py")], tmp_path, port=port, executable=str(python),
                   env={"PYTHONPATH": ""})  # the venv's install only, not this checkout
    try:
        check(server)
    finally:
        server.stop()
    assert not server.crashes(), server.log()
    # 2. the uwsgi command line, from the project directory
    port = free_port()
    args = command.split()[1:]
    args = [a.replace(":8000", f"127.0.0.1:{port}") for a in args]
    env = {"PYTHONPATH": str(project)}
    server = UWSGI(["--chdir", str(project), *args], tmp_path, port=port, executable=str(uwsgi), env=env)
    try:
        check(server)
    finally:
        server.stop()
    assert not server.crashes(), server.log()
    shutil.rmtree(venv, ignore_errors=True)
