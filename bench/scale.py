"""Scale figures for `adaptcast bench`: how many streams a core (or a GPU) decodes, and how
the cost of fitting grows with resolution, segment length and adapter rank.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from adaptcast.shared.adapters.fitting import FitBudget, fit_adapter
from adaptcast.shared.adapters.lora import AdapterLayout, AdapterSpec
from adaptcast.shared.codec.modelfile import load_model
from adaptcast.shared.codec.ssf import FRAME_MULTIPLE
from adaptcast.shared.frames import FrameSize, padded_size, to_tensor
from adaptcast.shared.video import read_frames
from adaptcast_bench.speed import run_speed_benchmark

CAMERA_FPS = 10.0
"""The frame rate streams are counted at: a common setting for surveillance recording."""


@dataclass(frozen=True)
class ScaleConfig:
    decode_sizes: tuple[FrameSize, ...] = (FrameSize(320, 240), FrameSize(640, 360), FrameSize(1280, 720))
    decode_frames: int = 20
    fit_sizes: tuple[FrameSize, ...] = (FrameSize(320, 240), FrameSize(640, 360), FrameSize(1280, 720))
    segment_lengths: tuple[int, ...] = (10, 20, 40)
    ranks: tuple[tuple[int, ...], ...] = ((4, 2, 2, 1), (16, 8, 8, 2), (32, 16, 16, 4), (64, 32, 32, 8))
    fit_steps: int = 5
    """Timed steps per setting (after one warm-up step)."""
    budget_steps: int = 20
    """The step budget a segment's fitting cost is quoted at."""


QUICK_SCALE = ScaleConfig(
    decode_sizes=(FrameSize(320, 240),), decode_frames=6, fit_sizes=(FrameSize(320, 240),),
    segment_lengths=(4, 8), ranks=((4, 2, 2, 1), (16, 8, 8, 2)), fit_steps=2, budget_steps=3,
)


@dataclass
class DecodeCapacity:
    size: str
    device: str
    threads: int
    decode_fps: float
    """Frames per second of one stream, I-frames included."""
    streams: float
    """Streams at CAMERA_FPS this device decodes in real time, one frame at a time per stream."""


@dataclass
class FitCost:
    factor: str
    """What varies: resolution, segment length or rank."""
    setting: str
    parameters: int
    """Adapter parameters (symbols) being fitted."""
    seconds_per_step: float
    seconds_per_segment: float
    """At the configuration's step budget."""
    segment_bytes: int
    """Memory of the segment's frames as the fitter holds them."""


def decode_capacity(model: str, config: ScaleConfig, device: str, threads: int) -> list[DecodeCapacity]:
    """Decode speed per size in a fresh process each (see `adaptcast_bench.speed`)."""
    return [
        DecodeCapacity(r.size, r.device, r.threads, r.decode_fps_mean, r.decode_fps_mean / CAMERA_FPS)
        for r in run_speed_benchmark(model, list(config.decode_sizes), device, config.decode_frames,
                                     config.decode_frames, threads)
    ]


def fitting_costs(model: str, clip: Path, base_size: FrameSize, config: ScaleConfig,
                  device: torch.device) -> list[FitCost]:
    """Seconds per fitting step as resolution (random 128-pixel crops, as streamed, and whole
    frames), segment length and rank change; the other factors stay at their defaults."""
    loaded = load_model(model)
    loaded.model.to(device)
    quality = loaded.info.coding_quality(None)
    lmbda = loaded.info.required_lambda(quality)
    segment = config.segment_lengths[len(config.segment_lengths) // 2]

    def segment_frames(size: FrameSize, count: int) -> list[torch.Tensor]:
        padded = padded_size(size, FRAME_MULTIPLE)
        frames = [to_tensor(rgb, padded, device) for rgb in read_frames(clip, size, max_frames=count)]
        while len(frames) < count:  # a short clip is played again
            frames += frames[: count - len(frames)]
        return frames

    def measure(factor: str, setting: str, frames: list[torch.Tensor], spec: AdapterSpec,
                crop: int | None) -> FitCost:
        layout = AdapterLayout(loaded.model, spec)
        fit_adapter(loaded.model, layout, frames, lmbda, FitBudget(steps=1, crop=crop), quality=quality)  # warm-up
        result = fit_adapter(loaded.model, layout, frames, lmbda, FitBudget(steps=config.fit_steps, crop=crop),
                             quality=quality)
        per_step = result.seconds / result.steps
        cost = FitCost(factor, setting, layout.size, per_step, per_step * config.budget_steps,
                       sum(f.numel() * f.element_size() for f in frames))
        print(f"fitting cost, {factor} {setting}: {per_step:.3f} s/step", file=sys.stderr)
        return cost

    costs = []
    for size in config.fit_sizes:
        frames = segment_frames(size, segment)
        costs.append(measure("resolution", f"{size}, 128-pixel crops", frames, AdapterSpec(), 128))
        costs.append(measure("resolution", f"{size}, whole frames", frames, AdapterSpec(), None))
    for length in config.segment_lengths:
        costs.append(measure("segment length", f"{length} frames at {base_size}", segment_frames(base_size, length),
                             AdapterSpec(), 128))
    frames = segment_frames(base_size, segment)
    for ranks in config.ranks:
        costs.append(measure("rank", "ranks " + "/".join(map(str, ranks)), frames, AdapterSpec(ranks=ranks), 128))
    costs.append(measure("rank", "full fine-tuning", frames, AdapterSpec.full(), 128))
    return costs
