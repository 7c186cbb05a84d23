"""Aggregate per-run records into medians and render the Markdown report.

Contract: a *record* is one (round, server, scenario) run:
``{"round", "server", "scenario", "status": "ok"|"skipped"|"error",
"reason", "metrics": {...}}``. :func:`aggregate` returns one row per
(scenario, server) with the median of each numeric metric over the ``ok``
runs, the totals of loss/dup/reorder counts, and ratios against the
``baseline`` server's medians (``*_ratio``) and the ``floor`` server's
(``*_proto``). :func:`summary` renders one table with a column per server
and a row per measure (the issue 11 layout); :func:`markdown` renders the
header, the summary and one detailed table per scenario.
"""
from __future__ import annotations

import os
import platform
import statistics
import subprocess
from pathlib import Path
from typing import Any, Iterable

COUNTS = ("lost", "dup", "reorder", "publish_errors", "lat_lost")


def machine_line(venv: Path) -> str:
    """nproc, CPU model, kernel, Python and uWSGI versions, Node version."""
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def version(cmd: list[str]) -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"

    py = version([str(venv / "bin" / "python"), "--version"])
    uwsgi = version([str(venv / "bin" / "uwsgi"), "--version"])
    node = version(["node", "--version"])
    return (
        f"{os.cpu_count()} CPUs ({model}), Linux {platform.release()}, "
        f"{py}, uWSGI {uwsgi}, Node {node}"
    )


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


RATIOS = (("cpu_us_per_delivery", "cpu"), ("p99_ms", "p99"), ("lat_cpu_us_per_delivery", "lat_cpu"))


def aggregate(records: Iterable[dict[str, Any]], baseline: str, floor: str | None = None) -> list[dict[str, Any]]:
    """One row per (scenario, server) in first-seen order; see module doc."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for rec in records:
        groups.setdefault((rec["scenario"], rec["server"]), []).append(rec)
    rows = []
    for (scenario, server), recs in groups.items():
        ok = [r["metrics"] for r in recs if r["status"] == "ok"]
        row: dict[str, Any] = {"scenario": scenario, "server": server, "runs": len(recs), "ok": len(ok)}
        keys = sorted({k for m in ok for k, v in m.items() if isinstance(v, (int, float))})
        for key in keys:
            vals = [m[key] for m in ok if isinstance(m.get(key), (int, float))]
            row[key] = sum(vals) if key in COUNTS else _median(vals)
        bad = [r for r in recs if r["status"] != "ok"]
        if bad:
            row["note"] = f"{bad[0]['status']}: {bad[0]['reason']}"
            if len(bad) > 1:
                row["note"] += f" ({len(bad)}/{len(recs)} runs)"
        rows.append(row)
    for ref_name, suffix in ((baseline, "ratio"), (floor, "proto")):
        base = {r["scenario"]: r for r in rows if r["server"] == ref_name}
        for row in rows:
            ref = base.get(row["scenario"], {})
            for key, stem in RATIOS:
                if row.get(key) and ref.get(key):
                    row[f"{stem}_{suffix}"] = row[key] / ref[key]
    return rows


def _cell(row: dict[str, Any] | None, key: str, stem: str | None, digits: int = 2) -> str:
    if not row or row.get(key) is None:
        return "–" if not row else (_note(row, 40) or "–")
    text = _fmt(row[key], digits)
    if stem:
        ratios = [f"{row[k]:.2f}× {label}" for k, label in ((f"{stem}_proto", "proto"), (f"{stem}_ratio", "ws"))
                  if row.get(k) is not None]
        if ratios:
            text += " (" + ", ".join(ratios) + ")"
    return text


def summary(rows: list[dict[str, Any]]) -> list[str]:
    """One table: a column per server, a row per measure. CPU rows are server CPU µs
    per delivery (throughput phase; "50 msg/s" rows: the latency phase), with
    ratios to the prototype and to websockets; the RSS row is the largest N's."""
    servers = list(dict.fromkeys(r["server"] for r in rows))
    scenarios = list(dict.fromkeys(r["scenario"] for r in rows))
    at = {(r["scenario"], r["server"]): r for r in rows}
    lines = ["| measure | " + " | ".join(servers) + " |", "|---|" + "---|" * len(servers)]

    def add(label: str, scenario: str, key: str, stem: str | None, digits: int = 2) -> None:
        cells = [_cell(at.get((scenario, s)), key, stem, digits) for s in servers]
        if any(c != "–" for c in cells):
            lines.append(f"| {label} | " + " | ".join(cells) + " |")

    short = {sc: sc.split(", M=")[0] for sc in scenarios}
    for sc in scenarios:
        add(f"{short[sc]}, max rate: CPU µs/delivery", sc, "cpu_us_per_delivery", "cpu")
    for sc in scenarios:
        if any(r.get("p99_ms") is not None for r in rows if r["scenario"] == sc):
            rate = sc.split("latency ")[-1]
            add(f"{short[sc]}, {rate}: CPU µs/delivery", sc, "lat_cpu_us_per_delivery", "lat_cpu")
            add(f"{short[sc]}, {rate}: p99 ms", sc, "p99_ms", "p99")
    losses = []
    for s in servers:
        mine = [r for r in rows if r["server"] == s and r["ok"]]
        losses.append("/".join(str(sum(int(r.get(k) or 0) for r in mine)) for k in ("lost", "dup", "reorder"))
                      if mine else "–")
    lines.append("| lost/dup/reord, all scenarios | " + " | ".join(losses) + " |")

    def clients(sc: str) -> int:
        return int(sc.split(",")[0].split("=")[1])

    top = max(clients(sc) for sc in scenarios)
    pick = [sc for sc in scenarios if clients(sc) == top]
    sc = next((x for x in pick if "100 B" in x), pick[0])  # the largest N, smallest payload
    cells = []
    for s in servers:
        r = at.get((sc, s))
        cells.append(f"{_fmt(r.get('peak_rss_mib'), 0)} / {_fmt(r.get('pss_mib'), 0)}"
                     if r and r.get("peak_rss_mib") else "–")
    lines.append(f"| peak RSS / PSS MiB, {short[sc]} | " + " | ".join(cells) + " |")
    return lines


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _note(row: dict[str, Any], limit: int = 140) -> str:
    note = str(row.get("note", "")).replace("|", "/").replace("\n", " ")
    return note if len(note) <= limit else note[: limit - 1] + "…"


