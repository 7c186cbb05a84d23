"""One access policy for every transport (issue 12, item 1): an event endpoint's SSE
stream (`GET <path>/sse`) goes through exactly the checks of its WebSocket, in the same
order, with the same answers, counted and logged under the same refusal reasons
(uwsgi_ws/admission.py): the Origin policy (403), the before_connect hooks (False 403,
a response as is, abort() as Flask answers it), the endpoint's join hook for each room
of ?rooms= (403 naming the room), the connection limits (503 + Retry-After; a stream
holds a slot as a WebSocket does). The browser client's ?probe=1 asks the same policy
without opening a stream (204).

Real uWSGI, threads and gevent, one worker (the counters and limits are exact), the
broadcast mule; raw sockets, so every byte of each answer is compared.
"""

from __future__ import annotations

import base64
import os
import re
import socket
import time
import urllib.request
from typing import Dict, List, Optional, Tuple

import pytest

from harness import serve, wait_for

APP = "sse_access_app:app"
EXPECTED_TRACEBACKS = [r"RuntimeError: before_connect failed on purpose"]  # the hook that raises: a 500
BROADCAST = ["--sharedarea", "16", "--mule=uwsgi_ws.mule:run"]
EXTRA = ["--processes", "1", *BROADCAST]
STREAM_START = b": uwsgi_ws event stream"


class Answer:
    """An HTTP answer read off a raw socket: `status`, `headers` (lower-case names; a
    repeated header's values joined by "\\n"), `body`, and whether the server closed
    the connection (`closed`); `sock` stays open for a 101 or a stream (close it)."""

    def __init__(self, status: int, headers: Dict[str, str], body: bytes, closed: bool,
                 sock: Optional[socket.socket]) -> None:
        self.status, self.headers, self.body, self.closed, self.sock = status, headers, body, closed, sock

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def request(server, path: str, *, websocket: bool = False, origin: Optional[str] = None,
            timeout: float = 5.0) -> Answer:
    """GET `path` (a WebSocket handshake when `websocket`), with exactly these headers.
    Reads a refusal to its end (the server must close the connection); stops after the
    head of a 101, or at the first bytes of an event stream."""
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{server.port}"]
    if websocket:
        lines += ["Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Version: 13",
                  f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}"]
    else:
        lines += ["Accept: text/event-stream"]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=timeout)
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    data, closed = b"", False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        head_done = b"\r\n\r\n" in data
        if head_done and (data.startswith(b"HTTP/1.1 101") or STREAM_START in data):
            break
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            break
        if not chunk:
            closed = True
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines_ = head.decode("latin-1").split("\r\n")
    assert lines_[0].startswith("HTTP/"), data
    headers: Dict[str, str] = {}
    for line in lines_[1:]:
        name, _, value = line.partition(":")
        key = name.strip().lower()
        headers[key] = headers[key] + "\n" + value.strip() if key in headers else value.strip()
    answer = Answer(int(lines_[0].split()[1]), headers, body, closed, sock)
    if closed or answer.status not in (101, 200):
        answer.close()
    return answer


def both(server, query: str, origin: Optional[str] = None) -> Tuple[Answer, Answer]:
    """The WebSocket's and the SSE stream's answers to the same query."""
    return (request(server, "/live" + query, websocket=True, origin=origin),
            request(server, "/live/sse" + query, origin=origin))


def same_refusal(ws: Answer, sse: Answer, status: int) -> None:
    """Both refused with `status`, the same body and headers that matter, connection closed."""
    for answer in (ws, sse):
        assert answer.status == status, (answer.status, answer.headers, answer.body)
        assert answer.closed, "a refused request's connection was left open"
        assert "sec-websocket-accept" not in answer.headers
        assert STREAM_START not in answer.body
    assert ws.body == sse.body
    for name in ("www-authenticate", "location", "retry-after", "content-type"):
        assert ws.headers.get(name) == sse.headers.get(name), name


