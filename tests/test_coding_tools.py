"""The surveillance coding tools: skipped frames and background pictures, exact and random-access."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from adaptcast.shared.adapters.fitting import FitBudget
from adaptcast.shared.adapters.mode import AdaptMode
from adaptcast.shared.codec.background import BackgroundKeeper, BackgroundSettings
from adaptcast.shared.codec.bitstream import (
    BackgroundRecord,
    FrameKind,
    FrameRecord,
    SegmentStart,
    pack_record,
    read_records,
    unpack_packed_record,
)
from adaptcast.shared.codec.framecodec import FrameEncoder
from adaptcast.shared.codec.modelfile import load_model
from adaptcast.shared.codec.tools import CodingTools
from adaptcast.shared.errors import BitstreamError
from adaptcast.shared.frames import FrameSize
from adaptcast.shared.pipeline.stream import AdaptOptions, encode_file
from adaptcast.shared.pipeline.streamdecoder import MissingBackground, StreamDecoder
from adaptcast.shared.video import read_frames

SIZE = FrameSize(160, 96)
TOOLS = CodingTools(skip=True, background=BackgroundSettings(refine_steps=3), adapter_gate=False)
"""Every fitted adapter sent, so that adapted segments starting from a background are tested."""


@pytest.fixture(scope="module")
def coded(tmp_path_factory, clip):
    """18 frames of the bundled clip, three segments, the bundled model, tools and live adapters:
    the records and the encoder's reconstruction."""
    folder = tmp_path_factory.mktemp("tools")
    loaded = load_model(None)
    adapt = AdaptOptions(mode=AdaptMode.LIVE, budget=FitBudget(steps=2))
    report = encode_file(clip, folder / "x.acs", loaded, torch.device("cpu"), size=SIZE, fps=12.5, segment_frames=6,
                         max_frames=18, adapt=adapt, tools=TOOLS, reconstruction=folder / "recon.y4m", progress=False)
    with open(folder / "x.acs", "rb") as file:
        records = list(read_records(file))
    return loaded, report, records, list(read_frames(folder / "recon.y4m"))


def _decode(loaded, records):
    decoder = StreamDecoder(records[0], loaded, torch.device("cpu"))
    return decoder, [frame for record in records[1:] if (frame := decoder.feed(record)) is not None]


def test_the_tools_are_used_and_the_decoder_shows_the_encoders_reconstruction(coded):
    loaded, report, records, reconstruction = coded
    kinds = [r.kind for r in records if isinstance(r, FrameRecord)]
    assert kinds[0] == FrameKind.INTRA and FrameKind.INTRA not in kinds[1:]  # then segments start from the background
    assert kinds.count(FrameKind.SKIP) == report.skipped_frames > 0
    assert report.backgrounds == sum(isinstance(r, BackgroundRecord) for r in records) >= 1
    starts = [r for r in records if isinstance(r, SegmentStart)]
    assert starts[0].background == 0 and all(r.background >= 1 for r in starts[1:])
    assert any(r.adapter_version for r in records if isinstance(r, SegmentStart))  # adapted and from the background
    decoder, frames = _decode(loaded, records)
    assert len(frames) == 18 and decoder.fallback_segments == 0 and decoder.ended
    for shown, expected in zip(frames, reconstruction):  # through the same lossless .y4m writer
        np.testing.assert_array_equal(_through_y4m(shown), expected)


def _through_y4m(rgb):
    """A frame as the .y4m writer and reader give it back (4:4:4, so nearly exact)."""
    import av

    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv444p")
    return frame.reformat(format="rgb24").to_ndarray()


def _segment_alone(records, index):
    """What an archive file of segment `index` holds: header, its background, its records, no
    earlier segments' frames (adapter records are left out: the segment then falls back)."""
    header = records[0]
    start = next(i for i, r in enumerate(records) if isinstance(r, SegmentStart) and r.index == index)
    background = next(r for r in reversed(records[:start]) if isinstance(r, BackgroundRecord)
                      and r.index == records[start].background)
    end = next((i for i, r in enumerate(records) if i > start and isinstance(r, SegmentStart)), len(records) - 1)
    return [header, background, *records[start:end]]


def test_a_segment_decodes_alone_given_its_background(coded):
    loaded, _, records, _ = coded
    no_adapters = StreamDecoder(records[0], loaded, torch.device("cpu"), use_adapters=False)
    whole = [f for r in records[1:] if (f := no_adapters.feed(r)) is not None]
    decoder, frames = _decode(loaded, _segment_alone(records, 2))
    assert decoder.fallback_segments == 1  # it names an adapter version the file does not carry
    for shown, expected in zip(frames, whole[12:18], strict=True):
        np.testing.assert_array_equal(shown, expected)


def test_a_segment_whose_background_is_missing_is_not_shown(coded):
    loaded, _, records, _ = coded
    alone = _segment_alone(records, 1)
    decoder = StreamDecoder(alone[0], loaded, torch.device("cpu"))
    with pytest.raises(MissingBackground, match="background"):
        for record in alone[2:]:
            decoder.feed(record)
    assert all(decoder.feed(r) is None for r in alone[3:] if isinstance(r, FrameRecord))


