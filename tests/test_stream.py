"""Real bitstreams: round trips, decoding with another thread count, and a fresh process."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from adaptcast.shared.codec.bitstream import FrameRecord, read_records
from adaptcast.shared.codec.framecodec import FrameDecoder, FrameEncoder
from adaptcast.shared.codec.modelfile import load_model_file
from adaptcast.shared.frames import FrameSize
from adaptcast.shared.video import read_frames
from tests.conftest import run_cli


def _encode(model_file, clip, frames=5, size=FrameSize(160, 96)):
    encoder = FrameEncoder(load_model_file(model_file).model, size, torch.device("cpu"))
    coded = [encoder.encode(rgb, i, keyframe=i == 0)
             for i, rgb in enumerate(read_frames(clip, size, max_frames=frames))]
    return [record for record, _ in coded], [rgb for _, rgb in coded]


@pytest.mark.parametrize("size", [FrameSize(160, 96), FrameSize(122, 90)])
def test_decoder_reproduces_encoder_reconstruction(model_file, clip, size):
    """Sizes that are not multiples of 16 are padded for coding and cropped back."""
    records, reconstructions = _encode(model_file, clip, size=size)
    decoder = FrameDecoder(load_model_file(model_file).model, size, torch.device("cpu"))
    for record, expected in zip(records, reconstructions):
        decoded = decoder.decode(record)
        assert decoded.shape == (size.height, size.width, 3)
        np.testing.assert_array_equal(decoded, expected)


def test_encode_with_one_thread_decode_with_another(model_file, clip):
    """Entropy parameters must not depend on the thread count (CompressAI #279, #309)."""
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        records, reconstructions = _encode(model_file, clip, frames=6, size=FrameSize(320, 192))
        torch.set_num_threads(2)
        decoder = FrameDecoder(load_model_file(model_file).model, FrameSize(320, 192), torch.device("cpu"))
        for record, expected in zip(records, reconstructions):
            decoded = decoder.decode(record)  # raises on any symbol checksum mismatch
            assert np.abs(decoded.astype(int) - expected.astype(int)).max() <= 1
    finally:
        torch.set_num_threads(previous)


def test_cli_encode_then_decode_in_fresh_processes_agree(model_file, clip, tmp_path):
    stream = tmp_path / "x.acs"
    encoded = run_cli("encode", str(clip), "-o", str(stream), "--size", "128x80", "--frames", "6",
                      "--segment-frames", "3", "--model", str(model_file), "--json", threads=1)
    assert encoded.returncode == 0, encoded.stderr
    enc = json.loads(encoded.stdout)
    assert enc["frames"] == 6 and enc["segments"] == 2 and (enc["width"], enc["height"]) == (128, 80)
    assert enc["total_bytes"] == stream.stat().st_size
    assert enc["latent_bytes"] < enc["total_bytes"]
    assert abs(enc["bpp"] - enc["total_bytes"] * 8 / (6 * 128 * 80)) < 1e-9

    decoded = run_cli("decode", str(stream), "-o", str(tmp_path / "y.mp4"), "--reference", str(clip),
                      "--model", str(model_file), "--json", threads=2)
    assert decoded.returncode == 0, decoded.stderr
    dec = json.loads(decoded.stdout)
    assert dec["frames"] == 6 and dec["fallback_segments"] == 0
    assert abs(dec["psnr"] - enc["psnr"]) < 0.01
    assert len(list(read_frames(tmp_path / "y.mp4"))) == 6


def test_a_stream_finds_its_model_by_sha256(clip, tmp_path):
    """A stream coded with a bundled model other than the default decodes without naming it."""
    stream = tmp_path / "q2.acs"
    common = ("--size", "96x64", "--frames", "4", "--segment-frames", "2", "--json")
    encoded = run_cli("encode", str(clip), "-o", str(stream), "--model", "ssf-small-q2", *common)
    assert encoded.returncode == 0, encoded.stderr
    decoded = run_cli("decode", str(stream), "--reference", str(clip), "--json")
    assert decoded.returncode == 0, decoded.stderr
    assert abs(json.loads(decoded.stdout)["psnr"] - json.loads(encoded.stdout)["psnr"]) < 0.01


def test_a_variable_rate_model_codes_every_quality_index(clip):
    """The quality index travels in each segment record; a higher index costs more and looks better,
    and the decoder gives back exactly what the encoder reconstructed at either index."""
    from adaptcast.shared.codec.bitstream import SegmentStart, pack_record, unpack_packed_record
    from adaptcast.shared.codec.modelfile import DEFAULT_MODEL, load_model

    loaded = load_model(DEFAULT_MODEL)
    assert loaded.info.variable_rate and loaded.info.max_quality >= 2
    size = FrameSize(96, 64)
    source = list(read_frames(clip, size, max_frames=3))
    results = {}
    for quality in (0.0, 1.25, loaded.info.max_quality):
        encoder = FrameEncoder(loaded.model, size, torch.device("cpu"))
        decoder = FrameDecoder(load_model(DEFAULT_MODEL).model, size, torch.device("cpu"))
        start = unpack_packed_record(pack_record(SegmentStart(0, 0, 3, quality=quality)))
        encoder.quality, decoder.quality = quality, start.quality
        bits, errors = 0, []
        for i, rgb in enumerate(source):
            record, shown = encoder.encode(rgb, i, keyframe=i == 0)
            np.testing.assert_array_equal(decoder.decode(record), shown)
            bits += len(record.string) * 8
            errors.append(np.mean((shown.astype(float) - rgb) ** 2))
        results[quality] = (bits, float(np.mean(errors)))
    (low_bits, low_error), _, (high_bits, high_error) = results.values()
    assert low_bits < results[1.25][0] < high_bits and high_error < low_error


def test_stream_records_carry_frame_shapes_and_keyframes(stream_file):
    with open(stream_file, "rb") as file:
        frames = [r for r in read_records(file) if isinstance(r, FrameRecord)]
    assert [f.keyframe for f in frames] == [True, False, False, True, False, False]
    assert all((f.width, f.height) == (96, 64) for f in frames)
