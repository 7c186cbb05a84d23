"""Autobahn|Testsuite conformance (kosoku's fuzzing client) in the threads and gevent models.

The requirement: the fuzzing-client cases of sections 1-7, 9, 10, 12 and 13
(permessage-deflate: compressed echoes with every offer Autobahn makes, window
bits, context takeover on and off) pass (OK, NON-STRICT or INFORMATIONAL) with
zero worker crashes: every case the selection holds in kosoku's own case index
(tests/autobahn.py `expected_cases`), not just the ones that got into the report. The run itself is
tests/autobahn.py (also a command-line script: `python tests/autobahn.py
--model threads`); these tests call it and fail with its summary, which lists
every failing case with Autobahn's expectation and what the server did.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from autobahn import expected_cases, run, summarize

MODELS = ["threads", "gevent"]
CORE_SECTIONS = ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "10.*"]
LARGE_MESSAGES = ["9.*"]  # up to 16 MiB messages, 64-byte fragments, 1000-message round trips
# permessage-deflate: 1000 compressed echoes per case, 16 B to 128 KiB, 216 cases in all (tens of
# minutes per model on 2 cores). By default a cover that fits CI's budget: every payload kind of
# section 12 and every negotiation variant of section 13 at 16 B to 4 KiB (cases .1 to .5; the
# 8 KiB-128 KiB cases are the same code paths with more bytes; the inflate bound is
# tests/test_deflate_wire.py's zip bomb); UWSGI_WS_AUTOBAHN_FULL=1 runs all 216 (`make autobahn-full`).
# kosoku's patterns match at the start of a case id ("12.*.1" also selects 12.1.10-12.1.18, up to
# 128 KiB): the cover excludes cases .10 to .18 by name (test_the_compression_cover_is_cases_1_to_5).
COMPRESSION_ALL = ["12.*", "13.*"]
COMPRESSION_COVER = [f"{section}.*.{n}" for section in (12, 13) for n in range(1, 6)]
COMPRESSION_COVER_EXCLUDE = [f"{section}.*.{n}" for section in (12, 13) for n in range(10, 19)]
FULL = os.environ.get("UWSGI_WS_AUTOBAHN_FULL") == "1"
COMPRESSION = COMPRESSION_ALL if FULL else COMPRESSION_COVER
COMPRESSION_EXCLUDE: list[str] = [] if FULL else COMPRESSION_COVER_EXCLUDE


def _check(model: str, cases: list[str], tmp_path: Path, timeout: float = 600, exclude: list[str] = ()) -> None:
    result = run(
        model,
        cases,
        exclude=exclude,
        parallelism=2,
        outdir=tmp_path / "report",
        workdir=tmp_path,
        timeout=timeout,
    )
    summary = summarize(result)
    print(summary)
    assert result.ok, summary


@pytest.mark.parametrize("model", MODELS)
def test_autobahn_sections_1_to_7_and_10(model: str, tmp_path: Path) -> None:
    _check(model, CORE_SECTIONS, tmp_path)


@pytest.mark.parametrize("model", MODELS)
def test_autobahn_section_9_large_messages(model: str, tmp_path: Path) -> None:
    _check(model, LARGE_MESSAGES, tmp_path)


@pytest.mark.parametrize("model", MODELS)
def test_autobahn_sections_12_and_13_compression(model: str, tmp_path: Path) -> None:
    # 216 cases of 1000 compressed echoes (up to 128 KiB each): minutes, not seconds.
    _check(model, COMPRESSION, tmp_path, timeout=3000, exclude=COMPRESSION_EXCLUDE)


def test_the_compression_cover_is_cases_1_to_5() -> None:
    """What the cover asks kosoku for is every payload kind / negotiation variant at
    cases .1-.5 (16 B-4 KiB), nothing larger."""
    cover = expected_cases(COMPRESSION_COVER, COMPRESSION_COVER_EXCLUDE)
    every = expected_cases(COMPRESSION_ALL)
    assert cover == [c for c in every if int(c.rsplit(".", 1)[1]) <= 5], cover
    assert len(cover) == 60, len(cover)
