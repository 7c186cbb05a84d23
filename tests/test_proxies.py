"""The committed reverse-proxy configs, run for real: conf/nginx.conf (uwsgi_pass
to a uWSGI `socket`, proxy_pass to its `http-socket`) and conf/haproxy.cfg
(to the `http-socket`), each in front of a real uWSGI (an Emperor vassal that
includes conf/threads.yaml, broadcast.yaml and metrics.yaml, as the README's
deployment section says), with echo, broadcast, close codes, same-origin
checks and the metrics view going through the proxy.

The files are used as committed; only their 127.0.0.1 ports are replaced by
free ones (each must occur exactly once, so an edit that moves them fails
here instead of testing something else). nginx and haproxy come from Debian:
`make test` installs them first (its `proxies` target); run alone, `proxy_binary`
installs the package when the binary is missing (as root with apt-get), else
fails saying what to install.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from harness import APPS, ROOT, UWSGI, free_port, wait_for
from metrics_client import http, read_stats, scrape, wait_metrics
from wsraw import BINARY, TEXT, RawWebSocket, upgrade_request

CONF = ROOT / "uwsgi_ws" / "conf"
_install_lock = threading.Lock()


def proxy_binary(name: str, package: str) -> str:
    """The path of `name`, installing Debian's `package` first if it is missing."""
    with _install_lock:
        found = shutil.which(name) or next(
            (str(p) for p in (Path("/usr/sbin") / name, Path("/sbin") / name) if p.exists()), None)
        if found:
            return found
        if os.geteuid() == 0 and shutil.which("apt-get"):
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            for cmd in (["apt-get", "update", "-q"],
                        ["apt-get", "install", "-y", "-q", "--no-install-recommends", package]):
                done = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                      timeout=600)
                assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}"
            # the package may have started its system service: the tests never use it
            subprocess.run(["service", name, "stop"], stdin=subprocess.DEVNULL, capture_output=True)
            found = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
        assert found, (f"{name} is not installed and could not be installed here: "
                       f"install the Debian package `{package}` (apt-get install --no-install-recommends {package})")
        return found


def render(path: Path, ports: dict) -> str:
    """The committed config with each `127.0.0.1:<default port>` outside comments replaced."""
    lines = path.read_text().split("\n")
    for default, port in ports.items():
        needle = f"127.0.0.1:{default}"
        found = [i for i, line in enumerate(lines) if needle in line.split("#", 1)[0]]
        assert len(found) == 1, f"{path.name} should use {needle} on exactly one line, not {len(found)}"
        lines[found[0]] = lines[found[0]].replace(needle, f"127.0.0.1:{port}")
    return "\n".join(lines)


class Proxy:
    """A proxy process started by the tests (foreground, own process group, log file)."""

    def __init__(self, args: list, log_path: Path, ports: list) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        try:
            for port in ports:
                wait_for(lambda: self._accepts(port), 15, f"{args[0]} listening on {port}")
        except AssertionError as exc:
            self.stop()
            raise AssertionError(f"{args} did not start ({exc}):\n{self.log()}") from None

    def _accepts(self, port: int) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"exited with {self.proc.returncode}:\n{self.log()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait(5)
        self._log.close()


VASSAL = """\
uwsgi:
  include: {root}/uwsgi_ws/conf/threads.yaml
  include: {root}/uwsgi_ws/conf/broadcast.yaml
  include: {root}/uwsgi_ws/conf/metrics.yaml
  socket: 127.0.0.1:{socket_port}
  http-socket: 127.0.0.1:{http_port}
  stats: {stats}
  pythonpath: {root}
  pythonpath: {apps}
  module: metrics_app:app
  processes: 2
  threads: 32
"""


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    """The README's layout: the Emperor, one vassal per app (the base configs included,
    a uwsgi-protocol `socket` for nginx's uwsgi_pass, an `http-socket` for proxy_pass
    and HAProxy, a stats socket), broadcast and metrics on."""
    tmp = tmp_path_factory.mktemp("emperor")
    vassals = tmp / "vassals"
    vassals.mkdir()
    socket_port, http_port = free_port(), free_port()
    (vassals / "app.yaml").write_text(VASSAL.format(root=ROOT, apps=APPS, socket_port=socket_port,
                                                     http_port=http_port, stats=tmp / "stats.sock"))
    server = UWSGI(["--emperor", str(vassals)], tmp, port=http_port)
    server.socket_port = socket_port  # type: ignore[attr-defined]
    server.stats_path = tmp / "stats.sock"  # type: ignore[attr-defined]
    try:
        server.wait_for_log(r"uwsgi_ws: broadcast mule 1 serving ring", timeout=20)
        yield server
    finally:
        server.stop()
    log = server.log()
    assert not server.crashes(), log
    assert "Traceback" not in log, log


