"""Fuzzing a real receiver over the real transport (`adaptcast bench-fuzz`): every check refuses
what it must, counted by reason, and nothing a camera sends stops the receiver.

A real receiver process (one camera, one decode worker) is sent, over WHIP and an aiortc data
channel, as that camera with its valid token:

(a) fuzzed data-channel messages: random bytes, and valid messages bit-flipped, truncated,
    extended, with a header field changed (CRC recomputed, so the field is what is tested), with a
    wrong CRC, duplicated, out of order, under a sequence number already used, oversized, as text;
(b) corrupted adapter updates, latents (frame records) and background pictures, each in a
    correctly framed record (a valid message CRC; for half of them a recomputed record CRC, so that
    they get past the record check to the adapter store and the frame decoder). They come in
    groups, each behind a valid stream header and adapter snapshot, each latent behind its own
    segment start (and a valid I-frame for a corrupted P-frame), each update followed by a segment
    that names its version, and each background (under an index never used before) followed by a
    segment that starts from it with a skipped frame, so the decoder takes every one of them
    instead of waiting for the next segment: a background refused must leave that frame unshown;
(c) a valid stream of a few segments on a fresh connection, through the sender's own StreamSender at
    the camera's frame rate: every frame of it must be shown (or, on a machine too busy to keep up,
    skipped as late by the receiver's overload rule, which is counted apart).

Messages are handed to the channel only while its buffer is below StreamSender's high-water mark,
so nothing is lost in the local buffer. After each group, and every MESSAGES_PER_PROBE messages of
(a), a probe is sent (a stream header, a segment and a valid I-frame stamped with its sending time,
the only frame sent stamped) and awaited in the receiver's count of timed frames: this keeps the
receiver's record queue (600) from overflowing, shows that it still decodes, and lets the camera's
decoder start again after a worker restart. The receiver's counters come from its /metrics, the
memory of it and of its decode worker from /proc.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
import struct
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import crc32c
import yaml
from prometheus_client.parser import text_string_to_metric_families

from adaptcast.demo import free_port, spawn_daemon, wait_ready
from adaptcast.sender.encoder import Outgoing
from adaptcast.sender.transport import HIGH_WATER_BYTES, StreamSender, WhipConnection
from adaptcast.shared.adapters.update import decode_update, encode_update
from adaptcast.shared.codec.bitstream import (
    AdapterRecord,
    BackgroundRecord,
    FrameKind,
    FrameRecord,
    Record,
    RecordType,
    SegmentStart,
    StreamEnd,
    StreamHeader,
    pack_record,
    record_crc,
)
from adaptcast.shared.codec.defaults import DEFAULT_MODEL
from adaptcast.shared.wire.framing import (
    MAX_CHUNK_BYTES,
    MessageType,
    WireError,
    encode_control,
    encode_record,
    heartbeat_payload,
    parse_message,
)

CAMERA = "fuzz"
TOKEN_ENV = "ADAPTCAST_TOKEN_FUZZ"
GROUP_PAYLOADS = 4
"""Corrupted payloads between two probes: about 12 records, a few of them decoded, queued at the
receiver at a time, well within the 2 s a frame may wait there before it is skipped as late."""
MESSAGES_PER_PROBE = 250
"""Fuzzed messages of (a) between two probes."""
PROBE_TIMEOUT_SECONDS = 60.0
"""Time a probe gets to be shown: enough for a decode worker to restart, backoff included."""
PROBE_RETRY_SECONDS = 5.0
DRAIN_SECONDS = 60.0
"""Time the valid stream of (c) gets to leave the sender and be shown or skipped."""
POLL_SECONDS = 0.05
SETTLE_SECONDS = 2.0
"""Before (c), the receiver's shown-frame count must stay still this long: a corrupted latent
that decoded with a capture time can end a probe's wait before the probe itself is shown."""

MESSAGE_KINDS = ("random_bytes", "random_after_magic", "bit_flips", "truncated", "extended", "field_changed",
                 "wrong_crc", "duplicate", "out_of_order", "reused_sequence", "conflicting_chunks", "incomplete",
                 "oversize", "text", "control")
UPDATE_MUTATIONS = ("bit_flips", "truncated", "extended", "field_changed", "random_string", "wrong_crc", "duplicate")
FRAME_MUTATIONS = ("bit_flips", "string_flips", "truncated", "string_truncated", "extended", "field_changed",
                   "random_string", "oversize_string", "empty_string")

# The layouts as docs/protocol.md gives them (name, struct format), written out here rather than
# imported, so that the fuzzer does not share a mistake with the code it tests.
_MESSAGE_FIELDS = (("magic", "2s"), ("version", "B"), ("type", "B"), ("sequence", "I"), ("segment", "I"),
                   ("frame", "I"), ("chunk", "H"), ("chunks", "H"), ("length", "H"))
_FRAME_FIELDS = (("index", "I"), ("kind", "B"), ("height", "H"), ("width", "H"), ("symbols_crc", "I"),
                 ("captured_us", "Q"))