def markdown(rows: list[dict[str, Any]], header: list[str]) -> str:
    """Render the report: header lines, then one table per scenario."""
    out = list(header) + ["", "### Summary", ""] + summary(rows)
    for scenario in dict.fromkeys(r["scenario"] for r in rows):
        sub = [r for r in rows if r["scenario"] == scenario]
        out += ["", f"### {scenario}", ""]
        has_lat = any(r.get("p50_ms") is not None for r in sub)
        cols = [
            "server", "deliveries/s", "CPU µs/delivery", "CPU ×proto", "CPU ×ws", "server CPU %",
            "client CPU %", "RSS peak / PSS MiB", "lost/dup/reord",
        ]
        if has_lat:
            cols += ["lat CPU µs/delivery", "p50 ms", "p99 ms", "p99 ×proto", "p99 ×ws", "lat lost"]
        cols += ["ok runs", "note"]
        out.append("| " + " | ".join(cols) + " |")
        out.append("|" + "---|" * len(cols))
        for r in sub:
            cells = [
                r["server"],
                _fmt(r.get("deliveries_per_s"), 0),
                _fmt(r.get("cpu_us_per_delivery"), 2),
                _fmt(r.get("cpu_proto"), 2),
                _fmt(r.get("cpu_ratio"), 2),
                _fmt(r.get("server_cpu_pct"), 0),
                _fmt(r.get("client_cpu_pct"), 0),
                f"{_fmt(r.get('peak_rss_mib'), 0)} / {_fmt(r.get('pss_mib'), 0)}",
                "/".join(_fmt(r.get(k)) for k in ("lost", "dup", "reorder")) if r["ok"] else "–",
            ]
            if has_lat:
                cells += [
                    _fmt(r.get("lat_cpu_us_per_delivery"), 2),
                    _fmt(r.get("p50_ms"), 2),
                    _fmt(r.get("p99_ms"), 2),
                    _fmt(r.get("p99_proto"), 2),
                    _fmt(r.get("p99_ratio"), 2),
                    _fmt(r.get("lat_lost")),
                ]
            cells += [f"{r['ok']}/{r['runs']}", _note(r)]
            out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"
