"""tests/apps/echo_app.py with tracemalloc, for ``bench/idle.py --tracemalloc``.

``python -X tracemalloc`` cannot be passed to uWSGI's embedded Python, so this
module starts tracing at import (in the worker under ``--lazy-apps``, or in the
master before the fork otherwise: tracing survives the fork) when the
environment variable ``UWSGI_WS_TRACEMALLOC`` holds a frame count (e.g. 12).

Two plain HTTP routes, served by any core of the worker that answers:

- ``GET /_trace/mark``: take the baseline snapshot (before the connections);
- ``GET /_trace/diff?top=40&group=lineno``: the allocations alive now minus the
  baseline, grouped by ``lineno`` (the allocating line) or ``traceback``
  (a line of the caller chain, ``&depth=``), as text: total, then one line per group
  (KiB, blocks, where). Blocks allocated outside tracemalloc's view (greenlet C
  stack copies are PyMem_* and are traced; libev's and uWSGI's mallocs are not)
  show only in /proc/<pid>/smaps.

Tracing costs memory and time per allocation: read RSS from a run without it.
"""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path
from typing import Any, Optional

_frames = int(os.environ.get("UWSGI_WS_TRACEMALLOC", "0") or 0)
if _frames and not tracemalloc.is_tracing():
    tracemalloc.start(_frames)

from echo_app import app as _echo_app  # type: ignore[import-not-found]  # noqa: E402  (tests/apps, after tracing starts)
from flask import Flask, Response, request  # noqa: E402

app: Flask = _echo_app

_ROOT = Path(__file__).resolve().parent.parent.parent
_baseline: Optional[tracemalloc.Snapshot] = None
_FILTERS = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen importlib._bootstrap>")]


@app.route("/_trace/mark")
def trace_mark() -> Any:
    global _baseline
    if not tracemalloc.is_tracing():
        return Response("tracemalloc is off: set UWSGI_WS_TRACEMALLOC=<frames>\n", status=409)
    _baseline = tracemalloc.take_snapshot().filter_traces(_FILTERS)
    return f"baseline: {sum(s.size for s in _baseline.statistics('filename')) / 1024:.0f} KiB traced\n"


@app.route("/_trace/diff")
def trace_diff() -> Any:
    if _baseline is None:
        return Response("no baseline: GET /_trace/mark first\n", status=409)
    top = int(request.args.get("top", 40))
    group = request.args.get("group", "lineno")
    depth = int(request.args.get("depth", 1))
    now = tracemalloc.take_snapshot().filter_traces(_FILTERS)
    stats = now.compare_to(_baseline, "traceback" if group == "traceback" else "lineno")
    total = sum(s.size_diff for s in stats)
    lines = [f"traced growth {total / 1024:.1f} KiB, {sum(s.count_diff for s in stats)} blocks"]
    for s in stats[:top]:
        where = " <- ".join(f"{f.filename.rsplit('/site-packages/', 1)[-1].replace(str(_ROOT), '')}:{f.lineno}"
                            for f in list(s.traceback)[::-1][:depth])  # the most recent frame first
        lines.append(f"{s.size_diff / 1024:10.1f} KiB {s.count_diff:8d} blocks  {where}")
    return "\n".join(lines) + "\n"


_GENERATOR_FLAGS = 0x20 | 0x80 | 0x200  # CO_GENERATOR, CO_COROUTINE, CO_ASYNC_GENERATOR


def _frame_bytes(code: Any) -> int:
    """CPython 3.11's data-stack cost of one frame of `code`: the _PyInterpreterFrame
    header (~10 words) plus its locals, cells, free variables and value stack."""
    return int(8 * (10 + code.co_nlocals + len(code.co_cellvars) + len(code.co_freevars) + code.co_stacksize))


@app.route("/_trace/stacks")
def trace_stacks() -> Any:
    """The Python data stack each suspended greenlet holds (CPython 3.11 gives every
    greenlet its own 16 KiB chunk, touched page by page): bytes by frame for the
    deepest one, and how many greenlets need 1, 2, 3... pages."""
    import gc

    import greenlet

    pages: dict[int, int] = {}
    deepest: list[tuple[int, str]] = []
    for obj in gc.get_objects():
        if not isinstance(obj, greenlet.greenlet) or obj.gr_frame is None:
            continue
        frames, total, frame = [], 0, obj.gr_frame
        while frame is not None:
            code = frame.f_code
            on_stack = not (code.co_flags & _GENERATOR_FLAGS)  # a generator's frame lives in the generator
            size = _frame_bytes(code) if on_stack else 0
            total += size
            frames.append((size, f"{code.co_filename.replace(str(_ROOT), '')}:{frame.f_lineno} {code.co_name}"))
            frame = frame.f_back
        pages[total // 4096 + 1] = pages.get(total // 4096 + 1, 0) + 1
        if sum(s for s, _ in frames) > sum(s for s, _ in deepest):
            deepest = frames
    lines = [f"greenlets by data-stack pages: {dict(sorted(pages.items()))}",
             f"the deepest: {sum(s for s, _ in deepest)} bytes"]
    lines += [f"{size:6d}  {where}" for size, where in deepest]
    return "\n".join(lines) + "\n"
