"""Bad input, property-tested: every parser takes its input exactly as the bytes say or refuses it with
the project's typed error and a reason, never another exception and never a hang; the frame decoder's
bounds keep strings no frame of the stream could have from CompressAI's unchecked rANS decoder; and a
real receiver fuzzed over the real transport (a quick `adaptcast bench-fuzz`) survives and still
shows a valid stream.

tests/test_wire.py fuzzes the data-channel framing and the reassembler, tests/test_bad_input.py
decodes damaged .acs files end to end, tests/test_adapters.py sends the adapter store randomly
damaged updates (refused by their CRC): these start where those stop. Inputs that once broke a
parser are kept at the end, each with its exact input.
"""

from __future__ import annotations

import faulthandler
import io
import json
import multiprocessing
import os
import re
import struct
from dataclasses import asdict, replace
from datetime import timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import crc32c
import pytest
import torch
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from adaptcast.shared.adapters.fitting import FitBudget
from adaptcast.shared.adapters.mode import AdaptMode
from adaptcast.shared.adapters.store import AdapterStore
from adaptcast.shared.adapters.update import MAX_SYMBOLS, AdapterRejected, decode_update, encode_update
from adaptcast.shared.codec import framecodec
from adaptcast.shared.codec.bitstream import (
    MAGIC,
    VERSION,
    AdapterRecord,
    FrameRecord,
    Record,
    RecordType,
    SegmentStart,
    StreamEnd,
    StreamHeader,
    pack_record,
    read_records,
    unpack_packed_record,
    unpack_record,
)
from adaptcast.shared.codec.framecodec import MAX_SYMBOL_BYTES, RANS_STATE_BYTES
from adaptcast.shared.codec.modelfile import load_model_file
from adaptcast.shared.config import load_receiver_config, load_sender_config
from adaptcast.shared.errors import BitstreamError, ConfigError
from adaptcast.shared.frames import FrameSize
from adaptcast.shared.pipeline.stream import AdaptOptions, encode_file
from adaptcast.shared.pipeline.streamdecoder import StreamDecoder
from adaptcast_bench.fuzz import run_fuzz
from tests.conftest import CLIP, REPO

FUZZ = settings(deadline=timedelta(seconds=5), max_examples=150, suppress_health_check=[HealthCheck.too_slow])
"""A deadline far above any parse (milliseconds) catches a hang; the examples keep the file quick."""
ADAPTER_REASONS = {"corrupt", "misshapen", "non_finite", "wrong_stream", "wrong_model", "duplicate", "broken_chain"}
_RECORD_HEAD = struct.Struct("<BII")
"""type, length, crc32c: the record head as docs/protocol.md gives it, written out here."""


def _documented_crc(kind: int, payload: bytes) -> int:
    """A record's CRC as docs/protocol.md defines it: CRC-32C of the type byte, the length and the payload."""
    return crc32c.crc32c(struct.pack("<BI", kind, len(payload)) + payload)