_BACKGROUND_FIELDS = (("index", "I"), ("height", "H"), ("width", "H"), ("symbols_crc", "I"))
_UPDATE_HEAD_FIELDS = (("magic", "4s"), ("format", "B"), ("kind", "B"), ("stream_len", "B"))
"""An update's head: its stream name follows, then the body."""
_UPDATE_BODY_FIELDS = (("version", "I"), ("parent", "I"), ("model_sha256", "32s"), ("seed", "Q"),
                       ("bin_width", "d"), ("rank0", "B"), ("rank1", "B"), ("rank2", "B"), ("rank3", "B"),
                       ("decoders", "B"), ("method", "B"), ("symbols", "I"), ("string_len", "I"))


def _size(fields: tuple[tuple[str, str], ...]) -> int:
    return struct.calcsize("<" + "".join(fmt for _, fmt in fields))


_MESSAGE_HEAD = struct.Struct("<" + "".join(fmt for _, fmt in _MESSAGE_FIELDS))
_MESSAGE_CRC_AT = _MESSAGE_HEAD.size
_MESSAGE_HEADER_BYTES = _MESSAGE_HEAD.size + 4
_RECORD_HEAD = struct.Struct("<BII")
_FRAME_HEAD_BYTES = _size(_FRAME_FIELDS)
_UPDATE_HEAD_BYTES = _size(_UPDATE_HEAD_FIELDS)
_UPDATE_BODY_BYTES = _size(_UPDATE_BODY_FIELDS)


@dataclass
class ProcessMemory:
    """One process of the receiver: the daemon, a decode worker (the pool keeps a spare too), or another child."""

    role: str
    pid: int
    rss_kib: int


@dataclass
class FuzzReport:
    messages_sent: dict[str, int]
    """(a): data-channel messages sent, by kind."""
    payloads_sent: dict[str, int]
    """(b): corrupted payloads sent, by "adapter|latent|background mutation, record CRC recomputed|original"."""
    malformed: dict[str, int]
    """The receiver's adaptcast_receiver_malformed_messages_total by reason, after the run."""
    dropped: dict[str, int]
    """adaptcast_receiver_records_dropped_total by reason."""
    adapter_rejections: dict[str, int]
    fallbacks: dict[str, int]
    worker_restarts: int
    keyframe_requests: int
    """KEYFRAME_REQUEST messages the receiver sent back."""
    reconnects: int
    """Connections the fuzzing client had to open again because the receiver's side closed."""
    probes_sent: int
    """Probes sent, those sent again included."""
    probe_timeouts: int
    """Waits for a probe that gave up after PROBE_TIMEOUT_SECONDS (the receiver stopped decoding)."""
    timed_frames_shown: int
    """Frames shown with a capture time: the probes, and any corrupted latent whose capture time field
    was changed and that still decoded."""
    valid_frames_sent: int
    valid_frames_shown: int
    """(c): frames of the valid stream the receiver showed."""
    valid_frames_late: int
    """(c): frames of the valid stream the receiver skipped as late (it was behind: its overload rule,
    receiver/session.py), not as damaged."""
    receiver_alive: bool
    """The receiver process was still running when the run ended."""
    receiver_exit_code: int | None
    """Its exit code once asked to stop (SIGTERM): 0 is a clean stop."""
    memory_before: list[ProcessMemory]
    """After the first valid frame was shown, before any fuzzing."""
    memory_after: list[ProcessMemory]
    seconds: float


@dataclass
class _ReceiverCounters:
    frames_shown: int = 0
    timed_frames: int = 0
    """Frames shown that carried a capture time (in the latency histogram)."""
    worker_restarts: int = 0
    by_reason: dict[str, Counter[str]] = field(default_factory=dict)
    """Counts by reason, keyed malformed, dropped, adapter_rejections, fallbacks."""


_REASON_METRICS = {
    "adaptcast_receiver_malformed_messages_total": "malformed",
    "adaptcast_receiver_records_dropped_total": "dropped",
    "adaptcast_receiver_adapter_rejections_total": "adapter_rejections",
    "adaptcast_receiver_fallback_segments_total": "fallbacks",
}