@pytest.fixture(scope="module")
def ready(server):
    server.wait_for_log(r"uwsgi_ws: broadcast mule 1 serving ring", timeout=20)
    return server


def rejected(server) -> Dict[str, int]:
    """uwsgi_ws_upgrades_rejected_total per reason, from the app's /metrics."""
    with urllib.request.urlopen(server.http + "/metrics", timeout=5) as response:
        text = response.read().decode()
    return {m.group(1): int(float(m.group(2)))
            for m in re.finditer(r'^uwsgi_ws_upgrades_rejected_total\{reason="([^"]+)"\} (\S+)$', text, re.M)}


# -- the same answers ----------------------------------------------------------------


@pytest.mark.parametrize("token, status, body", [
    ("", 401, "custom 401: log in first"),  # abort(401): the app's error handler answers both
    ("nonsense", 401, "custom 401: log in first"),
    ("false", 403, "a before_connect hook refused"),
    ("redirect", 302, ""),  # a hook's response is sent as is
    ("teapot", 418, "short and stout"),
    ("boom", 500, ""),  # an exception in a hook: Flask's 500
])
def test_before_connect_answers_the_stream_as_it_answers_the_websocket(ready, token, status, body):
    ws, sse = both(ready, f"?token={token}&rooms=public")
    same_refusal(ws, sse, status)
    assert body in sse.text()
    if status == 401:
        assert sse.headers["www-authenticate"] == 'Bearer realm="tests"'
    if status == 302:
        assert sse.headers["location"].endswith("/login")


@pytest.mark.parametrize("origin", ["https://evil.test", "null", "http://127.0.0.1:1"])
def test_a_cross_site_origin_is_refused_on_both_before_the_hooks(ready, origin):
    ws, sse = both(ready, "?token=good&rooms=public", origin=origin)
    same_refusal(ws, sse, 403)
    assert "allowed_origins" in sse.text() and repr(origin) in sse.text()
    ws, sse = both(ready, "?rooms=public", origin=origin)  # no token: the Origin is checked first
    same_refusal(ws, sse, 403)


def test_admitted_on_both_with_a_good_token_and_a_same_origin_page(ready):
    for origin in (None, f"http://127.0.0.1:{ready.port}"):
        ws, sse = both(ready, "?token=good&rooms=public", origin=origin)
        try:
            assert ws.status == 101, (ws.status, ws.body)
            assert sse.status == 200 and sse.headers["content-type"].startswith("text/event-stream"), sse.body
        finally:
            ws.close()
            sse.close()
    sse = request(ready, "/live/sse?token=true")  # True goes on, as None does
    try:
        assert sse.status == 200
    finally:
        sse.close()


# -- rooms -------------------------------------------------------------------------------


def test_a_room_the_join_hook_refuses_is_403_naming_it(ready):
    answer = request(ready, "/live/sse?token=good&rooms=public,secret,pub-a")
    assert answer.status == 403 and answer.closed
    assert "'secret'" in answer.text() and "join" in answer.text()
    answer = request(ready, "/live/sse?token=good&rooms=abort-x")  # abort() in the join hook: Flask answers
    assert answer.status == 451 and answer.closed
    # the hooks come first: no token, a refused room -> the hook's 401
    assert request(ready, "/live/sse?rooms=secret").status == 401


def test_the_reproduction_no_token_no_stream_of_a_secret_room(ready):
    """Issue 12's reproduction: /live/sse?rooms=secret with no token streamed the room."""
    admitted = request(ready, "/live/sse?token=good&rooms=public")
    try:
        assert admitted.status == 200
        for query in ("?rooms=secret", "?token=good&rooms=secret"):
            refused = request(ready, "/live/sse" + query)
            assert refused.status in (401, 403) and refused.closed
            assert STREAM_START not in refused.body
        with urllib.request.urlopen(ready.http + "/emit?room=secret&text=s3cr3t", timeout=5):
            pass
        with urllib.request.urlopen(ready.http + "/emit?room=public&text=hello", timeout=5):
            pass
        got = admitted.body
        admitted.sock.settimeout(10)
        while b"hello" not in got:
            chunk = admitted.sock.recv(65536)
            assert chunk, got
            got += chunk
        assert b"s3cr3t" not in got  # the admitted stream gets only its rooms
    finally:
        admitted.close()


