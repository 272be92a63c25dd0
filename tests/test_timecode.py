"""The capture time burned into frames reads back exactly, after H.264 too, and a damaged code
reads as nothing rather than as a wrong time."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from adaptcast.receiver.h264feed import EncodedFrame, H264Feed
from adaptcast.shared import timecode
from adaptcast.shared.config import H264Config, SenderCameraConfig
from adaptcast.shared.frames import FrameSize
from adaptcast.shared.video import read_frames
from tests.test_h264feed import decode, drain, publish


def test_a_stamped_time_reads_back_at_any_size(clip: Path) -> None:
    for size in (FrameSize(320, 240), FrameSize(640, 360), FrameSize(1280, 720)):
        frame = next(read_frames(clip, size))
        captured_at = 1_790_000_000.123
        stamped = timecode.stamp(frame, captured_at)
        assert timecode.read(stamped) == round(captured_at * 1000) % timecode.TIME_MODULUS
        assert timecode.age_seconds(timecode.read(stamped), captured_at + 0.25) == pytest.approx(0.25)
        stripe_rows = 2 * timecode.block_size(size.width)
        assert np.array_equal(stamped[stripe_rows:], frame[stripe_rows:])
        assert timecode.read(frame) is None, "an unstamped picture has no timecode"
    for level in (0, 255):
        assert timecode.read(np.full((240, 320, 3), level, np.uint8)) is None, "nor has a black or white one"


def test_a_damaged_code_fails_its_check() -> None:
    stamped = timecode.stamp(np.full((240, 320, 3), 90, np.uint8), 1_790_000_000.0)
    side = timecode.block_size(320)
    for column in range(timecode.COLUMNS):  # flip each block of the first row in turn
        damaged = stamped.copy()
        damaged[:side, column * side:(column + 1) * side] ^= 255
        assert timecode.read(damaged) is None


def test_the_code_survives_the_receivers_h264_at_a_low_rate(clip: Path) -> None:
    times = [1_790_000_000 + i / 10 for i in range(20)]
    frames = [timecode.stamp(frame, captured_at)
              for captured_at, frame in zip(times, read_frames(clip, FrameSize(320, 240), fps=10.0, max_frames=20))]

    async def encoded() -> list[EncodedFrame]:
        feed = H264Feed("cam", H264Config(bitrate_kbps=100))
        client = feed.subscribe("rtsp")
        await publish(feed, frames)
        received = await drain(client)
        await feed.close()
        return received

    shown = decode(asyncio.run(encoded()))
    assert [timecode.read(picture) for picture in shown] == [round(t * 1000) % timecode.TIME_MODULUS for t in times]


def test_a_camera_too_flat_for_a_timecode_is_refused_at_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATE_TOKEN", "a-token-of-sixteen-chars")
    camera = {"name": "gate", "source": "testpattern", "token_env": "GATE_TOKEN", "timecode": True}
    assert SenderCameraConfig.model_validate({**camera, "size": "320x240"}).timecode
    with pytest.raises(ValueError, match="timecode does not fit"):
        SenderCameraConfig.model_validate({**camera, "size": "640x32"})