def _scrape(url: str) -> _ReceiverCounters:
    """The receiver's counters for the fuzzed camera, from its /metrics."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    counters = _ReceiverCounters(by_reason={name: Counter() for name in _REASON_METRICS.values()})
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "adaptcast_receiver_frames_shown_total":
                counters.frames_shown = int(sample.value)
            elif sample.name == "adaptcast_receiver_latency_seconds_count":
                counters.timed_frames = int(sample.value)
            elif sample.name == "adaptcast_receiver_decode_worker_restarts_total":
                counters.worker_restarts += int(sample.value)
            elif sample.name in _REASON_METRICS:
                counters.by_reason[_REASON_METRICS[sample.name]][sample.labels["reason"]] += int(sample.value)
    return counters


def receiver_memory(pid: int) -> list[ProcessMemory]:
    """The resident memory of a receiver and of its children (found through /proc: their parent pid)."""
    processes = [ProcessMemory("receiver", pid, _rss_kib(pid))]
    for entry in sorted(Path("/proc").iterdir(), key=lambda entry: int(entry.name) if entry.name.isdigit() else -1):
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            rss = _rss_kib(int(entry.name))
        except (OSError, ValueError):
            continue  # gone meanwhile
        if int(stat[stat.rindex(")") + 2 :].split()[1]) != pid:
            continue
        role = "decode worker" if "spawn_main" in command else "resource tracker" if "resource_tracker" in command \
            else command[:40]
        processes.append(ProcessMemory(role, int(entry.name), rss))
    # the pool runs its workers and a spare: number the roles that repeat, in pid order, so each has a row
    repeats = Counter(process.role for process in processes)
    seen: Counter[str] = Counter()
    for process in processes:
        if repeats[process.role] > 1:
            seen[process.role] += 1
            process.role = f"{process.role} {seen[process.role]}"
    return processes


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ValueError(f"process {pid} has no VmRSS (a zombie)")


# ---------------------------------------------------------------------------------------------
# Mutations


def _flip_bits(data: bytes, rng: random.Random) -> bytes:
    damaged = bytearray(data)
    for bit in rng.sample(range(len(data) * 8), min(len(data) * 8, rng.randint(1, 8))):
        damaged[bit // 8] ^= 1 << bit % 8
    return bytes(damaged)


def _field_offset(fields: tuple[tuple[str, str], ...], name: str) -> tuple[int, str]:
    names = [field_name for field_name, _ in fields]
    index = names.index(name)
    return _size(fields[:index]), fields[index][1]


def _changed_field(data: bytes, fields: tuple[tuple[str, str], ...], start: int, name: str,
                   rng: random.Random) -> bytes:
    """`data` with one field of the layout that begins at `start` set to a boundary or random value."""
    offset, fmt = _field_offset(fields, name)
    offset += start
    size = struct.calcsize("<" + fmt)
    if fmt.endswith("s"):
        value: object = rng.randbytes(size)
    elif fmt == "d":
        value = rng.choice([float("nan"), float("inf"), -1.0, 0.0, 1e-7, 2.0, 1e308, rng.uniform(-1, 1)])
    else:
        (original,) = struct.unpack_from("<" + fmt, data, offset)
        top = (1 << 8 * size) - 1
        value = rng.choice([0, 1, top, top - 1, max(0, original - 1), min(top, original + 1), rng.randint(0, top)])
        if name == "symbols":  # the bound decode_update checks, and either side of it
            value = rng.choice([value, 4_000_000, 4_000_001])
    return data[:offset] + struct.pack("<" + fmt, value) + data[offset + size :]


def _with_message_crc(data: bytes) -> bytes:
    """A message with its CRC made right for its (changed) header and payload."""
    crc = crc32c.crc32c(data[:_MESSAGE_CRC_AT] + data[_MESSAGE_HEADER_BYTES:])
    return data[:_MESSAGE_CRC_AT] + struct.pack("<I", crc) + data[_MESSAGE_HEADER_BYTES:]


def _with_update_crc(data: bytes) -> bytes:
    """An update with its trailing CRC made right for every byte before it."""
    if len(data) < 4:
        return data
    return data[:-4] + struct.pack("<I", crc32c.crc32c(data[:-4]))


def _corrupt_update(update: bytes, rng: random.Random) -> tuple[str, bytes]:
    """A mutation of a valid adapter update: its name and bytes. Half of the byte-level mutations
    get their CRC made right again, so that they reach the checks behind the CRC."""
    mutation = rng.choice(UPDATE_MUTATIONS)
    body_start = _UPDATE_HEAD_BYTES + update[_UPDATE_HEAD_BYTES - 1]
    string_start = body_start + _UPDATE_BODY_BYTES
    if mutation == "bit_flips":
        data = _flip_bits(update, rng)
    elif mutation == "truncated":
        data = update[: rng.randrange(len(update))]
    elif mutation == "extended":
        data = update + rng.randbytes(rng.randint(1, 64))
    elif mutation == "field_changed":
        names = [name for name, _ in _UPDATE_HEAD_FIELDS + _UPDATE_BODY_FIELDS] + ["stream"]
        name = rng.choice(names)
        if name == "stream":
            data = update[:_UPDATE_HEAD_BYTES] + rng.randbytes(body_start - _UPDATE_HEAD_BYTES) + update[body_start:]
        elif name in dict(_UPDATE_HEAD_FIELDS):
            data = _changed_field(update, _UPDATE_HEAD_FIELDS, 0, name, rng)
        else:
            data = _changed_field(update, _UPDATE_BODY_FIELDS, body_start, name, rng)
        return mutation, _with_update_crc(data)
    elif mutation == "random_string":
        string = rng.randbytes(rng.choice([0, 3, 8, len(update) - string_start - 4, rng.randint(1, 4096)]))
        body = update[:string_start - 4] + struct.pack("<I", len(string)) + string
        return mutation, _with_update_crc(body + bytes(4))
    elif mutation == "wrong_crc":
        (crc,) = struct.unpack("<I", update[-4:])
        return mutation, update[:-4] + struct.pack("<I", crc ^ rng.randint(1, 2**32 - 1))
    else:
        return mutation, update
    return mutation, _with_update_crc(data) if rng.random() < 0.5 else data


def _corrupt_frame(payload: bytes, rng: random.Random,
                   fields: tuple[tuple[str, str], ...] = _FRAME_FIELDS) -> tuple[str, bytes]:
    """A mutation of a valid frame record's payload (its 21-byte head, then its rANS string), or of
    a background record's (`fields` its head: a background is an I-frame's string behind it)."""
    mutation = rng.choice(FRAME_MUTATIONS)
    head_bytes = _size(fields)
    head, string = payload[:head_bytes], payload[head_bytes:]
    if mutation == "bit_flips":
        return mutation, _flip_bits(payload, rng)
    if mutation == "string_flips":
        return mutation, head + _flip_bits(string, rng)
    if mutation == "truncated":
        return mutation, payload[: rng.randrange(len(payload))]
    if mutation == "string_truncated":
        return mutation, head + string[: rng.randrange(len(string))]
    if mutation == "extended":
        return mutation, payload + rng.randbytes(rng.choice([1, 4, 64, 1024]))
    if mutation == "field_changed":
        return mutation, _changed_field(payload, fields, 0, rng.choice([n for n, _ in fields]), rng)
    if mutation == "random_string":
        return mutation, head + rng.randbytes(4 * rng.randint(2, max(2, len(string) // 2)))
    if mutation == "oversize_string":
        return mutation, head + rng.randbytes(rng.randint(100_000, 300_000))
    return mutation, head


def _packed(kind: RecordType, payload: bytes, crc: int) -> bytes:
    return _RECORD_HEAD.pack(kind, len(payload), crc) + payload


@dataclass
class _Numbering:
    """Segment and frame indexes in the order a decoder expects them, so that only the corruption
    itself is refused, never the valid records around it."""

    segment: int = 0
    frame: int = 0

    def start(self, frames: int) -> tuple[int, int]:
        """The next segment's index and first frame, for a segment of `frames` frames."""
        segment, first = self.segment, self.frame
        self.segment, self.frame = segment + 1, first + frames
        return segment, first


