"""`adaptcast bench`: every contender on the same frames at the same intra period, side by side.

Contenders: the base model; the base model with the surveillance coding tools (skipped frames,
segments from a background picture; its bits included); LoRA adaptation (ours) in segment and
live mode, and live mode with the tools; full fine-tuning of the three decoders per segment
(van Rozendaal et al., arXiv 2111.10302) with its update coded exactly as ours (same bin width,
prior and rANS coder, in the same stream format); and x264 veryfast zerolatency (what a WebRTC
video track would send) at the same intra period and at ten times it, x264 medium, x265 medium
and VP8 realtime through PyAV. Neural points count every byte of the .acs file and are measured on
what the real decoder gives back; classical points count every packet byte.
"""

from __future__ import annotations

import logging
import resource
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from adaptcast.shared.adapters.fitting import FitBudget
from adaptcast.shared.adapters.lora import AdapterSpec
from adaptcast.shared.adapters.mode import AdaptMode
from adaptcast.shared.codec.modelfile import LoadedModel, ModelLibrary, load_model
from adaptcast.shared.codec.tools import CodingTools
from adaptcast.shared.data import BUNDLED_CLIP
from adaptcast.shared.errors import VideoError
from adaptcast.shared.frames import FrameSize, psnr
from adaptcast.shared.pipeline.stream import AdaptOptions, decode_file, encode_file
from adaptcast.shared.video import probe_fps, read_frames
from adaptcast_bench.bdrate import bd_rate
from adaptcast_bench.classical import CLASSICAL_CODECS, X264_VERYFAST_ZEROLATENCY, ClassicalCodec, code_frames

log = logging.getLogger(__name__)

BASE = "adaptcast base"
BASE_TOOLS = "base + tools (ours)"
LORA_SEGMENT = "LoRA segment (ours)"
LORA_LIVE = "LoRA live (ours)"
LORA_LIVE_TOOLS = "LoRA live + tools (ours)"
FULL_SEGMENT = "full fine-tuning segment"
NEURAL_CONTENDERS = (BASE, BASE_TOOLS, LORA_SEGMENT, LORA_LIVE, LORA_LIVE_TOOLS, FULL_SEGMENT)
WITH_TOOLS = (BASE_TOOLS, LORA_LIVE_TOOLS)
ANCHORS = (BASE, X264_VERYFAST_ZEROLATENCY.label)
FULL_FINE_TUNING_LR = 1e-4
"""Adam moves every parameter by about lr a step, so at ours (1e-3) full fine-tuning pushes
all 366k decoder parameters across a quantization bin within a few steps and the picture falls
apart; 1e-4 was the best of 1e-3, 3e-4, 2e-4, 1e-4 and 3e-5 at 20 steps (docs/benchmarks.md)."""
"""BD-rates are given against each of these."""


@dataclass(frozen=True)
class BenchConfig:
    size: FrameSize = FrameSize(320, 240)
    frames: int = 60
    intra_period: int = 20
    """Frames per segment: every contender sends an I-frame at each segment start."""
    models: tuple[str, ...] = ("ssf-small-q1", "ssf-small-q2", "ssf-small-q3", "ssf-small-q4")
    """The neural rate points: models, or a variable-rate model at quality indexes (MODEL@QUALITY)."""
    steps: int = 20
    """Fitting steps per segment, for LoRA and full fine-tuning alike."""
    fps: float | None = None
    """Frame rate to read clips at; None keeps each clip's own."""
    neural: tuple[str, ...] = NEURAL_CONTENDERS
    """The neural contenders to run (the base model always runs: it is an anchor)."""

    def __post_init__(self) -> None:
        unknown = set(self.neural) - set(NEURAL_CONTENDERS)
        if unknown or BASE not in self.neural:
            raise ValueError(f"neural contenders must include {BASE!r} and come from {NEURAL_CONTENDERS}; "
                             f"unknown: {sorted(unknown)}")
        if self.frames < 1 or self.intra_period < 1 or self.steps < 1:
            raise ValueError("frames, intra period and steps must be at least 1")
        if len(self.models) < 2:
            raise ValueError("BD-rates need at least two models (rate points)")
        if self.fps is not None and self.fps <= 0:
            raise ValueError(f"fps must be positive, got {self.fps}")


QUICK = BenchConfig(frames=8, intra_period=4, models=("ssf-small-q1", "ssf-small-q4"), steps=3)
"""A smoke-test configuration: a few minutes on 2 CPU cores."""