# -- the probe -----------------------------------------------------------------------


def test_the_probe_runs_the_policy_and_opens_no_stream(ready):
    answer = request(ready, "/live/sse?token=good&rooms=public&probe=1")
    assert answer.status == 204 and answer.body == b"", (answer.status, answer.body)
    answer.close()
    ws, sse = both(ready, "?token=nonsense&probe=1")
    same_refusal(ws, sse, 401)
    assert request(ready, "/live/sse?token=good&rooms=secret&probe=1").status == 403
    assert request(ready, "/live/sse?token=good&probe=1", origin="https://evil.test").status == 403


# -- counted and logged under the same reasons ------------------------------------------------


def test_stream_refusals_are_counted_and_logged_under_the_websocket_reasons(ready):
    before = rejected(ready)
    request(ready, "/live/sse?token=good", origin="https://evil.test")
    request(ready, "/live/sse?token=false")
    request(ready, "/live/sse?token=nonsense")
    request(ready, "/live/sse?token=good&rooms=secret")
    request(ready, "/live?token=false", websocket=True)
    after = rejected(ready)
    delta = {reason: after.get(reason, 0) - before.get(reason, 0) for reason in after}
    assert delta == {**dict.fromkeys(delta, 0), "origin": 1, "before_connect": 3, "join": 1}, (before, after)
    ready.wait_for_log(r"rejected route=/live/sse status=403 reason=join: .*'secret'")
    ready.wait_for_log(r"rejected route=/live/sse status=403 reason=origin")
    ready.wait_for_log(r"rejected route=/live status=403 reason=before_connect")


# -- connection limits: one pool, the same 503 -------------------------------------------


def test_streams_and_websockets_share_the_connection_limit(ready, tmp_path):
    with serve(APP, tmp_path, model=ready.model, extra=EXTRA, env={"MAX_PER_WORKER": "2"}) as limited:
        limited.wait_for_log(r"uwsgi_ws: broadcast mule 1 serving ring", timeout=20)
        held: List[Answer] = []
        try:
            held.append(request(limited, "/live?token=good", websocket=True))
            held.append(request(limited, "/live/sse?token=good&rooms=public"))
            assert [a.status for a in held] == [101, 200]
            ws, sse = both(limited, "?token=good")
            same_refusal(ws, sse, 503)
            assert sse.headers["retry-after"] == "7" and "max_connections_per_worker" in sse.text()
            assert request(limited, "/live/sse?token=good&probe=1").status == 503
            # the hooks come before the limits: a bad token on a full worker is still 401
            assert request(limited, "/live/sse?token=nonsense").status == 401
            held.pop(0).close()  # the WebSocket's slot comes back when it closes
            wait_for(lambda: request(limited, "/live/sse?token=good&probe=1").status == 204, 10,
                     "the closed WebSocket's slot")
            held.append(request(limited, "/live/sse?token=good&rooms=public"))
            assert held[-1].status == 200
            assert request(limited, "/live/sse?token=good&probe=1").status == 503
            # a stream's slot comes back when the server sees its client gone: at its next
            # write (a broadcast to its room here; the 15 s heartbeat on a quiet stream)
            held.pop(0).close()

            def freed() -> bool:
                with urllib.request.urlopen(limited.http + "/emit?room=public&text=x", timeout=5):
                    pass
                return request(limited, "/live/sse?token=good&probe=1").status == 204

            wait_for(freed, 10, "the closed stream's slot")
        finally:
            for answer in held:
                answer.close()
        assert not limited.crashes(), limited.log()