_UPDATE_SYMBOLS_AT = 7 + 62
"""Where an update's symbol count is, after its head (7 bytes), stream name and 62 body bytes."""
SAFE_SYMBOLS = 100_000
"""Four times the test model's largest adapter: CompressAI's decoder reading that many symbols from a
short string reads past its end, but not far enough to leave the process's memory."""


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Torch on one thread: on a busy 2-core machine two OpenMP threads of the tiny test model wait
    on each other far longer than they compute (encoding the test stream: 6 s against 0.5 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def loaded(model_file):
    return load_model_file(model_file)


@pytest.fixture(scope="module")
def adapted_stream(model_file, tmp_path_factory) -> Path:
    """25 frames of the bundled clip at 96x64 in segments of 10, adapted live: a snapshot and an
    increment of the adapter, I-frames and P-frames."""
    path = tmp_path_factory.mktemp("fuzz") / "adapted.acs"
    adapt = AdaptOptions(mode=AdaptMode.LIVE, budget=FitBudget(steps=1))
    encode_file(CLIP, path, load_model_file(model_file), torch.device("cpu"), size=FrameSize(96, 64), fps=10,
                segment_frames=10, max_frames=25, adapt=adapt, progress=False)
    return path


@pytest.fixture(scope="module")
def records(adapted_stream) -> list[Record]:
    with open(adapted_stream, "rb") as file:
        return list(read_records(file))


def _faithful(record: Record, kind: int, payload: bytes) -> None:
    """`record` is exactly what a record of type `kind` with this payload says: accepted unchanged."""
    assert record.TYPE == kind
    if isinstance(record, StreamHeader):
        assert asdict(record) == {"stream": "camera", **json.loads(payload)}
    else:
        assert record.pack() == payload


def _documented_records(data: bytes) -> list[tuple[int, bytes]]:
    """The records of a stream file read by the layout in docs/protocol.md (for accepted files only)."""
    records, offset = [], len(MAGIC) + 1
    while offset < len(data):
        kind, length, crc = _RECORD_HEAD.unpack_from(data, offset)
        payload = data[offset + _RECORD_HEAD.size : offset + _RECORD_HEAD.size + length]
        assert len(payload) == length and _documented_crc(kind, payload) == crc
        records.append((kind, payload))
        offset += _RECORD_HEAD.size + length
    return records


def _damaged(data: bytes, draw: st.DrawFn) -> bytes:
    """`data` bit-flipped, overwritten, cut or extended."""
    how = draw(st.sampled_from(["flip", "overwrite", "truncate", "extend"]))
    if how == "truncate":
        return data[: draw(st.integers(0, len(data) - 1))]
    if how == "extend":
        return data + draw(st.binary(min_size=1, max_size=40))
    damaged = bytearray(data)
    for position in draw(st.sets(st.integers(0, len(data) - 1), min_size=1, max_size=4)):
        if how == "overwrite":
            damaged[position] = draw(st.integers(0, 255))
        else:
            damaged[position] ^= 1 << draw(st.integers(0, 7))
    return bytes(damaged)


# ---------------------------------------------------------------------------------------------
# Records: stream headers, segment starts, frames, end records, adapter records


json_values = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=70) | \
    st.lists(st.integers(), max_size=3)
header_fields = st.fixed_dictionaries(
    {}, optional={"model_sha256": st.just("ab" * 32) | json_values, "model_name": st.just("tiny") | json_values,
                  "width": st.sampled_from([96, 2, 8192, 8194, 95]) | json_values,
                  "height": st.sampled_from([64, 0, 8192]) | json_values,
                  "fps": st.sampled_from([12.5, 1000, 1000.5]) | json_values,
                  "segment_frames": st.sampled_from([3, 100_000, 100_001]) | json_values,
                  "stream": st.just("gate") | json_values, "extra": json_values})
header_payloads = header_fields.map(lambda fields: json.dumps(fields).encode())


@FUZZ
@given(st.integers(0, 255) | st.sampled_from(RecordType), st.binary(max_size=64) | header_payloads, st.booleans(),
       st.integers(0, 2**32 - 1))
def test_records_of_any_type_and_payload_are_parsed_exactly_or_refused(kind, payload, right_crc, crc):
    try:
        record = unpack_record(kind, payload, _documented_crc(kind, payload) if right_crc else crc)
    except BitstreamError as exc:
        assert str(exc)
        return
    _faithful(record, kind, payload)


def _records_of_every_type() -> st.SearchStrategy[Record]:
    u32 = st.integers(0, 2**32 - 1)
    return st.one_of(
        st.builds(StreamHeader, st.just("ab" * 32), st.text(max_size=20), st.integers(1, 4096).map(lambda v: 2 * v),
                  st.integers(1, 4096).map(lambda v: 2 * v), st.floats(0.1, 1000), st.integers(1, 100_000),
                  st.text(min_size=1, max_size=16)),
        st.builds(SegmentStart, u32, u32, u32, u32),
        st.builds(FrameRecord, u32, st.booleans(), st.integers(0, 65535), st.integers(0, 65535), u32,
                  st.binary(max_size=64), st.integers(0, 2**64 - 1)),
        st.builds(StreamEnd, u32, u32),
        st.builds(AdapterRecord, st.binary(max_size=64)),
    )