# ---------------------------------------------------------------------------------------------
# The client


class _FuzzClient:
    """One camera's connection used to send raw messages: its own sequence numbers, StreamSender's
    flow control, and a new connection whenever the receiver's side closes one."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.token = token
        self.connection: WhipConnection | None = None
        self.sequence = 0
        self.reconnects = 0
        self.keyframe_requests = 0
        self.numbering = _Numbering()
        self.probes = 0
        self.probe_timeouts = 0
        self._timed_expected = 0
        """Timed frames the receiver will have shown once it has shown the last probe."""
        self._drained = asyncio.Event()

    async def open(self) -> None:
        self.connection = WhipConnection(f"{self.url}/whip/{CAMERA}", self.token, timeout=30)
        await self.connection.open()
        self.connection.channel.on("bufferedamountlow", self._drained.set)
        self.connection.channel.on("message", self._on_message)

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()

    def _on_message(self, data: bytes | str) -> None:
        with contextlib.suppress(WireError):
            if isinstance(data, bytes) and parse_message(data).kind == MessageType.KEYFRAME_REQUEST:
                self.keyframe_requests += 1

    def next_sequence(self) -> int:
        self.sequence = (self.sequence + 1) % 2**32
        return self.sequence

    async def send(self, data: bytes | str) -> None:
        """Hand one message to the channel once its buffer is below StreamSender's high-water mark."""
        while True:
            connection = self.connection
            assert connection is not None, "a client is opened before it sends"
            channel, pc = connection.channel, connection.pc
            if channel.readyState != "open" or pc.connectionState in ("failed", "closed"):
                await connection.close()
                self.reconnects += 1
                await self.open()
                continue
            if channel.bufferedAmount <= HIGH_WATER_BYTES:
                channel.send(data)
                return
            self._drained.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._drained.wait(), 1.0)

    async def send_record(self, packed: bytes, segment: int | None = None, frame: int | None = None) -> None:
        for message in encode_record(self.next_sequence(), segment, frame, packed):
            await self.send(message)

    async def probe(self, header: StreamHeader, keyframe: FrameRecord) -> None:
        """A stream header, a segment and an I-frame stamped with the time, then wait until the receiver
        has shown that frame: it has decoded everything sent before it by then. The header lets the
        camera's decoder start again if a worker restart lost it. A probe not shown within
        PROBE_RETRY_SECONDS is sent again: the receiver skips frames that waited too long in its
        queue (records_dropped{reason="late"}), and a later probe finds the queue drained."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PROBE_TIMEOUT_SECONDS
        target = self._timed_expected + 1
        timed = 0
        while loop.time() < deadline and timed < target:
            segment, first = self.numbering.start(1)
            await self.send_record(pack_record(header))
            await self.send_record(pack_record(SegmentStart(segment, first, 1)), segment)
            stamped = replace(keyframe, index=first, captured_us=int(time.time() * 1e6))
            await self.send_record(pack_record(stamped), segment, first)
            self.probes += 1
            retry = min(deadline, loop.time() + PROBE_RETRY_SECONDS)
            while (timed := (await asyncio.to_thread(_scrape, self.url)).timed_frames) < target \
                    and loop.time() < retry:
                await asyncio.sleep(POLL_SECONDS)
        self.probe_timeouts += timed < target
        self._timed_expected = timed  # a corrupted latent that got through stamped counts too


# ---------------------------------------------------------------------------------------------
# The three phases


@dataclass
class _Stream:
    """The valid recording, named as the fuzzed camera, and the pieces the fuzzer builds from."""

    records: list[Record]
    header: StreamHeader
    keyframe: FrameRecord
    pframe: FrameRecord
    """The frame after `keyframe`, coded against it."""
    updates: list[bytes]
    """Every adapter update of the recording, the first a snapshot."""
    background: BackgroundRecord
    """The recording's first I-frame as a background picture: it is one (an I-frame of the base
    model), so the fuzzer needs no recording with backgrounds of its own."""
    pool: list[tuple[bytes, int | None, int | None]]
    """Packed records with their segment and frame, the messages that (a) starts from."""


def _as_camera(records: list[Record]) -> _Stream:
    """The recording as the fuzzed camera's: its header and updates name the camera."""
    renamed: list[Record] = []
    segment: int | None = None
    pool = []
    for record in records:
        if isinstance(record, StreamHeader):
            record = replace(record, stream=CAMERA)
        elif isinstance(record, AdapterRecord):
            record = AdapterRecord(encode_update(replace(decode_update(record.update), stream=CAMERA)))
        elif isinstance(record, SegmentStart):
            segment = record.index
        renamed.append(record)
        if not isinstance(record, (StreamHeader, StreamEnd)):  # neither restarts nor ends the decoder in (a)
            frame = record.index if isinstance(record, FrameRecord) else None
            pool.append((pack_record(record), segment, frame))
    frames = [r for r in renamed if isinstance(r, FrameRecord)]
    updates = [r.update for r in renamed if isinstance(r, AdapterRecord)]
    header = renamed[0]
    if not isinstance(header, StreamHeader):
        raise ValueError("the recording needs to start with a stream header")
    if len(frames) < 2 or not frames[0].keyframe or frames[1].keyframe or not updates:
        raise ValueError("the recording needs an I-frame, the P-frame after it, and an adapter update")
    first = frames[0]
    background = BackgroundRecord(1, first.height, first.width, first.symbols_crc, first.string)
    pool += [(pack_record(background), None, None),
             (pack_record(FrameRecord(first.index + 1, FrameKind.SKIP, first.height, first.width, 0, b"")), None,
              first.index + 1)]
    return _Stream(renamed, header, frames[0], frames[1], updates, background, pool)


