#!/usr/bin/env python
"""Autobahn|Testsuite conformance run against uwsgi_ws under a real uWSGI.

The requirement: pass the Autobahn fuzzing-client cases of sections 1-7, 9,
10, 12 and 13 (12-13: permessage-deflate, issue 15) with zero worker crashes, in the threads and gevent models. The case
set is run by `kosoku` (PyPI), a native re-implementation of the Autobahn
fuzzing client that drives the original case files and writes the usual
Autobahn report (``index.json`` plus one JSON/HTML file per case).

Usage (from the repository root, with the venv that has uwsgi and kosoku)::

    python tests/autobahn.py --model threads
    python tests/autobahn.py --model gevent --cases '1.*,2.*' --parallelism 4
    python tests/autobahn.py --model threads --cases 9.3.1 --verbose

What it does:

1. starts uWSGI serving tests/apps/autobahn_app.py (an echo route at ``/``,
   max_message_size 16 MiB) through tests/harness.py, with one worker:
   threads: ``--processes 1 --threads 32``; gevent: ``--processes 1 --gevent 100``;
2. runs ``kosoku -m fuzzingclient 127.0.0.1:<port> -i <case> ... -p N -o DIR``
   (kosoku connects to ``/`` when given a bare host:port);
3. reads DIR/index.json and the per-case JSON files, prints a per-section
   table (counts by behavior) and every failing case with its description,
   what Autobahn expected and what the server did;
4. checks the uWSGI log for worker crashes (tests/harness.py `crashes()`),
   that the worker pid is the one spawned at start (no respawn) and that the
   master still runs.

Pass criteria (Autobahn's): a case passes when `behavior` is OK, NON-STRICT
or INFORMATIONAL and `behaviorClose` is OK or INFORMATIONAL. UNIMPLEMENTED
fails in the required sections (every section the suite has: compression,
12 and 13, included since the package implements permessage-deflate). The exit status
is 1 if any case fails or a worker crashed, 2 if the run itself broke.

Reports go to reports/autobahn/<model>/ (gitignored) unless --outdir says
otherwise; open index.html there for Autobahn's usual report.

Notes: kosoku's handshake request is ~170 bytes, so uWSGI's default
buffer-size (4096) is enough. On a 2-core machine the whole selection (301
cases) takes ~11 s of kosoku time with -p 1 and ~5 s with -p 4, per model;
section 9 alone ~4.5 s, sections 5 and 6 ~2 s and ~4.5 s (their cases
sleep), the others well under a second. Cases that fail on the server side
wait for kosoku's timeouts (up to 100 s each in section 9), hence --timeout.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from harness import ROOT, UWSGI  # noqa: E402

#: The sections the requirement names (8 does not exist; 11 neither; 12/13 are permessage-deflate).
REQUIRED_SECTIONS = ("1", "2", "3", "4", "5", "6", "7", "9", "10", "12", "13")
DEFAULT_CASES = tuple(f"{s}.*" for s in REQUIRED_SECTIONS)

#: uWSGI options per concurrency model: one worker, so a crash cannot hide behind a sibling.
MODEL_OPTIONS: dict[str, list[str]] = {
    "threads": ["--processes", "1", "--threads", "32"],
    "gevent": ["--processes", "1", "--gevent", "100"],
}

APP = "autobahn_app:app"

PASS_BEHAVIOR = {"OK", "NON-STRICT", "INFORMATIONAL"}
PASS_BEHAVIOR_CLOSE = {"OK", "NON-STRICT", "INFORMATIONAL"}
BEHAVIORS = ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED", "ERROR")


def kosoku_binary() -> str:
    """The kosoku next to the running interpreter (the venv's), else the one on PATH."""
    candidate = Path(sys.executable).with_name("kosoku")
    if candidate.exists():
        return str(candidate)
    found = shutil.which("kosoku")
    if not found:
        raise RuntimeError("kosoku is not installed: pip install kosoku")
    return found


def section_of(case_id: str) -> str:
    return case_id.split(".", 1)[0]


def case_sort_key(case_id: str) -> list[int]:
    return [int(p) for p in case_id.split(".")]


def case_passes(case_id: str, behavior: str, behavior_close: str) -> bool:
    """Autobahn's verdict for one case (UNIMPLEMENTED only passes outside the required sections)."""
    if behavior == "UNIMPLEMENTED" and section_of(case_id) not in REQUIRED_SECTIONS:
        return behavior_close in PASS_BEHAVIOR_CLOSE
    return behavior in PASS_BEHAVIOR and behavior_close in PASS_BEHAVIOR_CLOSE


def selects(pattern: str, case_id: str) -> bool:
    """Whether kosoku's `-i`/`-x` `pattern` selects `case_id`: as kosoku does, a regular
    expression match at the start of the id (`*`: any run of characters), so "12.*.1"
    selects 12.1.1 and also 12.1.10-12.1.18 (checked against a kosoku report)."""
    return re.match(re.escape(pattern).replace(r"\*", ".*"), case_id) is not None


def expected_cases(patterns: Sequence[str], exclude: Sequence[str] = ()) -> list[str]:
    """Every case id of kosoku's suite that `patterns` select and `exclude` does not
    (`selects`), in case order: what a run must report, one entry each. Read from
    kosoku's own case index in a child interpreter (importing it puts the py2-era
    case modules on sys.path)."""
    code = "import json; from kosoku.cases import CASES; print(json.dumps(list(CASES)))"
    python = Path(kosoku_binary()).read_text().splitlines()[0].removeprefix("#!").strip()
    if not Path(python).exists():
        python = sys.executable
    proc = subprocess.run([python, "-c", code], capture_output=True, timeout=60)
    if proc.returncode:
        raise RuntimeError(f"cannot read kosoku's case index: {proc.stderr.decode(errors='replace')[-2000:]}")
    every: list[str] = json.loads(proc.stdout)
    selected = [c for c in every if any(selects(p, c) for p in patterns)
                and not any(selects(x, c) for x in exclude)]
    return sorted(selected, key=case_sort_key)


def split_cases(spec: str | Sequence[str] | None) -> list[str]:
    """'1.*,2.*' or ['1.*', '9.1.1'] -> ['1.*', '2.*', '9.1.1']."""
    if spec is None:
        return list(DEFAULT_CASES)
    if isinstance(spec, str):
        spec = [spec]
    out: list[str] = []
    for item in spec:
        out.extend(p.strip() for p in item.split(",") if p.strip())
    return out


@dataclass
class RunResult:
    """Everything one run found out; `ok` is the verdict."""

    model: str
    cases: dict[str, dict[str, Any]]  # case id -> index.json entry (+ "details" for failures)
    failures: list[str]  # failing case ids, in case order
    crashes: list[str]  # log lines that mean a worker died
    worker_pids_before: list[int]
    worker_pids_after: list[int]
    server_alive: bool  # the uWSGI master still ran when kosoku finished
    wall_time: float  # seconds spent in kosoku
    outdir: Path
    kosoku_returncode: int | None
    kosoku_output: str
    workers_gone: list[int] = field(default_factory=list)  # worker pids no longer running at the end
    errors: list[str] = field(default_factory=list)  # the run itself broke (no report, timeout...)
    tracebacks: list[str] = field(default_factory=list)  # Python tracebacks in the uWSGI log (reported, not fatal)
    log_path: Path | None = None
    #: selected cases the report lacks (each selected case must have run and be judged)
    missing: list[str] = field(default_factory=list)
    expected: int = 0  # how many cases the selection holds

    @property
    def respawned(self) -> bool:
        return self.worker_pids_after != self.worker_pids_before

    @property
    def ok(self) -> bool:
        return (
            not self.errors
            and not self.failures
            and not self.crashes
            and not self.respawned
            and not self.workers_gone
            and self.server_alive
            and bool(self.cases)
            and not self.missing
            and len(self.cases) == self.expected
        )

    def counts_by_section(self) -> dict[str, collections.Counter]:
        by: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        for case_id, entry in self.cases.items():
            c = by[section_of(case_id)]
            c[entry["behavior"]] += 1
            if entry["behaviorClose"] not in PASS_BEHAVIOR_CLOSE:
                c["close:" + entry["behaviorClose"]] += 1
            c["cases"] += 1
            c["ms"] += int(entry.get("duration") or 0)
        return dict(sorted(by.items(), key=lambda kv: int(kv[0])))


def _read_report(outdir: Path) -> dict[str, dict[str, Any]]:
    index_path = outdir / "index.json"
    index = json.loads(index_path.read_text())
    cases: dict[str, dict[str, Any]] = {}
    for _agent, per_case in index.items():  # one agent: our Server header (or none)
        for case_id, entry in per_case.items():
            cases[case_id] = dict(entry)
    return dict(sorted(cases.items(), key=lambda kv: case_sort_key(kv[0])))


def load_case_details(outdir: Path, entry: dict[str, Any]) -> dict[str, Any]:
    """The per-case report file an index.json entry points at."""
    return json.loads((outdir / entry["reportfile"]).read_text())


def _tracebacks(log: str) -> list[str]:
    blocks, current = [], None
    for line in log.splitlines():
        if line.startswith("Traceback (most recent call last)"):
            current = [line]
            blocks.append(current)
        elif current is not None:
            current.append(line)
            if line and not line.startswith((" ", "\t")):
                current = None  # the exception line ends the block
    return ["\n".join(b) for b in blocks]


def worker_pids(log: str) -> list[int]:
    """The current pid of each worker, from the log: its spawn, or its latest respawn.

    (harness.UWSGI.worker_pids only reads "spawned uWSGI worker N (pid: P";
    a respawn is logged as "Respawned uWSGI worker N (new pid: P)".)
    """
    found: dict[int, int] = {}
    for line in log.splitlines():
        m = re.search(r"(?:spawned|Respawned) uWSGI worker (\d+) \((?:new )?pid: (\d+)", line)
        if m:
            found[int(m.group(1))] = int(m.group(2))
    return [found[k] for k in sorted(found)]


def start_server(model: str, workdir: Path, extra: Iterable[str] = (), app: str = APP) -> UWSGI:
    """uWSGI serving the Autobahn echo app with one worker of `model` (like harness.serve)."""
    if model not in MODEL_OPTIONS:
        raise ValueError(f"model must be one of {sorted(MODEL_OPTIONS)}, not {model!r}")
    args = [
        "--master",
        "--http-socket", "127.0.0.1:{port}",
        "--module", app,
        "--die-on-term",
        "--need-app",
        "--disable-logging",
        *MODEL_OPTIONS[model],
        *extra,
    ]
    return UWSGI(args, workdir)


def run(
    model: str,
    cases: str | Sequence[str] | None = None,
    *,
    exclude: Sequence[str] = (),
    parallelism: int = 1,
    outdir: str | Path | None = None,
    workdir: str | Path | None = None,
    extra: Iterable[str] = (),
    timeout: float = 1200.0,
    app: str = APP,
) -> RunResult:
    """Start uWSGI, run kosoku against it, stop uWSGI, and return what happened.

    `cases` are kosoku include patterns ('1.*', '9.3.1'; a comma-separated
    string is split), default sections 1-7, 9, 10, 12 and 13. The report goes to
    `outdir` (default reports/autobahn/<model>), uWSGI's log to `workdir`
    (default: a temporary directory that is removed unless the run fails).
    `app` is the "module:callable" served (importable from tests/apps, or from
    a directory added with `extra=["--pythonpath", DIR]`).
    """
    patterns = split_cases(cases)
    expected = expected_cases(patterns, exclude)
    if not expected:
        raise ValueError(f"no kosoku case matches {patterns} (less {list(exclude)})")
    outdir = Path(outdir) if outdir else ROOT / "reports" / "autobahn" / model
    if outdir.exists():
        # Only ever remove a previous kosoku report, never an arbitrary directory.
        if (outdir / "index.json").exists() or not any(outdir.iterdir()):
            shutil.rmtree(outdir)
        else:
            raise RuntimeError(f"{outdir} exists and is not a kosoku report directory")
    outdir.mkdir(parents=True)
    own_workdir = workdir is None
    workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix=f"autobahn-{model}-"))
    workdir.mkdir(parents=True, exist_ok=True)

    server = start_server(model, workdir, extra, app=app)
    errors: list[str] = []
    output = ""
    returncode: int | None = None
    pids_before: list[int] = []
    pids_after: list[int] = []
    alive = False
    gone: list[int] = []
    wall = 0.0
    try:
        server.wait_for_log(r"spawned uWSGI worker 1 ", timeout=30)
        pids_before = worker_pids(server.log())
        cmd = [kosoku_binary(), "-m", "fuzzingclient", f"127.0.0.1:{server.port}"]
        for p in patterns:
            cmd += ["-i", p]
        for p in exclude:
            cmd += ["-x", p]
        cmd += ["-p", str(parallelism), "-o", str(outdir)]
        started = time.monotonic()
        try:
            proc = subprocess.run(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout,
                cwd=str(ROOT), stdin=subprocess.DEVNULL,
            )
            returncode, output = proc.returncode, proc.stdout.decode("utf-8", "replace")
        except subprocess.TimeoutExpired as exc:
            output = (exc.stdout or b"").decode("utf-8", "replace")
            errors.append(f"kosoku did not finish in {timeout:.0f}s")
        wall = time.monotonic() - started
        time.sleep(0.5)  # let a worker that dies on the last case show up in the log
        alive = server.proc.poll() is None
        pids_after = worker_pids(server.log())
        for pid in pids_after:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                gone.append(pid)
        crashes = server.crashes()
    finally:
        server.stop()
    log = server.log_path.read_bytes().decode("utf-8", "replace")
    if not alive:
        errors.append("the uWSGI master exited during the run")
    crashes = crashes + [line for line in log.splitlines()
                         if "Respawned uWSGI worker" in line and line not in crashes]

    cases_found: dict[str, dict[str, Any]] = {}
    if (outdir / "index.json").exists():
        cases_found = _read_report(outdir)
    elif not errors:
        errors.append(f"kosoku wrote no report (exit {returncode}):\n{output}")
    missing = [cid for cid in expected if cid not in cases_found]
    unasked = [cid for cid in cases_found if cid not in expected]
    if unasked:
        errors.append(f"kosoku ran {len(unasked)} case(s) outside the selection: {unasked[:10]}")
    failures = [
        cid for cid, e in cases_found.items()
        if not case_passes(cid, e["behavior"], e["behaviorClose"])
    ]
    for cid in failures:
        try:
            cases_found[cid]["details"] = load_case_details(outdir, cases_found[cid])
        except (OSError, ValueError) as exc:
            cases_found[cid]["details"] = {"error": f"cannot read the case report: {exc}"}
    if returncode not in (0, 1, None):
        errors.append(f"kosoku exited with {returncode}:\n{output[-4000:]}")

    result = RunResult(
        model=model,
        cases=cases_found,
        failures=failures,
        crashes=crashes,
        worker_pids_before=pids_before,
        worker_pids_after=pids_after,
        server_alive=alive,
        workers_gone=gone,
        wall_time=wall,
        outdir=outdir,
        kosoku_returncode=returncode,
        kosoku_output=output,
        errors=errors,
        tracebacks=_tracebacks(log),
        log_path=server.log_path,
        missing=missing,
        expected=len(expected),
    )
    if own_workdir and result.ok and not result.tracebacks:
        shutil.rmtree(workdir, ignore_errors=True)
        result.log_path = None
    return result


