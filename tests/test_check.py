"""`python -m uwsgi_ws check` (the config linter) and `python -m uwsgi_ws conf`.

The linter's claims about what uWSGI reads are checked against the real
uWSGI: for each construct, `uwsgi --show-config` (the options uWSGI actually
took from the file) must equal what the linter says uWSGI reads.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from uwsgi_ws import check

from harness import ROOT, uwsgi_binary

CONF = ROOT / "uwsgi_ws" / "conf"


def run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "uwsgi_ws", *args], capture_output=True, text=True,
                          cwd=str(cwd), timeout=120)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def uwsgi_reads(path: Path) -> list[tuple[str, str]]:
    """The options the installed uWSGI takes from config `path` (its --show-config block), in order."""
    flag = "--ini" if path.suffix == ".ini" else "--yaml"
    done = subprocess.run([uwsgi_binary(), flag, str(path), "--show-config"], capture_output=True, text=True,
                          timeout=30, stdin=subprocess.DEVNULL, cwd=str(path.parent))
    block = done.stdout + done.stderr
    body = block.split(";uWSGI instance configuration", 1)[1].split(";end of configuration", 1)[0]
    pairs = []
    for line in body.splitlines():
        key, sep, value = line.partition(" = ")
        if sep and key not in ("yaml", "ini", "show-config"):
            pairs.append((key.strip(), value.strip()))
    return pairs


def linter_reads(path: Path) -> list[tuple[str, str]]:
    return [(o.key, o.value) for o in check.load(path).options]


# -- the repository's own configs ----------------------------------------------------------------


def test_shipped_configs_and_vassals_are_clean():
    done = run_cli("check", str(CONF), str(ROOT / "vassals"), str(ROOT / "vassals-redis"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "error" not in done.stdout, done.stdout
    assert re.search(r"\d+ file\(s\) checked: 0 error\(s\)", done.stderr), done.stderr


@pytest.mark.parametrize("name", sorted(p.name for p in CONF.glob("*.yaml")) + sorted(p.name for p in CONF.glob("*.ini")))
def test_linter_reads_the_shipped_configs_as_uwsgi_does(name):
    path = CONF / name
    assert linter_reads(path) == uwsgi_reads(path)


# -- constructs uWSGI's YAML reader ignores: the linter says so, and uWSGI really ignores them ----

IGNORED = {
    "nested mapping": ("""
        uwsgi:
          master: true
          env:
            FOO: bar
          processes: 4
        """, 3, "nested mapping"),
    "block list": ("""
        uwsgi:
          master: true
          mule:
            - a.py
            - b.py
          processes: 4
        """, 3, "block list under `mule`"),
    "list item at the option level": ("""
        uwsgi:
          master: true
          - processes: 4
          threads: 8
        """, 3, "block list item"),
    "key without value": ("""
        uwsgi:
          master: true
          lazy-apps:
          processes: 4
        """, 3, "has no value"),
    "no space after the colon": ("""
        uwsgi:
          master: true
          processes:4
          threads: 8
        """, 3, "not a `key: value` line"),
    "second section": ("""
        uwsgi:
          master: true
        uwsgi:
          processes: 4
        """, 3, "second `uwsgi:` section"),
}


@pytest.mark.parametrize("case", sorted(IGNORED))
def test_ignored_construct_is_reported_and_really_ignored(tmp_path, case):
    text, line, words = IGNORED[case]
    path = write(tmp_path, "vassal.yaml", text)
    read = uwsgi_reads(path)
    assert ("processes", "4") not in read, read  # uWSGI dropped what follows
    assert ("master", "true") in read, read
    assert linter_reads(path) == read
    done = run_cli("check", str(path))
    assert done.returncode == 1, done.stdout
    assert re.search(rf"^{re.escape(str(path))}:{line}: error: .*{re.escape(words)}", done.stdout, re.M), done.stdout
    assert "fix:" in done.stdout


def test_anchors_and_several_documents(tmp_path):
    path = write(tmp_path, "vassal.yaml", """
        uwsgi: &base
          master: true
          <<: *base
        ---
        uwsgi:
          processes: 4
        """)
    read = uwsgi_reads(path)
    assert ("processes", "4") not in read and ("<<", "*base") in read, read
    out = run_cli("check", str(path)).stdout
    assert f"{path}:1: error: YAML anchor &base" in out, out
    assert f"{path}:3: error: YAML alias *base" in out, out
    assert f"{path}:4: error: a second YAML document" in out, out


def test_single_quotes_are_kept_by_uwsgi(tmp_path):
    path = write(tmp_path, "vassal.yaml", """
        uwsgi:
          procname-prefix: 'web'
        """)
    assert ("procname-prefix", "'web'") in uwsgi_reads(path)
    out = run_cli("check", str(path)).stdout
    assert f"{path}:2: warning: single quotes" in out, out


def test_ini_line_without_equals(tmp_path):
    path = write(tmp_path, "vassal.ini", """
        [uwsgi]
        master = true
        lazy-apps
        """)
    out = run_cli("check", str(path)).stdout
    assert f"{path}:3: error: `lazy-apps` has no `=`" in out, out


# -- options uWSGI does not know ------------------------------------------------------------------


def test_unknown_option_names_the_close_one(tmp_path):
    path = write(tmp_path, "vassal.yaml", """
        uwsgi:
          strict: true
          lazy_apps: true
          uwsgi-ws-history: 100
        """)
    done = run_cli("check", str(path))
    assert done.returncode == 1
    assert f"{path}:3: error: uWSGI does not know the option `lazy_apps` (strict mode refuses it" in done.stdout
    assert "did you mean `lazy-apps`?" in done.stdout
    assert "set-placeholder: uwsgi-ws-history=100" in done.stdout, done.stdout
    # and uWSGI does refuse it in strict mode
    started = subprocess.run([uwsgi_binary(), "--yaml", str(path)], capture_output=True, text=True, timeout=30,
                             stdin=subprocess.DEVNULL)
    assert started.returncode != 0 and "lazy_apps" in started.stdout + started.stderr


# -- the mistakes specific to uwsgi_ws, through includes ----------------------------------------------


def mistakes(tmp_path: Path, body: str) -> str:
    path = write(tmp_path, "vassal.yaml", "uwsgi:\n" + textwrap.indent(textwrap.dedent(body).strip("\n"), "  ") + "\n")
    done = run_cli("check", str(path))
    return done.stdout + f"\n(exit {done.returncode})"


def test_mule_without_sharedarea_and_the_reverse(tmp_path):
    out = mistakes(tmp_path, "mule: uwsgi_ws.mule:run")
    assert "error: the broadcast mule without a sharedarea" in out and "(exit 1)" in out, out
    out = mistakes(tmp_path, "sharedarea: 4096")
    assert "warning: a sharedarea without the broadcast mule" in out and "(exit 0)" in out, out


def test_mule_without_a_value(tmp_path):
    out = mistakes(tmp_path, "sharedarea: 4096\nmule: true")
    assert ":3: error: `mule` without a value" in out, out


def test_lazy_apps_with_the_module_mule_but_not_with_the_mule_file(tmp_path):
    out = mistakes(tmp_path, "lazy-apps: true\nsharedarea: 4096\nmule: uwsgi_ws.mule:run")
    assert ":4: error: lazy-apps with the broadcast mule as module:callable" in out, out
    out = mistakes(tmp_path, f"lazy-apps: true\ninclude: {CONF}/broadcast.yaml")
    assert "(exit 0)" in out, out
    out = mistakes(tmp_path, f"lazy-apps: false\ninclude: {CONF}/threads.yaml\nsharedarea: 4096\n"
                             "mule: uwsgi_ws.mule:run")
    assert "(exit 0)" in out, out


def test_http_router_harakiri_threads_below_the_limit(tmp_path):
    out = mistakes(tmp_path, f"""
        include: {CONF}/threads.yaml
        http: :8080
        harakiri: 30
        threads: 8
        set-placeholder: uwsgi-ws-max-connections-per-worker=32
        """)
    # without http-websockets the router hangs every WebSocket (tests/test_http_router.py): an error
    assert ":3: error: the `http` router without `http-websockets`" in out, out
    assert "fix: add `http-websockets: true` next to `http: :8080`" in out, out
    assert ":4: error: harakiri 30" in out, out
    assert ":5: error: threads 8 but max_connections_per_worker 32" in out, out
    assert "(exit 1)" in out


def test_http_router_with_http_websockets_is_a_warning(tmp_path):
    out = mistakes(tmp_path, f"""
        include: {CONF}/threads.yaml
        http: :8080
        http-websockets: true
        module: app:app
        """)
    assert ":3: warning: the `http` router in front of WebSockets" in out, out
    assert "without `http-websockets`" not in out and "(exit 0)" in out, out


def test_router_fix_in_ini_syntax(tmp_path):
    path = write(tmp_path, "vassal.ini", f"""
        [uwsgi]
        include = {CONF}/threads.ini
        http = :8080
        module = app:app
        """)
    out = run_cli("check", str(path)).stdout
    assert f"{path}:3: error: the `http` router without `http-websockets`" in out, out
    assert "fix: add `http-websockets = true` next to `http = :8080`, or serve with `http-socket = :8080`" in out
    assert ": " not in out.split("fix:")[1].split("(directly")[0].replace("fix: ", ""), out


# -- per-application options given to uWSGI, a config with no concurrency, fixes in ini syntax ----


def test_per_application_option_in_env_suggests_the_app_not_a_placeholder(tmp_path):
    """ping_interval is read from WebSocket(...) and the Flask config: a placeholder sets nothing too."""
    out = mistakes(tmp_path, """
        threads: 16
        module: app:app
        env: UWSGI_WS_PING_INTERVAL=5
        """)
    assert ":4: warning: env: UWSGI_WS_PING_INTERVAL sets nothing: ping_interval is a per-application option" \
        in out, out
    assert "fix: give it to the app: `WebSocket(app, ping_interval=5)`, or the Flask config " \
        '`app.config["UWSGI_WS_PING_INTERVAL"] = 5`' in out, out
    assert "set-placeholder" not in out, out
    # the strict base config: also an error (the reload kills the instance), still no placeholder as the fix
    out = mistakes(tmp_path, f"""
        include: {CONF}/gevent.yaml
        module: app:app
        env: UWSGI_WS_PING_INTERVAL=5
        set-placeholder: uwsgi-ws-allowed-origins=*
        """)
    assert ":4: error: env: UWSGI_WS_PING_INTERVAL sets nothing" in out and "strict mode refuses" in out, out
    assert "`WebSocket(app, ping_interval=5)`" in out and "set-placeholder: uwsgi-ws-ping" not in out, out
    assert ":5: warning: placeholder uwsgi-ws-allowed-origins sets nothing" in out, out
    assert "`WebSocket(app, allowed_origins='*')`" in out, out


def test_per_application_option_as_an_unknown_option(tmp_path):
    out = mistakes(tmp_path, """
        strict: true
        uwsgi-ws-max-message-size: 65536
        uwsgi-ws-history: 100
        """)
    assert ":3: error: uWSGI does not know the option `uwsgi-ws-max-message-size`" in out, out
    assert "max_message_size is a per-application option: give it to the app: " \
        "`WebSocket(app, max_message_size=65536)`" in out, out
    assert "set-placeholder: uwsgi-ws-history=100" in out, out  # an instance setting: the placeholder is right


def test_no_concurrency_model_is_warned_about(tmp_path):
    out = mistakes(tmp_path, "http-socket: :8000\nmodule: app:app")
    assert ":3: warning: no concurrency model" in out and "(exit 0)" in out, out
    assert "fix: add `threads: 16` (or `gevent: 1000` with uwsgi_ws[gevent]), or include conf/threads.yaml" in out
    out = mistakes(tmp_path, "http-socket: :8000\nmodule: app:app\nthreads: 1")
    assert ":4: warning: no concurrency model" in out, out
    for model in ("threads: 4", "gevent: 100", "async: 10\nugreen: true", f"include: {CONF}/threads.yaml"):
        out = mistakes(tmp_path, f"http-socket: :8000\nmodule: app:app\n{model}")
        assert "no concurrency model" not in out, (model, out)
    out = mistakes(tmp_path, "sharedarea: 4096\nmule: uwsgi_ws.mule:run")  # a fragment serving no app
    assert "no concurrency model" not in out, out


def test_fixes_in_ini_syntax(tmp_path):
    path = write(tmp_path, "vassal.ini", """
        [uwsgi]
        strict = true
        module = app:app
        threads = 8
        mule = uwsgi_ws.mule:run
        env = UWSGI_WS_REDIS_URL=redis://127.0.0.1:6379/0
        """)
    out = run_cli("check", str(path)).stdout
    assert "fix: add `sharedarea = 4096` (include conf/broadcast.ini: it has both)" in out, out
    assert "fix: set-placeholder = uwsgi-ws-redis-url=redis://127.0.0.1:6379/0" in out, out
    assert "sharedarea: 4096" not in out and "set-placeholder:" not in out, out


def test_env_uwsgi_ws_setting_in_a_strict_config(tmp_path):
    out = mistakes(tmp_path, f"""
        include: {CONF}/gevent.yaml
        env: UWSGI_WS_REDIS_URL=redis://127.0.0.1:6379/0
        """)
    assert ":3: error: env: UWSGI_WS_REDIS_URL in a strict config" in out, out
    assert "fix: set-placeholder: uwsgi-ws-redis-url=redis://127.0.0.1:6379/0" in out, out


def test_gevent_configured_but_not_installed(tmp_path):
    """A real virtualenv without gevent, named by the vassal's `home:`."""
    venv = tmp_path / "venv"
    base = subprocess.run([sys.executable, "-c", "import sys; print(sys.base_prefix)"], capture_output=True,
                          text=True).stdout.strip()
    subprocess.run([str(Path(base) / "bin" / "python3"), "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    out = mistakes(tmp_path, f"home: {venv}\ngevent: 100")
    assert ":3: error: gevent configured but not installed for" in out, out
    assert 'pip install "uwsgi_ws[gevent]"' in out
    out = mistakes(tmp_path, "gevent: 100")  # this interpreter has it
    assert "gevent configured" not in out, out


def test_include_errors(tmp_path):
    out = mistakes(tmp_path, "include: %dmissing.yaml")
    assert f"include: {tmp_path}/missing.yaml does not exist" in out, out
    loop = write(tmp_path, "loop.yaml", "uwsgi:\n  include: %dloop.yaml\n")
    done = run_cli("check", str(loop))
    assert "includes itself" in done.stdout and done.returncode == 1, done.stdout


def test_bad_usage(tmp_path):
    done = run_cli("check", str(tmp_path / "nope.yaml"))
    assert done.returncode == 2 and "no such file or directory" in done.stderr, done.stderr
    done = run_cli("check")
    assert done.returncode == 2 and "PATH" in done.stderr


# -- python -m uwsgi_ws conf ----------------------------------------------------------------------


def test_conf_prints_the_installed_directory_and_copies_it(tmp_path):
    done = run_cli("conf", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    printed = Path(done.stdout.strip())
    assert printed == CONF and (printed / "broadcast.yaml").is_file() and (printed / "broadcast_mule.py").is_file()
    target = tmp_path / "etc" / "uwsgi_ws"
    done = run_cli("conf", "--copy", str(target), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    names = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    assert names == sorted(str(p.relative_to(CONF)) for p in CONF.rglob("*")
                           if p.is_file() and "__pycache__" not in p.parts), names
    assert (target / "gevent.yaml").read_text() == (CONF / "gevent.yaml").read_text()
    # the copies lint clean on their own (the mule file is found next to broadcast.yaml)
    assert run_cli("check", str(target)).returncode == 0
    blocked = tmp_path / "file"
    blocked.write_text("")
    done = run_cli("conf", "--copy", str(blocked / "sub"), cwd=tmp_path)
    assert done.returncode == 1 and "cannot copy the configs" in done.stderr, done.stderr


def test_unknown_option_without_strict_is_a_warning(tmp_path):
    path = write(tmp_path, "vassal.yaml", """
        uwsgi:
          procesess: 4
        """)
    done = run_cli("check", str(path))
    assert done.returncode == 0, done.stdout
    assert f"{path}:2: warning: uWSGI does not know the option `procesess` (without `strict` it silently " \
           "becomes a placeholder)" in done.stdout, done.stdout
    assert "did you mean `processes`?" in done.stdout