async def _fuzz_messages(client: _FuzzClient, stream: _Stream, count: int, rng: random.Random) -> Counter[str]:
    """(a): `count` fuzzed messages, with a probe every MESSAGES_PER_PROBE of them."""
    sent: Counter[str] = Counter()
    used: list[int] = []
    incomplete: list[int] = []
    since_probe = 0

    def valid_message() -> bytes:
        packed, segment, frame = rng.choice(stream.pool)
        sequence = client.next_sequence()
        used.append(sequence)
        return encode_record(sequence, segment, frame, packed)[0]

    def filler(sequence: int) -> list[bytes]:
        """A record of three chunks (an adapter record the store refuses: random bytes)."""
        return encode_record(sequence, None, None, pack_record(AdapterRecord(rng.randbytes(2 * MAX_CHUNK_BYTES + 99))))

    while sum(sent.values()) < count:
        kind = rng.choice(MESSAGE_KINDS)
        messages: list[bytes | str]
        if kind == "random_bytes":
            messages = [rng.randbytes(rng.choice([rng.randrange(64), rng.randrange(2048)]))]
        elif kind == "random_after_magic":
            messages = [b"AW\x01" + rng.randbytes(rng.randrange(64))]
        elif kind == "bit_flips":
            messages = [_flip_bits(valid_message(), rng)]
        elif kind == "truncated":
            message = valid_message()
            messages = [message[: rng.randrange(len(message))]]
        elif kind == "extended":
            messages = [valid_message() + rng.randbytes(rng.randint(1, 64))]
        elif kind == "field_changed":
            name = rng.choice([name for name, _ in _MESSAGE_FIELDS])
            messages = [_with_message_crc(_changed_field(valid_message(), _MESSAGE_FIELDS, 0, name, rng))]
        elif kind == "wrong_crc":
            message = valid_message()
            crc = struct.unpack_from("<I", message, _MESSAGE_CRC_AT)[0] ^ rng.randint(1, 2**32 - 1)
            messages = [message[:_MESSAGE_CRC_AT] + struct.pack("<I", crc) + message[_MESSAGE_HEADER_BYTES:]]
        elif kind == "duplicate":
            message = valid_message()
            messages = [message, message]
        elif kind == "out_of_order":
            messages = list(reversed(filler(client.next_sequence())))
        elif kind == "reused_sequence":
            packed, segment, frame = rng.choice(stream.pool)
            messages = [encode_record(rng.choice(used) if used else 0, segment, frame, packed)[0]]
        elif kind == "conflicting_chunks":  # chunks of one record that disagree on its segment
            sequence = client.next_sequence()
            messages = [filler(sequence)[0], encode_record(sequence, 7, None, bytes(2 * MAX_CHUNK_BYTES))[1]]
        elif kind == "incomplete":
            sequence = client.next_sequence()
            messages = [filler(sequence)[0]]
            if incomplete and rng.random() < 0.5:  # a chunk of one given up by now, most likely
                messages.append(filler(rng.choice(incomplete))[1])
            incomplete.append(sequence)
        elif kind == "oversize":
            payload = rng.randbytes(rng.randint(MAX_CHUNK_BYTES + 1, 60_000))
            head = _MESSAGE_HEAD.pack(b"AW", 1, 1, client.next_sequence(), 2**32 - 1, 2**32 - 1, 0, 1, len(payload))
            messages = [_with_message_crc(head + bytes(4) + payload)]
        elif kind == "text":
            messages = ["a text message " * rng.randint(1, 20)]
        else:
            control = rng.choice([MessageType.HEARTBEAT, MessageType.HEARTBEAT_ACK, MessageType.KEYFRAME_REQUEST])
            payload = heartbeat_payload(rng.randrange(2**32), time.monotonic_ns()) \
                if control != MessageType.KEYFRAME_REQUEST else b"fuzz"
            messages = [encode_control(control, client.next_sequence(), payload)]
        for outgoing in messages:
            await client.send(outgoing)
        sent[kind] += len(messages)
        since_probe += len(messages)
        if since_probe >= MESSAGES_PER_PROBE:
            since_probe = 0
            await client.probe(stream.header, stream.keyframe)
    return sent


