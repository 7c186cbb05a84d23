"""Autobahn|Testsuite conformance (kosoku's fuzzing client) in the threads and gevent models.

The requirement: the fuzzing-client cases of sections 1-7, 9, 10, 12 and 13
(permessage-deflate: compressed echoes with every offer Autobahn makes, window
bits, context takeover on and off) pass (OK, NON-STRICT or INFORMATIONAL) with
zero worker crashes. The run itself is
tests/autobahn.py (also a command-line script: `python tests/autobahn.py
--model threads`); these tests call it and fail with its summary, which lists
every failing case with Autobahn's expectation and what the server did.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from autobahn import run, summarize

MODELS = ["threads", "gevent"]
CORE_SECTIONS = ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "10.*"]
LARGE_MESSAGES = ["9.*"]  # up to 16 MiB messages, 64-byte fragments, 1000-message round trips
COMPRESSION = ["12.*", "13.*"]  # permessage-deflate: 1000 compressed echoes per case, 16 B to 128 KiB


def _check(model: str, cases: list[str], tmp_path: Path, timeout: float = 600) -> None:
    result = run(
        model,
        cases,
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
    _check(model, COMPRESSION, tmp_path, timeout=3000)
