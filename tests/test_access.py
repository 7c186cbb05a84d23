"""Access control on real uWSGI, before the upgrade: the Origin policy (403),
before_connect hooks and Flask decorators on handlers (401/403/302/500), and
the per-worker connection limit (503 with Retry-After). A refused client gets
a complete HTTP answer and the TCP connection closed, never a 101."""

from __future__ import annotations

import base64
import json
import os
import socket
import time
import urllib.request

import pytest
import websocket

from harness import wait_for

APP = "access_app:app"
MODELS = ["threads", "gevent"]
# what access_app raises on purpose (a 500 before the upgrade, logged by Flask)
EXPECTED_TRACEBACKS = [r"RuntimeError: (before_connect|decorator) failed on purpose"]
EXTRA = ["--processes", "1"]  # connection limits are per worker: one worker makes them exact


def handshake(server, path, *, origin=None, host=None, cookie=None, timeout=5.0):
    """A WebSocket handshake with exactly these Origin/Host/Cookie headers.

    Returns (status, headers, body, closed): for a 101 the socket is closed by us
    right away; otherwise we read until the server closes TCP (`closed` tells
    whether it did so before the timeout: a refusal must never leave it open).
    """
    lines = [f"GET {path} HTTP/1.1", f"Host: {host or f'127.0.0.1:{server.port}'}", "Upgrade: websocket",
             "Connection: Upgrade", f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}",
             "Sec-WebSocket-Version: 13"]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    if cookie is not None:
        lines.append(f"Cookie: {cookie}")
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as s:
        s.sendall(raw)
        data, closed = b"", False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if data.startswith(b"HTTP/1.1 101") and b"\r\n\r\n" in data:
                break
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                closed = True
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body, closed


def refused(server, path, status, **kwargs):
    """Assert a complete `status` answer and a closed connection; return (headers, body text)."""
    got, headers, body, closed = handshake(server, path, **kwargs)
    assert got == status, (got, headers, body)
    assert closed, "the server left the refused connection open"
    assert "sec-websocket-accept" not in headers
    return headers, body.decode("utf-8", "replace")


def accepted(server, path, **kwargs):
    got, headers, body, _ = handshake(server, path, **kwargs)
    assert got == 101, (got, headers, body)


def echo_works(server, path="/echo", **options):
    ws = websocket.create_connection(server.url + path, timeout=5, **options)
    try:
        assert ws.recv().startswith(("pid:", "user:", "admin:"))
        ws.send("ping?")
        assert ws.recv() == "ping?"
    finally:
        ws.close()


def login(server, user):
    """The session cookie after logging in through the app's plain HTTP view."""
    with urllib.request.urlopen(f"{server.http}/login?user={user}", timeout=5) as response:
        cookie = response.headers["Set-Cookie"]
    return cookie.split(";", 1)[0]


# -- Origin policy -------------------------------------------------------------


def test_websocket_client_sends_a_same_origin_header_and_is_accepted(server):
    # websocket-client derives Origin from the URL: http://127.0.0.1:<port> here.
    echo_works(server)


def test_no_origin_header_is_accepted(server):
    echo_works(server, suppress_origin=True)
    accepted(server, "/echo", origin=None)


@pytest.mark.parametrize("origin", ["http://evil.test", "https://evil.test", "http://127.0.0.1:1",
                                    "http://127.0.0.1", "null", "not an origin", "http://127.0.0.1:{port}/path"])
def test_cross_origin_is_403_with_the_option_to_set(server, origin):
    origin = origin.replace("{port}", str(server.port))
    _, body = refused(server, "/echo", 403, origin=origin)
    assert "allowed_origins" in body and "UWSGI_WS_ALLOWED_ORIGINS" in body
    assert repr(origin) in body


def test_cross_origin_with_websocket_client_is_403(server):
    with pytest.raises(websocket.WebSocketBadStatusException) as exc:
        websocket.create_connection(server.url + "/echo", timeout=5, origin="https://evil.test")
    assert exc.value.status_code == 403


@pytest.mark.parametrize("origin, host", [
    ("https://127.0.0.1:{port}", None),  # TLS ended at a proxy: the scheme is not compared
    ("http://LOCALHOST:{port}", "localhost:{port}"),  # host names are case-insensitive
    ("https://example.org", "example.org"),  # no port in Host: the Origin scheme's default
    ("https://example.org", "example.org:443"),
    ("http://example.org:80", "example.org"),
    ("http://[::1]:{port}", "[::1]:{port}"),
])
def test_same_origin_variants_are_accepted(server, origin, host):
    fill = lambda v: v.replace("{port}", str(server.port)) if v else v  # noqa: E731
    accepted(server, "/echo", origin=fill(origin), host=fill(host))