def test_a_corrupt_background_is_refused_and_the_previous_kept(coded):
    loaded, _, records, _ = coded
    background = next(r for r in records if isinstance(r, BackgroundRecord))
    decoder = StreamDecoder(records[0], loaded, torch.device("cpu"))
    decoder.feed(background)
    held = decoder.decoder.backgrounds[background.index].clone()
    flipped = bytearray(background.string)
    flipped[len(flipped) // 2] ^= 0x10
    for bad in (replace(background, string=bytes(flipped)), replace(background, width=background.width + 16),
                replace(background, string=background.string[: len(background.string) // 8 * 4]),
                replace(background, symbols_crc=1)):
        with pytest.raises(BitstreamError, match=f"background {background.index}"):
            decoder.feed(unpack_packed_record(pack_record(bad)))
    assert torch.equal(decoder.decoder.backgrounds[background.index], held)
    assert decoder.backgrounds == 1


def test_skip_and_background_records_refuse_what_they_cannot_be():
    skip = FrameRecord(3, FrameKind.SKIP, 64, 96, 0, b"")
    assert unpack_packed_record(pack_record(skip)) == skip
    for bad in (replace(skip, string=b"\0" * 8), replace(skip, symbols_crc=5), replace(skip, kind=7)):
        with pytest.raises(BitstreamError):
            unpack_packed_record(pack_record(bad))
    with pytest.raises(BitstreamError, match="index 0"):
        unpack_packed_record(pack_record(BackgroundRecord(0, 64, 96, 1, b"\0" * 8)))


def test_a_format_3_segment_record_still_reads():
    old = SegmentStart._LAYOUT_V3.pack(4, 40, 10, 2)
    assert SegmentStart.unpack(old) == SegmentStart(4, 40, 10, 2, background=0)


def test_a_skipped_frame_needs_a_reference(coded):
    loaded, _, records, _ = coded
    decoder = StreamDecoder(records[0], loaded, torch.device("cpu"))
    decoder.feed(SegmentStart(0, 0, 6))
    with pytest.raises(BitstreamError, match="without a reference"):
        decoder.feed(FrameRecord(0, FrameKind.SKIP, 96, 160, 0, b""))


def test_a_new_background_is_sent_when_the_scene_changes_or_ages(clip):
    size = FrameSize(96, 64)
    frames = list(read_frames(clip, size, max_frames=8))
    encoder = FrameEncoder(load_model(None).model, size, torch.device("cpu"))
    settings = BackgroundSettings(window=3, sample_seconds=0.1, max_age_seconds=5, min_interval_seconds=0.5)
    keeper = BackgroundKeeper(settings, fps=10)
    keeper.observe(frames[0])
    first = keeper.code_if_due(encoder)
    assert first is not None and first.index == keeper.index == 1 and 1 in encoder.backgrounds
    keeper.observe(frames[0])
    assert keeper.code_if_due(encoder) is None  # the same scene
    for _ in range(3):
        keeper.observe((frames[0] * 0.5).astype(np.uint8))  # the lights dim
    assert keeper.code_if_due(encoder) is None  # 0.4 s after the last: not yet
    keeper.observe((frames[0] * 0.5).astype(np.uint8))
    assert keeper.code_if_due(encoder).index == 2
    for _ in range(50):
        keeper.observe(keeper.estimate())
    assert keeper.code_if_due(encoder).index == 3  # five seconds old


def test_an_adapter_update_that_would_not_pay_is_not_sent(clip):
    """The gate weighs a fit's estimated saving on the frames it will code against its update's
    bits: with no frame to code it never pays; declined fits leave the version in force."""
    from adaptcast.shared.adapters.fitting import StreamAdapter
    from adaptcast.shared.adapters.lora import AdapterSpec
    from adaptcast.shared.frames import to_tensor

    loaded = load_model(None)
    frames = [to_tensor(rgb, FrameSize(160, 96)) for rgb in read_frames(clip, SIZE, max_frames=6)]
    adapter = StreamAdapter("cam", loaded.model, loaded.info.sha256, AdapterSpec(), loaded.info.lambda_at(0.0),
                            FitBudget(steps=3))
    update, result = adapter.fit(frames, frames_served=0)
    assert update is None and adapter.version == 0 and adapter.weights is None
    assert result.update_bits > 0 and result.saving_bits == 0
    update, result = adapter.fit(frames, frames_served=10**9)  # any saving at all pays for so many frames
    assert (update is not None) == (result.saving_bits > result.update_bits)
    assert adapter.version == (1 if update else 0)


def test_with_the_gate_a_static_scene_sends_fewer_adapter_bytes(tmp_path, clip):
    loaded = load_model(None)
    adapt = AdaptOptions(mode=AdaptMode.LIVE, budget=FitBudget(steps=2))
    reports = {gate: encode_file(clip, tmp_path / f"{gate}.acs", loaded, torch.device("cpu"), size=SIZE, fps=12.5,
                                 segment_frames=6, max_frames=24, adapt=adapt, tools=replace(TOOLS, adapter_gate=gate),
                                 progress=False)
               for gate in (False, True)}
    assert reports[False].adapter_updates_declined == 0
    assert reports[True].adapter_updates_declined > 0
    assert reports[True].adapter_bytes < reports[False].adapter_bytes
    with open(tmp_path / "True.acs", "rb") as file:
        records = list(read_records(file))
    assert len(_decode(loaded, records)[1]) == 24
