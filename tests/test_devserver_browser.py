"""The examples' pages (echo, chat with rooms, ticker) in a real headless Chromium against
`flask --app app run --debug` (Werkzeug's development server, reloader on): the pages
are unchanged, the server is not uWSGI (tests/test_devserver.py `FlaskRun`; the browser
and the chat page's driver come from tests/test_browser.py)."""

from __future__ import annotations

import json
from typing import Iterator

import pytest
import requests
from test_browser import TIMEOUT, ChatPage, browser, joined, unique  # noqa: F401  (browser: the fixture)
from test_devserver import EXAMPLES, FlaskRun, flask_run

try:
    from playwright.sync_api import expect
except ImportError:  # pragma: no cover - the "test" extras install it
    expect = None


@pytest.fixture(scope="module")
def chat(tmp_path_factory) -> Iterator[FlaskRun]:
    yield from flask_run(EXAMPLES / "chat", tmp_path_factory.mktemp("chat"))


@pytest.fixture(scope="module")
def echo(tmp_path_factory) -> Iterator[FlaskRun]:
    yield from flask_run(EXAMPLES / "echo", tmp_path_factory.mktemp("echo"))


@pytest.fixture(scope="module")
def ticker(tmp_path_factory) -> Iterator[FlaskRun]:
    yield from flask_run(EXAMPLES / "ticker", tmp_path_factory.mktemp("ticker"))


def test_echo_page(browser, echo: FlaskRun) -> None:
    page = browser.new_page()
    try:
        page.goto(echo.http + "/")
        expect(page.locator("#status")).to_have_text("connected", timeout=TIMEOUT)
        page.fill("#text", "hello from chromium")
        page.press("#text", "Enter")
        expect(page.locator("#log div.in")).to_have_text(["← hello from chromium"], timeout=TIMEOUT)
    finally:
        page.close()


def test_chat_pages_in_rooms(browser, chat: FlaskRun) -> None:
    pages = [ChatPage(browser, chat.http) for _ in range(2)]
    try:
        for page in pages:
            page.status("open")  # the WebSocket transport (not the SSE fallback)
        token = unique("dev")
        joined(pages, token)
        texts = [f"{token}:{i}" for i in range(5)]
        for i, text in enumerate(texts):
            assert pages[i % 2].send(text) == "sent", pages[i % 2].console
        for page in pages:
            page.wait_text(texts[-1])
            shown = page.messages(token + ":")
            assert [text for _, _, text in shown] == texts  # every message once, in order, on both
            assert [seq for seq, _, _ in shown] == sorted(seq for seq, _, _ in shown)
            assert {room for _, room, _ in shown} == {"lobby"}
        # The other room: a page that switches to "random" no longer gets "lobby".
        pages[1].page.select_option("#room", "random")
        lobby_only = f"{token}-lobby-only"
        random_line = f"{token}-random"
        assert pages[1].send(random_line) == "sent"
        pages[1].wait_text(random_line)
        assert pages[0].send(lobby_only) == "sent"
        pages[0].wait_text(lobby_only)
        assert pages[1].messages(lobby_only) == []
        assert pages[0].messages(random_line) == []
        for page in pages:
            assert page.errors == [], page.errors
    finally:
        for page in pages:
            page.close()


def test_ticker_page(browser, ticker: FlaskRun) -> None:
    page = browser.new_page()
    try:
        page.goto(ticker.http + "/")
        expect(page.locator("#status")).to_have_text("connected", timeout=TIMEOUT)
        # The page's handler subscribes after its upgrade: post until the row shows up.
        page.wait_for_function(
            """async () => {
                 await fetch("/price", {method: "POST", headers: {"Content-Type": "application/json"},
                                        body: JSON.stringify({symbol: "DEVCO", price: 12.5})});
                 return [...document.querySelectorAll("#rows td")].some(td => td.textContent === "DEVCO");
               }""", timeout=TIMEOUT, polling=200)
        requests.post(ticker.http + "/price", data=json.dumps({"symbol": "DEVCO", "price": 99.25}),
                      headers={"Content-Type": "application/json"}, timeout=5)
        row = page.locator("#rows tr", has_text="DEVCO")
        expect(row.locator("td").nth(1)).to_have_text("99.25", timeout=TIMEOUT)
    finally:
        page.close()


