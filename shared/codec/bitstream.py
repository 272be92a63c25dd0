"""The adaptcast stream format (.acs): a versioned sequence of checksummed records.

    file   := MAGIC VERSION record*
    record := type:u8 length:u32 crc32c(type length payload):u32 payload

A stream header (JSON) comes first, then per segment a segment record and its frame records,
then an end record with the totals, so a truncated file is told apart from a complete one.
Format 4 adds the surveillance coding tools: a skipped frame (a frame record of kind SKIP and
no string: the decoder shows its reference again), and background pictures (a record that
codes a camera's background as an I-frame; a segment may start from it with a P-frame instead
of an I-frame). Format 5 adds a variable-rate model's quality index to segment and background
records. Formats 2 to 4 are still read.
The same records travel over the network; the CRC is checked before any byte of an
entropy-coded string reaches CompressAI's rANS decoder, which does not bound-check its input.
It covers the type and the length as well as the payload (format 3): an adapter record takes
any payload, so a damaged type byte would otherwise turn any record into one, unseen. Format 2
files (the CRC over the payload alone) are still read, so older archives export.
All integers are little-endian. docs/protocol.md describes every field.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from enum import IntEnum
from typing import BinaryIO, ClassVar

import crc32c

from adaptcast.shared.errors import BitstreamError

MAGIC = b"ACST"
VERSION = 5
READABLE_VERSIONS = (2, 3, 4, 5)
QUALITY_SCALE = 1000
"""Quality indexes travel as integers in thousandths; `snap_quality` rounds an index to what
travels, so that encoder and decoder use the very same value."""


def snap_quality(quality: float) -> float:
    return round(quality * QUALITY_SCALE) / QUALITY_SCALE


def _quality_field(quality: float, what: str) -> int:
    value = round(quality * QUALITY_SCALE)
    if not 0 <= value <= 0xFFFF:
        raise BitstreamError(f"{what}: quality index {quality} is outside 0..{0xFFFF / QUALITY_SCALE}")
    return value
MAX_RECORD_BYTES = 16 << 20
"""No record is larger: a 4K keyframe at the highest quality stays far below it."""
MAX_DIMENSION = 8192
_RECORD_HEAD = struct.Struct("<BII")
_KIND_LENGTH = struct.Struct("<BI")


class RecordType(IntEnum):
    STREAM_HEADER = 1
    SEGMENT = 2
    FRAME = 3
    END = 4
    ADAPTER = 5
    BACKGROUND = 6


class FrameKind(IntEnum):
    """How a frame is coded (the frame record's type byte)."""

    PREDICTED = 0
    """A P-frame: motion and residual latents against the reference."""
    INTRA = 1
    """An I-frame: the image latent alone."""
    SKIP = 2
    """Not coded: the decoder shows its reference again and keeps it as the reference."""


@dataclass(frozen=True)
class StreamHeader:
    """What a decoder must know before the first frame."""

    TYPE: ClassVar[RecordType] = RecordType.STREAM_HEADER
    model_sha256: str
    """SHA-256 of the base model's weights; decoding with any other model is refused."""
    model_name: str
    width: int
    """Frame size as shown (before padding)."""
    height: int
    fps: float
    segment_frames: int
    """Frames per segment; every segment starts with an I-frame or from a background picture."""
    stream: str = "camera"
    """The stream's (camera's) name; adapter updates name it too."""

    def __post_init__(self) -> None:
        checks = {
            "stream": isinstance(self.stream, str) and 1 <= len(self.stream.encode()) <= 64,
            "model_sha256": isinstance(self.model_sha256, str) and len(self.model_sha256) == 64,
            "model_name": isinstance(self.model_name, str) and len(self.model_name) <= 200,
            "width": isinstance(self.width, int) and 2 <= self.width <= MAX_DIMENSION and self.width % 2 == 0,
            "height": isinstance(self.height, int) and 2 <= self.height <= MAX_DIMENSION and self.height % 2 == 0,
            "fps": isinstance(self.fps, (int, float)) and 0 < self.fps <= 1000,
            "segment_frames": isinstance(self.segment_frames, int) and 1 <= self.segment_frames <= 100_000,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise BitstreamError(f"stream header has invalid {', '.join(bad)}")

    def pack(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def unpack(cls, payload: bytes) -> StreamHeader:
        try:
            fields = json.loads(payload.decode())
            return cls(**fields)
        except (UnicodeDecodeError, ValueError, TypeError, RecursionError) as exc:  # JSON nested too deep
            raise BitstreamError(f"stream header is malformed: {exc.__class__.__name__}: {str(exc)[:200]}") from None


@dataclass(frozen=True)
class SegmentStart:
    TYPE: ClassVar[RecordType] = RecordType.SEGMENT
    _LAYOUT: ClassVar[struct.Struct] = struct.Struct("<IIIIIH")
    _LAYOUT_V4: ClassVar[struct.Struct] = struct.Struct("<IIIII")
    """Format 4: no quality field."""
    _LAYOUT_V3: ClassVar[struct.Struct] = struct.Struct("<IIII")
    """Formats 2 and 3: no background field either."""
    index: int
    first_frame: int
    frames: int
    adapter_version: int = 0
    """The adapter version the segment was coded with; 0 is the base model."""
    background: int = 0
    """The background picture the segment's first frame is predicted from; 0: none (the segment
    starts with an I-frame). The segment decodes alone given that background."""
    quality: float = 0.0
    """The quality index a variable-rate model codes the segment at (0 for a single-rate model)."""

    def pack(self) -> bytes:
        return self._LAYOUT.pack(self.index, self.first_frame, self.frames, self.adapter_version, self.background,
                                 _quality_field(self.quality, f"segment {self.index}"))

    @classmethod
    def unpack(cls, payload: bytes) -> SegmentStart:
        if len(payload) == cls._LAYOUT.size:
            index, first_frame, frames, adapter_version, background, quality = cls._LAYOUT.unpack(payload)
            return cls(index, first_frame, frames, adapter_version, background, quality / QUALITY_SCALE)
        for layout in (cls._LAYOUT_V4, cls._LAYOUT_V3):
            if len(payload) == layout.size:
                return cls(*layout.unpack(payload))
        raise BitstreamError(f"segment record has {len(payload)} bytes, expected {cls._LAYOUT.size}")


@dataclass(frozen=True)
class FrameRecord:
    """One coded frame: its rANS string, the CRC32C of its quantized symbols, and when it was
    captured (the start of glass-to-glass latency; 0 when unknown). A skipped frame has neither
    string nor symbols."""

    TYPE: ClassVar[RecordType] = RecordType.FRAME
    _LAYOUT: ClassVar[struct.Struct] = struct.Struct("<IBHHIQ")
    index: int
    kind: FrameKind
    height: int
    """Padded frame height the latents were computed at."""
    width: int
    symbols_crc: int
    string: bytes
    captured_us: int = 0
    """Capture time, microseconds since the Unix epoch."""

    @property
    def keyframe(self) -> bool:
        return self.kind == FrameKind.INTRA

    def pack(self) -> bytes:
        head = self._LAYOUT.pack(self.index, self.kind, self.height, self.width, self.symbols_crc, self.captured_us)
        return head + self.string

    @classmethod
    def unpack(cls, payload: bytes) -> FrameRecord:
        if len(payload) < cls._LAYOUT.size:
            raise BitstreamError(f"frame record has only {len(payload)} bytes")
        index, kind, height, width, crc, captured_us = cls._LAYOUT.unpack_from(payload)
        if kind not in set(FrameKind):
            raise BitstreamError(f"frame {index}: invalid frame type {kind}")
        string = payload[cls._LAYOUT.size :]
        if kind == FrameKind.SKIP and (string or crc):
            raise BitstreamError(f"frame {index}: a skipped frame with {len(string)} bytes of string")
        return cls(index, FrameKind(kind), height, width, crc, string, captured_us)


@dataclass(frozen=True)
class BackgroundRecord:
    """A camera's background picture, coded as an I-frame with the base model's decoder (never an
    adapter's, so that it decodes the same whatever adapter a receiver holds). Segments that name
    its `index` start by predicting from it. `index` grows by one with each new background of a
    stream; 0 is never used (a segment's `background` 0 means none)."""

    TYPE: ClassVar[RecordType] = RecordType.BACKGROUND
    _LAYOUT: ClassVar[struct.Struct] = struct.Struct("<IHHIH")
    _LAYOUT_V4: ClassVar[struct.Struct] = struct.Struct("<IHHI")
    """Format 4: no quality field."""
    index: int
    height: int
    """Padded frame height the latent was computed at."""
    width: int
    symbols_crc: int
    string: bytes
    quality: float = 0.0
    """The quality index a variable-rate model coded it at."""

    def pack(self) -> bytes:
        quality = _quality_field(self.quality, f"background {self.index}")
        return self._LAYOUT.pack(self.index, self.height, self.width, self.symbols_crc, quality) + self.string

    @classmethod
    def unpack(cls, payload: bytes, version: int = VERSION) -> BackgroundRecord:
        layout = cls._LAYOUT if version >= 5 else cls._LAYOUT_V4
        if len(payload) < layout.size:
            raise BitstreamError(f"background record has only {len(payload)} bytes")
        index, height, width, crc, *quality = layout.unpack_from(payload)
        if index == 0:
            raise BitstreamError("background record with index 0")
        return cls(index, height, width, crc, payload[layout.size :], quality[0] / QUALITY_SCALE if quality else 0.0)

    def as_frame(self) -> FrameRecord:
        """The background as the I-frame it is coded as, for the frame decoder."""
        return FrameRecord(0, FrameKind.INTRA, self.height, self.width, self.symbols_crc, self.string)


@dataclass(frozen=True)
class StreamEnd:
    TYPE: ClassVar[RecordType] = RecordType.END
    _LAYOUT: ClassVar[struct.Struct] = struct.Struct("<II")
    frames: int
    segments: int

    def pack(self) -> bytes:
        return self._LAYOUT.pack(self.frames, self.segments)

    @classmethod
    def unpack(cls, payload: bytes) -> StreamEnd:
        if len(payload) != cls._LAYOUT.size:
            raise BitstreamError(f"end record has {len(payload)} bytes, expected {cls._LAYOUT.size}")
        return cls(*cls._LAYOUT.unpack(payload))


@dataclass(frozen=True)
class AdapterRecord:
    """An adapter update (`shared.adapters.update`), parsed and checked by the adapter store."""

    TYPE: ClassVar[RecordType] = RecordType.ADAPTER
    update: bytes

    def pack(self) -> bytes:
        return self.update

    @classmethod
    def unpack(cls, payload: bytes) -> AdapterRecord:
        return cls(payload)


Record = StreamHeader | SegmentStart | FrameRecord | StreamEnd | AdapterRecord | BackgroundRecord
_RECORD_CLASSES: dict[int, type[StreamHeader | SegmentStart | FrameRecord | StreamEnd | AdapterRecord]] = {
    cls.TYPE: cls for cls in (StreamHeader, SegmentStart, FrameRecord, StreamEnd, AdapterRecord)
}


def record_crc(kind: int, payload: bytes, version: int = VERSION) -> int:
    """A record's CRC32C: of its type, length and payload; of the payload alone in format 2."""
    start = 0 if version == 2 else crc32c.crc32c(_KIND_LENGTH.pack(kind, len(payload)))
    return crc32c.crc32c(payload, start)


def pack_record(record: Record) -> bytes:
    payload = record.pack()
    return _RECORD_HEAD.pack(record.TYPE, len(payload), record_crc(record.TYPE, payload)) + payload


def unpack_record(kind: int, payload: bytes, crc: int, version: int = VERSION) -> Record:
    """Check a record's CRC and type, then parse it; a typed error for anything wrong."""
    if record_crc(kind, payload, version) != crc:
        raise BitstreamError(f"record of type {kind}: checksum mismatch (corrupted)")
    if kind == BackgroundRecord.TYPE:  # the one record whose layout cannot be told by its length
        return BackgroundRecord.unpack(payload, version)
    cls = _RECORD_CLASSES.get(kind)
    if cls is None:
        raise BitstreamError(f"unknown record type {kind}")
    return cls.unpack(payload)


def unpack_packed_record(data: bytes) -> Record:
    """Parse one record as `pack_record` packed it: how a record arrives over the network, whole.

    The length must match the bytes exactly, so a record cut short or followed by stray bytes is
    refused rather than half-read.
    """
    if len(data) < _RECORD_HEAD.size:
        raise BitstreamError(f"truncated record header: {len(data)} of {_RECORD_HEAD.size} bytes")
    kind, length, crc = _RECORD_HEAD.unpack_from(data)
    if length > MAX_RECORD_BYTES:
        raise BitstreamError(f"record claims {length} bytes (limit {MAX_RECORD_BYTES})")
    if len(data) != _RECORD_HEAD.size + length:
        raise BitstreamError(f"record claims {length} bytes but {len(data) - _RECORD_HEAD.size} follow its header")
    return unpack_record(kind, bytes(data[_RECORD_HEAD.size :]), crc)


class StreamWriter:
    """Appends records to a binary file."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self._file.write(MAGIC + bytes([VERSION]))
        self.bytes_written = len(MAGIC) + 1

    def write(self, record: Record) -> int:
        return self.write_packed(pack_record(record))

    def write_packed(self, data: bytes) -> int:
        """Append a record already packed (`pack_record`'s bytes), without packing it again."""
        self._file.write(data)
        self.bytes_written += len(data)
        return len(data)


def read_records(file: BinaryIO) -> Iterator[Record]:
    """Yield the records of a stream file; raise BitstreamError at the first bad byte."""
    head = file.read(len(MAGIC) + 1)
    if len(head) < len(MAGIC) + 1 or head[: len(MAGIC)] != MAGIC:
        raise BitstreamError("not an adaptcast stream (bad magic)")
    version = head[-1]
    if version not in READABLE_VERSIONS:
        raise BitstreamError(f"stream format version {version} is not supported (this build reads "
                             f"{', '.join(map(str, READABLE_VERSIONS))})")
    offset = len(head)
    while True:
        raw = file.read(_RECORD_HEAD.size)
        if not raw:
            return
        if len(raw) < _RECORD_HEAD.size:
            raise BitstreamError(f"truncated record header at byte {offset}")
        kind, length, crc = _RECORD_HEAD.unpack(raw)
        if length > MAX_RECORD_BYTES:
            raise BitstreamError(f"record at byte {offset} claims {length} bytes (limit {MAX_RECORD_BYTES})")
        payload = file.read(length)
        if len(payload) < length:
            raise BitstreamError(f"truncated record at byte {offset}: {len(payload)} of {length} bytes")
        try:
            yield unpack_record(kind, payload, crc, version)
        except BitstreamError as exc:
            raise BitstreamError(f"at byte {offset}: {exc}") from None
        offset += _RECORD_HEAD.size + length
