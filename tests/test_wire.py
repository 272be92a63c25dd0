"""Data-channel framing: round trips, every drop reason, bounded memory, and fuzzed traffic."""

from __future__ import annotations

import random
import struct

import crc32c
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adaptcast.shared.codec.bitstream import (
    MAX_RECORD_BYTES,
    AdapterRecord,
    FrameRecord,
    SegmentStart,
    StreamEnd,
    StreamHeader,
    pack_record,
    record_crc,
    unpack_packed_record,
)
from adaptcast.shared.errors import BitstreamError
from adaptcast.shared.wire.framing import (
    COMPLETED_WINDOW,
    HEADER_BYTES,
    MAX_CHUNK_BYTES,
    MAX_MESSAGE_BYTES,
    NOT_APPLICABLE,
    Message,
    MessageType,
    Reassembler,
    WireError,
    chunk_count,
    encode_control,
    encode_record,
    heartbeat_payload,
    parse_heartbeat,
    parse_message,
)

_DOCUMENTED_HEAD = struct.Struct("<2sBBIIIHHH")
"""The header up to its CRC, as docs/protocol.md gives it: written out here, not imported."""
HEADER = StreamHeader("ab" * 32, "tiny", 96, 64, 12.5, 3, "gate")


def raw(kind=1, sequence=0, segment=NOT_APPLICABLE, frame=NOT_APPLICABLE, chunk=0, chunks=1, payload=b"",
        magic=b"AW", version=1, length=None) -> bytes:
    """A message built from the documented layout, with any field as given (a valid CRC)."""
    head = _DOCUMENTED_HEAD.pack(magic, version, kind, sequence, segment, frame, chunk, chunks,
                                 len(payload) if length is None else length)
    return head + struct.pack("<I", crc32c.crc32c(head + payload)) + payload


def reassemble(messages: list[bytes], reassembler: Reassembler | None = None) -> list[bytes]:
    reassembler = reassembler or Reassembler()
    return [record for data in messages if (record := reassembler.add(parse_message(data))) is not None]


def test_header_is_the_documented_layout():
    assert HEADER_BYTES == 26 and MAX_CHUNK_BYTES == MAX_MESSAGE_BYTES - 26
    assert encode_record(7, 2, 30, b"xyz") == [raw(1, 7, 2, 30, 0, 1, b"xyz")]
    assert encode_record(8, None, None, b"") == [raw(1, 8)]
    assert encode_control(MessageType.KEYFRAME_REQUEST, 9, b"why") == raw(4, 9, payload=b"why")