async def _fuzz_payloads(client: _FuzzClient, stream: _Stream, count: int, rng: random.Random) -> Counter[str]:
    """(b): `count` corrupted adapter updates, latents and backgrounds each, in groups, each group
    behind the probe before it (a stream header) and the recording's first adapter snapshot."""
    plan = ["adapter"] * count + ["latent"] * count + ["background"] * count
    rng.shuffle(plan)
    sent: Counter[str] = Counter()
    unused_index = 1000  # a corrupted background's index, which no valid background has had
    for start in range(0, len(plan), GROUP_PAYLOADS):
        await client.send_record(pack_record(AdapterRecord(stream.updates[0])))
        for target in plan[start : start + GROUP_PAYLOADS]:
            recompute = rng.random() < 0.5
            if target == "adapter":  # the update, then a segment that names its version, and its I-frame
                update = rng.choice(stream.updates)
                mutation, data = _corrupt_update(update, rng)
                crc = record_crc(RecordType.ADAPTER, data if recompute else update)
                await client.send_record(_packed(RecordType.ADAPTER, data, crc))
                segment, first = client.numbering.start(1)
                version = decode_update(update).version
                await client.send_record(pack_record(SegmentStart(segment, first, 1, version)), segment)
                await client.send_record(pack_record(replace(stream.keyframe, index=first)), segment, first)
            elif target == "background":  # the background, then a segment from it: a skipped frame shows it
                unused_index += 1
                original = replace(stream.background, index=unused_index).pack()
                mutation, data = _corrupt_frame(original, rng, _BACKGROUND_FIELDS)
                crc = record_crc(RecordType.BACKGROUND, data if recompute else original)
                await client.send_record(_packed(RecordType.BACKGROUND, data, crc))
                segment, first = client.numbering.start(1)
                await client.send_record(pack_record(SegmentStart(segment, first, 1, 0, unused_index)), segment)
                skip = FrameRecord(first, FrameKind.SKIP, stream.keyframe.height, stream.keyframe.width, 0, b"")
                await client.send_record(pack_record(skip), segment, first)
            else:  # a segment, the valid I-frame a corrupted P-frame needs, and the corrupted frame
                base = rng.choice([stream.keyframe, stream.pframe])
                segment, first = client.numbering.start(1 if base.keyframe else 2)
                await client.send_record(pack_record(SegmentStart(segment, first, 1 if base.keyframe else 2)), segment)
                if not base.keyframe:
                    await client.send_record(pack_record(replace(stream.keyframe, index=first)), segment, first)
                index = first + (not base.keyframe)
                original = replace(base, index=index).pack()
                mutation, data = _corrupt_frame(original, rng)
                crc = record_crc(RecordType.FRAME, data if recompute else original)
                await client.send_record(_packed(RecordType.FRAME, data, crc), segment, index)
            sent[f"{target} {mutation}, record CRC {'recomputed' if recompute else 'original'}"] += 1
        await client.probe(stream.header, stream.keyframe)
    return sent


