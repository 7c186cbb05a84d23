"""Scale-out through Redis (`uwsgi_ws.redis_bridge`) on real processes.

A real redis-server (Debian's package; `make test` installs it) started here
on a free port with no persistence, and uWSGI instances of 2 workers each
(threads and gevent) bridged to it with ``--env UWSGI_WS_REDIS_URL=...``, as
the README tells users to. The app is tests/apps/redis_bridge_app.py; clients
are raw WebSocket sockets read by one selector loop; every process is stopped
by pid.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

import wsraw
from harness import APPS, ROOT, UWSGI, free_port, stop_and_check, wait_for
from wsraw import CLOSE, TEXT, closing

APP = "redis_bridge_app:app"
MODEL_ARGS = {
    "threads": ["--processes", "2", "--threads", "24"],
    "gevent": ["--processes", "2", "--gevent", "100"],
}


# -- redis-server --------------------------------------------------------------------------------


class RedisServer:
    """A redis-server of our own on 127.0.0.1:`port`, no persistence; `kill` and `start`
    again on the same port simulate an outage (it comes back empty)."""

    def __init__(self, tmp: Path, port: int | None = None) -> None:
        binary = shutil.which("redis-server") or ("/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None)
        if binary is None:
            pytest.fail("redis-server is not installed: `make test` installs it "
                        "(apt-get install --no-install-recommends redis-server)")
        self.binary, self.tmp = binary, tmp
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.starts += 1
        log = open(self.tmp / f"redis-{self.port}-{self.starts}.log", "wb")
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.tmp), "--daemonize", "no"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        wait_for(self._answers, 10, f"redis-server on port {self.port}")

    def _answers(self) -> bool:
        assert self.proc.poll() is None, f"redis-server exited: {self.log()}"
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def log(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.tmp.glob(f"redis-{self.port}-*.log")))

    def kill(self) -> None:
        """SIGKILL by pid: Redis vanishes with its data, as in a crash."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


# -- uWSGI instances -----------------------------------------------------------------------------


def start_instance(tmp: Path, model: str, redis_url: str | None, stream: str, extra=(), env=None,
                   sharedarea: str = "4096", wait_bridge: bool = True) -> UWSGI:
    """An instance of the test app bridged to `redis_url` (None: not bridged)."""
    args = ["--master", "--http-socket", "127.0.0.1:{port}", "--module", APP, "--die-on-term", "--need-app",
            "--disable-logging", *MODEL_ARGS[model], "--sharedarea", sharedarea, "--mule=uwsgi_ws.mule:run"]
    if redis_url is not None:
        args += ["--env", f"UWSGI_WS_REDIS_URL={redis_url}", "--env", f"UWSGI_WS_REDIS_STREAM={stream}",
                 "--env", "UWSGI_WS_REDIS_RETRY_MAX=0.5"]
    server = UWSGI([*args, *extra], tmp, env=env)
    server.model = model  # type: ignore[attr-defined]
    server.wait_for_log(r"uwsgi_ws: broadcast mule 1 serving ring", timeout=20)
    if redis_url is not None and wait_bridge:
        server.wait_for_log(r"redis bridge: connected for reading", timeout=20)
        server.wait_for_log(r"redis bridge: connected for pushing", timeout=20)
    return server


