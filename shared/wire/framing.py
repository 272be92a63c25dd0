"""Data-channel framing: .acs records cut into checksummed messages of at most 16 KiB.

    message := "AW" version:u8 type:u8 sequence:u32 segment:u32 frame:u32
               chunk:u16 chunks:u16 length:u16 crc32c:u32 payload[length]

aiortc neither enforces a message size nor bounds what it buffers, and browsers close a channel
past 256 KiB, so a record travels as chunks small enough for any peer. Every message carries the
CRC-32C of its header and payload (DTLS guards the path; this catches bugs at either end) and its
record's segment and frame, so stale latents can be dropped without parsing the record. Nothing
that arrives can crash a receiver or grow its memory without bound: a message that must be
dropped raises WireError with a short reason to count it under. All integers are little-endian.
docs/protocol.md describes every field.
"""

from __future__ import annotations

import struct
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Literal, get_args

import crc32c

from adaptcast.shared.codec.bitstream import MAX_RECORD_BYTES
from adaptcast.shared.errors import AdaptcastError

MAGIC = b"AW"
VERSION = 1
MAX_MESSAGE_BYTES = 16 << 10
"""Largest message, header included: far below what any peer accepts, and short enough that a
keyframe does not hold the send queue (shared by all channels) for long at a time."""
NOT_APPLICABLE = 0xFFFFFFFF
"""The segment or frame of a message that belongs to none (stream header, control messages)."""
MAX_REASON_BYTES = 200
COMPLETED_WINDOW = 1024
"""How many finished sequences a Reassembler remembers, to recognise chunks that come too late."""
WireReason = Literal["oversized", "corrupt", "malformed", "duplicate", "late", "incomplete"]
REASONS: tuple[WireReason, ...] = get_args(WireReason)
"""Every reason a message or record is dropped for: the label values of a drop counter."""
_HEAD = struct.Struct("<2sBBIIIHHH")
_CRC = struct.Struct("<I")
_HEARTBEAT = struct.Struct("<QI")
HEADER_BYTES = _HEAD.size + _CRC.size
MAX_CHUNK_BYTES = MAX_MESSAGE_BYTES - HEADER_BYTES


class MessageType(IntEnum):
    """What a message carries. Only records are cut into chunks; the others fit in one message.

    RECORD: one chunk of a packed record. HEARTBEAT: u64 monotonic nanoseconds and a u32 number,
    which the receiver echoes in a HEARTBEAT_ACK so the sender measures the round trip (a dead
    path is otherwise noticed only after about 30 s). KEYFRAME_REQUEST: the receiver asks for an
    I-frame and a full adapter snapshot; the payload is a UTF-8 reason, for the sender's log.
    """

    RECORD = 1
    HEARTBEAT = 2
    HEARTBEAT_ACK = 3
    KEYFRAME_REQUEST = 4


