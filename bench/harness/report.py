"""Aggregate per-run records into medians and render the Markdown report.

Contract: a *record* is one (round, server, scenario) run:
``{"round", "server", "scenario", "status": "ok"|"skipped"|"error",
"reason", "metrics": {...}}``. :func:`aggregate` returns one row per
(scenario, server) with the median of each numeric metric over the ``ok``
runs, the totals of loss/dup/reorder counts, and ratios against the
``baseline`` server's medians. :func:`markdown` renders those rows.
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


def aggregate(records: Iterable[dict[str, Any]], baseline: str) -> list[dict[str, Any]]:
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
    base = {r["scenario"]: r for r in rows if r["server"] == baseline}
    for row in rows:
        ref = base.get(row["scenario"], {})
        for key, ratio in (("cpu_us_per_delivery", "cpu_ratio"), ("p99_ms", "p99_ratio")):
            if row.get(key) and ref.get(key):
                row[ratio] = row[key] / ref[key]
    return rows


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
    out = list(header)
    for scenario in dict.fromkeys(r["scenario"] for r in rows):
        sub = [r for r in rows if r["scenario"] == scenario]
        out += ["", f"### {scenario}", ""]
        has_lat = any(r.get("p50_ms") is not None for r in sub)
        cols = [
            "server", "deliveries/s", "CPU µs/delivery", "CPU ×ws", "server CPU %",
            "client CPU %", "RSS peak / PSS MiB", "lost/dup/reord",
        ]
        if has_lat:
            cols += ["p50 ms", "p99 ms", "p99 ×ws", "lat lost"]
        cols += ["ok runs", "note"]
        out.append("| " + " | ".join(cols) + " |")
        out.append("|" + "---|" * len(cols))
        for r in sub:
            cells = [
                r["server"],
                _fmt(r.get("deliveries_per_s"), 0),
                _fmt(r.get("cpu_us_per_delivery"), 2),
                _fmt(r.get("cpu_ratio"), 2),
                _fmt(r.get("server_cpu_pct"), 0),
                _fmt(r.get("client_cpu_pct"), 0),
                f"{_fmt(r.get('peak_rss_mib'), 0)} / {_fmt(r.get('pss_mib'), 0)}",
                "/".join(_fmt(r.get(k)) for k in ("lost", "dup", "reorder")) if r["ok"] else "–",
            ]
            if has_lat:
                cells += [
                    _fmt(r.get("p50_ms"), 2),
                    _fmt(r.get("p99_ms"), 2),
                    _fmt(r.get("p99_ratio"), 2),
                    _fmt(r.get("lat_lost")),
                ]
            cells += [f"{r['ok']}/{r['runs']}", _note(r)]
            out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"