async def _send_valid_stream(url: str, token: str, stream: _Stream) -> int:
    """(c): the valid recording on a new connection through StreamSender, its frames at the camera's
    rate as a sender sends them; returns the keyframe requests it got."""
    connection = WhipConnection(f"{url}/whip/{CAMERA}", token, timeout=30)
    await connection.open()
    requests: list[str] = []
    sender = StreamSender(CAMERA, connection, live=False, on_keyframe_request=requests.append)
    running = asyncio.create_task(sender.run())
    loop = asyncio.get_running_loop()
    start = loop.time()
    frames = 0
    try:
        segment: int | None = None
        for record in stream.records:
            segment = record.index if isinstance(record, SegmentStart) else segment
            frame = record.index if isinstance(record, FrameRecord) else None
            if frame is not None:
                await asyncio.sleep(max(0.0, start + frames / stream.header.fps - loop.time()))
                frames += 1
            sender.put([Outgoing(record, segment, frame)])
        await sender.drained(DRAIN_SECONDS)
        if running.done():
            running.result()  # a lost connection fails the run
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await connection.close()
    return len(requests)


async def _settled_scrape(url: str) -> _ReceiverCounters:
    """The receiver's counters once it has shown nothing new for SETTLE_SECONDS (DRAIN_SECONDS at most)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DRAIN_SECONDS
    counters = await asyncio.to_thread(_scrape, url)
    still_since = loop.time()
    while loop.time() - still_since < SETTLE_SECONDS and loop.time() < deadline:
        await asyncio.sleep(POLL_SECONDS * 10)
        latest = await asyncio.to_thread(_scrape, url)
        if latest.frames_shown != counters.frames_shown:
            still_since = loop.time()
        counters = latest
    return counters


@dataclass
class _ClientFigures:
    messages: Counter[str]
    payloads: Counter[str]
    keyframe_requests: int
    reconnects: int
    probes: int
    probe_timeouts: int
    valid_frames_shown: int
    valid_frames_late: int
    memory_before: list[ProcessMemory]


async def _run_client(url: str, token: str, stream: _Stream, messages: int, payloads: int, seed: int,
                      receiver_pid: int) -> _ClientFigures:
    rng = random.Random(seed)
    client = _FuzzClient(url, token)
    await client.open()
    try:
        await client.probe(stream.header, stream.keyframe)
        memory_before = receiver_memory(receiver_pid)
        sent_messages = await _fuzz_messages(client, stream, messages, rng)
        sent_payloads = await _fuzz_payloads(client, stream, payloads, rng)
    finally:
        await client.close()
    before = await _settled_scrape(url)
    requests = await _send_valid_stream(url, token, stream)
    frames = sum(isinstance(record, FrameRecord) for record in stream.records)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DRAIN_SECONDS
    while True:
        after = await asyncio.to_thread(_scrape, url)
        shown = after.frames_shown - before.frames_shown
        late = after.by_reason["dropped"]["late"] - before.by_reason["dropped"]["late"]
        if shown + late >= frames or loop.time() > deadline:
            break
        await asyncio.sleep(POLL_SECONDS)
    return _ClientFigures(sent_messages, sent_payloads, client.keyframe_requests + requests, client.reconnects,
                          client.probes, client.probe_timeouts, shown, late, memory_before)


def run_fuzz(records: list[Record], messages: int, payloads: int, seed: int = 1,
             model: str = DEFAULT_MODEL) -> FuzzReport:
    """Fuzz a fresh receiver (one camera, one decode worker, `model`: the one `records` were coded
    with) with `messages` fuzzed messages and `payloads` corrupted adapter updates and as many
    corrupted latents and backgrounds, then stream `records`."""
    stream = _as_camera(records)
    token = secrets.token_urlsafe(16)
    port = free_port(0)
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="adaptcast-fuzz-") as folder:
        config = Path(folder) / "receiver.yaml"
        config.write_text(yaml.safe_dump({"listen": {"host": "127.0.0.1", "port": port}, "workers": 1, "model": model,
                                          "cameras": [{"name": CAMERA, "token_env": TOKEN_ENV}]}))
        receiver = spawn_daemon("receiver", config, {**os.environ, TOKEN_ENV: token}, quiet=True)
        try:
            wait_ready(f"{url}/readyz", receiver)
            figures = asyncio.run(_run_client(url, token, stream, messages, payloads, seed, receiver.pid))
            counters = _scrape(url)
            memory_after = receiver_memory(receiver.pid)
            alive = receiver.poll() is None
        finally:
            receiver.terminate()
            exit_code = receiver.wait(timeout=60)
    return FuzzReport(
        messages_sent=dict(figures.messages), payloads_sent=dict(sorted(figures.payloads.items())),
        malformed=dict(counters.by_reason["malformed"]), dropped=dict(counters.by_reason["dropped"]),
        adapter_rejections=dict(counters.by_reason["adapter_rejections"]),
        fallbacks=dict(counters.by_reason["fallbacks"]), worker_restarts=counters.worker_restarts,
        keyframe_requests=figures.keyframe_requests, reconnects=figures.reconnects, probes_sent=figures.probes,
        probe_timeouts=figures.probe_timeouts, timed_frames_shown=counters.timed_frames,
        valid_frames_sent=sum(isinstance(r, FrameRecord) for r in records),
        valid_frames_shown=figures.valid_frames_shown, valid_frames_late=figures.valid_frames_late,
        receiver_alive=alive, receiver_exit_code=exit_code,
        memory_before=figures.memory_before, memory_after=memory_after, seconds=time.monotonic() - started,
    )


def markdown(report: FuzzReport) -> str:
    """The report as Markdown tables: what was sent, what the receiver counted, its memory, the verdict."""

    def counts(title: str, values: dict[str, int]) -> list[str]:
        rows = [f"| {name} | {n} |" for name, n in sorted(values.items())] or ["| (none) | 0 |"]
        return [f"| {title} | count |", "|---|---|", *rows, ""]

    lines = [
        "A real receiver (one camera, one decode worker) is sent, over WHIP and an aiortc data channel as that "
        "camera: (a) fuzzed data-channel messages; (b) corrupted adapter updates, latents and background "
        "pictures, each in a correctly framed record (half of them with a recomputed record CRC, so that they "
        "reach the adapter store and the frame decoder), between valid stream headers, adapter snapshots and "
        "segment starts; (c) a valid stream at the camera's rate on a new connection. After every few payloads "
        "a probe (a header, a segment and a valid I-frame) is awaited, so the receiver is never behind. "
        "`bench/fuzz.py` says how; "
        "`tests/test_fuzz.py` property-tests every parser and keeps each input that once broke one.",
        "",
        "Reasons: `corrupt`, `malformed`, `oversized`, `duplicate`, `late`, `incomplete` are the framing's "
        "(docs/protocol.md); `text` and `unexpected_type` messages a sender never sends; `bad_record` a "
        "reassembled record whose CRC, type or fields are wrong. Records dropped for `decode` were refused by "
        "the decoder (order, frame size, string length, symbol checksum); `late` ones waited too long in the "
        "receiver's queue. Adapter rejections and fallbacks are the adapter store's (docs/protocol.md).",
        "",
        "## Sent", ""]
    lines += counts(f"(a) fuzzed messages, by kind ({sum(report.messages_sent.values())})", report.messages_sent)
    lines += counts(f"(b) corrupted payloads ({sum(report.payloads_sent.values())})", report.payloads_sent)
    lines += ["## The receiver's counters after the run", ""]
    lines += counts("malformed messages and records, by reason", report.malformed)
    lines += counts("records dropped, by reason", report.dropped)
    lines += counts("adapter updates rejected, by reason", report.adapter_rejections)
    lines += counts("segments that fell back to the base model, by reason", report.fallbacks)
    lines += ["## Memory (VmRSS)", "", "| process | pid before | before | pid after | after |", "|---|---|---|---|---|"]
    before = {m.role: m for m in report.memory_before}
    after = {m.role: m for m in report.memory_after}
    for role in sorted(before.keys() | after.keys()):
        b, a = before.get(role), after.get(role)
        lines.append(f"| {role} | {b.pid if b else '-'} | {f'{b.rss_kib / 1024:.1f} MiB' if b else '-'} | "
                     f"{a.pid if a else '-'} | {f'{a.rss_kib / 1024:.1f} MiB' if a else '-'} |")
    verdict = "exited 0 when stopped" if report.receiver_exit_code == 0 else f"exit code {report.receiver_exit_code}"
    lines += ["", "## Outcome", "",
              f"- receiver process: {'running at the end' if report.receiver_alive else 'DIED'}, {verdict}",
              f"- decode worker restarts: {report.worker_restarts}",
              f"- probes sent: {report.probes_sent}; waits given up after {PROBE_TIMEOUT_SECONDS:.0f} s: "
              f"{report.probe_timeouts}; frames shown with a capture time (probes, and corrupted latents whose "
              f"capture time changed and that still decoded): {report.timed_frames_shown}",
              f"- (c) valid stream on a new connection: {report.valid_frames_shown} of {report.valid_frames_sent} "
              f"frames shown, {report.valid_frames_late} skipped as late (the receiver was behind)",
              f"- keyframe requests from the receiver: {report.keyframe_requests}; client reconnections: "
              f"{report.reconnects}",
              f"- run time: {report.seconds:.0f} s"]
    return "\n".join(lines)
