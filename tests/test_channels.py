"""Channel names with odd characters on real uWSGI: any str that encodes to at
most 255 bytes of UTF-8 is a channel (NUL and newlines included) and reaches
its subscribers only; anything else is refused at once with an exception that
says what a channel name may be (PublishError or TypeError from publish,
ValueError from subscribe), with the worker and the broadcast mule alive."""

from __future__ import annotations

import urllib.request

import pytest
import websocket

from harness import wait_for

APP = "channels_app:app"
MODELS = ["threads", "gevent"]
EXTRA = ["--processes", "1", "--sharedarea", "64", "--mule=uwsgi_ws.mule:run"]


def publish(server, name):
    request = urllib.request.Request(f"{server.http}/publish/{name}", data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=15) as response:
        return response.read().decode()


def subscribe(server, name):
    ws = websocket.create_connection(f"{server.url}/sub/{name}", timeout=5)
    return ws, ws.recv()


@pytest.mark.parametrize("name", ["nul", "nul-inside", "newline", "255-bytes"])
def test_odd_but_valid_names_deliver_to_their_subscribers_only(server, name):
    mine, answer = subscribe(server, name)
    other, other_answer = subscribe(server, "plain")
    try:
        assert (answer, other_answer) == ("subscribed", "subscribed")
        assert publish(server, name) == "ok"
        assert mine.recv() == f"hello {name}"
        assert publish(server, "plain") == "ok"  # the other subscriber gets its own channel's only
        assert other.recv() == "hello plain"
    finally:
        mine.close()
        other.close()


@pytest.mark.parametrize("name, error", [
    ("256-bytes", "PublishError: channel name 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'... is 256 bytes in UTF-8: at most 255"),
    ("surrogate", "PublishError: channel name '\\ud800' is not valid Unicode (a lone surrogate at position 0)"),
    ("low-surrogate", "PublishError: channel name 'ab\\udc00' is not valid Unicode (a lone surrogate at position 2)"),
    ("int", "TypeError: a channel name is a str (or None: every connection), not int"),
    ("bytes", "TypeError: a channel name is a str (or None: every connection), not bytes"),
])
def test_invalid_names_are_refused_by_publish(server, name, error):
    pids = wait_for(server.worker_pids, 5, "the worker's spawn line")
    assert publish(server, name).startswith(error)
    # nothing reached the mule: it still serves the valid ones
    mine, _ = subscribe(server, "plain")
    try:
        assert publish(server, "plain") == "ok"
        assert mine.recv() == "hello plain"
    finally:
        mine.close()
    assert server.worker_pids() == pids
    assert "dropped a publish request" not in server.log()
    assert server.crashes() == []


@pytest.mark.parametrize("name, error", [
    ("256-bytes", "ValueError: channel name 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'... is 256 bytes in UTF-8: at most 255"),
    ("surrogate", "ValueError: channel name '\\ud800' is not valid Unicode (a lone surrogate at position 0)"),
    ("int", "ValueError: a channel is a non-empty str"),
    ("bytes", "ValueError: a channel is a non-empty str"),
])
def test_invalid_names_are_refused_by_subscribe(server, name, error):
    ws, answer = subscribe(server, name)
    try:
        assert answer.startswith(error), answer
    finally:
        ws.close()