@pytest.mark.parametrize("origin, host", [
    ("https://example.org:8443", "example.org"),
    ("https://example.org", "example.org:8443"),
    ("https://sub.example.org", "example.org"),
    ("https://example.org.evil.test", "example.org"),
])
def test_near_misses_are_403(server, origin, host):
    refused(server, "/echo", 403, origin=origin, host=host)


def test_star_allows_any_origin(server):
    for origin in ("https://evil.test", "null", "http://127.0.0.1:1"):
        accepted(server, "/any/echo", origin=origin)
    echo_works(server, "/any/echo", origin="https://anywhere.test")


@pytest.mark.parametrize("origin, ok", [
    ("https://example.com", True),
    ("https://EXAMPLE.com:443", True),
    ("http://example.com", False),  # a listed origin's scheme is compared
    ("https://example.com:8443", False),
    ("https://a.trusted.test", True),
    ("https://a.b.trusted.test", True),
    ("https://trusted.test", False),  # *.trusted.test is subdomains only
    ("https://eviltrusted.test", False),
    ("http://localhost:9", True),
    ("null", True),
    ("https://evil.test", False),
])
def test_listed_origins(server, origin, ok):
    if ok:
        accepted(server, "/listed/echo", origin=origin)
    else:
        refused(server, "/listed/echo", 403, origin=origin)


def test_listed_origins_still_allow_same_origin(server):
    echo_works(server, "/listed/echo")


# -- before_connect hooks ------------------------------------------------------


@pytest.mark.parametrize("token", ["good", "true"])
def test_hook_lets_through(server, token):
    echo_works(server, f"/auth/echo?token={token}")


def test_hook_without_credentials_is_401_from_the_apps_error_handler(server):
    headers, body = refused(server, "/auth/echo", 401)
    assert body == "custom 401: log in first\n"
    assert headers["www-authenticate"] == 'Bearer realm="tests"'


def test_hook_returning_false_is_403(server):
    _, body = refused(server, "/auth/echo?token=false", 403)
    assert "before_connect" in body


def test_hook_returning_a_response_sends_it(server):
    headers, _ = refused(server, "/auth/echo?token=redirect", 302)
    assert headers["location"].endswith("/login")
    _, body = refused(server, "/auth/echo?token=teapot", 418)
    assert body == "short and stout"


def test_hook_raising_is_500_logged_and_the_worker_lives(server):
    pids = wait_for(server.worker_pids, 5, "the worker's spawn line")
    refused(server, "/auth/echo?token=boom", 500)
    wait_for(lambda: "before_connect failed on purpose" in server.log(), 5, "the traceback in the log")
    assert "Exception on /auth/echo [GET]" in server.log()
    echo_works(server, "/auth/echo?token=good")
    assert server.worker_pids() == pids


def test_websocket_client_sees_401(server):
    with pytest.raises(websocket.WebSocketBadStatusException) as exc:
        websocket.create_connection(server.url + "/auth/echo?token=bad", timeout=5)
    assert exc.value.status_code == 401


# -- plain Flask decorators under @ws.route ------------------------------------


def test_login_required_decorator_is_401_before_any_upgrade(server):
    _, body = refused(server, "/private/echo", 401)
    assert body == "custom 401: log in first\n"


def test_login_required_decorator_lets_a_logged_in_user_through(server):
    cookie = login(server, "alice")
    ws = websocket.create_connection(server.url + "/private/echo", timeout=5, cookie=cookie)
    try:
        assert ws.recv() == "user:alice"
        ws.send("hi")
        assert ws.recv() == "hi"
    finally:
        ws.close()


def test_redirecting_decorator_answers_302(server):
    headers, _ = refused(server, "/private/redirect", 302)
    assert headers["location"].endswith("/login")


def test_stacked_decorators_403_then_through(server):
    refused(server, "/admin/blue", 401)
    refused(server, "/admin/blue", 403, cookie=login(server, "bob"))
    ws = websocket.create_connection(server.url + "/admin/blue", timeout=5, cookie=login(server, "admin"))
    try:
        # the handler's conn became a real Connection at its first use
        assert ws.recv() == "admin:blue:Connection"
    finally:
        ws.close()


def test_decorator_raising_is_500_logged_and_the_worker_lives(server):
    pids = wait_for(server.worker_pids, 5, "the worker's spawn line")
    refused(server, "/broken", 500)
    wait_for(lambda: "decorator failed on purpose" in server.log(), 5, "the traceback in the log")
    echo_works(server)
    assert server.worker_pids() == pids


def test_handler_that_never_uses_its_connection_still_opens_and_closes_1000(server):
    ws = websocket.create_connection(server.url + "/silent", timeout=5)
    try:
        opcode, data = ws.recv_data(control_frame=True)
        assert opcode == websocket.ABNF.OPCODE_CLOSE
        assert int.from_bytes(data[:2], "big") == 1000
    finally:
        ws.close()