@FUZZ
@given(st.binary(max_size=100) | st.builds(lambda kind, payload: _RECORD_HEAD.pack(kind, len(payload), _documented_crc(
    kind, payload)) + payload, st.integers(0, 255), st.binary(max_size=40) | header_payloads))
def test_any_bytes_as_a_packed_record_are_parsed_exactly_or_refused(data):
    try:
        record = unpack_packed_record(data)
    except BitstreamError as exc:
        assert str(exc)
        return
    kind, length, crc = _RECORD_HEAD.unpack_from(data)
    payload = data[_RECORD_HEAD.size :]
    assert length == len(payload) and crc == _documented_crc(kind, payload)
    _faithful(record, kind, payload)


@FUZZ
@given(_records_of_every_type(), st.booleans(), st.data())
def test_damaged_packed_records_are_refused_or_parsed_exactly(record, fix_crc, draw):
    packed = pack_record(record)
    damaged = _damaged(packed, draw.draw)
    if fix_crc and len(damaged) >= _RECORD_HEAD.size:  # so that the damage reaches the parser itself
        damaged = damaged[:5] + struct.pack("<I", crc32c.crc32c(damaged[:5] + damaged[9:])) + damaged[9:]
    try:
        parsed = unpack_packed_record(damaged)
    except BitstreamError as exc:
        assert str(exc)
        return
    _faithful(parsed, damaged[0], damaged[_RECORD_HEAD.size :])
    if not fix_crc:  # the CRC covers every byte but its own: any damage is seen
        assert damaged == packed


# ---------------------------------------------------------------------------------------------
# .acs files


@FUZZ
@given(st.binary(max_size=200) | st.binary(max_size=200).map(lambda tail: MAGIC + bytes([VERSION]) + tail)
       | st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=30)), max_size=4).map(
           lambda records: MAGIC + bytes([VERSION]) + b"".join(
               _RECORD_HEAD.pack(k, len(p), _documented_crc(k, p)) + p for k, p in records)))
def test_any_bytes_as_a_stream_file_are_read_exactly_or_refused(data):
    try:
        records = list(read_records(io.BytesIO(data)))
    except BitstreamError as exc:
        assert str(exc)
        return
    documented = _documented_records(data)
    assert len(records) == len(documented)
    for record, (kind, payload) in zip(records, documented):
        _faithful(record, kind, payload)


@FUZZ
@given(st.data())
def test_damaged_stream_files_are_refused_or_read_exactly(adapted_stream, draw):
    data = adapted_stream.read_bytes()
    original = _documented_records(data)
    damaged = _damaged(data, draw.draw)
    try:
        records = list(read_records(io.BytesIO(damaged)))
    except BitstreamError as exc:
        assert str(exc)
        return
    documented = _documented_records(damaged)
    for record, (kind, payload) in zip(records, documented, strict=True):
        _faithful(record, kind, payload)
    assert documented == original[: len(documented)]  # every record read is one of the file's, unchanged
    if len(records) < len(original):  # cut at a record boundary: the end record says so
        assert not any(isinstance(record, StreamEnd) for record in records)


def test_a_format_2_file_is_still_read(adapted_stream):
    """Archives written before format 3 (the CRC over the payload alone) still export."""
    data = adapted_stream.read_bytes()
    old = MAGIC + bytes([2]) + b"".join(_RECORD_HEAD.pack(kind, len(payload), crc32c.crc32c(payload)) + payload
                                        for kind, payload in _documented_records(data))
    assert list(read_records(io.BytesIO(old))) == list(read_records(io.BytesIO(data)))


# ---------------------------------------------------------------------------------------------
# Adapter updates


def _floods_the_decoder(data: bytes) -> bool:
    """Whether decode_update may hand CompressAI more than SAFE_SYMBOLS symbols to read: the known crash
    (test_an_update_claiming_millions_of_symbols_is_refused_before_decoding), kept out of this process."""
    if len(data) < 7:
        return False
    at = _UPDATE_SYMBOLS_AT + data[6]
    return len(data) >= at + 4 and struct.unpack_from("<I", data, at)[0] > SAFE_SYMBOLS