def http(server: UWSGI, method: str, path: str, timeout: float = 60.0):
    req = urllib.request.Request(server.http + path, data=b"" if method == "POST" else None, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def bridge_stats(server: UWSGI) -> dict:
    status, body = http(server, "GET", "/bridge")
    assert status == 200, body
    return json.loads(body)


def publish_many(server: UWSGI, count: int, prefix: str, channel: str | None = None, interval: float = 0.0) -> dict:
    query = f"prefix={prefix}" + (f"&channel={channel}" if channel else "") + (f"&interval={interval}" if interval else "")
    status, body = http(server, "POST", f"/publish-many/{count}?{query}")
    assert status == 200, body
    return json.loads(body)


def in_background(*calls) -> list:
    """Run each (function, args...) in a thread; returns the threads (started)."""
    threads = []
    for fn, *args in calls:
        t = threading.Thread(target=fn, args=args, daemon=True)
        t.start()
        threads.append(t)
    return threads


# -- WebSocket clients -------------------------------------------------------------------------------


def Client(server: UWSGI, path: str) -> wsraw.Client:
    """One receive-only WebSocket on `server` (text messages only), after its `ready:<pid>`."""
    client = wsraw.Client(server.port, path, opcodes=(TEXT, CLOSE))
    client.server = server  # type: ignore[attr-defined]
    return client.handshake()


def count_of(client: wsraw.Client, prefix: str) -> int:
    """How many messages of stream `prefix` ("p17": stream "p") `client` has."""
    return sum(1 for m in client.messages if isinstance(m, str) and PARSE.fullmatch(m)
               and PARSE.fullmatch(m)[1] == prefix)


PARSE = re.compile(r"([a-z]+)(\d+)")


def connect_both_workers(server: UWSGI, path: str, at_least: int = 2, limit: int = 60) -> list:
    """Open connections until both workers of `server` hold some (and at least `at_least`)."""
    clients: list = []
    while len({c.pid for c in clients}) < 2 or len(clients) < at_least:
        assert len(clients) < limit, f"{limit} connections all landed on worker {clients[0].pid}"
        clients.append(Client(server, path))
    return clients


def gather(clients, done, timeout: float = 30.0, what: str = "messages") -> None:
    """Read every client in one loop until `done(client)` holds for each (wsraw.gather)."""
    wsraw.gather(clients, done, timeout, what)


def streams(messages) -> dict:
    """{prefix: [numbers in arrival order]} of messages like "a17"."""
    out: dict = {}
    for m in messages:
        match = PARSE.fullmatch(m) if isinstance(m, str) else None
        assert match, f"unexpected message {m!r}"
        out.setdefault(match[1], []).append(int(match[2]))
    return out


def assert_exact(client: Client, expected: dict) -> None:
    """Every stream of `expected` ({prefix: count}) complete, once each, in publish order; nothing else."""
    got = streams(client.messages)
    assert set(got) == set(expected), (client.server.port, client.path, sorted(got), sorted(expected))
    for prefix, count in expected.items():
        numbers = got[prefix]
        if numbers != list(range(count)):
            missing = sorted(set(range(count)) - set(numbers))
            dups = len(numbers) - len(set(numbers))
            disorder = sum(1 for a, b in zip(numbers, numbers[1:]) if b < a)
            raise AssertionError(f"{client.server.port}{client.path} stream {prefix!r}: {len(missing)} missing "
                                 f"(first {missing[:10]}), {dups} duplicates, {disorder} out of order")


# -- the cluster: one Redis, three instances -----------------------------------------------------------


class Cluster:
    def __init__(self, redis: RedisServer, instances: list) -> None:
        self.redis, self.instances = redis, instances


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("redis-bridge")
    redis = RedisServer(tmp)
    stream = f"test:{uuid.uuid4().hex[:8]}"
    instances: list = []
    try:
        for model in ("threads", "gevent", "threads"):
            instances.append(start_instance(tmp, model, redis.url, stream))
        yield Cluster(redis, instances)
    finally:
        for server in instances:
            server.stop()
        redis.stop()
    for server in instances:
        log = server.log()
        assert not server.crashes(), log
        assert "Traceback" not in log, log


# -- 1. publishes on each instance reach the clients of every instance ---------------------------------


def test_publishes_on_every_instance_reach_every_instance(cluster):
    a, b, c = cluster.instances
    before = {s.port: bridge_stats(s) for s in cluster.instances}
    on_x = {s.port: connect_both_workers(s, "/sub/x") for s in cluster.instances}
    on_y = {s.port: [Client(s, "/sub/y")] for s in cluster.instances}
    everyone = [cl for group in (*on_x.values(), *on_y.values()) for cl in group]
    with closing(everyone):
        count = 300
        threads = in_background(
            (publish_many, a, count, "a", "x", 0.002),  # threads instance, channel x
            (publish_many, b, count, "b", "x", 0.002),  # gevent instance, channel x
            (publish_many, c, count, "c", "y", 0.002),  # channel y
            (publish_many, c, 50, "g", None, 0.004),  # every connection of every instance
        )
        for t in threads:
            t.join(60)
        x_total, y_total = 2 * count + 50, count + 50
        gather(everyone, lambda cl: len(cl.messages) >= (x_total if cl.path == "/sub/x" else y_total), 30)
        for port, group in on_x.items():
            for cl in group:
                assert_exact(cl, {"a": count, "b": count, "g": 50})
            # one ordered stream per instance: its clients all see the same interleaving
            assert all(cl.messages == group[0].messages for cl in group), f"instance {port}: interleavings differ"
        for group in on_y.values():
            assert_exact(group[0], {"c": count, "g": 50})
    for server in cluster.instances:
        stats, old = bridge_stats(server), before[server.port]
        assert stats["out_state"] == stats["in_state"] == "connected", stats
        assert stats["missed"] == stats["not_bridged"] == stats["dropped"] == 0, stats
        published_here = {a.port: count, b.port: count, c.port: count + 50}[server.port]
        assert stats["out"] - old["out"] == published_here, stats
        assert stats["inbound"] - old["inbound"] == 3 * count + 50 - published_here, stats
        assert not stats["redis_imported"], "a worker imported redis: only the mule may"


# -- 2. Redis killed mid-stream, restarted on the same port ---------------------------------------------


def test_redis_outage_mid_stream(cluster):
    a, b, c = cluster.instances
    logs_before = {s.port: len(s.log()) for s in cluster.instances}
    before = {s.port: bridge_stats(s) for s in cluster.instances}
    groups = {s.port: connect_both_workers(s, "/sub/x") for s in cluster.instances}
    everyone = [cl for g in groups.values() for cl in g]
    with closing(everyone):
        count, interval = 1500, 0.003
        publishers = in_background((publish_many, a, count, "p", "x", interval),
                                   (publish_many, b, count, "q", "x", interval))
        # mid-stream: the third instance has received some of both streams through Redis
        gather(groups[c.port], lambda cl: count_of(cl, "p") >= 150 and count_of(cl, "q") >= 150, 20, "the streams at C")
        cluster.redis.kill()
        for server in (a, b):
            wait_for(lambda: bridge_stats(server)["out_state"] == "unreachable", 10, f"{server.port} to see Redis down")
        wait_for(lambda: bridge_stats(c)["in_state"] == "unreachable", 10, "C to see Redis down")
        inbound_at_kill = bridge_stats(c)["inbound"]
        for cl in groups[a.port] + groups[b.port]:
            cl.pump()
        local_p = min(count_of(cl, "p") for cl in groups[a.port])
        local_q = min(count_of(cl, "q") for cl in groups[b.port])
        # Redis stays down while each instance serves ~2 s of its own publishes
        gather(groups[a.port], lambda cl: count_of(cl, "p") >= local_p + 700, 20, "A's own stream while Redis is down")
        gather(groups[b.port], lambda cl: count_of(cl, "q") >= local_q + 700, 20, "B's own stream while Redis is down")
        assert bridge_stats(c)["inbound"] == inbound_at_kill, "C received through a dead Redis?"
        cluster.redis.start()
        for t in publishers:
            t.join(60)
        gather(everyone, lambda cl: len(cl.messages) >= 2 * count, 30, "both streams everywhere")
        for port, group in groups.items():
            for cl in group:
                assert_exact(cl, {"p": count, "q": count})
            assert all(cl.messages == group[0].messages for cl in group), f"instance {port}: interleavings differ"
    for server in (a, b):
        stats = bridge_stats(server)
        log = server.log()[logs_before[server.port]:]
        assert "redis bridge: cannot push to Redis" in log, log
        pushed_late = [int(n) for n in re.findall(r"pushing again after [\d.]+s: (\d+) local message", log)]
        assert pushed_late and sum(pushed_late) >= 700, log
        assert stats["late"] - before[server.port]["late"] == sum(pushed_late), (stats, log)
        # Redis came back empty: each publisher pushed its last seconds again, readers dropped the copies
        assert stats["replayed"] > 0 and "pushed again, Redis restarted" in log, (stats, log)
        assert stats["not_bridged"] == 0 and stats["missed"] == 0, stats
    stats_c = bridge_stats(c)
    assert stats_c["duplicates"] > 0 and stats_c["missed"] == 0, stats_c
    for server in cluster.instances:
        lines = re.findall(r"redis bridge: (.*)", server.log()[logs_before[server.port]:])
        print(f"\n[{server.model} :{server.port}] " + "\n    ".join(line[:160] for line in lines))
    assert "redis bridge: reading again after" in c.log()[logs_before[c.port]:]


# -- 3. an outage longer than the ring: what could not be bridged is counted and logged -------------------


def test_outage_longer_than_the_ring_is_counted(tmp_path):
    redis = RedisServer(tmp_path)
    stream = f"test:{uuid.uuid4().hex[:8]}"
    servers = []
    try:
        # D: --sharedarea 16, the smallest ring (256 index entries); E: the usual one
        servers.append(start_instance(tmp_path, "threads", redis.url, stream, sharedarea="16"))
        servers.append(start_instance(tmp_path, "gevent", redis.url, stream))
        d, e = servers
        local, remote = Client(d, "/sub/x"), Client(e, "/sub/x")
        with closing([local, remote]):
            publish_many(d, 10, "w", "x")
            gather([local, remote], lambda cl: count_of(cl, "w") == 10, 10, "the warm-up on both")
            redis.kill()
            wait_for(lambda: bridge_stats(d)["out_state"] == "unreachable", 10, "D to see Redis down")
            count = 1000  # paced: a worker more than a ring behind would close its clients (1013)
            publish_many(d, count, "o", "x", interval=0.002)
            gather([local], lambda cl: count_of(cl, "o") == count, 10, "D's own messages while Redis is down")
            redis.start()
            gather([remote], lambda cl: "o%d" % (count - 1) in cl.messages, 20, "the last message at E")
            wait_for(lambda: "not bridged" in d.log(), 5, "the not-bridged log line")
            stats = bridge_stats(d)
            got = streams(remote.messages)
            assert got["w"] == list(range(10))
            suffix = got["o"]
            first = suffix[0]
            assert suffix == list(range(first, count)), "E gets an unbroken tail of the outage"
            assert first > 0, "the ring held the whole outage: make the test publish more"
            assert stats["not_bridged"] == first, (stats, first)
            assert stats["late"] == count - first, stats
            assert re.search(rf"{first} local message\(s\) were overwritten in the ring before Redis took them",
                             d.log()), d.log()
            assert_exact(local, {"w": 10, "o": count})
    finally:
        for server in servers:
            stop_and_check(server)
        redis.stop()


def test_reader_frozen_past_maxlen_counts_what_it_missed(tmp_path):
    """MAXLEN bounds the catch-up: an instance whose mule is frozen (SIGSTOP) while
    another publishes far more than the stream keeps gets, once thawed, an
    unbroken tail of the stream; what was trimmed before it could read it is
    counted `missed` and logged, never silently lost."""
    redis = RedisServer(tmp_path)
    stream = f"test:{uuid.uuid4().hex[:8]}"
    maxlen = ["--env", "UWSGI_WS_REDIS_MAXLEN=50"]
    servers = []
    try:
        servers.append(start_instance(tmp_path, "gevent", redis.url, stream, extra=maxlen))
        servers.append(start_instance(tmp_path, "threads", redis.url, stream, extra=maxlen))
        f, g = servers
        receiver, local = Client(f, "/sub/x"), Client(g, "/sub/x")
        with closing([receiver, local]):
            publish_many(g, 5, "w", "x")
            gather([receiver, local], lambda cl: count_of(cl, "w") == 5, 10, "the warm-up on both")
            mule = int(re.findall(r"spawned uWSGI mule 1 \(pid: (\d+)", f.log())[-1])
            os.kill(mule, signal.SIGSTOP)
            try:
                count = 1000
                publish_many(g, count, "o", "x")
                gather([local], lambda cl: count_of(cl, "o") == count, 10, "G's own clients")
                wait_for(lambda: (lambda st: st["pushed_seq"] == st["write_seq"])(bridge_stats(g)), 10,
                         "G to push everything")
            finally:
                os.kill(mule, signal.SIGCONT)
            gather([receiver], lambda cl: "o%d" % (count - 1) in cl.messages, 20, "the end of the stream at F")
            got = streams(receiver.messages)
            assert got["w"] == list(range(5))
            numbers = got["o"]
            gaps = [(x, y) for x, y in zip([-1] + numbers, numbers) if y != x + 1]
            assert len(gaps) == 1, f"one gap expected (what MAXLEN trimmed), found {gaps}"
            missing = count - len(numbers)
            assert 0 < missing < count - 50, (missing, "the stream keeps at least MAXLEN entries")
            stats = bridge_stats(f)
            assert stats["missed"] == missing and stats["duplicates"] == 0, stats
            assert re.search(rf"missed {missing} message\(s\) of instance {bridge_stats(g)['instance']}",
                             f.log()), f.log()
            assert_exact(local, {"w": 5, "o": count})
            print(f"\n[MAXLEN 50] the thawed reader got {len(numbers)} of {count}, gap {gaps[0]}; missed {missing}")
    finally:
        for server in servers:
            stop_and_check(server)
        redis.stop()


def test_instance_started_while_redis_is_down_reads_from_its_start(tmp_path):
    """An instance that reaches Redis only after another one published (here its
    mule is held with SIGSTOP until then) still gets what was published since it
    started: it starts reading at its start time, not at the end of the stream."""
    redis = RedisServer(tmp_path)
    stream = f"test:{uuid.uuid4().hex[:8]}"
    redis.kill()
    servers = []
    try:
        servers.append(start_instance(tmp_path, "threads", redis.url, stream, wait_bridge=False))
        late = servers[0]
        late.wait_for_log(r"redis bridge: cannot read from Redis", timeout=10)
        mule = int(re.findall(r"spawned uWSGI mule 1 \(pid: (\d+)", late.log())[-1])
        with closing([Client(late, "/sub/x")]) as (client,):
            os.kill(mule, signal.SIGSTOP)
            try:
                redis.start()
                servers.append(start_instance(tmp_path, "gevent", redis.url, stream))
                publish_many(servers[1], 20, "e", "x")
                assert bridge_stats(late)["in_state"] == "unreachable", "it must not have read anything yet"
            finally:
                os.kill(mule, signal.SIGCONT)
            gather([client], lambda cl: count_of(cl, "e") == 20, 15, "what was published before it reached Redis")
            assert_exact(client, {"e": 20})
        assert "redis bridge: reading again after" in late.log()
    finally:
        for server in servers:
            stop_and_check(server)
        redis.stop()


# -- 4. without configuration nothing imports redis; misconfiguration is said, local broadcast goes on ----


TRIPWIRE = '''import os, sys
sys.stderr.write("TRIPWIRE: redis imported in pid %d\\n" % os.getpid())
raise ImportError("tripwire: this test forbids importing redis")
'''


@pytest.mark.parametrize("case", ["not configured", "configured without the redis package", "malformed URL"])
def test_configuration(case, tmp_path):
    tripwire = tmp_path / "tripwire"
    (tripwire / "redis").mkdir(parents=True)
    (tripwire / "redis" / "__init__.py").write_text(TRIPWIRE)
    # the harness's PYTHONPATH (repository, tests/apps) with the tripwire in front
    env = {"PYTHONPATH": os.pathsep.join(map(str, (tripwire, ROOT, APPS)))} if case != "malformed URL" else None
    url = {"not configured": None, "configured without the redis package": "redis://127.0.0.1:1/0",
           "malformed URL": "http://127.0.0.1:6379/0"}[case]
    server = start_instance(tmp_path, "threads", url, "test:conf", env=env, wait_bridge=False)
    try:
        if url is not None:
            server.wait_for_log(r"redis bridge: OFF", timeout=10)
        with closing(connect_both_workers(server, "/sub/x")) as clients:
            publish_many(server, 20, "l", "x")
            gather(clients, lambda cl: len(cl.messages) >= 20, 10)
            for cl in clients:
                assert_exact(cl, {"l": 20})
        stats = bridge_stats(server)
        log = server.log()
        if case == "not configured":
            assert "TRIPWIRE" not in log and "redis bridge" not in log, log
            assert stats["out_state"] == stats["in_state"] == "not started", stats
        elif case == "configured without the redis package":
            assert "TRIPWIRE" in log, "the tripwire did not fire: this test proves nothing"
            assert "the redis package is missing: pip install 'uwsgi_ws[redis]'" in log, log
            assert stats["out_state"] == stats["in_state"] == "off", stats
        else:
            assert "OFF, UWSGI_WS_REDIS_URL='http://127.0.0.1:6379/0'" in log, log
            assert stats["out_state"] == "off", stats
        assert not stats["redis_imported"]
    finally:
        server.stop()
        assert not server.crashes(), server.log()


# -- 5. the broadcast mule killed mid-stream: its bridge resumes from the ring header ---------------------


def test_mule_killed_mid_stream_resumes_without_duplicates(cluster):
    """kill -9 the broadcast mule of A while it publishes: the respawned mule resumes
    pushing from the position kept in the ring header; the other instances get
    exactly what A's own clients got (the mule's documented window: the one
    request it was taking off its queue may be lost), once each, in order."""
    a, b, c = cluster.instances
    logs_before = len(a.log())
    groups = {s.port: connect_both_workers(s, "/sub/k") for s in cluster.instances}
    everyone = [cl for g in groups.values() for cl in g]
    with closing(everyone):
        count = 1500
        publisher = in_background((publish_many, a, count, "k", "k", 0.002))
        gather(groups[b.port], lambda cl: count_of(cl, "k") >= 300, 20, "the stream at B")
        mule = int(re.findall(r"spawned uWSGI mule 1 \(pid: (\d+)", a.log())[-1])
        os.kill(mule, signal.SIGKILL)
        a.wait_for_log(r"broadcast mule 1 serving ring", count=a.log().count("broadcast mule 1 serving ring") + 1)
        wait_for(lambda: a.log()[logs_before:].count("redis bridge: connected for pushing") >= 1, 20,
                 "the respawned mule's bridge")
        for t in publisher:
            t.join(60)
        last = "k%d" % (count - 1)
        gather(everyone, lambda cl: last in cl.messages, 30, "the end of the stream everywhere")
        reference = streams(groups[a.port][0].messages)["k"]
        assert reference == sorted(set(reference)), "A's own clients: duplicates or disorder"
        lost = sorted(set(range(count)) - set(reference))
        assert len(lost) <= 1, f"more than the one request in the mule's hands lost: {lost}"
        for cl in everyone:
            assert streams(cl.messages)["k"] == reference, f"{cl.server.port}: differs from A's own clients"
        print(f"\n[mule kill] lost {lost}; B and C got exactly what A's clients got")


# -- 6. the repository's example: vassals-redis/ runs two bridged chat instances -------------------------


def test_vassals_redis_example(tmp_path):
    import websocket

    source_dir = ROOT / "vassals-redis"
    redis = RedisServer(tmp_path)
    vassals = tmp_path / "vassals"
    vassals.mkdir()
    ports = {}
    for source in sorted(source_dir.glob("*.yaml")):
        text = source.read_text().replace("%d..", str(ROOT)).replace("%d", str(source_dir) + "/")
        port = free_port()
        text, n = re.subn(r"(?m)^(\s*http-socket:\s*)\S+", rf"\g<1>127.0.0.1:{port}", text)
        assert n == 1, f"{source.name}: expected one http-socket line"
        text, n = re.subn(r"redis://127\.0\.0\.1:6379/0", redis.url, text)
        assert n == 1, f"{source.name}: expected the Redis URL once"
        ports[source.stem] = port
        (vassals / source.name).write_text(text)
    assert set(ports) == {"chat-redis-a", "chat-redis-b"}
    emperor = UWSGI(["--emperor", str(vassals)], tmp_path, port=ports["chat-redis-a"])
    try:
        wait_for(lambda: emperor.log().count("redis bridge: connected for reading") == 2, 30, "both bridges")
        sender = websocket.create_connection(f"ws://127.0.0.1:{ports['chat-redis-a']}/ws", timeout=10)
        receiver = websocket.create_connection(f"ws://127.0.0.1:{ports['chat-redis-b']}/ws", timeout=10)
        try:
            # the receiver subscribes in its handler, maybe after the first message:
            # resend until it arrives (each round waits on a message, not a sleep)
            deadline = time.monotonic() + 15
            got = None
            while got is None and time.monotonic() < deadline:
                sender.send(json.dumps({"name": "t", "text": "from A to B"}))
                receiver.settimeout(1)
                try:
                    got = json.loads(receiver.recv())
                except websocket.WebSocketTimeoutException:
                    pass
            assert got is not None and got["text"] == "from A to B", emperor.log()
        finally:
            sender.close()
            receiver.close()
    finally:
        emperor.stop()
        redis.stop()
    assert not emperor.crashes(), emperor.log()