@pytest.fixture(scope="module")
def nginx(backend, tmp_path_factory):
    binary = proxy_binary("nginx", "nginx")
    tmp = tmp_path_factory.mktemp("nginx")
    uwsgi_front, http_front = free_port(), free_port()
    site = render(CONF / "nginx.conf", {8000: backend.socket_port, 8001: backend.port,
                                        8080: uwsgi_front, 8081: http_front})
    (tmp / "uwsgi_ws.conf").write_text(site)
    for d in ("body", "proxy", "uwsgi", "fastcgi", "scgi"):
        (tmp / d).mkdir()
    # What Debian's /etc/nginx/nginx.conf provides around conf.d/, in the foreground,
    # one process, everything under tmp.
    (tmp / "nginx.conf").write_text(f"""
daemon off;
master_process off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log info;
events {{ worker_connections 1024; }}
http {{
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    uwsgi_temp_path {tmp}/uwsgi;
    fastcgi_temp_path {tmp}/fastcgi;
    scgi_temp_path {tmp}/scgi;
    include {tmp}/uwsgi_ws.conf;
}}
""")
    proxy = Proxy([binary, "-p", str(tmp), "-c", str(tmp / "nginx.conf"), "-e", str(tmp / "error.log")],
                  tmp / "nginx.out", [uwsgi_front, http_front])
    proxy.fronts = {"nginx-uwsgi_pass": uwsgi_front, "nginx-proxy_pass": http_front}  # type: ignore[attr-defined]
    proxy.error_log = tmp / "error.log"  # type: ignore[attr-defined]
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def haproxy(backend, tmp_path_factory):
    binary = proxy_binary("haproxy", "haproxy")
    tmp = tmp_path_factory.mktemp("haproxy")
    front = free_port()
    (tmp / "haproxy.cfg").write_text(render(CONF / "haproxy.cfg", {8082: front, 8001: backend.port}))
    check = subprocess.run([binary, "-c", "-f", str(tmp / "haproxy.cfg")], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    proxy = Proxy([binary, "-db", "-f", str(tmp / "haproxy.cfg")], tmp / "haproxy.out", [front])
    proxy.fronts = {"haproxy": front}  # type: ignore[attr-defined]
    yield proxy
    proxy.stop()


FRONTS = ["nginx-uwsgi_pass", "nginx-proxy_pass", "haproxy"]


@pytest.fixture(params=FRONTS)
def front(request):
    """(name, port) of one way in; the proxy behind it is started once per module."""
    proxy = request.getfixturevalue("haproxy" if request.param == "haproxy" else "nginx")
    return request.param, proxy.fronts[request.param]


def test_the_nginx_config_is_valid_as_committed(nginx):
    binary = proxy_binary("nginx", "nginx")
    conf = next(Path(nginx.log_path).parent.glob("nginx.conf"))
    done = subprocess.run([binary, "-t", "-p", str(conf.parent), "-c", str(conf), "-e", str(nginx.error_log)],
                          capture_output=True, text=True)
    assert done.returncode == 0 and "syntax is ok" in done.stderr, done.stderr


def test_echo_through_the_proxy(front):
    name, port = front
    with RawWebSocket(port, "/echo", timeout=10) as ws:
        for opcode, payload in [(TEXT, b"hello"), (TEXT, "héllo ✓".encode()), (BINARY, os.urandom(200_000)),
                                (TEXT, b"")]:
            ws.send_frame(opcode, payload)
            frame = ws.recv_frame()
            assert (frame.opcode, frame.payload) == (opcode, payload), name
        ws.send_close(1000)
        assert ws.expect_close(answer=False).close_code == 1000
        ws.wait_eof()


def test_a_server_close_code_reaches_the_client(front):
    name, port = front
    with RawWebSocket(port, "/close-server?code=4321", timeout=10) as ws:
        ws.send_frame(TEXT, b"x")
        assert ws.recv_frame().payload == b"x"
        assert ws.expect_close().close_code == 4321, name
        ws.wait_eof()


def test_broadcast_through_the_proxy(front):
    name, port = front
    channel = "room-" + re.sub(r"\W", "", name)
    subs = []
    try:
        for _ in range(3):
            ws = RawWebSocket(port, f"/sub/{channel}", timeout=10)
            subs.append(ws)
            assert ws.recv_frame().payload.startswith(b"ready:")
        count = 100
        status, body = http(f"http://127.0.0.1:{port}", "POST", f"/publish/{channel}?count={count}", b"m")
        assert status == 204, (name, status, body)
        for ws in subs:
            assert [ws.recv_frame().payload for _ in range(count)] == [b"m%d" % i for i in range(count)], name
    finally:
        for ws in subs:
            ws.close()


def handshake_status(port: int, request: bytes) -> int:
    """The status code the server answers an upgrade request with (then hang up)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            assert chunk, f"connection closed before the answer: {head!r}"
            head += chunk
    return int(head.split(b" ", 2)[1])


def test_same_origin_pages_pass_and_others_are_refused(front):
    """The proxy keeps the client's Host (port included), so uwsgi_ws's Origin check
    sees what the browser saw."""
    name, port = front
    same = upgrade_request("/echo", port, extra=f"Origin: http://127.0.0.1:{port}\r\n")
    assert handshake_status(port, same) == 101, name
    other = upgrade_request("/echo", port, extra="Origin: http://evil.example\r\n")
    assert handshake_status(port, other) == 403, name


def test_the_metrics_view_through_the_proxy(front, backend):
    name, port = front
    before = scrape(f"http://127.0.0.1:{port}")
    with RawWebSocket(port, "/echo", timeout=10) as ws:
        ws.send_frame(TEXT, b"counted")
        ws.recv_frame()
        m = wait_metrics(f"http://127.0.0.1:{port}",
                         lambda m: (m - before).value("uwsgi_ws_messages_sent_total") >= 1, what=name)
        assert (m - before).value("uwsgi_ws_upgrades_accepted_total", route="/echo") == 1
        assert m.total("uwsgi_ws_connections_open", route="/echo") >= 1
    # the vassal's stats server has them too (the broadcast mule copies them every second)
    wait_for(lambda: read_stats(backend.stats_path)["metrics"]["uwsgi_ws_upgrades_accepted_total"]["value"]
             >= m.total("uwsgi_ws_upgrades_accepted_total"), 10, "the totals in the stats server")


def test_the_metrics_view_is_only_for_the_scraper(front):
    """The configs let only 127.0.0.1 read /metrics: from 127.0.0.2 (loopback too) it is refused."""
    import http.client

    name, port = front
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=("127.0.0.2", 0))
    try:
        conn.request("GET", "/metrics")
        status = conn.getresponse().status
    finally:
        conn.close()
    assert status == 403, name


# -- idle WebSockets and the proxies' timeouts ------------------------------------------------------
#
# README: nginx cuts a tunnel after `proxy_read_timeout` / `uwsgi_read_timeout` without a byte
# from uWSGI (default 60 s), HAProxy after `timeout tunnel`; the shipped configs say 1 h, and
# uwsgi_ws's keepalive pings (every ping_interval, 20 s) keep an idle WebSocket open through
# them. The shipped values are read from the files; the behaviour runs on a test copy of each
# config whose timeouts are SHORT seconds (the wall time stays small): an idle WebSocket to an
# app that pings every 0.5 s outlives 3 x SHORT, one to an app whose pings are 20 s apart is cut.

SHORT = 1  # seconds: the test copies' idle timeouts
PROXY_DEFAULT = 60  # seconds: nginx's proxy/uwsgi_read_timeout default; HAProxy's tunnel falls back to client/server
NGINX_TIMEOUTS = re.compile(r"^\s*((?:uwsgi|proxy)_(?:read|send)_timeout)\s+(\d+)(s|m|h)?;", re.M)
HAPROXY_TUNNEL = re.compile(r"^\s*timeout tunnel\s+(\d+)(s|m|h)?\b", re.M)
UNIT = {None: 1, "s": 1, "m": 60, "h": 3600}


def test_the_shipped_idle_timeouts_outlast_the_proxy_defaults_and_the_pings():
    from uwsgi_ws import WebSocket

    ping = WebSocket().option("ping_interval")
    nginx = {(name, int(n) * UNIT[unit]) for name, n, unit in NGINX_TIMEOUTS.findall((CONF / "nginx.conf").read_text())}
    names = sorted(name for name, _ in nginx)
    # each WebSocket location sets both directions: uwsgi_pass (server A) and proxy_pass (server B)
    assert {"uwsgi_read_timeout", "uwsgi_send_timeout", "proxy_read_timeout", "proxy_send_timeout"} <= set(names), nginx
    for name, seconds in nginx:
        assert seconds > PROXY_DEFAULT and seconds >= 3 * ping, (name, seconds)
    tunnel = [int(n) * UNIT[unit] for n, unit in HAPROXY_TUNNEL.findall((CONF / "haproxy.cfg").read_text())]
    assert len(tunnel) == 1, tunnel
    assert tunnel[0] > PROXY_DEFAULT and tunnel[0] >= 3 * ping, tunnel


def shortened(text: str, pattern: re.Pattern, replace: str, count: int) -> str:
    out, n = pattern.subn(replace, text)
    assert n == count, f"the config's idle timeouts changed ({n} found, {count} expected): update this test"
    return out


@pytest.fixture(scope="module", params=[("pings", "threads"), ("pings", "gevent"), ("silent", "threads")],
                ids=["pings-threads", "pings-gevent", "silent"])
def idle_setup(request, tmp_path_factory):
    """(kind, {front name: port}): short-timeout copies of both proxy configs in front of an
    app that pings every 0.5 s (keepalive_app, in both models) or every 20 s (echo_app, the
    default)."""
    from harness import serve

    kind, model = request.param
    tmp = tmp_path_factory.mktemp(f"idle-{kind}-{model}")
    socket_port = free_port()
    backend = serve("keepalive_app:app" if kind == "pings" else "echo_app:app", tmp, model=model,
                    extra=["--socket", f"127.0.0.1:{socket_port}", "--processes", "1"])
    started = []
    try:
        # the worker's first WebSocket takes over a second (imports on first use): not through
        # a proxy that gives up on an answer after SHORT
        RawWebSocket(backend.port, "/echo", timeout=10).close()
        # nginx: the committed file with its four timeouts at SHORT
        nginx_bin, haproxy_bin = proxy_binary("nginx", "nginx"), proxy_binary("haproxy", "haproxy")
        ntmp = tmp / "nginx"
        ntmp.mkdir()
        uwsgi_front, http_front, haproxy_front = free_port(), free_port(), free_port()
        site = render(CONF / "nginx.conf", {8000: socket_port, 8001: backend.port, 8080: uwsgi_front,
                                            8081: http_front})
        site = shortened(site, re.compile(r"((?:uwsgi|proxy)_(?:read|send)_timeout)\s+3600s;"), rf"\1 {SHORT}s;", 4)
        (ntmp / "uwsgi_ws.conf").write_text(site)
        for d in ("body", "proxy", "uwsgi", "fastcgi", "scgi"):
            (ntmp / d).mkdir()
        (ntmp / "nginx.conf").write_text(f"""
daemon off;
master_process off;
pid {ntmp}/nginx.pid;
error_log {ntmp}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {ntmp}/access.log;
    client_body_temp_path {ntmp}/body;
    proxy_temp_path {ntmp}/proxy;
    uwsgi_temp_path {ntmp}/uwsgi;
    fastcgi_temp_path {ntmp}/fastcgi;
    scgi_temp_path {ntmp}/scgi;
    include {ntmp}/uwsgi_ws.conf;
}}
""")
        started.append(Proxy([nginx_bin, "-p", str(ntmp), "-c", str(ntmp / "nginx.conf"), "-e",
                              str(ntmp / "error.log")], ntmp / "nginx.out", [uwsgi_front, http_front]))
        # HAProxy: the committed file with `timeout tunnel` at SHORT
        cfg = render(CONF / "haproxy.cfg", {8082: haproxy_front, 8001: backend.port})
        cfg = shortened(cfg, re.compile(r"timeout tunnel 1h"), f"timeout tunnel {SHORT}s", 1)
        (tmp / "haproxy.cfg").write_text(cfg)
        started.append(Proxy([haproxy_bin, "-db", "-f", str(tmp / "haproxy.cfg")], tmp / "haproxy.out",
                             [haproxy_front]))
        yield kind, {"nginx-uwsgi_pass": uwsgi_front, "nginx-proxy_pass": http_front, "haproxy": haproxy_front}
    finally:
        for proxy in started:
            proxy.stop()
        backend.stop()
    assert not backend.crashes(), backend.log()


def idle(ws: RawWebSocket, seconds: float) -> str:
    """Send nothing for `seconds`, answering the server's pings: "open" if the connection
    lasted, else how it ended (a close code or "eof")."""
    import time

    from wsraw import CLOSE, PING, PONG

    deadline = time.monotonic() + seconds
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return "open"
        try:
            frame = ws.recv_frame(remaining)
        except TimeoutError:
            return "open"
        except (EOFError, ConnectionResetError):
            return "eof"
        if frame.opcode == PING:
            ws.send_frame(PONG, frame.payload)
        elif frame.opcode == CLOSE:
            return f"close {frame.close_code}"


@pytest.mark.parametrize("name", FRONTS)
def test_an_idle_websocket_and_the_proxy_timeout(idle_setup, name):
    """pings: an idle WebSocket outlives 3 x the proxy's idle timeout, then still echoes;
    silent (pings 20 s apart): the same proxy cuts it (the shortened timeout is in force)."""
    kind, fronts = idle_setup
    with RawWebSocket(fronts[name], "/echo", timeout=10) as ws:
        ws.send_frame(TEXT, b"before")
        assert ws.recv_frame().payload == b"before"
        if kind == "pings":
            assert idle(ws, 3 * SHORT) == "open", name
            ws.send_frame(TEXT, b"after")
            frame = ws.recv_frame()
            while frame.opcode != TEXT:  # a ping in between
                frame = ws.recv_frame()
            assert frame.payload == b"after", name
        else:
            assert idle(ws, 10 * SHORT) in ("eof", "close 1006"), f"{name}: not cut by the proxy's {SHORT}s timeout"