@dataclass
class BenchPoint:
    clip: str
    contender: str
    setting: str
    """The model (neural) or the quality setting (classical) of this rate point."""
    frames: int
    bpp: float
    """Every bit sent, adapter or update bits included."""
    update_bpp: float
    """The adapter or update bits alone (part of `bpp`)."""
    background_bpp: float
    """The background pictures' bits alone (part of `bpp`)."""
    psnr: float
    """Mean RGB PSNR over the frames, in dB."""
    encode_fps: float
    """Frames / encoding seconds, fitting excluded (reading the clip included for neural points)."""
    decode_fps: float
    """Frames / decoding seconds (reading the reference for PSNR included for neural points)."""
    fit_seconds_per_segment: float | None = None
    realtime_factor: float | None = None
    """Fitting seconds / seconds of video in the segment: at most 1 keeps up with the camera."""


@dataclass
class BDRateRow:
    clip: str
    """A clip's name, or `mean` for the average of the per-clip values."""
    contender: str
    anchor: str
    value: float | None
    """Fraction (-0.1: 10% fewer bits at equal PSNR); None where the curves do not overlap."""
    clips: int = 1
    """How many clips the value averages."""


def _adapt_options(contender: str, steps: int) -> AdaptOptions | None:
    budget = FitBudget(steps=steps)
    return {
        BASE: None,
        BASE_TOOLS: None,
        LORA_SEGMENT: AdaptOptions(AdaptMode.SEGMENT, budget, AdapterSpec()),
        LORA_LIVE: AdaptOptions(AdaptMode.LIVE, budget, AdapterSpec()),
        LORA_LIVE_TOOLS: AdaptOptions(AdaptMode.LIVE, budget, AdapterSpec()),
        FULL_SEGMENT: AdaptOptions(AdaptMode.SEGMENT, FitBudget(steps=steps, lr=FULL_FINE_TUNING_LR),
                                   AdapterSpec.full()),
    }[contender]


@dataclass
class RatePoint:
    """A neural rate point: a model, and the quality index a variable-rate one codes at."""

    loaded: LoadedModel
    quality: float | None = None

    @classmethod
    def load(cls, spec: str) -> RatePoint:
        """`MODEL` or, for a variable-rate model, `MODEL@QUALITY`."""
        model, _, quality = spec.rpartition("@") if "@" in spec else (spec, "", "")
        try:
            point = cls(load_model(model), float(quality) if quality else None)
        except ValueError:
            raise ValueError(f"a rate point is MODEL or MODEL@QUALITY, got {spec!r}") from None
        point.loaded.info.required_lambda(point.quality or 0.0)  # ModelError for a model that has none
        return point

    @property
    def label(self) -> str:
        name = self.loaded.info.name
        return f"{name}@{self.quality:g}" if self.quality is not None else name


def neural_point(
    clip: Path, contender: str, point: RatePoint, config: BenchConfig, fps: float, frames: int,
    device: torch.device, workdir: Path,
) -> BenchPoint:
    """Encode with one neural contender, decode with the real decoder, measure against the source."""
    adapt = _adapt_options(contender, config.steps)
    coded = workdir / "bench.acs"
    tools = CodingTools() if contender in WITH_TOOLS else CodingTools.none()
    loaded = point.loaded
    sent = encode_file(clip, coded, loaded, device, size=config.size, fps=fps, segment_frames=config.intra_period,
                       max_frames=frames, adapt=adapt, tools=tools, progress=False, quality=point.quality)
    received = decode_file(coded, None, ModelLibrary.holding(loaded), device, reference=clip, progress=False)
    if received.fallback_segments:
        raise RuntimeError(f"{clip.name} {contender}: {received.fallback_segments} segments fell back to the "
                           "base model")
    if received.psnr is None:
        raise RuntimeError(f"{clip.name} {contender}: no frames decoded")
    fits = sent.segments - (adapt is not None and adapt.mode == AdaptMode.LIVE)
    per_segment = sent.fit_seconds / fits if adapt and fits else None
    pixels = sent.frames * config.size.width * config.size.height
    return BenchPoint(
        clip=clip.name, contender=contender, setting=point.label, frames=sent.frames, bpp=sent.bpp,
        update_bpp=sent.adapter_bytes * 8 / pixels, background_bpp=sent.background_bytes * 8 / pixels,
        psnr=received.psnr,
        encode_fps=sent.frames / (sent.encode_seconds - sent.fit_seconds),
        decode_fps=received.frames / received.decode_seconds,
        fit_seconds_per_segment=per_segment,
        realtime_factor=per_segment / (config.intra_period / fps) if per_segment is not None else None,
    )


