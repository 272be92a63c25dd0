"""`adaptcast bench-rate`: does a camera set to a target bitrate hold it?

Each clip is played (looped when short) through the sender's own camera encoder, rate control,
coding tools and all, for `seconds` of video, and every byte the camera would send (stream
header, backgrounds, segment and frame records, adapters) is counted per second of video. The
frames are pushed as fast as the encoder takes them, each stamped as captured at that moment,
so no load is shed; fitting adapters is off, because a fit runs on the wall clock in the live
sender and the encoder here runs faster than the camera (the adapters' bits are counted by the
controller like any other when they are on).
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from adaptcast.sender.capture import CapturedFrame
from adaptcast.sender.encoder import CameraEncoder, EncoderSettings
from adaptcast.sender.ratecontrol import RateSettings
from adaptcast.shared.adapters.mode import AdaptMode
from adaptcast.shared.codec.bitstream import FrameKind, FrameRecord, SegmentStart, pack_record
from adaptcast.shared.codec.modelfile import LoadedModel, load_model
from adaptcast.shared.codec.tools import CodingTools
from adaptcast.shared.frames import FrameSize, psnr, to_rgb
from adaptcast.shared.video import read_frames


@dataclass
class RateRun:
    clip: str
    target_kbps: float
    seconds: float
    actual_kbps: float
    """Every byte the camera sent over the whole run, per second of video."""
    error: float
    """actual / target - 1."""
    worst_10s_error: float
    """The largest |error| of any 10-second window (aligned to segments)."""
    mean_quality: float
    min_quality: float
    max_quality: float
    skipped_share: float
    psnr: float
    """Mean PSNR of the frames as the receiver shows them (skipped frames repeat the last)."""
    lowest_kbps: float
    """The same clip coded at the lowest quality index throughout (no rate control)."""
    highest_kbps: float
    """...and at the highest."""

    @property
    def reachable(self) -> bool:
        """Whether the target lies between what the lowest and the highest quality cost: below,
        only skipping more frames can meet it; above, the stream is as good as the model makes it."""
        return self.lowest_kbps <= self.target_kbps <= self.highest_kbps


def _looped(clip: Path, size: FrameSize, fps: float, frames: int) -> list:
    source = list(read_frames(clip, size, fps, frames))
    if not source:
        raise ValueError(f"{clip} gave no frames")
    return list(itertools.islice(itertools.cycle(source), frames))


async def _run(encoder: CameraEncoder, frames: list) -> tuple[list[int], list[float], list[float], int]:
    """Bytes per segment, quality per segment, PSNR per frame, skipped frames."""
    segment_bytes: list[int] = []
    qualities: list[float] = []
    psnrs: list[float] = []
    skipped = 0
    for rgb in frames:
        for item in await encoder.push(CapturedFrame(rgb, time.time())):
            record = item.record
            if isinstance(record, SegmentStart):
                segment_bytes.append(0)
                qualities.append(record.quality)
            if segment_bytes:  # the stream header before the first segment is a one-off
                segment_bytes[-1] += len(pack_record(record))
            if isinstance(record, FrameRecord):
                skipped += record.kind == FrameKind.SKIP
        reference = encoder.encoder.reference
        assert reference is not None, "live mode: push coded the frame, and its reconstruction is the reference"
        psnrs.append(psnr(rgb, to_rgb(reference, encoder.settings.size)))
    await encoder.close()
    return segment_bytes, qualities, psnrs, skipped


def _code(
    clip: Path, frames: list, size: FrameSize, fps: float, segment_frames: int, loaded: LoadedModel,
    rate: RateSettings | None = None, quality: float | None = None,
) -> tuple[list[int], list[float], list[float], int]:
    settings = EncoderSettings(clip.stem, size, fps, segment_frames, mode=AdaptMode.LIVE, adapt=False,
                               tools=CodingTools(), quality=quality, rate=rate)
    return asyncio.run(_run(CameraEncoder(settings, loaded, torch.device("cpu")), frames))


def measure_rates(clip: Path, targets_kbps: list[float], seconds: float, size: FrameSize, fps: float,
                  segment_seconds: float, model: str | None = None) -> list[RateRun]:
    """The clip at its lowest and highest quality, then held to each target."""
    segment_frames = max(1, round(segment_seconds * fps))
    frames = _looped(clip, size, fps, round(seconds * fps))
    video_seconds = len(frames) / fps
    loaded = load_model(model)
    extremes = [sum(_code(clip, frames, size, fps, segment_frames, loaded, quality=quality)[0]) * 8
                / video_seconds / 1000 for quality in (0.0, loaded.info.max_quality)]
    return [_run_with_target(clip, frames, target, size, fps, segment_frames, loaded, *extremes)
            for target in targets_kbps]


def _run_with_target(clip: Path, frames: list, target_kbps: float, size: FrameSize, fps: float, segment_frames: int,
                     loaded: LoadedModel, lowest_kbps: float, highest_kbps: float) -> RateRun:
    rate = RateSettings(target_kbps * 1000, 2 * target_kbps * 1000)
    segment_bytes, qualities, psnrs, skipped = _code(clip, frames, size, fps, segment_frames, loaded, rate=rate)
    segment_bits = [b * 8 for b in segment_bytes]
    segment_s = segment_frames / fps
    actual = sum(segment_bits) / (len(frames) / fps) / 1000
    window = max(1, round(10 / segment_s))
    windows = [sum(segment_bits[i : i + window]) / (window * segment_s) / 1000
               for i in range(0, len(segment_bits) - window + 1)]
    return RateRun(
        clip=clip.name, target_kbps=target_kbps, seconds=len(frames) / fps, actual_kbps=actual,
        error=actual / target_kbps - 1,
        worst_10s_error=max(abs(w / target_kbps - 1) for w in windows) if windows else abs(actual / target_kbps - 1),
        mean_quality=statistics.fmean(qualities), min_quality=min(qualities), max_quality=max(qualities),
        skipped_share=skipped / len(frames), psnr=statistics.fmean(psnrs), lowest_kbps=lowest_kbps,
        highest_kbps=highest_kbps,
    )


def markdown_table(runs: list[RateRun]) -> str:
    lines = ["| clip | kbit/s at lowest / highest quality | target kbit/s | actual kbit/s | error | worst 10 s "
             "window | quality mean (min-max) | skipped | PSNR (dB) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        reach = ("" if r.reachable else
                 " (below the lowest)" if r.target_kbps < r.lowest_kbps else " (above the highest)")
        lines.append(f"| {r.clip} | {r.lowest_kbps:.1f} / {r.highest_kbps:.1f} | {r.target_kbps:g}{reach} | "
                     f"{r.actual_kbps:.1f} | {r.error * 100:+.1f}% | {r.worst_10s_error * 100:.0f}% | "
                     f"{r.mean_quality:.2f} ({r.min_quality:.2f}-{r.max_quality:.2f}) | {r.skipped_share:.0%} | "
                     f"{r.psnr:.2f} |")
    for label, chosen in (("reachable", [r for r in runs if r.reachable]), ("all", runs)):
        if chosen:
            within = sum(abs(r.error) <= 0.10 for r in chosen)
            lines.append(f"\n{label}: {within} of {len(chosen)} runs within 10% of their target over the whole run; "
                         f"median |error| {statistics.median(abs(r.error) for r in chosen) * 100:.1f}%.")
    return "\n".join(lines)