def test_an_option_set_before_any_other_use_sticks(server):
    # the first use upgrades: the Connection's own set-up must not overwrite it
    ws = websocket.create_connection(server.url + "/set-first", timeout=5)
    try:
        assert ws.recv() == "write_limit:12345:Connection"
    finally:
        ws.close()


# -- connection limits -----------------------------------------------------------


def open_when_free(server, path, timeout=10.0):
    """Connect, retrying while the server answers 503 (earlier tests' connections
    may still be finishing their closing handshake)."""
    def attempt():
        try:
            ws = websocket.create_connection(server.url + path, timeout=5)
        except websocket.WebSocketBadStatusException as exc:
            if exc.status_code == 503:
                return None
            raise
        ws.first_message = ws.recv()  # "pid:<worker pid>"
        assert ws.first_message.startswith("pid:")
        return ws

    return wait_for(attempt, timeout, f"a free connection slot for {path}")


def test_per_worker_limit_is_503_with_retry_after_then_frees(server):
    first = open_when_free(server, "/limited/echo")
    second = open_when_free(server, "/limited/echo")
    try:
        headers, body = refused(server, "/limited/echo", 503)
        assert headers["retry-after"] == "7"
        assert "max_connections_per_worker" in body and "2" in body
        # the open ones are unaffected
        for ws in (first, second):
            ws.send("still here")
            assert ws.recv() == "still here"
    finally:
        first.close()
    third = open_when_free(server, "/limited/echo")  # the slot comes back once the first has closed
    third.close()
    second.close()
    assert server.crashes() == []


@pytest.mark.parametrize("model", MODELS)
def test_instance_limit_counts_the_other_workers(model, tmp_path):
    """max_connections=3 over 2 workers, each capped at 2: three connections are
    necessarily spread 2 + 1. A refusal that names `max_connections` (not the
    per-worker option) comes from the worker holding 1, so it saw the other's 2."""
    from harness import serve

    server = serve(APP, tmp_path, model=model, extra=["--processes", "2"], env={"ACCESS_MAX_CONNECTIONS": "3"})
    try:
        held = [open_when_free(server, "/limited/echo") for _ in range(3)]
        try:
            def refused_by_the_instance_limit():
                _, body = refused(server, "/limited/echo", 503)  # never a 101, on either worker
                return body if "this uWSGI instance" in body else None

            body = wait_for(refused_by_the_instance_limit, 15, "a refusal by the instance-wide limit")
            assert "limit of 3" in body and "raise max_connections)" in body
        finally:
            held[0].close()
        held.append(open_when_free(server, "/limited/echo"))  # room again once one has closed
        for ws in held[1:]:
            ws.send("still here")
            assert ws.recv() == "still here"
            ws.close()
        assert server.crashes() == []
    finally:
        server.stop()


@pytest.mark.parametrize("model", MODELS)
def test_a_killed_workers_connections_stop_counting(model, tmp_path):
    """kill -9 the worker holding 2 of the 3 allowed connections: once the master
    has respawned it, its dead row no longer counts and 2 new connections fit."""
    import signal

    from harness import serve

    server = serve(APP, tmp_path, model=model, extra=["--processes", "2"], env={"ACCESS_MAX_CONNECTIONS": "3"})
    try:
        held = []
        for _ in range(3):  # per-worker cap 2: necessarily 2 + 1
            ws = open_when_free(server, "/limited/echo")
            ws.send("pid?")
            ws.recv()
            held.append(ws)
        pids = [int(ws_pid) for ws_pid in (_pid_of(server, ws) for ws in held)]
        full_pid = max(set(pids), key=pids.count)
        assert pids.count(full_pid) == 2, pids
        survivor = next(p for p in pids if p != full_pid)
        os.kill(full_pid, signal.SIGKILL)
        server.wait_for_log(r"Respawned uWSGI worker \d+ \(new pid: \d+\)", timeout=30)

        def survivors_count():  # asked until the surviving worker answers
            with urllib.request.urlopen(f"{server.http}/instance-count", timeout=5) as response:
                seen = json.load(response)
            return seen if seen["pid"] == survivor else None

        # the respawned worker has not touched its row yet: the dead worker's 2 must not count
        assert wait_for(survivors_count, 10, "an answer from the surviving worker")["open"] == 1
        fresh = [open_when_free(server, "/limited/echo") for _ in range(2)]  # 1 survivor + 2 = the limit
        refused(server, "/limited/echo", 503)  # and the limit still holds
        for ws in fresh + held:
            ws.close()
    finally:
        server.stop()


def _pid_of(server, ws):
    """The worker pid a connection of /limited/echo announced (kept by open_when_free's first recv)."""
    return ws.first_message.split(":", 1)[1]
