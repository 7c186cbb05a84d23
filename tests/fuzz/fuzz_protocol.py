"""Coverage-guided fuzzing of the frame decoder with atheris (libFuzzer).

    pip install atheris
    python tests/fuzz/fuzz_protocol.py -max_total_time=3600 -max_len=4096 /tmp/corpus tests/fuzz/corpus

Every input goes through `protocol_oracle.check` (its docstring lists the
properties); a property that fails stops the run with the input saved as
crash-<sha1> (replay it: python tests/fuzz/fuzz_protocol.py crash-<sha1>).
The first directory receives the new inputs libFuzzer finds interesting; to
grow the checked-in corpus with them:

    python tests/fuzz/fuzz_protocol.py -merge=1 tests/fuzz/corpus /tmp/corpus

`make fuzz` runs this for FUZZ_TIME seconds (default 600) with a random
seed, new inputs under reports/fuzz/ (not in git); tests/test_fuzz_protocol.py
runs a seeded, bounded and so deterministic run in CI. A finding becomes a
corpus entry named regress-<what> (tests/fuzz/corpus, replayed by
tests/test_fuzz_protocol.py and tests/test_deflate.py) with a test of its own
that failed before the fix.

Input layout: byte 0 picks max_message_size (SIZES), byte 1 how the stream is
cut into reads (every (byte1 % 7) + 1 bytes, and whole) and, with its top five
bits, whether permessage-deflate was negotiated and how (DEFLATES: the
compressed path, inflate bounds, RSV1 placement, window bits), the rest is
what the client sends. tests/test_deflate.py replays the corpus with its
DEFLATES choice.
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(os.path.dirname(HERE)), HERE]

import atheris  # noqa: E402

with atheris.instrument_imports(include=["uwsgi_ws", "wsproto"]):
    from protocol_oracle import DEFLATES, check_any

SIZES = (None, 0, 1, 16, 125, 126, 65535, 65536, 64 * 1024 + 1)


def split(data: bytes):
    """(max_message_size, cuts, stream) of a fuzzer input."""
    size = SIZES[data[0] % len(SIZES)] if data else None
    step = (data[1] % 7) + 1 if len(data) > 1 else 1
    stream = data[2:]
    return size, range(step, len(stream), step), stream


def test_one_input(data: bytes) -> None:
    size, cuts, stream = split(data)
    deflate = DEFLATES[(data[1] >> 3) % len(DEFLATES)] if len(data) > 1 else None
    check_any(stream, size, cuts, deflate)


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