@pytest.mark.parametrize("size", [0, 1, MAX_CHUNK_BYTES, MAX_CHUNK_BYTES + 1, 1 << 20])
def test_records_survive_chunking_in_any_order(size):
    rng = random.Random(size)
    packed = rng.randbytes(size)
    messages = encode_record(41, 3, 77, packed)
    assert len(messages) == chunk_count(size) == max(1, -(-size // MAX_CHUNK_BYTES))
    assert all(len(data) <= MAX_MESSAGE_BYTES for data in messages)
    parsed = [parse_message(data) for data in messages]
    assert {(m.kind, m.sequence, m.segment, m.frame, m.chunks) for m in parsed} == {
        (MessageType.RECORD, 41, 3, 77, len(messages))}
    assert [m.chunk for m in parsed] == list(range(len(messages)))
    rng.shuffle(messages)
    assert reassemble(messages) == [packed]


@pytest.mark.parametrize(
    "record",
    [
        HEADER,
        SegmentStart(2, 6, 3, 1),
        FrameRecord(6, True, 64, 96, 123, bytes(MAX_CHUNK_BYTES - 9 - FrameRecord._LAYOUT.size)),
        FrameRecord(7, False, 64, 96, 456, bytes(MAX_CHUNK_BYTES - 9 - FrameRecord._LAYOUT.size + 1)),
        StreamEnd(9, 3),
        AdapterRecord(b""),
    ],
)
def test_real_records_travel_whole(record):
    """Packed sizes include exactly one full chunk and one byte more."""
    frame = record.index if isinstance(record, FrameRecord) else None
    messages = encode_record(5, 2, frame, pack_record(record))
    [packed] = reassemble(messages[::-1])
    assert unpack_packed_record(packed) == record


def test_heartbeat_is_echoed():
    payload = heartbeat_payload(12, 987_654_321_000)
    beat = parse_message(encode_control(MessageType.HEARTBEAT, 3, payload))
    assert (beat.kind, beat.sequence, beat.segment, beat.frame, beat.chunk, beat.chunks) == (
        MessageType.HEARTBEAT, 3, None, None, 0, 1)
    ack = parse_message(encode_control(MessageType.HEARTBEAT_ACK, 0, beat.payload))
    assert parse_heartbeat(ack.payload) == (12, 987_654_321_000)
    with pytest.raises(WireError) as caught:
        parse_heartbeat(payload[:-1])
    assert caught.value.reason == "malformed"


def test_keyframe_request_carries_its_reason():
    reason = "résumé after adapter gap".encode()
    message = parse_message(encode_control(MessageType.KEYFRAME_REQUEST, 1, reason))
    assert (message.kind, message.payload.decode()) == (MessageType.KEYFRAME_REQUEST, "résumé after adapter gap")


@pytest.mark.parametrize(
    "kind, payload",
    [
        (MessageType.RECORD, b""),
        (MessageType.HEARTBEAT, b"short"),
        (MessageType.HEARTBEAT_ACK, b""),
        (MessageType.KEYFRAME_REQUEST, b"x" * 201),
        (MessageType.KEYFRAME_REQUEST, b"\xff"),
    ],
)
def test_sender_refuses_what_a_receiver_would_drop(kind, payload):
    with pytest.raises(ValueError):
        encode_control(kind, 0, payload)


def test_sender_refuses_bad_indexes_and_huge_records():
    with pytest.raises(ValueError, match="frame"):
        encode_record(0, 0, NOT_APPLICABLE, b"")
    with pytest.raises(ValueError, match="segment"):
        encode_record(0, -1, 0, b"")
    with pytest.raises(ValueError, match="limit"):
        encode_record(0, 0, 0, bytes(MAX_RECORD_BYTES + 1))


def _flip_crc(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 1])


@pytest.mark.parametrize(
    "data, reason",
    [
        (raw(payload=bytes(MAX_CHUNK_BYTES + 1)), "oversized"),
        (b"", "corrupt"),
        (raw()[:-1], "corrupt"),
        (raw(magic=b"XW"), "corrupt"),
        (raw(version=2), "corrupt"),
        (raw(payload=b"abc", length=5), "corrupt"),
        (raw(payload=b"abc", length=2), "corrupt"),
        (_flip_crc(raw(payload=b"abc")), "corrupt"),
        ("a text message", "corrupt"),
        (raw(kind=0), "malformed"),
        (raw(kind=5), "malformed"),
        (raw(chunks=0), "malformed"),
        (raw(chunk=2, chunks=2), "malformed"),
        (raw(kind=2, chunks=2, payload=heartbeat_payload(1, 1)), "malformed"),
        (raw(kind=2, payload=b"short"), "malformed"),
        (raw(kind=3, payload=heartbeat_payload(1, 1) + b"x"), "malformed"),
        (raw(kind=4, payload=b"x" * 201), "malformed"),
        (raw(kind=4, payload=b"\xc3"), "malformed"),
    ],
)
def test_each_bad_message_has_its_reason(data, reason):
    with pytest.raises(WireError) as caught:
        parse_message(data)
    assert caught.value.reason == reason


def test_largest_message_is_accepted():
    message = parse_message(raw(payload=bytes(MAX_CHUNK_BYTES)))
    assert len(message.payload) == MAX_CHUNK_BYTES


def _record_message(sequence=5, segment=1, frame=2, chunk=0, chunks=2, payload=b"p") -> Message:
    return Message(MessageType.RECORD, sequence, segment, frame, chunk, chunks, payload)


@pytest.mark.parametrize("field", ["chunks", "segment", "frame"])
def test_chunks_that_disagree_are_malformed(field):
    reassembler = Reassembler()
    assert reassembler.add(_record_message(chunk=0, chunks=3)) is None
    other = {"chunks": dict(chunks=4), "segment": dict(chunks=3, segment=9), "frame": dict(chunks=3, frame=None)}[field]
    with pytest.raises(WireError) as caught:
        reassembler.add(_record_message(chunk=1, **other))
    assert caught.value.reason == "malformed"
    assert reassembler.add(_record_message(chunk=1, chunks=3)) is None
    assert reassembler.add(_record_message(chunk=2, chunks=3)) == b"ppp"


def test_records_beyond_the_limit_are_oversized():
    reassembler = Reassembler(max_record_bytes=MAX_CHUNK_BYTES + 10)
    with pytest.raises(WireError) as caught:
        reassembler.add(_record_message(chunks=3))
    assert caught.value.reason == "oversized" and reassembler.pending == 0
    messages = encode_record(6, 0, 0, bytes(MAX_CHUNK_BYTES + 11))
    assert reassembler.add(parse_message(messages[0])) is None
    with pytest.raises(WireError) as caught:
        reassembler.add(parse_message(messages[1]))
    assert caught.value.reason == "oversized"
    assert reassembler.add(parse_message(messages[1])) is None
    assert reassembler.dropped == {"late": 1}
    assert reassemble(encode_record(7, 0, 0, bytes(MAX_CHUNK_BYTES + 10)), reassembler) == [bytes(MAX_CHUNK_BYTES + 10)]


def test_duplicates_are_counted_and_ignored():
    reassembler = Reassembler()
    first, second = encode_record(3, 0, 0, bytes(MAX_CHUNK_BYTES + 1))
    assert reassembler.add(parse_message(first)) is None
    assert reassembler.add(parse_message(first)) is None
    assert reassembler.add(parse_message(second)) == bytes(MAX_CHUNK_BYTES + 1)
    assert reassembler.add(parse_message(second)) is None
    assert reassembler.add(parse_message(first)) is None
    assert reassembler.dropped == {"duplicate": 3}


def test_oldest_incomplete_record_is_dropped_and_its_late_chunks_too():
    reassembler = Reassembler(max_pending=2)
    for sequence in (1, 2, 3):
        assert reassembler.add(_record_message(sequence=sequence)) is None
    assert reassembler.pending == 2 and reassembler.dropped == {"incomplete": 1}
    assert reassembler.add(_record_message(sequence=1, chunk=1)) is None
    assert reassembler.pending == 2 and reassembler.dropped == {"incomplete": 1, "late": 1}
    assert reassembler.add(_record_message(sequence=2, chunk=1)) == b"pp"


def test_pending_records_stay_bounded():
    reassembler = Reassembler()
    for sequence in range(100):
        reassembler.add(_record_message(sequence=sequence, chunks=1000))
        assert reassembler.pending <= 8
    assert reassembler.dropped == {"incomplete": 92}


def test_finished_sequences_are_remembered_in_a_bounded_window():
    reassembler = Reassembler()
    first = encode_record(0, 0, 0, b"first")
    assert reassemble(first, reassembler) == [b"first"]
    assert reassemble(first, reassembler) == []
    for sequence in range(1, COMPLETED_WINDOW + 1):
        reassemble(encode_record(sequence, 0, sequence, b"r"), reassembler)
    assert reassemble(first, reassembler) == [b"first"]


def test_only_records_are_reassembled():
    with pytest.raises(ValueError):
        Reassembler().add(parse_message(encode_control(MessageType.HEARTBEAT, 0, heartbeat_payload(0, 0))))


@settings(deadline=None)
@given(st.one_of(st.binary(max_size=300), st.binary(max_size=300).map(lambda tail: b"AW\x01" + tail)))
def test_random_bytes_only_ever_raise_wire_error(data):
    try:
        parse_message(data)
    except WireError as exc:
        assert exc.reason in ("oversized", "corrupt", "malformed")


valid_messages = st.one_of(
    st.builds(encode_record, st.integers(0, 2**32 - 1), st.none() | st.integers(0, 10**6),
              st.none() | st.integers(0, 10**6), st.binary(max_size=300)).map(lambda messages: messages[0]),
    st.builds(encode_control, st.just(MessageType.HEARTBEAT), st.integers(0, 2**32 - 1),
              st.builds(heartbeat_payload, st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1))),
    st.builds(encode_control, st.just(MessageType.KEYFRAME_REQUEST), st.integers(0, 2**32 - 1),
              st.text(max_size=50).map(str.encode)),
)