# -- reporting -------------------------------------------------------------


def _short(value: Any, limit: int = 300) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[:limit] + " ..."


def describe_failure(case_id: str, entry: dict[str, Any]) -> str:
    """A few lines: what the case sent, what Autobahn expected, what the server did."""
    d = entry.get("details") or {}
    lines = [f"{case_id}: behavior={entry['behavior']} behaviorClose={entry['behaviorClose']}"]
    if "error" in d:
        return "\n".join(lines + [f"    {d['error']}"])
    lines += [
        f"    description: {d.get('description', '')}",
        f"    expectation: {d.get('expectation', '')}",
        f"    result:      {d.get('result', '')}",
        f"    resultClose: {d.get('resultClose', '')}",
        f"    expected:    {_short(d.get('expected'))}",
        f"    received:    {_short(d.get('received'))}",
        f"    expectedClose: {_short(d.get('expectedClose'))}",
        "    server close: code={} reason={!r}; kosoku close: code={} reason={!r}".format(
            d.get("remoteCloseCode"), d.get("remoteCloseReason"),
            d.get("localCloseCode"), d.get("localCloseReason"),
        ),
        "    closedByMe={} failedByMe={} droppedByMe={} wasClean={} ({}) "
        "serverDropTimeout={} closeHandshakeTimeout={} duration={}ms".format(
            d.get("closedByMe"), d.get("failedByMe"), d.get("droppedByMe"), d.get("wasClean"),
            d.get("wasNotCleanReason"), d.get("wasServerConnectionDropTimeout"),
            d.get("wasCloseHandshakeTimeout"), d.get("duration"),
        ),
        f"    report: {entry['reportfile']}",
    ]
    return "\n".join(lines)


