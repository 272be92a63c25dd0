"""Rate control: the controller's decisions, and a real camera encoder holding a target bitrate."""

from __future__ import annotations

import asyncio
import io
import random
import struct
import time

import pytest
import torch

from adaptcast.sender.capture import CapturedFrame
from adaptcast.sender.encoder import CameraEncoder, EncoderSettings
from adaptcast.sender.ratecontrol import LINK_SHARE, RateController, RateSettings
from adaptcast.shared.codec.bitstream import (
    MAGIC,
    BackgroundRecord,
    RecordType,
    SegmentStart,
    pack_record,
    read_records,
    record_crc,
)
from adaptcast.shared.codec.modelfile import DEFAULT_MODEL, load_model, load_model_file
from adaptcast.shared.codec.tools import CodingTools
from adaptcast.shared.errors import ConfigError
from adaptcast.shared.frames import FrameSize
from adaptcast.shared.video import read_frames


def _scene_bits(quality: float, seconds: float, rng: random.Random, busy: float = 1.0) -> int:
    """A scene's cost: about 1.5x per quality step, +-30% from one segment to the next."""
    return int(40_000 * busy * 1.5**quality * seconds * rng.uniform(0.7, 1.3))


def test_the_average_rate_converges_on_the_target_through_a_busy_spell():
    rng = random.Random(0)
    controller = RateController(RateSettings(60_000, 120_000), max_quality=3.0, start_quality=1.5)
    total, qualities = 0, []
    for segment in range(30):
        busy = 2.0 if 10 <= segment < 15 else 1.0  # people walk through for 10 s
        qualities.append(controller.quality)
        bits = _scene_bits(controller.quality, 2.0, rng, busy)
        total += bits
        controller.segment_coded(bits, 2.0)
    assert abs(total / 60.0 / 60_000 - 1) < 0.10
    assert sum(qualities[11:16]) < sum(qualities[5:10])  # the busy spell was coded at a lower quality


def test_a_target_below_the_lowest_quality_codes_fewer_frames():
    controller = RateController(RateSettings(10_000, 20_000), max_quality=3.0, start_quality=0.0)
    sent = []
    for _ in range(40):  # the scene costs 40 kbit/s at quality 0 with every frame coded
        sent.append(40_000 * 2 // controller.frame_stride)
        controller.segment_coded(sent[-1], 2.0)
    assert controller.quality == 0.0 and controller.frame_stride in (4, 5)
    assert abs(sum(sent[-20:]) / 40.0 / 10_000 - 1) < 0.10


def test_without_a_target_the_link_alone_lowers_the_quality_and_it_climbs_back():
    controller = RateController(None, max_quality=1.5, start_quality=1.5)
    controller.segment_coded(100_000, 2.0)
    assert controller.quality == 1.5  # the link keeps up: the configured quality stays
    link = 30_000.0
    for _ in range(4):
        bits = int(50_000 * 1.5 ** (controller.quality - 1.5) * 2.0)
        controller.segment_coded(bits, 2.0, link_bps=link)
    congested = controller.quality
    assert congested < 1.0 and controller.aim_bps() == pytest.approx(LINK_SHARE * link)
    for _ in range(40):  # the link recovered: no congestion from here on
        controller.segment_coded(int(50_000 * 1.5 ** (controller.quality - 1.5) * 2.0), 2.0)
    assert controller.quality == 1.5 and controller.link_ceiling_bps is None


def test_a_one_off_background_is_paid_for_but_not_taken_for_the_scene():
    background = RateController(RateSettings(60_000, 120_000), 3.0, 1.5)
    busier = RateController(RateSettings(60_000, 120_000), 3.0, 1.5)
    background.segment_coded(120_000 + 30_000, 2.0, one_off_bits=30_000)
    busier.segment_coded(120_000 + 30_000, 2.0)  # the same bits, all of them the scene's
    assert background.debt_bits == busier.debt_bits
    assert busier.quality < background.quality < 1.5


def test_rate_settings_are_checked():
    with pytest.raises(ValueError, match="target"):
        RateSettings(64_000, 32_000)


def _encode(loaded, settings: EncoderSettings, frames: list) -> tuple[list[int], list[float]]:
    """Bits and quality index of each segment, as the camera encoder sends them."""
    async def scenario() -> tuple[list[int], list[float]]:
        encoder = CameraEncoder(settings, loaded, torch.device("cpu"))
        bits: list[int] = []
        qualities: list[float] = []
        for rgb in frames:
            for item in await encoder.push(CapturedFrame(rgb, time.time())):
                if isinstance(item.record, SegmentStart):
                    bits.append(0)
                    qualities.append(item.record.quality)
                if bits:
                    bits[-1] += len(pack_record(item.record)) * 8
        await encoder.close()
        return bits, qualities

    return asyncio.run(scenario())


def test_a_camera_holds_its_target_bitrate(clip):
    """The real encoder (skips, backgrounds and all) on the bundled clip, looped: the rate it
    sends at a fixed quality index below the default is then set as its target, and held within
    10% over the run, starting from the default index."""
    loaded = load_model(DEFAULT_MODEL)
    size, fps = FrameSize(160, 96), 10.0
    frames = list(read_frames(clip, size, fps, 100)) * 3  # 30 s
    fixed = EncoderSettings("cam", size, fps, 10, adapt=False, tools=CodingTools(), quality=0.75)
    natural, _ = _encode(loaded, fixed, frames)
    target = sum(natural) / (len(frames) / fps)
    rated = EncoderSettings("cam", size, fps, 10, adapt=False, tools=CodingTools(),
                            rate=RateSettings(target, 2 * target))
    bits, qualities = _encode(loaded, rated, frames)
    assert abs(sum(bits) / (len(frames) / fps) / target - 1) < 0.10
    assert qualities[0] == loaded.info.coding_quality(None) and min(qualities) < qualities[0]


def test_a_target_bitrate_needs_a_variable_rate_model(model_file):
    settings = EncoderSettings("cam", FrameSize(96, 64), 10.0, 10, adapt=False, rate=RateSettings(1e4, 2e4))
    with pytest.raises(ConfigError, match="variable-rate model"):
        CameraEncoder(settings, load_model_file(model_file), torch.device("cpu"))


def test_format_4_segment_and_background_records_still_read():
    record = SegmentStart.unpack(SegmentStart._LAYOUT_V4.pack(4, 40, 10, 2, 3))
    assert (record.background, record.quality) == (3, 0.0)
    payload = BackgroundRecord._LAYOUT_V4.pack(1, 64, 96, 7) + b"rans"
    head = struct.pack("<BII", RecordType.BACKGROUND, len(payload), record_crc(RecordType.BACKGROUND, payload, 4))
    (background,) = read_records(io.BytesIO(MAGIC + bytes([4]) + head + payload))
    assert (background.index, background.string, background.quality) == (1, b"rans", 0.0)


def test_a_link_that_carries_nothing_sets_no_ceiling():
    """A dead path drains nothing: that is no throughput to aim at (the heartbeat handles it)."""
    controller = RateController(RateSettings(60_000, 120_000), 3.0, 1.5)
    controller.segment_coded(120_000, 2.0, link_bps=0.0)
    assert controller.link_ceiling_bps is None and controller.aim_bps() > 0