@settings(deadline=None)
@given(valid_messages, st.data())
def test_damaged_messages_are_refused_or_unchanged(data, draw):
    original = parse_message(data)
    if draw.draw(st.booleans()):
        damaged = data[: draw.draw(st.integers(0, len(data) - 1))]
    else:
        damaged = bytearray(data)
        for bit in draw.draw(st.sets(st.integers(0, len(data) * 8 - 1), min_size=1, max_size=3)):
            damaged[bit // 8] ^= 1 << bit % 8
        damaged = bytes(damaged)
    try:
        assert parse_message(damaged) == original
    except WireError as exc:
        assert exc.reason in ("oversized", "corrupt", "malformed")


FATES = ("deliver", "deliver", "drop", "duplicate", "flip", "truncate")


@settings(deadline=None, max_examples=60)
@given(st.lists(st.integers(0, 3 * MAX_CHUNK_BYTES), min_size=1, max_size=5), st.integers(0, 2**32 - 1),
       st.sampled_from([1, 2, 8]))
def test_reassembler_fed_damaged_traffic_returns_only_records_sent(sizes, seed, max_pending):
    rng = random.Random(seed)
    records = {sequence: rng.randbytes(size) for sequence, size in enumerate(sizes)}
    traffic, intact = [], set()
    for sequence, packed in records.items():
        for data in encode_record(sequence, 0, sequence, packed):
            fate = rng.choice(FATES)
            traffic += _apply(fate, data, rng)
            if fate in ("deliver", "duplicate"):
                intact.add(data)
    rng.shuffle(traffic)
    reassembler = Reassembler(max_pending=max_pending)
    returned = []
    for data in traffic:
        try:
            message = parse_message(data)
            record = reassembler.add(message)
        except WireError:
            continue
        if record is not None:
            assert record == records[message.sequence]
            returned.append(message.sequence)
    assert len(returned) == len(set(returned))
    complete = {s for s, p in records.items() if set(encode_record(s, 0, s, p)) <= intact}
    if max_pending >= len(records):
        assert set(returned) == complete
    assert set(returned) <= complete


def _apply(fate: str, data: bytes, rng: random.Random) -> list[bytes]:
    if fate == "drop":
        return []
    if fate == "duplicate":
        return [data, data]
    if fate == "truncate":
        return [data[: rng.randrange(len(data))]]
    if fate == "flip":
        damaged = bytearray(data)
        for bit in rng.sample(range(len(data) * 8), rng.randint(1, 3)):
            damaged[bit // 8] ^= 1 << bit % 8
        return [bytes(damaged)]
    return [data]


def test_unpack_packed_record_accepts_every_record_type():
    for record in (HEADER, SegmentStart(0, 0, 3), FrameRecord(0, True, 64, 96, 1, b"rans"), StreamEnd(3, 1),
                   AdapterRecord(b"u")):
        assert unpack_packed_record(pack_record(record)) == record


@pytest.mark.parametrize(
    "data, match",
    [
        (b"", "truncated"),
        (pack_record(StreamEnd(3, 1))[:8], "truncated"),
        (pack_record(StreamEnd(3, 1))[:-1], "follow"),
        (pack_record(StreamEnd(3, 1)) + b"\x00", "follow"),
        (_flip_crc(pack_record(StreamEnd(3, 1))), "checksum"),
        (struct.pack("<BII", 5, MAX_RECORD_BYTES + 1, 0), "limit"),
        (struct.pack("<BII", 9, 0, record_crc(9, b"")), "unknown record type"),
        (struct.pack("<BII", 4, 1, record_crc(4, b"x")) + b"x", "end record"),
    ],
)
def test_unpack_packed_record_refuses_bad_bytes(data, match):
    with pytest.raises(BitstreamError, match=match):
        unpack_packed_record(data)
