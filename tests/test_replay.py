"""The records that rebuild a camera's decoder in a new worker (receiver/replay.py)."""

from __future__ import annotations

from adaptcast.receiver.replay import DecoderHistory
from adaptcast.shared.codec.bitstream import RecordType


def _record(kind: RecordType, size: int = 10, tag: int = 0) -> bytes:
    return bytes([kind, tag]) + bytes(size - 2)


def test_the_history_holds_what_rebuilds_the_decoder_within_its_budget():
    history = DecoderHistory(budget=1000)
    assert history.replay() == []
    header, adapter = _record(RecordType.STREAM_HEADER), _record(RecordType.ADAPTER)
    backgrounds = [_record(RecordType.BACKGROUND, tag=i) for i in range(3)]
    old_segment, segment = _record(RecordType.SEGMENT, tag=1), _record(RecordType.SEGMENT, tag=2)
    frames = [_record(RecordType.FRAME, tag=i) for i in range(3)]
    for packed in [header, adapter, backgrounds[0], old_segment, frames[0], *backgrounds[1:], segment, *frames[1:]]:
        history.add(packed)
    # The adapter updates, the two newest backgrounds (as the decoder keeps them), the current segment and its frames.
    assert history.replay() == [header, adapter, *backgrounds[1:], segment, *frames[1:]]

    # Past the budget the history is incomplete: the header alone, until the next header.
    history.add(_record(RecordType.FRAME, size=1000))
    assert history.replay() == [header]
    history.add(segment)
    assert history.replay() == [header]
    history.add(header)
    history.add(segment)
    assert history.replay() == [header, segment]

    # A blamed camera keeps its header alone.
    history.forget_since_header()
    assert history.replay() == [header]
