"""The bound on what CompressAI's rANS decoder reads (shared/codec/rans.py), checked against a faithful model of
its decode loop that counts the bytes it reads, on valid, truncated and hostile strings; and whole frames with such
strings, which give a frame or a BitstreamError, never a crash."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
import torch
from compressai.ans import BufferedRansEncoder, RansDecoder

from adaptcast.shared.codec.bitstream import FrameRecord, SegmentStart, read_records
from adaptcast.shared.codec.latents import LatentCoder
from adaptcast.shared.codec.modelfile import load_model_file
from adaptcast.shared.codec.rans import RANS64_L, guarded_string, rans_read_bound
from adaptcast.shared.errors import BitstreamError
from adaptcast.shared.pipeline.streamdecoder import StreamDecoder


def _model_decode(data: bytes, indexes: list[int], cdfs: list[list[int]], sizes: list[int],
                  offsets: list[int]) -> tuple[list[int], int, int]:
    """CompressAI 1.2's RansDecoder.decode_with_indexes (rans_interface.cpp with rans64.h), step for step in Python:
    the symbols, how many bytes of `data` it read, and how many symbols come before the first escape of more than 7
    groups (whose value C++ computes with shifts past 32 bits, which it leaves undefined). IndexError where it would
    read past `data`."""
    read = 0
    exact = None

    def word() -> int:
        nonlocal read
        if read + 4 > len(data):
            raise IndexError(f"a read at byte {read} of {len(data)}")
        read += 4
        return int.from_bytes(data[read - 4:read], "little")

    x = word() | word() << 32

    def get_bits() -> int:
        nonlocal x
        value, x = x & 15, x >> 4
        if x < RANS64_L:
            x = x << 32 | word()
        return value

    output = []
    for index in indexes:
        cdf, max_value = cdfs[index], sizes[index] - 2
        cum = x & 0xFFFF
        s = next(j for j in range(sizes[index]) if cdf[j] > cum) - 1
        x = (cdf[s + 1] - cdf[s]) * (x >> 16) + cum - cdf[s]
        if x < RANS64_L:
            x = x << 32 | word()
        value = s
        if value == max_value:  # an escape: a count in 4-bit groups, extended while they read 15, then the value
            val = get_bits()
            count = val
            while val == 15:
                val = get_bits()
                count += val
            raw = 0
            if count > 7 and exact is None:
                exact = len(output)
            for j in range(count):
                raw |= get_bits() << (4 * j)
            value = -(raw >> 1) - 1 if raw & 1 else (raw >> 1) + max_value
        output.append(value + offsets[index])
    return output, read, len(output) if exact is None else exact


@pytest.fixture(scope="module")
def tables(model_file) -> tuple[list[list[int]], list[int], list[int]]:
    return LatentCoder(load_model_file(model_file).model.hyperpriors()["img"]).y_tables


def test_the_model_of_the_decoder_is_faithful_and_reads_within_the_bound(tables):
    cdfs, sizes, offsets = tables
    rng = random.Random(3)
    symbols = 2000
    indexes = [rng.randrange(len(cdfs)) for _ in range(symbols)]
    # Values mostly within the tables, some far beyond them (escapes): what a real latent holds.
    values = [offsets[i] + rng.randrange(sizes[i] - 1) if rng.random() < 0.9 else rng.randint(-5000, 5000)
              for i in indexes]
    encoder = BufferedRansEncoder()
    encoder.encode_with_indexes(values, indexes, cdfs, sizes, offsets)
    valid = encoder.flush()
    hostile = {
        "valid": valid,
        "truncated": valid[:len(valid) // 8 * 4],
        "all 0xFF": b"\xff" * 64,
        "state only": b"\xff" * 8,
        "0xFF then zeros": b"\xff" * 8 + bytes(56),
        "random": b"\xff" * 8 + rng.randbytes(1024),
    }
    overran = []
    for name, string in hostile.items():
        guarded = guarded_string(string, symbols)
        assert len(guarded) == rans_read_bound(symbols, len(string))
        decoded, read, exact = _model_decode(guarded, indexes, cdfs, sizes, offsets)
        assert read <= len(guarded), name
        overran += [name] if read > len(string) else []
        compressai = RansDecoder().decode_with_indexes(guarded, indexes, cdfs, sizes, offsets)
        assert compressai[:exact] == decoded[:exact], name
        if name == "valid":
            assert decoded == values and read == len(valid)
    # Unpadded, these would have been read past their end: the padding is what keeps the reads in bounds.
    assert {"truncated", "all 0xFF", "state only", "0xFF then zeros"} <= set(overran)


def test_a_state_no_encoder_writes_is_refused():
    with pytest.raises(ValueError, match="below 2"):
        guarded_string(bytes(64), 100)
    with pytest.raises(ValueError, match="shorter"):
        guarded_string(b"\xff" * 4, 100)


def test_hostile_strings_in_whole_frames_give_a_frame_or_a_bitstream_error(stream_file, model_file):
    loaded = load_model_file(model_file)
    with open(stream_file, "rb") as file:
        records = list(read_records(file))
    keyframe, pframe = [record for record in records if isinstance(record, FrameRecord)][:2]
    outcomes = []
    for frame in (keyframe, pframe):
        for string in (b"", frame.string[:8], frame.string[:len(frame.string) // 8 * 4], b"\xff" * len(frame.string),
                       b"\xff" * 8 + random.Random(5).randbytes(len(frame.string) // 4 * 4)):
            decoder = StreamDecoder(records[0], loaded, torch.device("cpu"))
            decoder.feed(SegmentStart(0, 0, 2))
            decoder.feed(keyframe)
            try:
                decoder.feed(replace(frame, index=1, string=string))
                outcomes.append("frame")
            except BitstreamError as exc:
                outcomes.append(str(exc).split(": ", 1)[1][:20])
    assert len(outcomes) == 10 and outcomes.count("symbol checksum mism") >= 6, outcomes