def classical_point(
    clip: Path, codec: ClassicalCodec, quality: int, source: list[np.ndarray], fps: float, intra_period: int
) -> BenchPoint:
    coded = code_frames(source, codec, quality, fps, intra_period)
    if len(coded.decoded) != len(source):
        raise RuntimeError(f"{codec.label} gave back {len(coded.decoded)} of {len(source)} frames")
    height, width = source[0].shape[:2]
    return BenchPoint(
        clip=clip.name, contender=codec.label, setting=f"{'/'.join(codec.quality_options)} {quality}",
        frames=len(source), bpp=coded.coded_bytes * 8 / (len(source) * width * height), update_bpp=0.0,
        background_bpp=0.0,
        psnr=float(np.mean([psnr(a, b) for a, b in zip(source, coded.decoded)])),
        encode_fps=len(source) / coded.encode_seconds, decode_fps=len(source) / coded.decode_seconds,
    )


TEAM_CLIPS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "clips"
HELD_OUT_CLIPS = ("indoor-room.mp4", "highway-lowres.avi")
"""The development clips no bundled model was trained on (docs/models.md)."""


def default_clips() -> list[Path]:
    """The held-out development clips beside a team checkout, else the bundled clip (which the
    models were trained on, so its figures flatter them: the log says so)."""
    held_out = [TEAM_CLIPS / name for name in HELD_OUT_CLIPS if (TEAM_CLIPS / name).is_file()]
    if held_out:
        return held_out
    log.warning("no clips named and no held-out clips at %s: benchmarking the bundled clip, a training clip",
                TEAM_CLIPS)
    return [BUNDLED_CLIP]


def run_points(clips: list[Path], config: BenchConfig, device: torch.device) -> list[BenchPoint]:
    """Every contender at every rate point on every clip, with one progress bar for the run."""
    models = [RatePoint.load(spec) for spec in config.models]
    runs = len(clips) * (len(models) * len(config.neural) + sum(len(c.qualities) for c in CLASSICAL_CODECS))
    points: list[BenchPoint] = []
    with tqdm(total=runs, desc="bench", unit="run", file=sys.stderr) as bar, tempfile.TemporaryDirectory() as tmp:
        for clip in clips:
            fps = config.fps or probe_fps(clip)
            source = list(read_frames(clip, config.size, fps, config.frames))
            if len(source) < 2:
                raise VideoError(f"{clip} gave {len(source)} frames at {fps:g} fps: a benchmark needs at least 2")
            for model in models:
                for contender in config.neural:
                    bar.set_postfix_str(f"{clip.name} {contender} {model.label}")
                    points.append(neural_point(clip, contender, model, config, fps, len(source), device, Path(tmp)))
                    bar.update()
            for codec in CLASSICAL_CODECS:
                for quality in codec.qualities:
                    bar.set_postfix_str(f"{clip.name} {codec.label} {quality}")
                    points.append(classical_point(clip, codec, quality, source, fps, config.intra_period))
                    bar.update()
    return points


def rd_curve(points: list[BenchPoint], clip: str, contender: str) -> tuple[list[float], list[float]]:
    """The rate-distortion curve of one contender on one clip: its points' bpp and PSNR, as `bd_rate` takes them."""
    chosen = [p for p in points if p.clip == clip and p.contender == contender]
    return [p.bpp for p in chosen], [p.psnr for p in chosen]


def bd_rate_rows(points: list[BenchPoint]) -> list[BDRateRow]:
    """BD-rate of every contender against each anchor, per clip, then the mean over clips.

    Averaging per-clip values (rather than pooling the points of all clips into one curve)
    follows the per-video practice of arXiv 2409.08772; a clip where the curves do not overlap
    in PSNR gives no value and is left out of the mean, which says how many clips it averages.
    """
    clips = sorted({p.clip for p in points})
    contenders = list(dict.fromkeys(p.contender for p in points))
    rows: list[BDRateRow] = []
    for anchor in ANCHORS:
        for contender in contenders:
            if contender == anchor:
                continue
            values = []
            for clip in clips:
                try:
                    value: float | None = bd_rate(*rd_curve(points, clip, anchor), *rd_curve(points, clip, contender))
                except ValueError:
                    value = None
                rows.append(BDRateRow(clip, contender, anchor, value))
                if value is not None:
                    values.append(value)
            mean = statistics.fmean(values) if values else None
            rows.append(BDRateRow("mean", contender, anchor, mean, clips=len(values)))
    return rows


def peak_memory() -> dict[str, int | None]:
    """Peak resident memory of this process, and peak GPU memory when CUDA ran."""
    return {
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "peak_gpu_bytes": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None,
    }