def summarize(result: RunResult, verbose: bool = False) -> str:
    out = [f"Autobahn fuzzingclient vs uwsgi_ws, model={result.model}: "
           f"{len(result.cases)} of {result.expected} selected cases reported in {result.wall_time:.1f}s "
           f"(report: {result.outdir}/index.html)"]
    header = f"{'section':>7} {'cases':>5} " + " ".join(f"{b:>13}" for b in BEHAVIORS) + f" {'close-fail':>10} {'case-ms':>8}"
    out.append(header)
    for section, c in result.counts_by_section().items():
        close_fail = sum(v for k, v in c.items() if k.startswith("close:"))
        out.append(
            f"{section:>7} {c['cases']:>5} " + " ".join(f"{c[b]:>13}" for b in BEHAVIORS)
            + f" {close_fail:>10} {c['ms']:>8}"
        )
    if result.missing:
        out.append(f"\n{len(result.missing)} selected case(s) missing from the report (not run, or not "
                   f"judged): {', '.join(result.missing[:30])}")
    if result.failures:
        out.append(f"\n{len(result.failures)} failing case(s):")
        for cid in result.failures:
            out.append(describe_failure(cid, result.cases[cid]))
    if verbose:
        others = [cid for cid, e in result.cases.items()
                  if cid not in result.failures and e["behavior"] != "OK"]
        if others:
            out.append("\npassing, not OK: " + ", ".join(
                f"{cid}={result.cases[cid]['behavior']}" for cid in others))
    out.append("")
    out.append(f"worker pids: before={result.worker_pids_before} after={result.worker_pids_after}"
               + (" (RESPAWNED)" if result.respawned else ""))
    if result.workers_gone:
        out.append(f"worker pids no longer running: {result.workers_gone}")
    out.append(f"worker crashes/respawns in the log: {len(result.crashes)}")
    out.extend(f"    {line}" for line in result.crashes[:20])
    if result.tracebacks:
        out.append(f"Python tracebacks in the uWSGI log: {len(result.tracebacks)} (log: {result.log_path})")
        for tb in result.tracebacks[:3]:
            out.append("    " + tb.replace("\n", "\n    "))
    for err in result.errors:
        out.append(f"ERROR: {err}")
    out.append("PASS" if result.ok else "FAIL")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run the Autobahn|Testsuite fuzzing-client cases (kosoku) against uwsgi_ws under uWSGI.",
    )
    parser.add_argument("--model", choices=sorted(MODEL_OPTIONS), required=True)
    parser.add_argument("--cases", default=",".join(DEFAULT_CASES),
                        help="comma-separated case ids or globs (default: %(default)s)")
    parser.add_argument("--exclude", default="", help="comma-separated case ids or globs to skip")
    parser.add_argument("--parallelism", "-p", type=int, default=1,
                        help="cases kosoku runs at once (default: %(default)s)")
    parser.add_argument("--outdir", default=None,
                        help="report directory (default: reports/autobahn/<model>)")
    parser.add_argument("--timeout", type=float, default=1200.0,
                        help="seconds before the kosoku run is abandoned (default: %(default)s)")
    parser.add_argument("--app", default=APP, help="module:callable to serve (default: %(default)s)")
    parser.add_argument("--verbose", "-v", action="store_true", help="also list passing cases that are not OK")
    args = parser.parse_args(argv)
    try:
        result = run(
            args.model,
            args.cases,
            exclude=split_cases(args.exclude) if args.exclude else (),
            parallelism=args.parallelism,
            outdir=args.outdir,
            timeout=args.timeout,
            app=args.app,
        )
    except Exception as exc:  # the run itself broke: report it, distinct exit status
        print(f"ERROR: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(summarize(result, verbose=args.verbose))
    if result.errors:
        return 2
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
