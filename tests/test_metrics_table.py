"""The metrics table (`uwsgi_ws.metrics`) on its own, without uWSGI.

Rows live in a plain `memoryview(bytearray(...))` here, as they do in the
shared mapping under uWSGI; several `Recorder`s over one buffer stand for the
processes of an instance. What uWSGI adds (worker ids, live pids, the stats
server) is tested end to end in test_metrics.py.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest

from uwsgi_ws import metrics
from uwsgi_ws.metrics import (
    CLOSED,
    HEADER_SIZE,
    KIND_REASON,
    KIND_ROUTE,
    LABELS,
    MESSAGES_IN,
    PID,
    ROW_BYTES,
    UPGRADES,
    MetricsError,
    Recorder,
    Table,
    export,
)

CONF = Path(__file__).resolve().parent.parent / "uwsgi_ws" / "conf"


def new_table(workers: int = 2, rows: int = 5) -> Table:
    return Table(memoryview(bytearray(HEADER_SIZE + rows * ROW_BYTES)), workers, True, "a test buffer")


def test_a_fresh_area_gets_the_header_and_rows_by_process():
    tbl = new_table(workers=2, rows=5)
    assert bytes(tbl.buf[:8]) == metrics.MAGIC
    assert tbl.rows == 5
    assert [tbl.row_of(1, 0), tbl.row_of(2, 0)] == [1, 2]  # workers
    assert [tbl.row_of(0, 1), tbl.row_of(0, 2)] == [3, 4]  # mules follow the workers
    assert tbl.row_of(0, 3) == 0  # past the last row: the shared best-effort row
    assert tbl.row_of(0, 0) == 0  # master, spoolers


def test_an_area_too_small_says_how_many_pages_it_needs():
    with pytest.raises(MetricsError, match=r"needs \d+ pages of 4 KiB.*raise that --sharedarea"):
        Table(memoryview(bytearray(HEADER_SIZE + 2 * ROW_BYTES)), 4, True, "sharedarea 1")
    assert metrics.required_pages(2, 1) * 4096 >= HEADER_SIZE + 4 * ROW_BYTES


def test_labels_are_per_row_and_readers_merge_them_by_name():
    tbl = new_table()
    w1, w2 = Recorder(tbl, 1, 101), Recorder(tbl, 2, 102)
    # different routes claimed in a different order in each row
    a1, b1 = w1.label(KIND_ROUTE, "/a"), w1.label(KIND_ROUTE, "/b")
    b2 = w2.label(KIND_ROUTE, "/b")
    assert (a1, b1, b2) == (0, 1, 0)
    assert w1.label(KIND_ROUTE, "/a") == a1  # stable
    assert w1.label(KIND_REASON, "/a") != a1  # kinds are separate names
    w1.add(UPGRADES + a1, 3)
    w1.add(UPGRADES + b1, 1)
    w2.add(UPGRADES + b2, 5)
    labels = {(kind, name) for _, kind, name in tbl.labels(1)}
    assert labels == {(KIND_ROUTE, "/a"), (KIND_ROUTE, "/b"), (KIND_REASON, "/a")}
    totals = {}
    for row in (1, 2):
        values = tbl.counters(row).tolist()
        for index, kind, name in tbl.labels(row):
            if kind == KIND_ROUTE:
                totals[name] = totals.get(name, 0) + values[UPGRADES + index]
    assert totals == {"/a": 3, "/b": 6}


def test_a_row_out_of_labels_counts_the_rest_as_other():
    tbl = new_table()
    rec = Recorder(tbl, 1, 101)
    indexes = [rec.label(KIND_ROUTE, f"/r{i}") for i in range(LABELS + 5)]
    assert len(set(indexes[:LABELS - 1])) == LABELS - 1
    assert set(indexes[LABELS - 1:]) == {LABELS - 1}
    names = {name for _, _, name in tbl.labels(1)}
    assert metrics.OTHER_LABEL in names and "/r70" not in names


def test_long_names_are_cut_at_a_character_boundary():
    tbl = new_table()
    rec = Recorder(tbl, 1, 101)
    rec.label(KIND_ROUTE, "/" + "é" * 100)
    (_, _, name), = tbl.labels(1)
    assert name == "/" + "é" * 30  # 61 bytes of the 62: no half character


def test_a_new_process_in_a_row_keeps_totals_and_closes_the_old_connections():
    tbl = new_table()
    old = Recorder(tbl, 1, 101)
    label = old.label(KIND_ROUTE, "/echo")
    old.add(UPGRADES + label, 4)
    old.add(CLOSED + label, 1)  # 3 still open when the process dies
    old.add(MESSAGES_IN, 7)
    new = Recorder(tbl, 1, 202)  # the respawned worker 1
    assert new.label(KIND_ROUTE, "/echo") == label
    v = tbl.counters(1)
    assert v[PID] == 202
    assert v[UPGRADES + label] == 4 and v[CLOSED + label] == 4  # none open
    assert v[MESSAGES_IN] == 7  # totals never go back
    new.add(UPGRADES + label)  # a connection of the new process
    Recorder(tbl, 1, 202)  # the same pid attaching again resets nothing
    assert v[UPGRADES + label] - v[CLOSED + label] == 1


def test_adds_from_many_threads_are_exact():
    tbl = new_table()
    rec = Recorder(tbl, 1, 101)

    def work():
        for _ in range(20000):
            rec.add2(MESSAGES_IN, 1, metrics.BYTES_IN, 3)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert tbl.counters(1)[MESSAGES_IN] == 160000
    assert tbl.counters(1)[metrics.BYTES_IN] == 480000


def test_close_codes_are_bucketed():
    index = metrics.close_code_index
    codes = metrics.CLOSE_CODES
    assert [codes[index(c)] for c in (1000, 1006, 1013, 3000, 3999, 4000, 4999, 2000, None, 1004)] == [
        "1000", "1006", "1013", "3xxx", "3xxx", "4xxx", "4xxx", "other", "other", "other"]


def test_lag_histogram_and_its_quantile():
    tbl = new_table()
    rec = Recorder(tbl, 1, 101)
    for lag in [0] * 50 + [1] * 40 + [3] * 9 + [1000]:
        rec.lag(lag)
    v = tbl.counters(1)
    assert v[metrics.LAG_COUNT] == 100 and v[metrics.LAG_SUM] == 40 + 27 + 1000 and v[metrics.LAG_MAX] == 1000
    buckets = [v[metrics.LAG_BUCKETS + i] for i in range(len(metrics.LAG_BOUNDS) + 1)]
    snap = metrics.Snapshot({}, buckets, 1000, {}, {}, {}, {}, [], True)
    assert snap.lag_quantile(0.5) == 0
    assert snap.lag_quantile(0.9) == 1
    assert snap.lag_quantile(0.99) == 4  # the bucket of 3 ends at 4
    assert snap.lag_quantile(1.0) == 1000  # past 512 < 1000 <= 1024: capped at the max


def test_prometheus_text_is_well_formed():
    tbl = new_table()
    rec = Recorder(tbl, 1, 101)
    rec.add(UPGRADES + rec.label(KIND_ROUTE, '/q"uote\\d'), 2)
    rec.add(UPGRADES + rec.label(KIND_REASON, "origin"))
    rec.lag(5)
    rec.lag(70000)
    values = tbl.counters(1).tolist()
    snap = metrics.Snapshot(
        {slot: values[slot] for slot in export._SCALARS},
        [values[metrics.LAG_BUCKETS + i] for i in range(len(metrics.LAG_BOUNDS) + 1)],
        values[metrics.LAG_MAX], {('/q"uote\\d', 1): 2}, {'/q"uote\\d': 2}, {"origin": 1},
        {("1000", "client"): 4}, [1], True)
    text = metrics.prometheus_text(snap)
    assert text.endswith("\n")
    sample = re.compile(r'^[a-z0-9_]+(\{([a-z]+="([^"\\]|\\.)*",?)*\})? -?[0-9]+$')
    families = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            families.add(line.split()[2])
            continue
        if line.startswith("#"):
            continue
        assert sample.match(line), line
    assert 'uwsgi_ws_connections_open{route="/q\\"uote\\\\d",worker="1"} 2' in text
    assert 'uwsgi_ws_upgrades_rejected_total{reason="origin"} 1' in text
    assert 'uwsgi_ws_connections_closed_total{code="1000",by="client"} 4' in text
    assert 'uwsgi_ws_ring_lag_messages_bucket{le="8"} 1' in text
    assert 'uwsgi_ws_ring_lag_messages_bucket{le="65536"} 1' in text
    assert 'uwsgi_ws_ring_lag_messages_bucket{le="+Inf"} 2' in text
    assert "uwsgi_ws_ring_lag_messages_count 2" in text and "uwsgi_ws_ring_lag_max_messages 70000" in text
    for name in families:  # Prometheus conventions: prefix, counters end in _total
        assert name.startswith("uwsgi_ws_")
    counters = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE") and line.endswith("counter")]
    assert counters and all(name.endswith("_total") for name in counters)


@pytest.mark.parametrize("name", ["metrics.yaml", "metrics.ini"])
def test_the_conf_declares_every_mirrored_metric(name):
    text = (CONF / name).read_text()
    declared = dict(re.findall(r"^\s*metric\s*[:=]\s*name=([a-z0-9_]+),type=([a-z]+)\s*$", text, re.M))
    assert declared == {n: kind for n, (kind, _) in export.UWSGI_METRICS.items()}
    assert re.search(r"^\s*enable-metrics\s*[:=]\s*true\s*$", text, re.M)
