"""Fuzzing the frame decoder (`uwsgi_ws.protocol.Protocol`) against the
properties of tests/fuzz/protocol_oracle.py: no exception, a valid state,
every input answered, valid close codes, valid text, no message over the
limit, and the same result however the bytes are cut into reads.

- well-formed streams must do exactly what the reference model says;
- mutated streams and random bytes must keep every property;
- every input of the checked-in corpus (tests/fuzz/corpus) is replayed;
- a bounded coverage-guided atheris run starts from that corpus when atheris
  is installed. It is deterministic, so that CI goes red only when a change
  makes the same exploration find something, never at random: a fixed
  libFuzzer seed (FUZZ_SEED, default 1), a fixed number of inputs (FUZZ_RUNS,
  default 10000: about 10-20 s), no corpus reload on a timer (-reload=0) and
  a fixed PYTHONHASHSEED. Exploring is `make fuzz` (a random seed for
  FUZZ_TIME seconds, default 600; tests/fuzz/fuzz_protocol.py says how to
  keep what it finds): its findings come back here as corpus entries.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FUZZ = Path(__file__).resolve().parent / "fuzz"
sys.path.insert(0, str(FUZZ))

from protocol_oracle import (  # noqa: E402
    BINARY,
    CLOSE,
    CONT,
    PING,
    PONG,
    TEXT,
    Op,
    check,
    check_model,
    close_payload,
    encode_ops,
    frame,
)

SIZES = st.sampled_from([None, 0, 1, 16, 64, 125, 126, 1 << 20])
SETTINGS = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "300")), deadline=5000,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def split_bytes(draw, data: bytes, max_parts: int = 4):
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=max_parts - 1)))
    bounds = [0, *cuts, len(data)]
    return tuple(data[a:b] for a, b in zip(bounds, bounds[1:]))


control_payload = st.binary(max_size=125)


@st.composite
def data_op(draw):
    kind = draw(st.sampled_from(["text", "binary"]))
    if kind == "text":
        raw = draw(st.text(max_size=80)).encode("utf-8")
    else:
        raw = draw(st.binary(max_size=200))
    parts = draw(split_bytes(raw))
    between = tuple(draw(st.lists(st.tuples(st.sampled_from(["", "ping", "pong"]), control_payload),
                                  max_size=len(parts))))
    return Op(kind, parts, between)


close_codes = st.one_of(st.none(), st.sampled_from([1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011,
                                                    1012, 1013]), st.integers(3000, 4999))


@st.composite
def ops_streams(draw):
    ops = draw(st.lists(st.one_of(
        data_op(),
        st.builds(lambda p: Op("ping", (p,)), control_payload),
        st.builds(lambda p: Op("pong", (p,)), control_payload),
    ), max_size=8))
    if draw(st.booleans()):
        code = draw(close_codes)
        reason = b"" if code is None else draw(st.text(max_size=40)).encode("utf-8")[:123]
        ops.append(Op("close", code=code, reason=reason))
    return ops


def cuts_for(data: bytes):
    return st.lists(st.integers(0, max(len(data), 1)), max_size=12)


@SETTINGS
@given(ops=ops_streams(), size=SIZES, data=st.data())
def test_well_formed_streams_match_the_reference_model(ops, size, data):
    stream = encode_ops(ops)
    check_model(ops, size, data.draw(cuts_for(stream)))


# Frames no well-formed stream has: each RFC 6455 section 5/7 violation class.
hostile_frames = st.one_of(
    st.builds(lambda op, p, fin: frame(op, p, fin), st.sampled_from([0x3, 0x4, 0x7, 0xB, 0xF]),
              st.binary(max_size=8), st.booleans()),
    st.builds(lambda rsv, p: frame(TEXT, p, rsv=rsv), st.integers(1, 7), st.binary(max_size=8)),
    st.builds(lambda p: frame(BINARY, p, masked=False), st.binary(max_size=8)),
    st.builds(lambda op, p: frame(op, p), st.sampled_from([PING, PONG, CLOSE]), st.binary(min_size=126, max_size=130)),
    st.builds(lambda op, p: frame(op, p, fin=False), st.sampled_from([PING, PONG, CLOSE]), st.binary(max_size=4)),
    st.builds(lambda p, fin: frame(CONT, p, fin), st.binary(max_size=8), st.booleans()),
    st.builds(lambda code, r: frame(CLOSE, close_payload(code, r)), st.integers(0, 65535), st.binary(max_size=8)),
    st.builds(lambda p: frame(CLOSE, p), st.binary(min_size=1, max_size=1)),
    st.builds(lambda op, n: frame(op, b"", length=n), st.sampled_from([TEXT, BINARY, CONT]),
              st.integers(0, (1 << 64) - 1)),
    st.builds(lambda p: frame(TEXT, p), st.binary(max_size=12)),  # mostly invalid UTF-8
    st.binary(min_size=1, max_size=16),  # raw garbage
)


@st.composite
def mutated_streams(draw):
    stream = bytearray(encode_ops(draw(ops_streams())))
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["flip", "insert-frame", "delete", "truncate", "overwrite"]))
        at = draw(st.integers(0, len(stream)))
        if action == "flip" and stream:
            i = min(at, len(stream) - 1)
            stream[i] ^= 1 << draw(st.integers(0, 7))
        elif action == "insert-frame":
            stream[at:at] = draw(hostile_frames)
        elif action == "delete":
            del stream[at:at + draw(st.integers(1, 16))]
        elif action == "truncate":
            del stream[at:]
        elif action == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=8))
            stream[at:at + len(chunk)] = chunk
    return bytes(stream)


@SETTINGS
@given(stream=mutated_streams(), size=SIZES, data=st.data())
def test_mutated_streams_keep_every_property(stream, size, data):
    check(stream, size, data.draw(cuts_for(stream)))


@SETTINGS
@given(stream=st.lists(hostile_frames, min_size=1, max_size=6).map(b"".join), size=SIZES, data=st.data())
def test_hostile_frames_keep_every_property(stream, size, data):
    check(stream, size, data.draw(cuts_for(stream)))


@SETTINGS
@given(stream=st.binary(max_size=512), size=SIZES, data=st.data())
def test_random_bytes_keep_every_property(stream, size, data):
    check(stream, size, data.draw(cuts_for(stream)))


# -- the checked-in corpus -----------------------------------------------------------

CORPUS = sorted((FUZZ / "corpus").iterdir())


def test_corpus_is_there():
    assert len(CORPUS) >= 40, "tests/fuzz/corpus lost its seeds: python tests/fuzz/make_corpus.py"


@pytest.mark.parametrize("path", CORPUS, ids=[p.name for p in CORPUS])
def test_corpus_input(path):
    size, cuts, stream = _split(path.read_bytes())
    check(stream, size, cuts)
    check(stream, size, range(1, len(stream)))  # and one byte per read


def _split(data: bytes):
    """fuzz_protocol.split without atheris (kept equal by test_split_layouts_agree)."""
    sizes = (None, 0, 1, 16, 125, 126, 65535, 65536, 64 * 1024 + 1)
    size = sizes[data[0] % len(sizes)] if data else None
    step = (data[1] % 7) + 1 if len(data) > 1 else 1
    stream = data[2:]
    return size, range(step, len(stream), step), stream


def test_split_layouts_agree():
    source = (FUZZ / "fuzz_protocol.py").read_text()
    assert "SIZES = (None, 0, 1, 16, 125, 126, 65535, 65536, 64 * 1024 + 1)" in source
    assert "step = (data[1] % 7) + 1 if len(data) > 1 else 1" in source


# -- the coverage-guided run ---------------------------------------------------------


def atheris_command(found: Path, artifacts: Path, runs: int, seed: int) -> list:
    """The seeded, bounded libFuzzer command line (the same inputs on every run)."""
    return [sys.executable, str(FUZZ / "fuzz_protocol.py"), f"-runs={runs}", f"-seed={seed}", "-reload=0",
            "-max_len=4096", "-timeout=60", f"-artifact_prefix={artifacts}/", "-print_final_stats=1",
            str(found), str(FUZZ / "corpus")]


def test_atheris_bounded_run(tmp_path):
    pytest.importorskip("atheris")
    runs = int(os.environ.get("FUZZ_RUNS", "10000"))
    seed = int(os.environ.get("FUZZ_SEED", "1"))
    found = tmp_path / "found"
    found.mkdir()
    env = dict(os.environ, PYTHONHASHSEED="0")  # set iteration order feeds the coverage: fix it
    result = subprocess.run(atheris_command(found, tmp_path, runs, seed), capture_output=True, text=True,
                            timeout=600, cwd=str(tmp_path), env=env)
    tail = result.stderr[-4000:]
    findings = sorted(tmp_path.glob("crash-*")) + sorted(tmp_path.glob("timeout-*"))
    assert not findings, (
        f"atheris found an input (seed {seed}, {runs} runs), base64 "
        f"{base64.b64encode(findings[0].read_bytes()).decode()}: replay it with `echo <base64> | base64 -d "
        f"> /tmp/f; python tests/fuzz/fuzz_protocol.py /tmp/f`, fix the engine, add it to tests/fuzz/corpus\n{tail}")
    assert result.returncode == 0, tail
    assert f"Done {runs} runs in" in result.stderr, tail