def _with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", crc32c.crc32c(body))


@FUZZ
@given(st.binary(max_size=200) | st.binary(max_size=200).map(lambda tail: _with_crc(b"ACAD\x02" + tail)))
def test_any_bytes_as_an_adapter_update_are_decoded_exactly_or_rejected_with_a_reason(data):
    assume(not _floods_the_decoder(data))
    try:
        update = decode_update(data)
    except AdapterRejected as exc:
        assert exc.reason in ADAPTER_REASONS
        return
    again = decode_update(encode_update(update))
    assert (again.stream, again.version, again.parent, again.model_sha256, again.spec) == \
        (update.stream, update.version, update.parent, update.model_sha256, update.spec)
    assert torch.equal(again.symbols, update.symbols)


def _updates(records: list[Record]) -> list[bytes]:
    return [record.update for record in records if isinstance(record, AdapterRecord)]


@settings(FUZZ, max_examples=100)
@given(st.data(), st.booleans())
def test_damaged_adapter_updates_are_rejected_by_the_store_with_a_reason_or_held_exactly(records, loaded, draw,
                                                                                      fix_crc):
    snapshot, *increments = _updates(records)
    original = draw.draw(st.sampled_from([snapshot, *increments]))
    damaged = _damaged(original, draw.draw)
    if fix_crc:
        damaged = _with_crc(damaged[:-4])
    assume(not _floods_the_decoder(damaged))
    first = decode_update(snapshot)
    store = AdapterStore(first.stream, loaded.model, loaded.info.sha256)
    store.receive(snapshot)
    try:
        update = store.receive(damaged)
    except AdapterRejected as exc:
        assert exc.reason in ADAPTER_REASONS
        assert store.rejections == {exc.reason: 1} and store.held_versions() == [first.version]
        return
    assert store.held_versions() == [first.version, update.version]
    base = first.symbols if update.parent else 0
    assert torch.equal(decode_update(store.snapshot(update.version)).symbols, base + update.symbols)


# ---------------------------------------------------------------------------------------------
# Configuration files

TOKENS = {"ADAPTCAST_TOKEN_GATE": "gate-secret-0123456789", "ADAPTCAST_TOKEN_LAB": "lab-secret-0123456789"}
EXAMPLES = {"sender": REPO / "deploy/config/sender.example.yaml",
            "receiver": REPO / "deploy/config/receiver.example.yaml"}
LOADERS = {"sender": load_sender_config, "receiver": load_receiver_config}
_ERROR_LINE = re.compile(r"(?P<file>[^:]+\.yaml): (?P<key>.+?): (?P<message>.+)")


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory):
    """A folder for configuration files, with the examples' tokens in the environment."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in TOKENS.items():
            patch.setenv(name, value)
        yield tmp_path_factory.mktemp("config")


def _load(config_dir: Path, role: str, text: str | bytes) -> tuple[Path, Any]:
    """Load `text` as a `role` configuration file: the config, or the ConfigError's message."""
    path = config_dir / f"{role}.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    try:
        return path, LOADERS[role](path)
    except ConfigError as exc:
        assert str(exc)
        return path, str(exc)


scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=60)
documents = st.recursive(scalars, lambda children: st.lists(children, max_size=3) | st.dictionaries(
    st.text(max_size=12) | st.integers(), children, max_size=4), max_leaves=12)
"""YAML documents of any shape: any text, empty keys and line breaks included (file names over
255 bytes have their own test below)."""


@FUZZ
@given(st.sampled_from(sorted(LOADERS)), documents | st.dictionaries(
    st.sampled_from(["receiver", "listen", "metrics", "cameras", "model", "device", "workers", "archive", "tls"]),
    documents, max_size=5))