class WireError(AdaptcastError):
    """A message that must be dropped; `reason` is a short label (one of REASONS) for metrics."""

    def __init__(self, reason: WireReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Message:
    """One checked data-channel message."""

    kind: MessageType
    """What the payload is; RECORD messages go to a Reassembler, the others are handled at once."""
    sequence: int
    """Per connection and direction, the number of the record or control message; +1 for each."""
    segment: int | None
    """The record's segment index; None when it belongs to no segment."""
    frame: int | None
    """The record's frame index; None when it is not a frame."""
    chunk: int
    """Which chunk of the record this is, from 0."""
    chunks: int
    """How many chunks the record was cut into; 1 for control messages."""
    payload: bytes
    """This message's share of the record, or the whole control payload (checked already)."""


def chunk_count(size: int) -> int:
    """How many messages a packed record of `size` bytes takes; an empty one still takes one."""
    return max(1, -(-size // MAX_CHUNK_BYTES))


def encode_record(sequence: int, segment: int | None, frame: int | None, packed: bytes) -> list[bytes]:
    """Cut a packed record into messages, in chunk order.

    A record larger than MAX_RECORD_BYTES is refused here, since no receiver would accept it.
    """
    if len(packed) > MAX_RECORD_BYTES:
        raise ValueError(f"a record of {len(packed)} bytes exceeds the limit of {MAX_RECORD_BYTES}")
    chunks = chunk_count(len(packed))
    starts = range(0, chunks * MAX_CHUNK_BYTES, MAX_CHUNK_BYTES)
    return [
        _message(MessageType.RECORD, sequence, segment, frame, index, chunks, packed[start : start + MAX_CHUNK_BYTES])
        for index, start in enumerate(starts)
    ]


def encode_control(kind: MessageType, sequence: int, payload: bytes = b"") -> bytes:
    """One control message; its payload is checked here as a receiver would check it."""
    if kind == MessageType.RECORD:
        raise ValueError("records are sent with encode_record")
    problem = _control_problem(kind, payload)
    if problem:
        raise ValueError(problem)
    return _message(kind, sequence, None, None, 0, 1, payload)


def heartbeat_payload(number: int, now_ns: int) -> bytes:
    """The payload of a HEARTBEAT: the sender's monotonic clock, read back from the ACK."""
    return _HEARTBEAT.pack(now_ns, number)


def parse_heartbeat(payload: bytes) -> tuple[int, int]:
    """The (number, now_ns) of a HEARTBEAT or HEARTBEAT_ACK payload."""
    if len(payload) != _HEARTBEAT.size:
        raise WireError("malformed", f"heartbeat payload has {len(payload)} bytes, expected {_HEARTBEAT.size}")
    now_ns, number = _HEARTBEAT.unpack(payload)
    return number, now_ns


def parse_message(data: bytes) -> Message:
    """Check and parse one message as it came off the data channel."""
    kind, sequence, segment, frame, chunk, chunks = _checked_head(data)
    try:
        kind = MessageType(kind)
    except ValueError:
        raise WireError("malformed", f"unknown message type {kind}") from None
    payload = data[HEADER_BYTES:]
    message = Message(kind, sequence, _index_or_none(segment), _index_or_none(frame), chunk, chunks, payload)
    problem = _structure_problem(message)
    if problem:
        raise WireError("malformed", problem)
    return message


@dataclass
class _Partial:
    """The chunks of one record received so far, and what its first chunk said about the record."""

    chunks: int
    segment: int | None
    frame: int | None
    parts: dict[int, bytes] = field(default_factory=dict)


class Reassembler:
    """Joins the chunks of records back together, in whatever order they arrive.

    Memory stays bounded whatever arrives: at most `max_pending` incomplete records, each of at
    most `chunk_count(max_record_bytes)` chunks, and the last COMPLETED_WINDOW finished sequences.
    What it drops by itself is counted in `dropped`: a chunk seen before ("duplicate"), a chunk of
    a record already given up ("late"), a record pushed out by newer ones ("incomplete"). A chunk
    that must be refused raises WireError instead, for the caller to count.
    """

    def __init__(self, max_record_bytes: int = MAX_RECORD_BYTES, max_pending: int = 8) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, not {max_pending}")
        self.max_record_bytes = max_record_bytes
        self.max_pending = max_pending
        self.max_chunks = chunk_count(max_record_bytes)
        self.dropped: Counter[WireReason] = Counter()
        self._pending: OrderedDict[int, _Partial] = OrderedDict()
        # Recently finished sequences, each with the reason a later chunk of it is dropped for.
        self._finished: OrderedDict[int, WireReason] = OrderedDict()

    @property
    def pending(self) -> int:
        """How many records are incomplete now."""
        return len(self._pending)

    def add(self, message: Message) -> bytes | None:
        """Take one RECORD message; the packed record once its last missing chunk has arrived."""
        if message.kind != MessageType.RECORD:
            raise ValueError(f"only RECORD messages are reassembled, not {message.kind.name}")
        if message.sequence in self._finished:
            self.dropped[self._finished[message.sequence]] += 1
            return None
        partial = self._partial_for(message)
        if message.chunk in partial.parts:
            self.dropped["duplicate"] += 1
            return None
        partial.parts[message.chunk] = message.payload
        if len(partial.parts) < partial.chunks:
            return None
        return self._complete(message.sequence, partial)

    def _partial_for(self, message: Message) -> _Partial:
        partial = self._pending.get(message.sequence)
        if partial is None:
            if message.chunks > self.max_chunks:
                detail = f"record {message.sequence} in {message.chunks} chunks (limit {self.max_chunks})"
                raise WireError("oversized", detail)
            partial = self._pending[message.sequence] = _Partial(message.chunks, message.segment, message.frame)
            self._drop_oldest_beyond_limit()
        elif (partial.chunks, partial.segment, partial.frame) != (message.chunks, message.segment, message.frame):
            said = f"{message.chunks} chunks, segment {message.segment}, frame {message.frame}"
            first = f"{partial.chunks}, {partial.segment}, {partial.frame}"
            detail = f"record {message.sequence}: chunk {message.chunk} says {said}; the first said {first}"
            raise WireError("malformed", detail)
        return partial

    def _complete(self, sequence: int, partial: _Partial) -> bytes:
        del self._pending[sequence]
        record = b"".join(partial.parts[index] for index in range(partial.chunks))
        if len(record) > self.max_record_bytes:
            self._finish(sequence, "late")
            raise WireError("oversized", f"record {sequence} has {len(record)} bytes (limit {self.max_record_bytes})")
        self._finish(sequence, "duplicate")
        return record

    def _drop_oldest_beyond_limit(self) -> None:
        while len(self._pending) > self.max_pending:
            sequence, _ = self._pending.popitem(last=False)
            self.dropped["incomplete"] += 1
            self._finish(sequence, "late")

    def _finish(self, sequence: int, later_reason: WireReason) -> None:
        self._finished[sequence] = later_reason
        if len(self._finished) > COMPLETED_WINDOW:
            self._finished.popitem(last=False)


def _message(
    kind: MessageType, sequence: int, segment: int | None, frame: int | None, chunk: int, chunks: int, payload: bytes
) -> bytes:
    segment_field, frame_field = _index_field(segment, "segment"), _index_field(frame, "frame")
    head = _HEAD.pack(MAGIC, VERSION, kind, sequence, segment_field, frame_field, chunk, chunks, len(payload))
    return head + _CRC.pack(crc32c.crc32c(head + payload)) + payload


def _index_field(value: int | None, name: str) -> int:
    """None travels as NOT_APPLICABLE, so no real index may take that value."""
    if value is None:
        return NOT_APPLICABLE
    if not 0 <= value < NOT_APPLICABLE:
        raise ValueError(f"{name} {value} is out of range (0..{NOT_APPLICABLE - 1})")
    return value


def _index_or_none(value: int) -> int | None:
    return None if value == NOT_APPLICABLE else value


def _checked_head(data: bytes) -> tuple[int, int, int, int, int, int]:
    """Size, magic, version, length and CRC: whether these are the bytes that were sent."""
    if not isinstance(data, bytes):
        raise WireError("corrupt", f"a {type(data).__name__} message (aiortc hands text messages over as str)")
    if len(data) > MAX_MESSAGE_BYTES:
        raise WireError("oversized", f"a message of {len(data)} bytes (limit {MAX_MESSAGE_BYTES})")
    if len(data) < HEADER_BYTES:
        raise WireError("corrupt", f"a message of {len(data)} bytes, shorter than the {HEADER_BYTES}-byte header")
    magic, version, kind, sequence, segment, frame, chunk, chunks, length = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise WireError("corrupt", f"bad magic {magic!r}")
    if version != VERSION:
        raise WireError("corrupt", f"message format version {version} is not supported (this build speaks {VERSION})")
    if length != len(data) - HEADER_BYTES:
        raise WireError("corrupt", f"header says {length} payload bytes, {len(data) - HEADER_BYTES} follow")
    (crc,) = _CRC.unpack_from(data, _HEAD.size)
    if crc32c.crc32c(data[: _HEAD.size] + data[HEADER_BYTES:]) != crc:
        raise WireError("corrupt", "checksum mismatch")
    return kind, sequence, segment, frame, chunk, chunks


def _structure_problem(message: Message) -> str | None:
    if message.chunks == 0:
        return "a message in 0 chunks"
    if message.chunk >= message.chunks:
        return f"chunk {message.chunk} of {message.chunks}"
    if message.kind == MessageType.RECORD:
        return None
    if message.chunks != 1:
        return f"a {message.kind.name} message in {message.chunks} chunks"
    return _control_problem(message.kind, message.payload)


def _control_problem(kind: MessageType, payload: bytes) -> str | None:
    """What is wrong with a control message's payload, if anything."""
    if kind in (MessageType.HEARTBEAT, MessageType.HEARTBEAT_ACK) and len(payload) != _HEARTBEAT.size:
        return f"{kind.name} payload has {len(payload)} bytes, expected {_HEARTBEAT.size}"
    if kind == MessageType.KEYFRAME_REQUEST:
        if len(payload) > MAX_REASON_BYTES:
            return f"keyframe request reason of {len(payload)} bytes (limit {MAX_REASON_BYTES})"
        try:
            payload.decode()
        except UnicodeDecodeError:
            return "keyframe request reason is not UTF-8"
    return None
