"""The history store of the broadcast mule (uwsgi_ws.history.History) against a
reference model: whatever it evicts, an answer is either exact or "gone"."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uwsgi_ws.broadcast.history import History
from uwsgi_ws.settings import parse_size

appends = st.lists(st.tuples(st.sampled_from("abcd"), st.integers(1, 300)), max_size=300)


@settings(max_examples=300, deadline=None)
@given(appends, st.integers(1, 12), st.integers(1, 3000), st.integers(0, 40))
def test_answers_are_exact_or_gone(ops, per_channel, max_bytes, base):
    history = History(per_channel, max_bytes, base)
    sent = {c: [] for c in "abcd"}
    for seq, (channel, size) in enumerate(ops, start=base + 1):
        frame = bytes([seq % 256]) * size
        history.append(seq, channel, frame)
        sent[channel].append((seq, frame))
        assert history.size <= max_bytes or history.count == 0
        assert history.size == sum(len(f) for c in history._channels.values() for _, f in c)
        assert all(len(kept) <= per_channel for kept in history._channels.values())
        assert len(history._order) <= 2 * history.count + 1024 + 1
    for channel, messages in sent.items():
        for after in {base, *(s for s, _ in messages)}:
            gone, records = history.query({channel: after}, {})
            wanted = [m for m in messages if m[0] > after]
            if channel in gone:
                assert gone[channel] > after + 1 or not wanted
                assert not records
            else:
                assert records == wanted
        _, last = history.query({}, {channel: 3})
        kept = list(history._channels.get(channel, ()))
        assert last == kept[-3:] and last == messages[len(messages) - len(last):]


def test_query_merges_channels_in_seq_order():
    history = History(10, 1 << 20, 0)
    for seq, channel in enumerate("abab", start=1):
        history.append(seq, channel, b"%d" % seq)
    gone, records = history.query({"a": 0}, {"b": 2})
    assert gone == {} and [s for s, _ in records] == [1, 2, 3, 4]


@pytest.mark.parametrize("text, size", [("64M", 64 << 20), ("512k", 512 << 10), ("1G", 1 << 30),
                                        ("1000", 1000), ("2MB", 2 << 20)])
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "M", "1.5M", "-1", "ten"])
def test_parse_size_refuses_what_is_not_a_size(text):
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)
