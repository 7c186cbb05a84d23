"""Broadcast end to end on real uWSGI, in the threads and gevent models.

`ws.publish` -> the broadcast mule (``--mule=uwsgi_ws.mule:run``) -> the ring in
sharedarea 0 -> each worker's hub -> every subscribed connection. The app is
tests/apps/broadcast_test_app.py (and broadcast_test_mule.py, a program mule
that publishes). Clients are raw sockets read by one selector loop, so
hundreds of them cost one thread. Each connection first receives
``ready:<worker pid>``: the tests check that their clients are on both workers
(each worker also has a socket of its own, see `start`, so they always are).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from harness import ROOT, UWSGI, free_port, stop_and_check, wait_for
from wsraw import TEXT, Client, closing, connect, gather, server_frame

APP = "broadcast_test_app:app"
MULE_FILE = "tests/apps/broadcast_test_mule.py"
MULE_MSG_SIZE = 262144  # conf/broadcast.ini's value
# Every websocket holds a thread (threads model): 100 clients per worker (the
# burst test) plus the HTTP publishers.
MODEL_ARGS = {
    "threads": ["--processes", "2", "--threads", "120"],
    "gevent": ["--processes", "2", "--gevent", "300"],
}
SMALL_MODEL_ARGS = {
    "threads": ["--processes", "2", "--threads", "12"],
    "gevent": ["--processes", "2", "--gevent", "50"],
}
BROADCAST = ["--sharedarea", "4096", "--mule=uwsgi_ws.mule:run"]


# -- uWSGI instances --------------------------------------------------------------


def start(tmp: Path, model: str, extra=(), env=None, small=False, wait_mule=True) -> UWSGI:
    """uWSGI serving the test app in `model`, with `extra` options (no broadcast by default).

    Besides its port (shared by both workers, as usual), each worker gets a socket of
    its own (`--map-socket`): `server.worker_ports[i]` reaches worker i + 1 only, so
    a test puts clients on both workers for sure instead of hoping the kernel
    spreads them (it often hands dozens in a row to one idle worker).
    """
    worker_ports = [free_port(), free_port()]
    args = [
        "--master",
        "--http-socket", "127.0.0.1:{port}",
        "--http-socket", f"127.0.0.1:{worker_ports[0]}",
        "--http-socket", f"127.0.0.1:{worker_ports[1]}",
        "--map-socket", "1:1",
        "--map-socket", "2:2",
        "--module", APP,
        "--die-on-term",
        "--need-app",
        "--disable-logging",
        *(SMALL_MODEL_ARGS if small else MODEL_ARGS)[model],
        *extra,
    ]
    server = UWSGI(args, tmp, env=env)
    server.model = model  # type: ignore[attr-defined]
    server.worker_ports = worker_ports  # type: ignore[attr-defined]
    if wait_mule:
        server.wait_for_log(r"uwsgi_ws: broadcast mule 1 serving ring", timeout=20)
    return server


@pytest.fixture(scope="module", params=["threads", "gevent"])
def model(request):
    return request.param


@pytest.fixture(scope="module")
def bserver(model, tmp_path_factory):
    """The main instance: ring, broadcast mule, a program mule, the configured msg size."""
    server = start(
        tmp_path_factory.mktemp(f"broadcast-{model}"), model,
        [*BROADCAST, f"--mule={MULE_FILE}", f"--mule-msg-size={MULE_MSG_SIZE}"],
    )
    yield server
    stop_and_check(server)


@pytest.fixture(scope="module")
def mule_only_server(model, tmp_path_factory):
    """Like `bserver`, with ``uwsgi-ws-publish-direct`` off: every publish goes through the mule."""
    server = start(
        tmp_path_factory.mktemp(f"broadcast-mule-only-{model}"), model,
        [*BROADCAST, f"--mule-msg-size={MULE_MSG_SIZE}", "--set-placeholder", "uwsgi-ws-publish-direct=false"],
    )
    yield server
    stop_and_check(server)


@pytest.fixture(params=["direct", "mule"])
def either_server(request, model):  # model: in the static closure, for getfixturevalue
    """`bserver` (workers append plain publishes themselves) and `mule_only_server`."""
    return request.getfixturevalue("bserver" if request.param == "direct" else "mule_only_server")


@pytest.fixture(autouse=True)
def _no_traceback_in_the_main_instance(request):
    """Errors the workers or mules log (hub tasks, handlers) fail the test that caused them."""
    if "bserver" not in request.fixturenames:
        yield
        return
    server = request.getfixturevalue("bserver")
    before = server.log().count("Traceback")
    yield
    log = server.log()
    if log.count("Traceback") > before:
        at = [m.start() for m in re.finditer("Traceback", log)][before]
        pytest.fail("the server logged an error during this test:\n" + log[at:at + 3000])


# -- HTTP ----------------------------------------------------------------------------


def http(server: UWSGI, method: str, path: str, data: bytes | None = None, timeout: float = 30.0,
         port: int | None = None):
    """(status, body text) of one request (to `port`: one worker's own socket)."""
    req = urllib.request.Request(f"http://127.0.0.1:{port or server.port}{path}", data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


def publish(server, data, channel=None, expect=204):
    path = "/publish" + (f"/{channel}" if channel else "") + ("?binary=1" if isinstance(data, bytes) else "")
    status, body = http(server, "POST", path, data if isinstance(data, bytes) else data.encode())
    assert status == expect, (status, body)
    return body


def publish_many(server, count, prefix, channel=None, interval=0.0, timeout=60.0, port=None):
    query = f"prefix={prefix}" + (f"&channel={channel}" if channel else "") + (f"&interval={interval}" if interval else "")
    status, body = http(server, "POST", f"/publish-many/{count}?{query}", b"", timeout=timeout, port=port)
    assert status == 200, (status, body)
    return json.loads(body)


def stats(server) -> dict:
    """One worker's /stats (its hub counters, and the instance-wide publish waits)."""
    status, body = http(server, "GET", "/stats")
    assert status == 200, body
    return json.loads(body)


def stats_of_every_worker(server) -> dict:
    """{pid: hub counters} of both workers."""
    found = {}
    for port in server.worker_ports:
        status, body = http(server, "GET", "/stats", port=port)
        assert status == 200, body
        info = json.loads(body)
        found[info["pid"]] = info
    assert len(found) == 2, found
    return found


# -- WebSocket clients: wsraw.Client (raw sockets, read by one selector loop) ---------------


def connect_both_workers(server, path: str, at_least: int = 2, **kwargs) -> list:
    """At least `at_least` connections, half on each worker (checked by their `ready:<pid>`)."""
    per_worker = max(1, (at_least + 1) // 2)
    clients: list = []
    try:
        for port in server.worker_ports:
            clients += connect(port, path, per_worker, **kwargs)
    except BaseException:
        for c in clients:
            c.close()
        raise
    assert len({c.pid for c in clients}) == 2, "the workers' own sockets reached one worker"
    return clients


def connect_to_worker(server, path: str, pid: int, **kwargs) -> Client:
    """One connection served by worker `pid`."""
    port = server.worker_ports[server.worker_pids().index(pid)]
    client = Client(port, path, **kwargs).handshake()
    assert client.pid == pid
    return client


def mule_pid(server: UWSGI, mule: int = 1) -> int:
    return int(re.findall(rf"spawned uWSGI mule {mule} \(pid: (\d+)", server.log())[-1])


def numbers(messages, prefix: str) -> list:
    return [int(m[len(prefix):]) for m in messages if isinstance(m, str) and m.startswith(prefix)]


# -- 0. the hub of a worker whose first connections arrive together ------------------------


def test_first_connections_of_a_worker_arriving_together(model, tmp_path):
    """Each worker builds its hub at its first WebSocket; in the threads model
    the first few arrive on several threads at once. All of them must be served
    by one hub bound to the worker's wake socket (no crash, no second hub)."""
    server = start(tmp_path, model, BROADCAST, small=True)
    clients: list = []
    try:
        for port in server.worker_ports:  # 8 fresh connections per worker, handshakes in flight together
            clients += connect(port, "/sub", 8)
        assert len({c.pid for c in clients}) == 2
        publish(server, "after-the-rush")
        gather(clients, lambda c: len(c.messages) >= 1, 10)
        assert [c.messages for c in clients] == [["after-the-rush"]] * len(clients)
        assert "Address already in use" not in server.log(), server.log()
    finally:
        for c in clients:
            c.close()
        stop_and_check(server)


# -- 1. every message, every client, once, in order; sizes and the limit --------------------


def largest_publish(limit: int, channel: str = "") -> int:
    """The largest message that fits --mule-msg-size=`limit`: a publish request is the
    message, its channel and 6 bytes (uwsgi_ws.mule: b"UWS1" | flags | channel_len)."""
    return limit - 6 - len(channel.encode())


def test_publish_limit_error_names_the_option_and_what_fits(bserver):
    """A byte over the largest publish: 413 from the app with a PublishError that names
    --mule-msg-size and says how large a message may be (so the limit can be found
    from the error alone)."""
    largest = largest_publish(MULE_MSG_SIZE)
    status, error = http(bserver, "POST", "/publish?binary=1", bytes(largest + 1))
    assert status == 413 and error.startswith("PublishError") and "--mule-msg-size" in error, error
    assert str(largest) in error, f"the error does not say that {largest} bytes fit: {error}"
    status, error = http(bserver, "POST", "/publish/abc", b"y" * (largest - 2))  # the channel counts
    assert status == 413 and "--mule-msg-size" in error, error
    assert str(largest - 3) in error, f"the error does not say that {largest - 3} bytes fit on 'abc': {error}"


def test_every_message_reaches_every_client_once_and_in_order(bserver):
    largest = largest_publish(MULE_MSG_SIZE)
    with closing(connect_both_workers(bserver, "/sub", at_least=4)) as clients:
        sent = []
        for size in (0, 1, 100, 16 * 1024, largest):
            text = "".join(chr(0x61 + (i * 7 + size) % 26) for i in range(size))
            binary = os.urandom(size)
            for message in (text, binary):
                publish(bserver, message)
                sent.append(message)
        # one byte over the limit, text and binary, without and with a channel: refused
        for over in ("x" * (largest + 1), bytes(largest + 1)):
            body = publish(bserver, over, expect=413)
            assert body.startswith("PublishError") and "--mule-msg-size" in body, body
        body = publish(bserver, "y" * (largest - 2), channel="abc", expect=413)  # the channel counts
        assert "--mule-msg-size" in body
        publish(bserver, "z" * (largest - 3), channel="abc")  # fits (nobody here is on "abc")
        publish(bserver, "end")
        sent.append("end")

        gather(clients, lambda c: len(c.messages) >= len(sent), 30)
        for c in clients:
            assert len(c.messages) == len(sent), (c.pid, len(c.messages))
            for got, want in zip(c.messages, sent):
                assert type(got) is type(want) and got == want, (c.pid, type(got), len(got), len(want))
        # nothing else arrives afterwards (no duplicate, none of the refused ones)
        publish(bserver, "after")
        gather(clients, lambda c: len(c.messages) > len(sent), 10)
        assert all(c.messages[len(sent):] == ["after"] for c in clients)


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_delivery_is_prompt_and_the_idle_mule_sleeps(bserver):
    """A publish reaches the clients at once (the mule wakes the workers; the hubs'
    0.5 s re-check is only a fallback), and a mule with nothing to do uses no CPU:
    measured over IDLE_WINDOW of doing nothing after the deliveries (CPU time is
    counted in clock ticks of 10 ms, so a short window says nothing)."""
    with closing(connect_both_workers(bserver, "/sub", at_least=2)) as clients:
        mule = mule_pid(bserver)
        latencies = []
        for i in range(10):
            t = time.monotonic()
            publish(bserver, "t%d" % i)
            gather(clients, lambda c: len(c.messages) > i, 5)
            latencies.append(time.monotonic() - t)
        assert all(c.messages == ["t%d" % i for i in range(10)] for c in clients)
        # A measurement window, not a wait for an event: nothing happens in it on purpose.
        cpu0, t0 = cpu_seconds(mule), time.monotonic()
        time.sleep(IDLE_WINDOW)
        wall, busy = time.monotonic() - t0, cpu_seconds(mule) - cpu0
        print(f"\n[{bserver.model}] publish-to-delivery: median {sorted(latencies)[5] * 1000:.1f} ms, "
              f"max {max(latencies) * 1000:.1f} ms; the idle mule used {busy:.2f}s CPU in {wall:.2f}s")
        assert sorted(latencies)[5] < 0.1, f"deliveries wait for the hubs' fallback poll: {latencies}"
        assert busy < wall / 10, f"the idle broadcast mule spins: {busy:.2f}s of CPU in {wall:.2f}s"


IDLE_WINDOW = 1.0  # seconds of doing nothing over which the idle mule's CPU is measured


def test_concurrent_publishers_same_order_everywhere(bserver):
    """Publishers in both workers at once: each publisher's messages arrive in its
    order, and every client sees the same interleaving (one total order)."""
    with closing(connect_both_workers(bserver, "/sub", at_least=4)) as clients:
        results = []
        threads = [
            threading.Thread(target=lambda p=p, port=port: results.append(publish_many(bserver, 500, p, port=port)))
            for p, port in zip("pqrs", bserver.worker_ports * 2)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(results) == 4
        gather(clients, lambda c: len(c.messages) >= 2000, 20)
        first = clients[0].messages
        for c in clients:
            assert c.messages == first
        for p in "pqrs":
            assert numbers(first, p) == list(range(500)), p


# -- 2. channels ---------------------------------------------------------------------------


def test_channels_subscribe_leave_and_raise(bserver):
    a = connect_both_workers(bserver, "/sub/a", at_least=4)
    b = connect_both_workers(bserver, "/sub/b")
    every = connect_both_workers(bserver, "/sub")
    with closing(a + b + every):
        for data, channel in [("a1", "a"), ("b1", "b"), ("all1", None), ("a2", "a"), ("b2", "b"), ("end1", None)]:
            publish(bserver, data, channel)
        gather(a + b + every, lambda c: "end1" in c.messages, 10)
        for c in a:
            assert c.messages == ["a1", "all1", "a2", "end1"]
        for c in b:
            assert c.messages == ["b1", "all1", "b2", "end1"]
        for c in every:
            assert c.messages == ["all1", "end1"]

        # one "a" client leaves the `with ws.subscribe(...)` block, one raises inside it;
        # both stay connected (on both workers, if `a` is spread so)
        leaver, raiser, stayers = a[0], next(c for c in a if c.pid != a[0].pid), None
        stayers = [c for c in a if c not in (leaver, raiser)]
        for c in a:
            c.messages.clear()
        leaver.send_text("leave")
        raiser.send_text("raise")
        gather([leaver, raiser], lambda c: len(c.messages) >= 1, 10)
        assert leaver.messages == ["left"] and raiser.messages == ["raised"]
        for c in (leaver, raiser):  # still connected: the handler answers
            c.send_text("ping")
        gather([leaver, raiser], lambda c: len(c.messages) >= 2, 10)
        assert leaver.messages[1] == raiser.messages[1] == "pong"

        for data, channel in [("a3", "a"), ("end2", None)]:
            publish(bserver, data, channel)
        gather(a, lambda c: "end2" in c.messages, 10)
        assert leaver.messages == ["left", "pong", "end2"]
        assert raiser.messages == ["raised", "pong", "end2"]
        for c in stayers:
            assert c.messages == ["a3", "end2"]


# -- 3. a burst of 10,000 to 200 clients ------------------------------------------------------


def test_burst_of_10000_to_200_clients(bserver):
    count, n_clients = 10_000, 200
    expected = b"".join(server_frame(TEXT, b"n%d" % i) for i in range(count))
    with closing(connect_both_workers(bserver, "/sub", n_clients, raw=True)) as clients:
        pids = {c.pid for c in clients}
        assert len(clients) == n_clients and len(pids) == 2
        info = publish_many(bserver, count, "n")
        took = gather(clients, lambda c: len(c.buf) >= len(expected), 60, "the burst")
        bad = [c for c in clients if bytes(c.buf) != expected]
        if bad:
            c = bad[0]
            c.raw = False
            c.parse()
            got = numbers(c.messages, "n")
            first_wrong = next((i for i, (g, w) in enumerate(zip(got, range(count))) if g != w), len(got))
            pytest.fail(f"{len(bad)} of {n_clients} clients got a wrong stream; worker {c.pid}: "
                        f"{len(got)} messages, first wrong at index {first_wrong}: {got[first_wrong:first_wrong + 5]}")
        per_worker = {pid: sum(c.pid == pid for c in clients) for pid in pids}
        print(f"\n[{bserver.model}] 10000 publishes in {info['seconds']:.2f}s inside uWSGI; "
              f"{n_clients} clients {per_worker} had them all in {took:.2f}s")
    stats = stats_of_every_worker(bserver)
    assert all(s["lapped"] == 0 and s["slow_consumers"] == 0 for s in stats.values()), stats


# -- 8. a program mule publishing directly ------------------------------------------------------


def test_program_mule_publishes_directly(bserver):
    count = 3000
    with closing(connect_both_workers(bserver, "/sub", at_least=3)) as clients:
        before = bserver.log().count("broadcast_test_mule: published")
        status, body = http(bserver, "POST", f"/mule-publish/{count}?prefix=z", b"")
        assert status == 204, body
        gather(clients, lambda c: len(c.messages) >= count, 30)
        for c in clients:
            assert c.messages == ["z%d" % i for i in range(count)]
        bserver.wait_for_log("broadcast_test_mule: published", count=before + 1)


# -- 4. kill -9 of the broadcast mule ------------------------------------------------------------


def kill_mule_and_wait_respawn(server: UWSGI, sig=signal.SIGKILL) -> float:
    pid = mule_pid(server)
    spawned = server.log().count("spawned uWSGI mule 1 ")
    t0 = time.monotonic()
    os.kill(pid, sig)
    server.wait_for_log(r"spawned uWSGI mule 1 ", count=spawned + 1, timeout=20)
    server.wait_for_log(r"uwsgi_ws: broadcast mule 1 serving ring", count=spawned + 1, timeout=20)
    return time.monotonic() - t0


def test_publishes_while_the_mule_is_down_wait_and_arrive(mule_only_server):
    """Every publish through the mule (``uwsgi-ws-publish-direct`` off). The mule is
    stopped (SIGSTOP, idle: nothing in its hands), a publish waits for its answer
    (counted: uwsgi_ws_publish_queue_full_total); kill -9, the master respawns it, and
    the waiting publisher completes: everything arrives once, in order."""
    server = mule_only_server
    count = 3000
    with closing(connect_both_workers(server, "/sub", at_least=3)) as clients:
        publish(server, "warm")
        gather(clients, lambda c: len(c.messages) >= 1, 10)
        waits_before = stats(server)["publish_waits"]
        os.kill(mule_pid(server), signal.SIGSTOP)
        result = {}
        publisher = threading.Thread(target=lambda: result.update(r=publish_many(server, count, "d")))
        publisher.start()
        try:
            wait_for(lambda: stats(server)["publish_waits"] > waits_before, 10,
                     "a publish waiting for the stopped mule")
            assert publisher.is_alive(), "the publisher should be blocked on the stopped mule"
            down = kill_mule_and_wait_respawn(server)
        finally:
            publisher.join(30)
        assert "r" in result, "the publisher did not complete after the respawn"
        gather(clients, lambda c: len(c.messages) >= count + 1, 20)
        for c in clients:
            assert c.messages == ["warm"] + ["d%d" % i for i in range(count)]
        print(f"\n[{server.model}] mule down {down:.2f}s; the publisher of {count} took {result['r']['seconds']:.2f}s")


def test_workers_publish_while_the_mule_is_stopped(bserver):
    """Workers append plain publishes themselves: with the mule stopped (SIGSTOP), 3000
    publishes from both workers arrive at once, in order, none waits for the mule (the
    wait counter stays); then the stopped mule is killed and respawned meanwhile, and
    publishing goes on through it all."""
    count = 3000
    with closing(connect_both_workers(bserver, "/sub", at_least=3)) as clients:
        publish(bserver, "warm")
        gather(clients, lambda c: len(c.messages) >= 1, 10)
        waits_before = stats(bserver)["publish_waits"]
        mule = mule_pid(bserver)
        os.kill(mule, signal.SIGSTOP)
        try:
            info = publish_many(bserver, count, "d")
            gather(clients, lambda c: len(c.messages) >= count + 1, 20, "every publish, the mule stopped")
            assert stats(bserver)["publish_waits"] == waits_before, "a publish waited for the mule"
            result = {}
            publisher = threading.Thread(target=lambda: result.update(r=publish_many(bserver, count, "e")))
            publisher.start()
            try:
                down = kill_mule_and_wait_respawn(bserver)
            finally:
                publisher.join(30)
        finally:
            try:
                os.kill(mule, signal.SIGCONT)
            except ProcessLookupError:
                pass
        assert "r" in result, "the publisher failed while the mule was respawned"
        gather(clients, lambda c: len(c.messages) >= 2 * count + 1, 20)
        for c in clients:
            assert c.messages == ["warm"] + ["d%d" % i for i in range(count)] + ["e%d" % i for i in range(count)]
        print(f"\n[{bserver.model}] {count} publishes with the mule stopped took {info['seconds']:.2f}s; "
              f"mule down {down:.2f}s")


def test_mule_killed_mid_stream(either_server, record_property):
    """kill -9 the mule three times while a stream is being published, the workers
    appending themselves or through the mule. Accepted messages arrive exactly once
    and in order; the mule's docstring allows the loss of the one request it was
    taking off its queue at the kill: measured and reported here, at most one per
    kill (none when the workers append)."""
    bserver = either_server
    count, kills = 6000, 3
    with closing(connect_both_workers(bserver, "/sub", at_least=3)) as clients:
        result = {}
        publisher = threading.Thread(
            target=lambda: result.update(r=publish_many(bserver, count, "k", interval=0.0005)))
        publisher.start()
        respawns = []
        try:
            for k in range(kills):
                mark = (k + 1) * count // (kills + 2)
                gather(clients, lambda c: len(c.messages) >= mark, 20, f"message {mark} of the stream")
                assert publisher.is_alive(), "the stream ended before the kill: not mid-stream"
                respawns.append(kill_mule_and_wait_respawn(bserver))
        finally:
            publisher.join(60)
        assert "r" in result, "the publisher failed"
        last = "k%d" % (count - 1)
        gather(clients, lambda c: last in c.messages, 20, "the end of the stream")
        lost = None
        for c in clients:
            got = numbers(c.messages, "k")
            assert len(c.messages) == len(got), "only stream messages"
            assert got == sorted(set(got)), "duplicates or disorder"
            missing = sorted(set(range(count)) - set(got))
            if lost is None:
                lost = missing
            assert missing == lost, "every client misses the same ones (lost before the ring)"
        record_property("lost_at_kill", lost)
        print(f"\n[{bserver.model}] {kills} kills mid-stream, respawned in "
              f"{', '.join('%.2fs' % r for r in respawns)}; lost {len(lost)}: {lost}")
        assert len(lost) <= kills, f"more than one message lost per kill: {lost}"
        if "uwsgi-ws-publish-direct=false" not in bserver.args:
            assert lost == [], "a worker's own append lost a message at a mule kill"


# -- 6. slow consumer ---------------------------------------------------------------------------------

WRITE_LIMIT = 64 * 1024
PAD = "." * 1000


@pytest.fixture(scope="module")
def slow_server(model, tmp_path_factory):
    """An instance whose connections may buffer WRITE_LIMIT bytes (the app reads $WRITE_LIMIT).
    A slow consumer's 1013 waits up to CLOSE_TIMEOUT for the client to read: the tests read
    it only after the whole stream, which a loaded machine may stretch past the default 5 s
    (the server then cuts TCP mid-stream, as designed, and the close frame never comes)."""
    server = start(tmp_path_factory.mktemp(f"slow-{model}"), model,
                   [*BROADCAST, f"--mule-msg-size={MULE_MSG_SIZE}"],
                   env={"WRITE_LIMIT": str(WRITE_LIMIT), "CLOSE_TIMEOUT": "60"})
    yield server
    stop_and_check(server)


def slow_client(server) -> Client:
    """A client that will not read: small kernel buffers on both ends, so what piles up is
    the server's own outbound buffer."""
    return Client(server.port, "/sub?sndbuf=16384", rcvbuf=4096).handshake()


def stream_numbers(messages) -> list:
    return numbers([m.replace(PAD, "") for m in messages if isinstance(m, str)], "s")


def read_until_closed(client) -> list:
    """Let a client that stopped reading read at last: the stream numbers it got before
    the close frame, which must be 1013 and come last."""
    gather([client], lambda c: c.close_code is not None, 10, "the slow consumer's close frame")
    assert client.messages[-1] == ("close", 1013), client.messages[-1:]
    got = stream_numbers(client.messages[:-1])
    assert len(got) == len(client.messages) - 1
    assert got == list(range(len(got))), "an unbroken head of the stream"
    gather([client], lambda c: c.eof, 10, "TCP close after the close frame")
    return got


def test_slow_consumer_is_closed_and_the_others_keep_up(slow_server):
    server = slow_server
    slow = slow_client(server)
    readers = connect_both_workers(server, "/sub", at_least=3)
    if not any(c.pid == slow.pid for c in readers):  # a reader on the slow one's worker too
        readers.append(connect_to_worker(server, "/sub", slow.pid))
    with closing(readers + [slow]):
        before = stats_of_every_worker(server)
        # a fast stream the readers can follow: 2000 x 1 KB at 2 MB/s
        count = 2000
        result = {}
        publisher = threading.Thread(
            target=lambda: result.update(r=publish_many(server, count, "s" + PAD, interval=0.0005)))
        publisher.start()
        try:
            took = gather(readers, lambda c: len(c.messages) >= count, 30, "the stream at the readers")
        finally:
            publisher.join(30)
        for c in readers:
            assert stream_numbers(c.messages) == list(range(count)), c.messages[-1:]
        after = stats_of_every_worker(server)
        closed = {pid: after[pid]["slow_consumers"] - before[pid]["slow_consumers"] for pid in after}
        assert closed[slow.pid] == 1 and sum(closed.values()) == 1, closed
        got = read_until_closed(slow)
        assert len(got) < count
        print(f"\n[{server.model}] {count} x 1 KB published in {result['r']['seconds']:.2f}s; readers "
              f"done in {took:.2f}s; the slow one got {len(got)} then 1013")


def test_write_limit_bounds_what_a_burst_queues(slow_server):
    """Many messages can reach a hub in one batch (here: its worker is stopped while
    4 MB are published through the other one, then continued). A client that does
    not read must still be cut at about its write_limit, not get the whole batch
    queued in its outbound buffer because that buffer happened to be empty."""
    server = slow_server
    pid_a, pid_b = server.worker_pids()
    port_b = server.worker_ports[1]
    slow = connect_to_worker(server, "/sub?sndbuf=16384", pid_a, rcvbuf=4096)
    # a reader allowed to buffer the whole burst, on the same worker
    reader = connect_to_worker(server, f"/sub?write_limit={16 << 20}", pid_a)
    with closing([reader, slow]):
        before = stats_of_every_worker(server)
        count = 4000  # 4 MB
        os.kill(pid_a, signal.SIGSTOP)
        try:
            publish_many(server, count, "s" + PAD, port=port_b)
        finally:
            os.kill(pid_a, signal.SIGCONT)
        gather([reader], lambda c: len(c.messages) >= count, 30, "the burst at the reader")
        after = stats_of_every_worker(server)
        assert stream_numbers(reader.messages) == list(range(count)), \
            (len(reader.messages), reader.messages[-1:], reader.eof, after[pid_a])
        assert after[pid_a]["slow_consumers"] - before[pid_a]["slow_consumers"] == 1, \
            "the client that does not read was not closed: the whole burst was queued for it"
        got = read_until_closed(slow)
        queued = len(got) * (len(PAD) + 8)
        assert queued < 4 * WRITE_LIMIT, f"{queued} bytes reached a client with a write_limit of {WRITE_LIMIT}"


def test_write_limit_set_first_thing_in_the_handler_sticks(slow_server):
    """`conn.write_limit = n` as a handler's first statement (the connection upgrades
    at its first use): the value must be the one in force afterwards."""
    client = Client(slow_server.port, "/set-write-limit/12345").handshake(expect_ready=False)
    with closing([client]):
        gather([client], lambda c: len(c.messages) >= 1, 10)
        assert client.messages[0] == "write_limit:12345", client.messages[0]


# -- 5. publish errors name the option to set ---------------------------------------------------------


def test_publish_without_sharedarea(model, tmp_path):
    """No --sharedarea (nor mule): a RingError naming --sharedarea; the size check comes
    first, with the default --mule-msg-size of 64 KiB."""
    server = start(tmp_path, model, [], small=True, wait_mule=False)
    try:
        body = publish(server, "hello", expect=503)
        assert body.startswith("RingError") and "--sharedarea" in body, body
        default = 65536
        body = publish(server, bytes(largest_publish(default) + 1), expect=413)  # one byte over the default
        assert body.startswith("PublishError") and "--mule-msg-size" in body and str(default) in body, body
        body = publish(server, bytes(largest_publish(default)), expect=503)  # at the limit: on to the ring
        assert "--sharedarea" in body, body
    finally:
        stop_and_check(server)


def test_broadcast_mule_without_sharedarea_says_so(model, tmp_path):
    """--mule=uwsgi_ws.mule:run but no --sharedarea: the mule cannot work; it must say
    why in the log (naming --sharedarea) instead of dying silently over and over."""
    server = start(tmp_path, model, ["--mule=uwsgi_ws.mule:run"], small=True, wait_mule=False)
    try:
        body = publish(server, "hello", expect=503)
        assert "--sharedarea" in body
        server.wait_for_log(r"(?m)^.*uwsgi_ws.*--sharedarea", timeout=5)
        respawns = server.log().count("spawned uWSGI mule 1 ")
        assert respawns <= 2, f"the broadcast mule was respawned {respawns} times"
    finally:
        stop_and_check(server, tracebacks_ok=True)


def test_publish_without_mule_fails_at_once_naming_the_option(model, tmp_path):
    """A sharedarea but no broadcast mule: PublishError at once naming --mule (no mule option
    at all: nothing can serve, waiting out the timeout would only hide it); a message over
    the ring's quarter (a small ring here) fails at once naming --sharedarea."""
    server = start(tmp_path, model,
                   ["--sharedarea", "64", f"--mule-msg-size={MULE_MSG_SIZE}", "--env", "UWSGI_WS_PUBLISH_TIMEOUT=1"],
                   small=True, wait_mule=False)
    try:
        for port in server.worker_ports:  # a worker's first request takes a second or more under load
            assert http(server, "GET", "/stats", port=port)[0] == 200
        t0 = time.monotonic()
        body = publish(server, "hello", expect=503)
        waited = time.monotonic() - t0
        assert body.startswith("PublishError") and "--mule=uwsgi_ws.mule:run" in body, body
        assert waited < 0.9, (body, waited)  # the publish timeout is 1 s here: it did not wait for it
        # the ring's limit: a quarter of the data region, framed
        status, error = http(server, "POST", "/publish?binary=1", bytes(100_000))
        assert status == 413 and "--sharedarea" in error and "PublishError" in error, error
        ring_limit = int(re.search(r"limit of (\d+) bytes", error).group(1))
        assert "--sharedarea" in publish(server, bytes(ring_limit - 4 + 1), expect=413)  # 4: frame header
        body = publish(server, bytes(ring_limit - 4), expect=503)  # fits: then the missing mule, at once
        assert "no broadcast mule" in body and "--mule=uwsgi_ws.mule:run" in body, body
    finally:
        stop_and_check(server)


def test_publish_outside_uwsgi():
    code = (
        "from uwsgi_ws.mule import publish, PublishError\n"
        "try:\n    publish('hello')\nexcept PublishError as exc:\n    print('PublishError:', exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    message = out.stdout
    assert message.startswith("PublishError:"), message
    for needle in ("uWSGI", "--master", "--sharedarea", "--mule=uwsgi_ws.mule:run"):
        assert needle in message, (needle, message)
