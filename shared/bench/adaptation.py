"""What adaptation buys (`adaptcast bench-adapt`): base, segment mode and live mode on the same
frames, the adapter's share of the bits, the fitting time against the video's duration, the
cost of a fallback, and BD-rates of adapted against base across the models' qualities.
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from shared.bench.bdrate import bd_rate
from shared.codec.modelfile import load_model
from shared.codec.stream import AdaptOptions, decode_file, encode_file
from shared.video import FrameSize


@dataclass
class AdaptPoint:
    clip: str
    size: str
    model: str
    mode: str
    """base, segment, live, or fallback (the segment-mode stream decoded without adapters)."""
    bpp: float
    adapter_share: float
    """Adapter bytes / all bytes."""
    psnr: float
    fit_seconds_per_segment: float
    realtime_factor: float
    """Fitting seconds / seconds of video: at most 1 keeps up with the camera."""


def adaptation_points(
    clip: Path, size: FrameSize, fps: float, frames: int, segment_frames: int, models: list[str],
    options: AdaptOptions, device: torch.device,
) -> list[AdaptPoint]:
    points = []
    for spec in models:
        loaded = load_model(spec)
        with tempfile.TemporaryDirectory() as tmp:
            for mode in ("base", "segment", "live"):
                adapt = None if mode == "base" else AdaptOptions(mode, options.budget, options.spec, options.snapshot_every)
                path = Path(tmp) / f"{mode}.acs"
                report = encode_file(clip, path, loaded, size, fps, segment_frames, frames, device, adapt)
                fitted = report.segments - (mode == "live")
                per_segment = report.fit_seconds / max(1, fitted)
                points.append(AdaptPoint(clip.name, str(size), loaded.info.name, mode, report.bpp,
                                         report.adapter_bytes / report.total_bytes, report.psnr, per_segment,
                                         per_segment / (segment_frames / fps)))
                print(f"{clip.name} {loaded.info.name} {mode}: {report.bpp:.4f} bpp, {report.psnr:.2f} dB, "
                      f"adapter {points[-1].adapter_share:.0%}, fit {per_segment:.1f} s/segment", file=sys.stderr)
                if mode == "segment":
                    fallback = decode_file(path, None, loaded, device, reference=clip, use_adapters=False)
                    points.append(AdaptPoint(clip.name, str(size), loaded.info.name, "fallback", report.bpp,
                                             points[-1].adapter_share, fallback.psnr, 0.0, 0.0))
    return points


def bd_rates(points: list[AdaptPoint]) -> list[tuple[str, str, str, float]]:
    """(clip, size, mode, BD-rate against base) for every clip, size and adapted mode."""
    rows = []
    for key in sorted({(p.clip, p.size) for p in points}):
        curve = {mode: [p for p in points if (p.clip, p.size) == key and p.mode == mode]
                 for mode in ("base", "segment", "live")}
        if len(curve["base"]) < 2:
            continue
        for mode in ("segment", "live"):
            try:
                value = bd_rate([p.bpp for p in curve["base"]], [p.psnr for p in curve["base"]],
                                [p.bpp for p in curve[mode]], [p.psnr for p in curve[mode]])
            except ValueError:
                value = float("nan")
            rows.append((*key, mode, value))
    return rows


def markdown(points: list[AdaptPoint]) -> str:
    lines = ["| clip | size | model | mode | bpp (all bits) | adapter share | RGB PSNR (dB) | fit s/segment | real-time factor |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {p.clip} | {p.size} | {p.model} | {p.mode} | {p.bpp:.4f} | {p.adapter_share:.1%} | {p.psnr:.2f} | "
              f"{p.fit_seconds_per_segment:.2f} | {p.realtime_factor:.2f} |" for p in points]
    rows = bd_rates(points)
    if rows:
        lines += ["", "BD-rate of adapted against base (PSNR, PCHIP; negative is better):", "",
                  "| clip | size | mode | BD-rate |", "|---|---|---|---|"]
        lines += [f"| {clip} | {size} | {mode} | {value:+.1%} |" for clip, size, mode, value in rows]
    return "\n".join(lines)
