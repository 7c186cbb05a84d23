"""End to end: the chat demo (examples/chat/app.py: its page at "/", the event endpoint
/live, the client /_uwsgi_ws/uwsgi_ws.js) in a real headless Chromium driven by
Playwright, against real uWSGI (threads, gevent; 2 workers, each also on a port of its
own, the broadcast mule: tests/test_events.py `start`).

- two pages pinned to different workers chat through the page's form: every message
  once, in the same order, on both pages;
- the worker holding one page is SIGKILLed while the other page goes on chatting: the
  page reconnects to the respawned worker, resumes, and shows every message exactly
  once, in order, with no "lost" line;
- a page whose WebSocket is unusable falls back to Server-Sent Events (/live/sse) and
  shows the same messages in the same order as a WebSocket page, also across a kill of
  its worker and across a proxy's 502 (the client reopens the stream with fresh
  credentials, ?lastEventId); sending from it fails with a clear message;
- join with `last` gives the same messages over SSE and WebSocket;
- credentials (the page logs in and connects with a signed token that expires, the
  client's `auth`): an expired token is refused at the next (re)connect, the client
  sees the refusal (its ?probe=1), reports "unauthorized", gets a fresh token and is
  back, over WebSocket and SSE; a client with a forged token stops after 3 refusals
  ("refused"), with no SSE fallback and no further try; a client at a full server
  (503 + Retry-After) waits, without "unauthorized" or an SSE fallback, and connects
  once a slot is free (tests/apps/sse_access_app.py).

The worker kills happen while the master is SIGSTOPped (the respawn, a fork, would
otherwise beat the page's first retry): the outage lasts until the other page has
chatted, and the page's reconnect waits in the listen backlog of the worker's port.

The browser is Debian's `chromium` package (`make test` installs it when missing; no
browser download, never `playwright install`); UWSGI_WS_CHROMIUM names another binary.
One browser (a fresh profile) per module; every page is closed by its test, the
browser by the fixture, which then kills by pid any process still using the profile.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import websocket

from autobahn import worker_pids
from harness import free_port, serve, wait_for
from test_events import model, start  # noqa: F401  (model: the fixture, threads and gevent)

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - the "test" extras install it
    sync_playwright = None

CHAT = ("--wsgi-file", "examples/chat/app.py", "--callable", "app")
TIMEOUT = 15_000  # ms: the longest wait on the page (a respawn, two reconnect delays)
# Page waits poll every POLL ms: the default, requestAnimationFrame, runs about once a
# second in a tab that is not in front (so would a click's "stable element" check: the
# form is sent with Enter, as a user would).
POLL = 20
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]


def chromium_binary() -> str:
    """Debian's Chromium: the real binary when present (the /usr/bin/chromium wrapper
    only adds flags from /etc/chromium.d and execs it), else `chromium` on PATH."""
    for candidate in (os.environ.get("UWSGI_WS_CHROMIUM"), "/usr/lib/chromium/chromium",
                      shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail("chromium is not installed: `make test` installs it "
                "(apt-get install --no-install-recommends chromium), or set UWSGI_WS_CHROMIUM")


def processes_using(profile: Path) -> list[int]:
    """Pids whose command line names `profile` (the browser and its helpers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(profile).encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """One headless Chromium (a fresh profile) for the module: a persistent context."""
    if sync_playwright is None:
        pytest.fail("the playwright package is missing: pip install -e '.[test]' (make test does)")
    executable = chromium_binary()
    profile = tmp_path_factory.mktemp("chromium-profile")
    driver = sync_playwright().start()
    try:
        context = driver.chromium.launch_persistent_context(
            str(profile), executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            context.set_default_timeout(TIMEOUT)
            yield context
        finally:
            context.close()
    finally:
        driver.stop()
        for pid in processes_using(profile):  # normally none: close() ends the browser
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        wait_for(lambda: not processes_using(profile), 10, "the browser's processes to end")


@pytest.fixture(scope="module")
def chat(model, tmp_path_factory):
    server = start(tmp_path_factory.mktemp(f"chat-{model}"), model, app=CHAT)
    server.model = model  # type: ignore[attr-defined]
    server.killed = []  # type: ignore[attr-defined]  (worker pids the tests SIGKILLed)
    yield server
    server.stop()
    log = server.log()
    unexpected = [line for line in server.crashes() if not any(f"pid: {pid})" in line for pid in server.killed)]
    assert not unexpected, log
    assert "Traceback" not in log, log


# Every page records the texts its #status takes (the page's onStatus writes it).
RECORD_STATUS = """
window.__statuses = [];
document.addEventListener("DOMContentLoaded", () => {
  const el = document.getElementById("status");
  window.__statuses.push(el.textContent);
  new MutationObserver(() => window.__statuses.push(el.textContent))
    .observe(el, {childList: true, characterData: true, subtree: true});
});
"""
# The page's chat lines: [seq, room, text] of each div.msg whose text starts with `prefix`.
MESSAGES = """prefix => [...document.querySelectorAll("#log div.msg")]
  .map(d => [Number(d.dataset.seq), d.dataset.room, d.querySelector(".text").textContent])
  .filter(m => m[2].startsWith(prefix))"""
# After Enter in the message field: "sent" once the ack came (the page clears the input), or the
# text of the "not sent: ..." line the page adds.
SENT = """before => {
  if (document.getElementById("text").value === "") return "sent";
  const sys = document.querySelectorAll("#log div.sys");
  return sys.length > before ? sys[sys.length - 1].textContent : null;
}"""
# WebSocket made unusable in a page, two ways: the constructor throws (blocked by
# policy), or every socket goes to a port where nothing listens (a proxy that drops
# the upgrade: a real socket that errors and closes without opening).
NO_WEBSOCKET = {
    "throws": """window.WebSocket = function WebSocket() {
      throw new DOMException("WebSocket disabled by the test", "SecurityError"); };""",
    "refused": """(() => { const Real = window.WebSocket;
      window.WebSocket = function WebSocket(url, protocols) { return new Real("ws://127.0.0.1:%d/", protocols); };
    })();""",
}


class ChatPage:
    """The chat page in a tab of the browser, at `base` (a worker's own port)."""

    def __init__(self, browser, base: str, init_script: str = "") -> None:
        self.page = browser.new_page()
        self.errors: list = []  # uncaught exceptions of the page
        self.console: list = []
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.on("console", lambda msg: self.console.append(f"{msg.type}: {msg.text}"))
        self.page.add_init_script(RECORD_STATUS + init_script)
        self.page.goto(base + "/")

    def status(self, want: str) -> None:
        expect(self.page.locator("#status")).to_have_text(want, timeout=TIMEOUT)

    def statuses(self) -> list:
        return self.page.evaluate("window.__statuses")

    def wait_statuses(self, since: int, js_condition: str) -> None:
        """Wait until the statuses recorded from index `since` on (`s`) satisfy the condition."""
        self.page.wait_for_function(f"since => {{ const s = window.__statuses.slice(since); return {js_condition}; }}",
                                    arg=since, timeout=TIMEOUT, polling=POLL)

    def worker(self) -> int:
        """The pid of the worker holding the connection (the app's "welcome" event)."""
        locator = self.page.locator("#worker")
        expect(locator).to_have_attribute("data-pid", re.compile(r"^\d+$"), timeout=TIMEOUT)
        return int(locator.get_attribute("data-pid"))

    def send(self, text: str) -> str:
        """Send `text` with the page's form: "sent" (acked), or the page's "not sent: ..." line."""
        before = self.page.locator("#log div.sys").count()
        self.page.fill("#text", text)
        self.page.press("#text", "Enter")
        return self.page.wait_for_function(SENT, arg=before, timeout=TIMEOUT, polling=POLL).json_value()

    def wait_text(self, text: str) -> None:
        self.page.wait_for_function(
            """t => [...document.querySelectorAll("#log div.msg .text")].some(e => e.textContent === t)""",
            arg=text, timeout=TIMEOUT, polling=POLL)

    def messages(self, prefix: str) -> list:
        return [tuple(m) for m in self.page.evaluate(MESSAGES, prefix)]

    def lost(self) -> list:
        return self.page.locator("#log div.lost").all_text_contents()

    def close(self) -> None:
        self.page.close()


def open_pages(browser, bases, init_scripts=None) -> list:
    pages = []
    try:
        for i, base in enumerate(bases):
            pages.append(ChatPage(browser, base, (init_scripts or {}).get(i, "")))
    except BaseException:
        for page in pages:
            page.close()
        raise
    return pages


def workers(chat) -> list:
    """The current pid of workers 1 and 2 (spawned, or respawned after a kill)."""
    return worker_pids(chat.log())


def url(chat, worker: int) -> str:
    """The chat on the port only worker `worker` (1 or 2) serves."""
    return f"http://127.0.0.1:{chat.worker_ports[worker - 1]}"


def unique(what: str) -> str:
    """A prefix no other test's (or earlier run's, shown by the chat's history) text has."""
    return f"{what}-{uuid.uuid4().hex[:8]}"


def joined(pages, token: str) -> None:
    """Each page sends a line and sees it: its join (sent before, handled in order) is
    in effect, so every page gets everything sent from now on."""
    for i, page in enumerate(pages):
        text = f"{token}-ready-{i}"
        assert page.send(text) == "sent", page.console
        page.wait_text(text)


class Transcript:
    """The lines a test sends into the room, in order (`token:<i>`), each through a
    page's form; `sent` is what every page should end up showing."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.sent: list = []

    def say(self, page, i: int, suffix: str = "") -> None:
        text = f"{self.token}:{i}{suffix}"
        assert page.send(text) == "sent"
        self.sent.append(text)


def sse_page_receiving(s, w, what: str) -> Transcript:
    """Page `w` (WebSocket) sends 3 lines, page `s` (on SSE) has received them."""
    w.status("open")
    s.status("sse")
    talk = Transcript(unique(what))
    joined([w], talk.token)
    for i in range(3):
        talk.say(w, i)
    s.wait_text(talk.sent[-1])
    return talk


def same_stream(pages, talk: Transcript) -> None:
    """Every page shows every line of `talk`, once, in order, with the same seqs."""
    for page in pages:  # the sender too: its ack may come before the broadcast
        page.wait_text(talk.sent[-1])
    logs = [check_log(page, talk.token + ":", talk.sent) for page in pages]
    assert all(log == logs[0] for log in logs), logs


def check_log(page, prefix: str, sent: list) -> list:
    """The page shows exactly the texts `sent` (those starting with `prefix`), once each,
    in order, with increasing seqs, all in room lobby; returns [(seq, room, text)]."""
    got = page.messages(prefix)
    assert [m[2] for m in got] == sent, (got, page.console)
    seqs = [m[0] for m in got]
    assert seqs == sorted(set(seqs)), got
    assert {m[1] for m in got} <= {"lobby"}, got
    assert page.lost() == [], page.lost()
    assert page.errors == [], page.errors
    return got


def parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


# -- the scenarios -------------------------------------------------------------------------


def test_two_pages_on_two_workers_chat(chat, browser):
    a, b = pages = open_pages(browser, [url(chat, 1), url(chat, 2)])
    try:
        for page in pages:
            page.status("open")
        pids = [a.worker(), b.worker()]
        assert pids == workers(chat) and pids[0] != pids[1], (pids, workers(chat))
        token = unique("chat")
        joined(pages, token)
        talk = Transcript(token)
        for i in range(8):  # a, b, a, b...: each waits for its ack
            talk.say(pages[i % 2], i, f" from {'ab'[i % 2]}")
        sent = talk.sent
        for page in pages:
            page.wait_text(sent[-1])
        assert check_log(a, token + ":", sent) == check_log(b, token + ":", sent)
    finally:
        for page in pages:
            page.close()


def test_a_page_whose_worker_is_killed_resumes_every_message_once_in_order(chat, browser):
    a, b = pages = open_pages(browser, [url(chat, 1), url(chat, 2)])
    try:
        for page in pages:
            page.status("open")
        victim = a.worker()
        assert victim == workers(chat)[0] and b.worker() == workers(chat)[1]
        token = unique("outage")
        joined(pages, token)
        talk = Transcript(token)
        sent, say = talk.sent, talk.say

        for i in range(4):
            say(pages[i % 2], i)
        a.wait_text(sent[-1])

        # The outage: worker 1 is killed while the master is stopped, so its respawn
        # (a fork: quicker than the page's first retry) waits until B has chatted;
        # meanwhile A's reconnects wait in the listen backlog of worker 1's port.
        mark = len(a.statuses())
        chat.killed.append(victim)
        os.kill(chat.pid, signal.SIGSTOP)
        try:
            os.kill(victim, signal.SIGKILL)
            a.wait_statuses(mark, "s.includes('connecting')")
            # A cannot send while it is down; B goes on (through worker 2)
            assert a.send(f"{token}:never") == "not sent: not connected"
            for i in range(4, 14):
                say(b, i)
            assert "resuming" not in a.statuses()[mark:], a.statuses()[mark:]
        finally:
            os.kill(chat.pid, signal.SIGCONT)  # the master respawns worker 1 on the same port
        a.wait_statuses(mark, "s.includes('resuming') && s[s.length - 1] === 'open'")
        respawned = a.worker()
        assert respawned != victim and parent_of(respawned) == chat.pid
        for i in range(14, 18):
            say(pages[i % 2], i)
        for page in pages:
            page.wait_text(sent[-1])
        assert check_log(a, token + ":", sent) == check_log(b, token + ":", sent)
        assert f"{token}:never" not in [m[2] for m in b.messages(token)]
    finally:
        for page in pages:
            page.close()


@pytest.mark.parametrize("blocked", sorted(NO_WEBSOCKET))
def test_a_page_without_websocket_gets_the_same_stream_over_sse(chat, browser, blocked):
    script = NO_WEBSOCKET[blocked].replace("%d", str(free_port()))
    # w: WebSocket, on worker 2 (sends everything); s: SSE only, on worker 1, opened
    # after w's first messages: it gets them as the room's last messages (join's last)
    pages = open_pages(browser, [url(chat, 2)])
    try:
        w = pages[0]
        w.status("open")
        token = unique(f"sse-{blocked}")
        joined([w], token)
        talk = Transcript(token)
        sent = talk.sent
        for i in range(8):
            if i == 3:
                pages.extend(open_pages(browser, [url(chat, 1)], {0: script}))
                s = pages[1]
                s.status("sse")  # after two failed WebSocket opens (the client's sseAfter)
                s.wait_text(sent[-1])  # the last messages, from the ring
                assert s.send(f"{token}:never") == "not sent: the SSE fallback is receive-only"
            talk.say(w, i)
        for page in pages:  # the sender too: its ack may come before the broadcast
            page.wait_text(sent[-1])
        assert check_log(s, token + ":", sent) == check_log(w, token + ":", sent)
        # the whole log, earlier tests' lines included: s's is the end of w's (w joined
        # earlier, each got the room's last messages when it joined), then the same stream
        s_all, w_all = s.messages(""), w.messages("")
        assert s_all == w_all[len(w_all) - len(s_all):], (s_all, w_all)
        assert s.statuses()[-1] == "sse"
        assert not s.page.locator("#worker").get_attribute("data-pid")  # "welcome" is WebSocket only
    finally:
        for page in pages:
            page.close()


def test_an_sse_page_whose_worker_is_killed_resumes_with_last_event_id(chat, browser):
    s, w = pages = open_pages(browser, [url(chat, 1), url(chat, 2)], {0: NO_WEBSOCKET["throws"]})
    try:
        talk = sse_page_receiving(s, w, "sse-outage")

        def say(i: int) -> None:
            talk.say(w, i)

        victim = workers(chat)[0]  # worker 1 holds the stream (its own port)
        mark = len(s.statuses())
        chat.killed.append(victim)
        os.kill(chat.pid, signal.SIGSTOP)  # hold the respawn (see the WebSocket case)
        try:
            os.kill(victim, signal.SIGKILL)
            s.wait_statuses(mark, "s.includes('connecting')")  # the EventSource noticed
            for i in range(3, 10):
                say(i)
        finally:
            os.kill(chat.pid, signal.SIGCONT)
        # the client reopens the stream (an `auth` function: every open gets fresh
        # credentials, so not the browser's own retry) and resumes with ?lastEventId
        s.wait_statuses(mark, "s[s.length - 1] === 'sse'")
        for i in range(10, 13):
            say(i)
        same_stream(pages, talk)
    finally:
        for page in pages:
            page.close()


def test_an_sse_page_comes_back_after_an_http_error(chat, browser):
    """A proxy answers 502 while the app restarts: an EventSource does not retry after
    an HTTP error (it closes for good); the client asks whether it was refused (its
    probe: a 502 is not a refusal), opens a new one with backoff, and resumes from
    what it saw (?lastEventId)."""
    if chat.model != "threads":
        pytest.skip("the client's retry does not depend on the server's model")
    s, w = pages = open_pages(browser, [url(chat, 1), url(chat, 2)], {0: NO_WEBSOCKET["throws"]})
    proxy = {"down": False}

    def route(r) -> None:  # page s's SSE requests, through a "proxy"
        if proxy["down"]:
            r.fulfill(status=502, content_type="text/plain", body="502 Bad Gateway\n")
        else:
            r.continue_()

    def refused(response) -> bool:
        return "/live/sse" in response.url and response.status == 502

    s.page.route(re.compile(r"/live/sse(\?|$)"), route)
    try:
        talk = sse_page_receiving(s, w, "sse-502")

        def say(i: int) -> None:
            talk.say(w, i)

        victim = workers(chat)[0]
        proxy["down"] = True
        chat.killed.append(victim)
        with s.page.expect_response(refused, timeout=TIMEOUT):  # the client's reopen
            os.kill(victim, signal.SIGKILL)
        with s.page.expect_response(refused, timeout=TIMEOUT):  # its probe, then the next reopen
            pass
        assert s.statuses()[-1] == "connecting"
        for i in range(3, 8):
            say(i)
        mark = len(s.statuses())
        proxy["down"] = False
        s.wait_statuses(mark, "s[s.length - 1] === 'sse'")
        for i in range(8, 10):
            say(i)
        same_stream(pages, talk)
    finally:
        for page in pages:
            page.close()


# A second client in a page (the chat's own script is loaded): joins lobby with
# `last`, records [seq, text] of the "said" lines and its statuses; its credentials
# are the page's (the chat's freshToken).
PROBE = """([last, sseAfter]) => {
  window.__probe = {said: [], statuses: []};
  const c = uwsgiWs.connect("/live", {sseAfter, onStatus: s => window.__probe.statuses.push(s),
                                      auth: async ({refused}) => ({token: await freshToken(refused)})});
  c.on("said", (m, frame) => window.__probe.said.push([frame.seq, m.text]));
  c.join("lobby", {last});
}"""


def test_join_with_last_gives_the_same_messages_over_sse_and_websocket(chat, browser):
    s, w = pages = open_pages(browser, [url(chat, 1), url(chat, 2)], {0: NO_WEBSOCKET["throws"]})
    try:
        w.status("open")
        s.status("sse")
        token = unique("last")
        joined([w], token)
        sent = [f"{token}:{i}" for i in range(5)]
        for text in sent:
            assert w.send(text) == "sent"
        # the last 3 of lobby, then what comes next: over SSE (at once: sseAfter 0) and WebSocket
        s.page.evaluate(PROBE, [3, 0])
        w.page.evaluate(PROBE, [3, 2])
        for page, want in ((s, "sse"), (w, "open")):  # the 3 came: the join is in effect
            page.page.wait_for_function("([t, want]) => window.__probe.statuses.includes(want) && "
                                        "window.__probe.said.some(m => m[1] === t)", arg=[sent[-1], want],
                                        timeout=TIMEOUT, polling=POLL)
        assert w.send(f"{token}:5") == "sent"
        sent.append(f"{token}:5")
        got = {}
        for page in (s, w):
            page.page.wait_for_function("t => window.__probe.said.some(m => m[1] === t)", arg=sent[-1],
                                        timeout=TIMEOUT, polling=POLL)
            got[page] = page.page.evaluate("window.__probe.said")
        assert [m[1] for m in got[w]] == sent[2:], got[w]
        assert got[s] == got[w]
        assert s.errors == w.errors == []
    finally:
        for page in pages:
            page.close()


# -- credentials: a signed token that expires (issue 12, item 2) -------------------------------

# The chat page (examples/chat) logs in, gets a token (POST /token) that expires after
# CHAT_TOKEN_MAX_AGE seconds, and connects with the client's `auth`: a function that
# returns the cached token, and fetches a fresh one once the server refused it.
SHORT_TOKENS = 2  # seconds: the chat_short server's token lifetime


@pytest.fixture(scope="module")
def chat_short(model, tmp_path_factory):
    """The chat whose tokens expire after SHORT_TOKENS seconds."""
    server = start(tmp_path_factory.mktemp(f"chat-short-{model}"), model, app=CHAT,
                   extra=("--env", f"CHAT_TOKEN_MAX_AGE={SHORT_TOKENS}"))
    yield server
    server.stop()
    log = server.log()
    assert not server.crashes(), log
    assert "Traceback" not in log, log


def token_fetches(page: ChatPage) -> list:
    """The page's successful POST /token, counted from now on (one entry each)."""
    got: list = []
    page.page.on("response", lambda r: got.append(r.url) if r.url.endswith("/token") and r.status == 200 else None)
    return got


def probe_status(server, token: str) -> int:
    """What the endpoint's access policy answers for `token` (the client's own probe)."""
    try:
        with urllib.request.urlopen(f"{server.http}/live/sse?probe=1&token={token}", timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.parametrize("transport", ["websocket", "sse"])
def test_an_expired_token_is_refreshed_after_the_refusal(chat_short, browser, transport):
    """The page's token expires while it is connected; at its next (re)connect the server
    refuses it (401), the client sees the refusal (its probe), reports "unauthorized",
    calls `auth` again with {refused: 401}, the page fetches a fresh token, and the
    client is back: over WebSocket and over SSE, every message once, in order."""
    script = NO_WEBSOCKET["throws"] if transport == "sse" else ""
    page = ChatPage(browser, url(chat_short, 1), script)
    try:
        fetches = token_fetches(page)
        want = "sse" if transport == "sse" else "open"
        page.status(want)
        talk = Transcript(unique(f"token-{transport}"))
        if transport == "websocket":
            joined([page], talk.token)
            talk.say(page, 0)
        first = page.page.evaluate("token")  # the page's cached token
        assert probe_status(chat_short, first) == 204
        wait_for(lambda: probe_status(chat_short, first) == 401, SHORT_TOKENS + 10, "the token to expire")
        mark, fetched = len(page.statuses()), len(fetches)
        page.page.evaluate("live.reconnect()")  # as after a network drop: the cached token first
        page.wait_statuses(mark, f"s.includes('unauthorized') && s[s.length - 1] === '{want}'")
        seen = page.statuses()[mark:]
        assert "refused" not in seen and seen.count("unauthorized") == 1, seen
        fresh = page.page.evaluate("token")
        assert len(fetches) - fetched == 1 and fresh != first, fetches  # one fresh token, after the refusal
        assert probe_status(chat_short, fresh) in (204, 401)  # a real token of the server (or expired already)
        if transport == "websocket":
            talk.say(page, 1)
            page.wait_text(talk.sent[-1])
            check_log(page, talk.token + ":", talk.sent)
        assert page.errors == [], page.errors
    finally:
        page.close()


# A second client in the chat page whose auth is a forged token: counts its auth calls,
# statuses and error events.
FORGED = """([sseAfter, maxRefusals]) => {
  const r = window.__forged = {statuses: [], errors: [], auths: 0};
  window.__forgedClient = uwsgiWs.connect("/live", {sseAfter, maxRefusals, minDelay: 50, maxDelay: 200,
    auth: () => { r.auths++; return {token: "forged"}; },
    onStatus: s => r.statuses.push(s)});
  window.__forgedClient.on("error", m => r.errors.push(m));
}"""


@pytest.mark.parametrize("transport", ["websocket", "sse"])
def test_a_refused_client_stops_after_a_bounded_number_of_refusals(chat, browser, transport):
    page = ChatPage(browser, url(chat, 1))
    attempts = {"websocket": 0, "sse": 0, "probe": 0}

    def on_request(request) -> None:
        if "token=forged" in request.url:
            kind = "probe" if "probe=1" in request.url else "sse" if "/live/sse" in request.url else None
            if kind:
                attempts[kind] += 1

    def on_websocket(ws) -> None:
        if "token=forged" in ws.url:
            attempts["websocket"] += 1

    page.page.on("request", on_request)
    page.page.on("websocket", on_websocket)
    try:
        page.status("open")  # the page's own client, with its valid token
        page.page.evaluate(FORGED, [0 if transport == "sse" else 2, 3])
        page.page.wait_for_function("window.__forged.statuses.includes('refused')", timeout=TIMEOUT, polling=POLL)
        forged = page.page.evaluate("window.__forged")
        assert forged["statuses"].count("unauthorized") == 3 and forged["statuses"][-1] == "refused", forged
        assert forged["auths"] == 3, forged
        assert len(forged["errors"]) == 1 and "refused 3 times in a row (HTTP 403)" in forged["errors"][0], forged
        assert "bad token" in forged["errors"][0], forged
        # refusals are not failures: a refused WebSocket client never falls back to SSE
        other = "sse" if transport == "websocket" else "websocket"
        assert attempts == {transport: 3, other: 0, "probe": 3}, attempts
        # and it has stopped: nothing more after several of its longest backoffs (an absence
        # cannot be awaited; 4 x maxDelay)
        page.page.wait_for_timeout(800)
        assert attempts == {transport: 3, other: 0, "probe": 3}, attempts
        assert page.page.evaluate("window.__forged.statuses.length") == len(forged["statuses"])
        assert page.page.evaluate("window.__forgedClient.transport") is None
        assert page.statuses()[-1] == "open"  # the page's own client is unaffected
    finally:
        page.close()


# A client on a blank page of tests/apps/sse_access_app.py (token "good" admits): records
# its statuses and the "hello" event its WebSocket gets when it opens.
BUSY_CLIENT = """() => {
  const r = window.__busy = {statuses: [], hello: 0, sockets: 0};
  const Real = window.WebSocket;
  window.WebSocket = function WebSocket(url, protocols) { r.sockets++; return new Real(url, protocols); };
  const c = uwsgiWs.connect("/live", {sseAfter: 2, minDelay: 50, maxDelay: 200, auth: {token: "good"},
                                      onStatus: s => r.statuses.push(s)});
  c.on("hello", () => r.hello++);
}"""


@pytest.mark.parametrize("model", ["threads"])  # the client's waiting does not depend on the model
def test_a_full_server_is_waited_for_not_refused(browser, tmp_path, model):
    """At a connection limit (503 + Retry-After) the client neither reports
    "unauthorized" nor falls back to SSE (3 tries refused, sseAfter 2): it waits at
    least Retry-After between tries and connects over WebSocket once a slot is free.
    (A try refused just before the slot frees is probed just after: that one counts as
    an ordinary failure, hence sseAfter 2, not 1.)"""
    extra = ["--processes", "1", "--sharedarea", "16", "--mule=uwsgi_ws.mule:run"]
    with serve("sse_access_app:app", tmp_path, model=model, extra=extra,
               env={"MAX_PER_WORKER": "1", "RETRY_AFTER": "1"}) as server:
        server.wait_for_log(r"uwsgi_ws: broadcast mule 1 serving ring", timeout=20)
        holder = websocket.create_connection(server.url + "/live?token=good", timeout=5)  # the only slot
        page = browser.new_page()
        try:
            page.goto(server.http + "/page")
            page.evaluate(BUSY_CLIENT)
            # three tries refused with 503 (each probed), past sseAfter: still WebSocket
            page.wait_for_function("window.__busy.sockets >= 3", timeout=TIMEOUT, polling=POLL)
            holder.close()  # a slot is free
            assert "sse" not in page.evaluate("window.__busy.statuses")
            try:
                page.wait_for_function("window.__busy.hello === 1 && window.__busy.statuses.includes('open')",
                                       timeout=TIMEOUT, polling=POLL)
            except Exception:
                raise AssertionError(page.evaluate("window.__busy")) from None
            statuses = page.evaluate("window.__busy.statuses")
            assert "unauthorized" not in statuses and "refused" not in statuses and "sse" not in statuses, statuses
        finally:
            holder.close()
            page.close()
        assert not server.crashes(), server.log()
