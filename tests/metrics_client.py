"""Reading an instance's metrics in the tests: the Prometheus view and the stats server."""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.error
import urllib.request
from typing import Callable, Dict, FrozenSet, Tuple

Key = Tuple[str, FrozenSet[Tuple[str, str]]]

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def parse(text: str) -> Metrics:
    """Prometheus text exposition -> Metrics; fails on a malformed line."""
    samples: Dict[Key, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        assert match, f"not a Prometheus sample line: {line!r}"
        name, labels, value = match.groups()
        pairs = frozenset((k, _unescape(v)) for k, v in _LABEL.findall(labels or ""))
        samples[(name, pairs)] = float(value)
    return Metrics(samples)


class Metrics:
    def __init__(self, samples: Dict[Key, float]) -> None:
        self.samples = samples

    def value(self, name: str, **labels: str) -> float:
        """The sample with exactly these labels (0 if absent)."""
        return self.samples.get((name, frozenset((k, str(v)) for k, v in labels.items())), 0)

    def total(self, name: str, **labels: str) -> float:
        """The sum of the samples of `name` whose labels include `labels`."""
        want = {(k, str(v)) for k, v in labels.items()}
        return sum(v for (n, pairs), v in self.samples.items() if n == name and want <= pairs)

    def series(self, name: str) -> Dict[FrozenSet[Tuple[str, str]], float]:
        return {pairs: v for (n, pairs), v in self.samples.items() if n == name}

    def __sub__(self, other: Metrics) -> Metrics:
        keys = set(self.samples) | set(other.samples)
        return Metrics({k: self.samples.get(k, 0) - other.samples.get(k, 0) for k in keys})


def scrape(base_url: str, path: str = "/metrics", timeout: float = 10.0) -> Metrics:
    with urllib.request.urlopen(base_url + path, timeout=timeout) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4"), resp.headers["Content-Type"]
        return parse(resp.read().decode("utf-8"))


def wait_metrics(base_url: str, condition: Callable[[Metrics], bool], timeout: float = 10.0,
                 what: str = "metrics") -> Metrics:
    """Scrape until `condition(metrics)` holds; fail with the last scrape after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        m = scrape(base_url)
        if condition(m):
            return m
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last scrape: "
                                 + ", ".join(f"{n}{dict(p)}={v:g}" for (n, p), v in sorted(m.samples.items())
                                             if n.startswith("uwsgi_ws_") and "bucket" not in n))
        time.sleep(0.05)


def read_stats(path) -> dict:
    """The JSON of a uWSGI stats server on a unix socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(path))
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data)


def http(base_url: str, method: str, path: str, data: bytes = b"", timeout: float = 30.0) -> Tuple[int, str]:
    req = urllib.request.Request(base_url + path, data=data if method != "GET" else None, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")
