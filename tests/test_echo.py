"""Echo through a real uWSGI in every concurrency model: text, binary, empty, large."""

from __future__ import annotations

import os

import pytest
import websocket  # websocket-client
from websockets.sync.client import connect

APP = "echo_app:app"
MODELS = ["threads", "gevent", "async"]


@pytest.fixture
def client(server):
    ws = websocket.create_connection(server.url + "/echo", timeout=5)
    yield ws
    ws.close()


@pytest.mark.parametrize("text", ["hello", "héllo wörld ✓ — 日本語 🎉", "x" * 200])
def test_echo_text(client, text):
    client.send(text)
    opcode, data = client.recv_data()
    assert opcode == websocket.ABNF.OPCODE_TEXT
    assert data.decode("utf-8") == text


def test_echo_binary(client):
    payload = bytes(range(256)) + b"\x00\xff" * 10
    client.send_binary(payload)
    opcode, data = client.recv_data()
    assert opcode == websocket.ABNF.OPCODE_BINARY
    assert data == payload


def test_echo_empty_messages(client):
    client.send("")
    assert client.recv_data() == (websocket.ABNF.OPCODE_TEXT, b"")
    client.send_binary(b"")
    assert client.recv_data() == (websocket.ABNF.OPCODE_BINARY, b"")
    client.send("after")  # the connection still works after empty frames
    assert client.recv() == "after"


def test_echo_60k_under_the_limit(server):
    # The app's max_message_size is 64 KiB.
    payload = os.urandom(60 * 1024)
    text = "é" * (30 * 1024)  # 60 KiB of UTF-8
    with connect(server.url + "/echo", open_timeout=5, close_timeout=5, max_size=None) as ws:
        ws.send(payload)
        assert ws.recv(timeout=10) == payload
        ws.send(text)
        assert ws.recv(timeout=10) == text


def test_many_messages_in_order(client):
    for i in range(200):
        client.send(f"m{i}")
    assert [client.recv() for _ in range(200)] == [f"m{i}" for i in range(200)]


def test_concurrent_connections(server):
    if server.model == "async":
        pytest.skip("async cores deadlock on a second request: tests/test_async_model.py")
    clients = [websocket.create_connection(server.url + "/echo", timeout=5) for _ in range(5)]
    try:
        for i, c in enumerate(clients):
            c.send(f"client {i}")
        for i, c in reversed(list(enumerate(clients))):
            assert c.recv() == f"client {i}"
    finally:
        for c in clients:
            c.close()