def test_any_yaml_document_loads_or_names_the_key_at_fault(config_dir, role, document):
    path, outcome = _load(config_dir, role, yaml.safe_dump(document, sort_keys=False))
    if not isinstance(outcome, str):
        return
    assert outcome.startswith(f"{path}: ")
    if isinstance(document, dict) and document:  # each problem on a line of its own, naming its key
        assert all(_ERROR_LINE.fullmatch(line) for line in outcome.split("\n")), outcome


@FUZZ
@given(st.sampled_from(sorted(LOADERS)), st.text(max_size=200) | st.binary(max_size=200))
def test_any_text_as_a_config_file_loads_or_fails_with_a_config_error(config_dir, role, text):
    _load(config_dir, role, text)


def _key_paths(data: Any, prefix: tuple = ()) -> list[tuple]:
    paths = [prefix] if prefix else []
    if isinstance(data, dict):
        for key, value in data.items():
            paths += _key_paths(value, (*prefix, key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            paths += _key_paths(value, (*prefix, index))
    return paths


def _key_text(keys: tuple) -> str:
    return "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in keys).lstrip(".")


def _related(error_key: str, changed: str) -> bool:
    """Whether an error's key is the changed key, inside it, or one of its ancestors."""
    return any(a == b or a.startswith(b + ".") or a.startswith(b + "[") for a, b in
               ((error_key, changed), (changed, error_key)))


@FUZZ
@given(st.sampled_from(sorted(EXAMPLES)), st.data())
def test_mutated_example_configs_load_or_name_the_changed_key(config_dir, role, draw):
    data = yaml.safe_load(EXAMPLES[role].read_text())
    keys = draw.draw(st.sampled_from(_key_paths(data)))
    parent = data
    for key in keys[:-1]:
        parent = parent[key]
    how = draw.draw(st.sampled_from(["replace", "delete", "add"]))
    if how == "replace":
        parent[keys[-1]] = draw.draw(documents)
    elif how == "delete":
        del parent[keys[-1]]
    elif isinstance(parent[keys[-1]], dict):
        parent[keys[-1]]["no_such_key"] = draw.draw(scalars)
        keys = (*keys, "no_such_key")
    path, outcome = _load(config_dir, role, yaml.safe_dump(data, sort_keys=False))
    if not isinstance(outcome, str):
        return
    changed = _key_text(keys)
    error_keys = [_ERROR_LINE.fullmatch(line)["key"] for line in outcome.split("\n")]
    duplicate_name = keys[-1] == "name" and any(re.fullmatch(r"cameras\[\d+\]\.name", k) for k in error_keys)
    assert duplicate_name or any(_related(key, changed) for key in error_keys), (changed, outcome)


# ---------------------------------------------------------------------------------------------
# What reaches CompressAI's rANS decoder


class _SpyDecoder(framecodec.RansDecoder):
    """CompressAI's decoder, recording every string handed to it."""

    strings: list[bytes] = []

    def set_stream(self, string: bytes) -> None:
        self.strings.append(string)
        super().set_stream(string)


@pytest.fixture
def spy():
    _SpyDecoder.strings = []
    with mock.patch.object(framecodec, "RansDecoder", _SpyDecoder):
        yield _SpyDecoder.strings


def _string_limit(loaded, keyframe: bool) -> int:
    """The longest string a 96x64 frame of the test model can have (4x6 latents, 1x1 hyper-latents)."""
    widths = loaded.model.widths
    return RANS_STATE_BYTES + MAX_SYMBOL_BYTES * (1 if keyframe else 2) * (widths.latent * 24 + widths.hyper)


def test_real_strings_fit_the_bounds(records, loaded):
    frames = [record for record in records if isinstance(record, FrameRecord)]
    assert any(f.keyframe for f in frames) and not all(f.keyframe for f in frames)
    for frame in frames:
        assert RANS_STATE_BYTES <= len(frame.string) <= _string_limit(loaded, frame.keyframe)
        assert len(frame.string) % 4 == 0


def test_strings_out_of_bounds_never_reach_the_rans_decoder(records, loaded, spy):
    """Through the worker's path: the packed record parsed, then fed to the camera's StreamDecoder."""
    keyframe, pframe = [record for record in records if isinstance(record, FrameRecord)][:2]
    decoder = StreamDecoder(records[0], loaded, torch.device("cpu"))
    limit = _string_limit(loaded, keyframe=True)
    refused = [
        replace(pframe, index=0),  # a P-frame with no reference yet
        replace(keyframe, height=48), replace(keyframe, width=112), replace(keyframe, height=65535, width=65535),
        replace(keyframe, height=80, width=80),
        *(replace(keyframe, string=bytes(n)) for n in (0, 4, 7, 9, 10, 11, limit + 1, limit + 4, 1 << 20)),
    ]
    for record in refused:
        decoder.feed(SegmentStart(decoder.segments, 0, 2))
        with pytest.raises(BitstreamError):
            decoder.feed(unpack_packed_record(pack_record(record)))
        decoder.resync()
    assert spy == []
    decoder.feed(SegmentStart(decoder.segments, 0, 2))
    assert decoder.feed(keyframe) is not None and decoder.feed(replace(pframe, index=1)) is not None
    assert [reached[:len(frame.string)] for reached, frame in zip(spy, (keyframe, pframe))] == [keyframe.string,
                                                                                               pframe.string]
    assert all(not any(reached[len(frame.string):]) for reached, frame in zip(spy, (keyframe, pframe)))


@settings(FUZZ, max_examples=60)
@given(keyframe=st.booleans(), height=st.sampled_from([64, 48, 80, 0, 65535]) | st.integers(0, 65535),
       width=st.sampled_from([96, 80, 112]) | st.integers(0, 65535),
       length=st.sampled_from([0, 4, 8, 9, 12, 3 * 1024, 6 * 1024]) | st.integers(0, 20_000))
def test_only_frames_within_the_negotiated_bounds_reach_the_rans_decoder(records, loaded, keyframe, height, width,
                                                                         length):
    frames = [record for record in records if isinstance(record, FrameRecord)]
    base = frames[0] if keyframe else frames[1]
    decoder = StreamDecoder(records[0], loaded, torch.device("cpu"))
    decoder.feed(SegmentStart(0, 0, 2))
    decoder.feed(frames[0])  # the reference a P-frame needs
    string = (base.string * (length // len(base.string) + 1))[:length]  # valid words first, then repeated
    record = replace(base, index=1, height=height, width=width, string=string)
    _SpyDecoder.strings = []
    with mock.patch.object(framecodec, "RansDecoder", _SpyDecoder):
        try:
            decoder.feed(record)
        except BitstreamError:
            pass
    for reached in _SpyDecoder.strings:  # the string, then the zeros that keep the decoder's reads within it
        assert (height, width) == (64, 96) and reached.startswith(string) and not any(reached[len(string):])
        assert RANS_STATE_BYTES <= len(string) <= _string_limit(loaded, keyframe) and len(string) % 4 == 0


# ---------------------------------------------------------------------------------------------
# A real receiver, fuzzed over the real transport


def test_a_fuzzed_receiver_survives_counts_what_it_refuses_and_shows_a_valid_stream(records, model_file):
    report = run_fuzz(records, messages=300, payloads=50, seed=7, model=str(model_file))
    assert report.receiver_alive and report.receiver_exit_code == 0
    assert sum(report.messages_sent.values()) >= 300 and sum(report.payloads_sent.values()) == 150
    assert 0 < report.valid_frames_shown and report.valid_frames_shown + report.valid_frames_late >= 25
    assert report.probe_timeouts == 0
    assert {"corrupt", "malformed", "oversized", "duplicate", "text", "bad_record"} <= report.malformed.keys()
    assert report.dropped.get("decode", 0) > 0 and sum(report.adapter_rejections.values()) > 0
    assert report.dropped.get("bad_background", 0) > 0 and report.dropped.get("no_background", 0) > 0
    # the pool's worker and its spare, numbered
    assert {"receiver", "decode worker 1", "decode worker 2"} <= {m.role for m in report.memory_after}


# ---------------------------------------------------------------------------------------------
# Inputs that once broke a parser, each with its exact input.


def test_a_deeply_nested_stream_header_is_refused():
    """json's RecursionError once escaped the data channel's message handler and stopped the connection."""
    payload = b"[" * 100_000
    with pytest.raises(BitstreamError):
        unpack_record(RecordType.STREAM_HEADER, payload, _documented_crc(RecordType.STREAM_HEADER, payload))


def test_an_update_claiming_millions_of_symbols_is_refused_before_decoding(records):
    """CompressAI's decoder once got 4 million symbols to read from an empty string: it read past
    the string's end and the process died (SIGSEGV). Run in a process of its own, in case."""
    update = _updates(records)[0]
    at = _UPDATE_SYMBOLS_AT + update[6]
    body = update[:at] + struct.pack("<II", MAX_SYMBOLS, 0)  # 4 million symbols, an empty string
    child = multiprocessing.get_context("fork").Process(target=_exit_rejected, args=(_with_crc(body),))
    child.start()
    try:
        child.join(60)
        assert child.exitcode == 0
    finally:
        child.kill()


def test_a_store_refuses_a_symbol_count_its_model_does_not_have_before_decoding(records, loaded):
    snapshot = _updates(records)[0]
    at = _UPDATE_SYMBOLS_AT + snapshot[6]
    count, string_len = struct.unpack_from("<II", snapshot, at)
    more = snapshot[:at] + struct.pack("<II", count + 1000, string_len) + snapshot[at + 8 : -4]  # the same string
    store = AdapterStore(decode_update(snapshot).stream, loaded.model, loaded.info.sha256)
    with pytest.raises(AdapterRejected) as refused:
        store.receive(_with_crc(more))
    assert refused.value.reason == "misshapen" and "layout has" in str(refused.value)


def _exit_rejected(data: bytes) -> None:
    """In a child process: exit 0 when decode_update rejects `data`, 1 when it takes it."""
    faulthandler.disable()  # pytest's: the crash is expected, its dump is noise
    try:
        decode_update(data)
    except AdapterRejected:
        os._exit(0)
    os._exit(1)


def test_a_stream_file_whose_header_type_byte_is_damaged_is_refused(adapted_stream):
    """Format 2's CRC left the type byte out, and an adapter record takes any payload: this went unseen."""
    data = bytearray(adapted_stream.read_bytes())
    data[len(MAGIC) + 1] = RecordType.ADAPTER  # the stream header's type byte, 1 -> 5: one bit
    with pytest.raises(BitstreamError):
        list(read_records(io.BytesIO(bytes(data))))


def test_a_file_name_too_long_for_the_system_is_a_config_error(config_dir):
    """Path.is_file raised OSError (ENAMETOOLONG) through the file checks."""
    document = yaml.safe_load(EXAMPLES["sender"].read_text())
    document["cameras"][1]["source"] = "x" * 300 + ".mp4"
    path, outcome = _load(config_dir, "sender", yaml.safe_dump(document))
    assert f"{path}: cameras[1].source: " in outcome


def test_a_deeply_nested_yaml_document_is_a_config_error(config_dir):
    """PyYAML raises RecursionError, not a YAMLError, on deeply nested documents."""
    path, outcome = _load(config_dir, "receiver", "[" * 5000)
    assert outcome.startswith(f"{path}: ")


def test_an_empty_key_is_named(config_dir):
    """The key '' was rendered as nothing: 'unknown key' without naming it."""
    path, outcome = _load(config_dir, "receiver", yaml.safe_dump({**yaml.safe_load(EXAMPLES["receiver"].read_text()),
                                                                  "": None}))
    assert _ERROR_LINE.fullmatch(outcome), outcome


def test_a_value_with_a_line_break_keeps_its_problem_on_one_line(config_dir):
    """A path was printed as it is ('no such video file: ...'): a line break split the problem over two lines."""
    document = yaml.safe_load(EXAMPLES["sender"].read_text())
    document["cameras"][1]["source"] = "camera\none.mp4"
    path, outcome = _load(config_dir, "sender", yaml.safe_dump(document))
    assert _ERROR_LINE.fullmatch(outcome), outcome
