"""Metrics and logs end to end: a real uWSGI (2 workers + the broadcast mule,
conf/broadcast.ini + conf/metrics.ini, a stats server), real clients, and the
numbers read where an operator reads them: the Prometheus view (/metrics) and
uWSGI's stats server.

Counters are instance totals that only grow, so each test works on the
difference between a scrape before and one after what it does; the counts the
test controls (connections, messages, bytes on the wire, close codes) must
match exactly.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import socket
import threading
import urllib.request

import pytest

from uwsgi_ws.metrics import export

from harness import ROOT, UWSGI, serve, wait_for
from metrics_client import http, read_stats, scrape, wait_metrics
from wsraw import TEXT, RawWebSocket, http_request, upgrade_request

CONF = ROOT / "uwsgi_ws" / "conf"
WRITE_LIMIT = 64 * 1024
SUB = "/sub/<channel>"


def client_frame(n: int) -> int:
    """Wire size of a masked client frame with an n-byte payload."""
    return (2 if n < 126 else 4) + 4 + n


def server_frame(n: int) -> int:
    return (2 if n < 126 else 4) + n


def _metrics_server(tmp, model: str, extra=()):
    instance = serve(
        "metrics_app:app", tmp, model=model,
        extra=["--ini", str(CONF / "broadcast.ini"), "--ini", str(CONF / "metrics.ini"),
               "--stats", str(tmp / "stats.sock"), *extra],
        env={"WRITE_LIMIT": str(WRITE_LIMIT)},
    )
    instance.model = model  # type: ignore[attr-defined]
    instance.stats_path = tmp / "stats.sock"  # type: ignore[attr-defined]
    return instance


@pytest.fixture(scope="module", params=["threads", "gevent"])
def mserver(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"metrics-{request.param}")
    instance = _metrics_server(tmp, request.param)
    try:
        instance.wait_for_log(r"uwsgi_ws: broadcast mule 1 serving ring", timeout=20)
        yield instance
    finally:
        instance.stop()
    log = instance.log()
    assert not instance.crashes(), log
    assert "Traceback" not in log, log


def subscribe(server: UWSGI, channel: str, query: str = "") -> tuple:
    """(RawWebSocket, worker pid) of a subscriber that got its `ready:<pid>`."""
    ws = RawWebSocket(server.port, f"/sub/{channel}{query}")
    frame = ws.recv_frame()
    assert frame.payload.startswith(b"ready:"), frame
    return ws, int(frame.payload.split(b":")[1])


def worker_ids(server: UWSGI) -> dict:
    """pid -> uWSGI worker id."""
    return {pid: i + 1 for i, pid in enumerate(server.worker_pids())}


def closes(m, code: str, by: str) -> float:
    return m.value("uwsgi_ws_connections_closed_total", code=code, by=by)


# -- connections ---------------------------------------------------------------------------------


def test_open_connections_per_route_and_worker(mserver):
    server = mserver
    before = scrape(server.http)
    clients, pids = [], []
    # 4 connections, more (up to 12) until both workers hold one: the kernel decides
    # where each lands (under gevent an idle worker may take them all)
    while len(clients) < 4 or (len(set(pids)) < 2 and len(clients) < 12):
        ws, pid = subscribe(server, "open")
        clients.append(ws)
        pids.append(pid)
    ids = worker_ids(server)
    per_worker = collections.Counter(ids[pid] for pid in pids)
    try:
        m = scrape(server.http)
        for worker in (1, 2):
            assert m.value("uwsgi_ws_connections_open", route=SUB, worker=worker) == per_worker[worker], m.series(
                "uwsgi_ws_connections_open")
        assert m.total("uwsgi_ws_connections_open", route="/echo") == 0
        d = m - before
        assert d.value("uwsgi_ws_upgrades_accepted_total", route=SUB) == len(clients)
        assert d.total("uwsgi_ws_upgrades_rejected_total") == 0
        # two leave with a close frame: the gauge of their worker goes down, the close is counted
        for ws in clients[:2]:
            ws.send_close(1001)
            ws.expect_close(answer=False)
            ws.wait_eof()
        gone = collections.Counter(ids[pid] for pid in pids[:2])
        m = wait_metrics(server.http, lambda m: m.total("uwsgi_ws_connections_open", route=SUB) == len(clients) - 2,
                         what="two connections closed")
        for worker in (1, 2):
            assert m.value("uwsgi_ws_connections_open", route=SUB, worker=worker) == per_worker[worker] - gone[worker]
        assert closes(m - before, "1001", "client") == 2
    finally:
        for ws in clients[2:]:
            ws.close()  # no close frame: the transport is just gone (1006, nobody closed)
    m = wait_metrics(server.http, lambda m: m.total("uwsgi_ws_connections_open") == 0, what="every connection closed")
    d = m - before
    assert closes(d, "1006", "none") == len(clients) - 2
    assert d.total("uwsgi_ws_connections_closed_total") == len(clients)
    assert d.value("uwsgi_ws_upgrades_accepted_total", route=SUB) == len(clients)  # counters never go back


def test_messages_and_bytes_are_exact(mserver):
    server = mserver
    sizes = [0, 1, 125, 126, 1000, 20000]
    before = scrape(server.http)
    with RawWebSocket(server.port, "/echo") as ws:
        for n in sizes:
            ws.send_frame(TEXT, b"x" * n)
            assert ws.recv_frame().payload == b"x" * n
        # the server counts a message once its send returned: the client may see it a moment before
        m = wait_metrics(server.http, lambda m: (m - before).value("uwsgi_ws_messages_sent_total") >= len(sizes),
                         what="the echoes counted")
        d = m - before
        assert d.value("uwsgi_ws_messages_received_total") == len(sizes)
        assert d.value("uwsgi_ws_messages_sent_total") == len(sizes)
        assert d.value("uwsgi_ws_received_bytes_total") == sum(client_frame(n) for n in sizes)
        assert d.value("uwsgi_ws_sent_bytes_total") == sum(server_frame(n) for n in sizes)
        assert m.total("uwsgi_ws_connections_open", route="/echo") == 1
        ws.send_close(1000)
        assert ws.expect_close(answer=False).close_code == 1000
        ws.wait_eof()
    m = wait_metrics(server.http, lambda m: m.total("uwsgi_ws_connections_open", route="/echo") == 0,
                     what="the echo connection closed")
    d = m - before
    # the close frames: the client's (code 1000, masked) and the server's echo of it
    assert d.value("uwsgi_ws_received_bytes_total") == sum(client_frame(n) for n in sizes) + client_frame(2)
    assert d.value("uwsgi_ws_sent_bytes_total") == sum(server_frame(n) for n in sizes) + server_frame(2)
    assert closes(d, "1000", "client") == 1
    assert d.value("uwsgi_ws_messages_received_total") == len(sizes)


def test_close_codes_and_who_closed_are_counted_and_logged(mserver):
    server = mserver
    before = scrape(server.http)
    log_before = server.log()
    with RawWebSocket(server.port, "/close-server?code=4001") as ws:
        ws.send_frame(TEXT, b"one")
        assert ws.recv_frame().payload == b"one"
        frame = ws.expect_close()  # answered with the same code
        assert frame.close_code == 4001
        ws.wait_eof()
    with RawWebSocket(server.port, "/echo") as ws:
        for text in (b"a", b"b"):
            ws.send_frame(TEXT, text)
            ws.recv_frame()
        ws.send_close(1000)
        ws.expect_close(answer=False)
        ws.wait_eof()
    m = wait_metrics(server.http, lambda m: (m - before).total("uwsgi_ws_connections_closed_total") == 2,
                     what="two closes")
    d = m - before
    assert closes(d, "4xxx", "server") == 1 and closes(d, "1000", "client") == 1
    # one line per close, through the `uwsgi_ws` logger (the app formats it)
    server.wait_for_log(r"websocket closed route=/echo ", count=log_before.count("websocket closed route=/echo ") + 1)
    new = server.log()[len(log_before):]
    line = re.search(r"LOG uwsgi_ws.metrics INFO pid=\d+ websocket closed route=/close-server (.*)", new).group(1)
    assert re.fullmatch(r"duration=\d+\.\d{3}s messages_in=1 messages_out=1 code=4001 by=server", line), line
    line = re.search(r"LOG uwsgi_ws.metrics INFO pid=\d+ websocket closed route=/echo (.*)", new).group(1)
    assert re.fullmatch(r"duration=\d+\.\d{3}s messages_in=2 messages_out=2 code=1000 by=client", line), line


def test_rejected_upgrades_are_counted_by_reason_and_logged(mserver):
    server = mserver
    before = scrape(server.http)
    log_before = server.log()
    status, headers, _ = http_request(server.port, upgrade_request("/echo", server.port, version="8"))
    assert status == 426
    status, _, _ = http_request(server.port, upgrade_request("/echo", server.port, key="short"))
    assert status == 400
    status, _, _ = http_request(server.port, upgrade_request(
        "/sub/x", server.port, extra="Origin: http://evil.example\r\n"))
    assert status == 403
    m = scrape(server.http)
    d = m - before
    assert d.value("uwsgi_ws_upgrades_rejected_total", reason="version") == 1
    assert d.value("uwsgi_ws_upgrades_rejected_total", reason="key") == 1
    assert d.value("uwsgi_ws_upgrades_rejected_total", reason="origin") == 1
    assert d.total("uwsgi_ws_upgrades_rejected_total") == 3
    assert d.total("uwsgi_ws_upgrades_accepted_total") == 0
    server.wait_for_log("websocket upgrade rejected", count=log_before.count("websocket upgrade rejected") + 3)
    new = server.log()[len(log_before):]
    assert re.search(r"LOG uwsgi_ws.metrics INFO pid=\d+ websocket upgrade rejected route=/echo status=426 reason=version: "
                     r"unsupported Sec-WebSocket-Version '8'", new), new
    assert re.search(r"websocket upgrade rejected route=/echo status=400 reason=key: invalid", new), new
    assert re.search(r"websocket upgrade rejected route=/sub/<channel> status=403 reason=origin: "
                     r"Origin 'http://evil.example'", new), new


# -- broadcast -------------------------------------------------------------------------------------


def test_broadcast_published_delivered_and_ring_lag(mserver):
    server = mserver
    before = scrape(server.http)
    subs, readies = [], []
    for channel in ("news", "news", "news", "sport"):
        ws, pid = subscribe(server, channel)
        subs.append(ws)
        readies.append(len(b"ready:%d" % pid))
    count = 50
    try:
        status, body = http(server.http, "POST", f"/publish/news?count={count}", b"n")
        assert status == 204, body
        for ws in subs[:3]:
            got = [ws.recv_frame().payload for _ in range(count)]
            assert got == [b"n%d" % i for i in range(count)]
        # a message is counted once its write returned: the client may see it a moment before
        sent = 3 * count + len(readies)
        m = wait_metrics(server.http, lambda m: (m - before).value("uwsgi_ws_messages_sent_total") >= sent,
                         what="the deliveries counted")
        d = m - before
        assert d.value("uwsgi_ws_broadcasts_published_total") == count
        assert d.value("uwsgi_ws_broadcasts_delivered_total") == 3 * count  # not to the `sport` subscriber
        assert d.value("uwsgi_ws_messages_sent_total") == sent  # the deliveries and the `ready`s
        assert d.value("uwsgi_ws_sent_bytes_total") == (
            3 * sum(server_frame(len(b"n%d" % i)) for i in range(count)) + sum(server_frame(n) for n in readies))
        assert d.total("uwsgi_ws_broadcasts_dropped_total") == 0
        assert d.value("uwsgi_ws_slow_consumer_closes_total") == 0
        assert d.value("uwsgi_ws_publish_failures_total") == 0
        # ring lag: every delivery pass recorded how far behind the ring it started
        passes = d.value("uwsgi_ws_ring_lag_messages_count")
        assert passes >= 1
        assert d.value("uwsgi_ws_ring_lag_messages_bucket", le="+Inf") == passes
        # each worker holding a subscriber delivers all `count` messages, in one pass or more
        assert d.value("uwsgi_ws_ring_lag_messages_sum") >= count
        buckets = [v for pairs, v in sorted(m.series("uwsgi_ws_ring_lag_messages_bucket").items(),
                                            key=lambda kv: float(dict(kv[0])["le"]))]
        assert buckets == sorted(buckets), "cumulative buckets"
        lag_max, p99 = m.value("uwsgi_ws_ring_lag_max_messages"), m.value("uwsgi_ws_ring_lag_p99_messages")
        assert lag_max >= 1 and 0 < p99 <= lag_max
    finally:
        for ws in subs:
            ws.close()


def mule_pid(server: UWSGI) -> int:
    found = re.findall(r"spawned uWSGI mule 1 \(pid: (\d+)\)", server.log())
    assert found, server.log()
    return int(found[-1])


@pytest.fixture(params=["threads", "gevent"])
def mule_only_mserver(request, tmp_path):
    """A metrics instance whose every publish goes through the mule (publish-direct off)."""
    instance = _metrics_server(tmp_path, request.param, ["--set-placeholder", "uwsgi-ws-publish-direct=false"])
    try:
        instance.wait_for_log(r"uwsgi_ws: broadcast mule 1 serving ring", timeout=20)
        yield instance
    finally:
        instance.stop()
    assert not instance.crashes(), instance.log()


def test_publish_retries_while_the_mule_queue_is_full_are_counted(mule_only_mserver):
    """Publishing through the mule (``uwsgi-ws-publish-direct`` off), stop it: its queue
    fills, publish() retries (counted), and once the mule runs again every message gets
    through."""
    server = mule_only_mserver
    count, payload = 200, b"q" * 8000  # 1.6 MB: more than the mule's queue socket holds
    before = scrape(server.http)
    mule = mule_pid(server)
    result = {}
    publisher = threading.Thread(target=lambda: result.update(
        r=http(server.http, "POST", f"/publish/queue?count={count}", payload, timeout=60)))
    os.kill(mule, signal.SIGSTOP)
    try:
        publisher.start()
        wait_metrics(server.http, lambda m: (m - before).value("uwsgi_ws_publish_queue_full_total") > 0,
                     timeout=8, what="a publish refused by the full mule queue")
    finally:
        os.kill(mule, signal.SIGCONT)
    publisher.join(60)
    assert result["r"][0] == 204, result
    d = wait_metrics(server.http, lambda m: (m - before).value("uwsgi_ws_broadcasts_published_total") >= count,
                     what="every message appended by the mule") - before
    assert d.value("uwsgi_ws_broadcasts_published_total") == count
    assert d.value("uwsgi_ws_publish_failures_total") == 0
    assert d.value("uwsgi_ws_publish_queue_full_total") >= 1


class SmallBufferWebSocket(RawWebSocket):
    """A RawWebSocket whose socket gets a 4 KiB receive buffer before it connects
    (so the kernel cannot absorb much of what the server sends)."""

    def __init__(self, port: int, path: str) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", port))
        self.timeout, self._buf = 10.0, b""
        self.sock.sendall(upgrade_request(path, port))
        head = self._read_until(b"\r\n\r\n")
        assert b" 101 " in head.split(b"\r\n", 1)[0], head


def test_a_slow_consumer_is_counted(mserver):
    """A subscriber that never reads, behind small socket buffers, is closed with
    1013 once its outbound buffer would pass the write_limit (64 KiB here)."""
    server = mserver
    slow = SmallBufferWebSocket(server.port, "/sub/flood?sndbuf=16384")
    assert slow.recv_frame().payload.startswith(b"ready:")
    payload = b"f" * 1000
    try:
        before = scrape(server.http)
        published = 0
        while not (scrape(server.http) - before).value("uwsgi_ws_slow_consumer_closes_total"):
            assert published < 4000, "4 MB sent to a client that does not read, and it was never closed"
            assert http(server.http, "POST", "/publish/flood?count=100", payload)[0] == 204
            published += 100
        m = wait_metrics(server.http, lambda m: (m - before).value("uwsgi_ws_broadcasts_published_total") == published,
                         what="every message appended")
        d = m - before
        assert d.value("uwsgi_ws_slow_consumer_closes_total") == 1
        assert d.value("uwsgi_ws_broadcasts_dropped_total", reason="slow_consumer") >= 1
        assert d.value("uwsgi_ws_broadcasts_delivered_total") < published
        frame = slow.expect_close(timeout=20, answer=False)  # after what was queued before it
        assert frame.close_code == 1013
        m = wait_metrics(server.http, lambda m: closes(m - before, "1013", "server") == 1, what="the 1013 close")
        assert (m - before).value("uwsgi_ws_slow_consumer_closes_total") == 1
    finally:
        slow.close()


# -- the stats server ------------------------------------------------------------------------------


def test_the_stats_server_shows_the_same_totals(mserver):
    server = mserver
    with RawWebSocket(server.port, "/echo") as ws:  # some of everything, one connection still open
        ws.send_frame(TEXT, b"hello")
        ws.recv_frame()
        assert http(server.http, "POST", "/publish/nobody?count=3", b"z")[0] == 204

        def same():
            prom = scrape(server.http)
            stats = read_stats(server.stats_path)["metrics"]
            want = {
                "uwsgi_ws_connections_open": prom.total("uwsgi_ws_connections_open"),
                "uwsgi_ws_upgrades_accepted_total": prom.total("uwsgi_ws_upgrades_accepted_total"),
                "uwsgi_ws_upgrades_rejected_total": prom.total("uwsgi_ws_upgrades_rejected_total"),
                "uwsgi_ws_connections_closed_total": prom.total("uwsgi_ws_connections_closed_total"),
                "uwsgi_ws_broadcasts_dropped_total": prom.total("uwsgi_ws_broadcasts_dropped_total"),
            }
            for name in export.UWSGI_METRICS:
                want.setdefault(name, prom.value(name))
            got = {name: stats.get(name, {}).get("value") for name in want}
            return (want, got) if got == want and want["uwsgi_ws_connections_open"] == 1 else None

        want, got = wait_for(same, 10, "the stats server's uwsgi_ws metrics to match /metrics")
        assert want["uwsgi_ws_messages_received_total"] >= 1 and want["uwsgi_ws_broadcasts_published_total"] >= 3


# -- a worker that dies ----------------------------------------------------------------------------


def test_a_dead_workers_connections_leave_the_gauge(tmp_path):
    """kill -9 a worker holding connections: the gauge forgets them at once (its
    pid is no longer the worker's), the respawned worker starts at 0, totals stay."""
    server = serve("metrics_app:app", tmp_path, model="threads", extra=["--ini", str(CONF / "broadcast.ini")])
    try:
        server.wait_for_log(r"uwsgi_ws: broadcast mule 1 serving ring", timeout=20)
        clients = [subscribe(server, "k") for _ in range(6)]
        ids = worker_ids(server)
        victim = clients[0][1]
        held = sum(1 for _, pid in clients if pid == victim)
        m = scrape(server.http)
        assert m.value("uwsgi_ws_connections_open", route=SUB, worker=ids[victim]) == held
        accepted = m.value("uwsgi_ws_upgrades_accepted_total", route=SUB)
        os.kill(victim, signal.SIGKILL)
        respawned = wait_for(lambda: re.findall(rf"Respawned uWSGI worker {ids[victim]} \(new pid: (\d+)\)",
                                                server.log()), 20, "the worker respawned")
        new_pid = int(respawned[-1])
        m = wait_metrics(server.http, lambda m: m.value("uwsgi_ws_connections_open", route=SUB,
                                                        worker=ids[victim]) == 0, what="the dead worker's gauge at 0")
        assert m.total("uwsgi_ws_connections_open", route=SUB) == len(clients) - held
        assert m.value("uwsgi_ws_upgrades_accepted_total", route=SUB) == accepted
        # the respawned worker counts its own connections from 0
        more = []
        while not any(pid == new_pid for _, pid in more):
            assert len(more) < 40, "no connection reached the respawned worker"
            more.append(subscribe(server, "k"))
        fresh = sum(1 for _, pid in more if pid == new_pid)
        m = scrape(server.http)
        assert m.value("uwsgi_ws_connections_open", route=SUB, worker=ids[victim]) == fresh
        for ws, _ in clients + more:
            ws.close()
    finally:
        server.stop()


# -- lazy-apps: the table in a sharedarea ----------------------------------------------------------

# uWSGI 2.0.31 crashes (SIGSEGV at start) every module:callable mule under lazy-apps, the
# broadcast mule included: these instances have workers only.
LAZY = ["--lazy-apps"]


def test_lazy_apps_count_in_the_named_sharedarea(tmp_path):
    """With lazy-apps each worker imports the app after the fork: the table must be a
    sharedarea (UWSGI_WS_METRICS_SHAREDAREA) for the totals to cover every process."""
    server = serve("metrics_app:app", tmp_path, model="threads",
                   extra=[*LAZY, "--sharedarea", "64", "--env", "UWSGI_WS_METRICS_SHAREDAREA=0"])
    clients = []
    try:
        pids = []
        while len(clients) < 2 or (len(set(pids)) < 2 and len(clients) < 12):
            ws = RawWebSocket(server.port, "/hello")
            clients.append(ws)
            pids.append(int(ws.recv_frame().payload.split(b":")[1]))
        ids = worker_ids(server)
        text = urllib.request.urlopen(server.http + "/metrics", timeout=10).read().decode()
        assert "this process's only" not in text
        for ws in clients:
            for _ in range(3):
                ws.send_frame(TEXT, b"lazy")
                assert ws.recv_frame().payload == b"lazy"
        m = wait_metrics(server.http, lambda m: m.value("uwsgi_ws_messages_sent_total") == 4 * len(clients),
                         what="every worker's messages")
        assert m.value("uwsgi_ws_messages_received_total") == 3 * len(clients)
        for worker, n in collections.Counter(ids[pid] for pid in pids).items():
            assert m.value("uwsgi_ws_connections_open", route="/hello", worker=worker) == n
        assert m.value("uwsgi_ws_upgrades_accepted_total", route="/hello") == len(clients)
    finally:
        for ws in clients:
            ws.close()
        server.stop()
    assert not server.crashes(), server.log()


def test_lazy_apps_without_a_sharedarea_say_the_numbers_are_per_process(tmp_path):
    server = serve("metrics_app:app", tmp_path, model="threads", extra=LAZY)
    try:
        text = urllib.request.urlopen(server.http + "/metrics", timeout=10).read().decode()
        assert "# uwsgi_ws: these metrics are this process's only" in text
        server.wait_for_log(r"metrics are counted per process.*uwsgi-ws-metrics-sharedarea")
    finally:
        server.stop()


def test_a_sharedarea_too_small_for_the_table_stops_the_app_with_the_size_to_use(tmp_path):
    server = serve("metrics_app:app", tmp_path, model="threads", ready="none",
                   extra=[*LAZY, "--sharedarea", "1", "--env", "UWSGI_WS_METRICS_SHAREDAREA=0"])
    try:
        server.wait_for_log(r"MetricsError: sharedarea 0 has 4096 bytes: the metrics table of 2 worker\(s\) "
                            r"and one mule needs \d+ pages of 4 KiB")
    finally:
        server.stop()
