"""Rate-distortion points of base models beside classical codecs (`adaptcast bench-rd`).

Every contender codes the same RGB frames at the same intra period; the neural points count
every byte of the .acs file (headers and checksums included), the classical ones every byte
of their packets.
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from shared.bench.classical import X264_MEDIUM, X264_VERYFAST_ZEROLATENCY, X265_MEDIUM, code_frames
from shared.codec.modelfile import load_model
from shared.codec.stream import encode_file
from shared.video import FrameSize, psnr, read_frames

CLASSICAL_CRFS = (23, 28, 33, 38, 43)


@dataclass
class RDPoint:
    clip: str
    size: str
    codec: str
    setting: str
    bpp: float
    psnr: float


def rd_points(
    clip: Path, size: FrameSize, fps: float, frames: int, intra_period: int, models: list[str], device: torch.device
) -> list[RDPoint]:
    source = list(read_frames(clip, size, fps, frames))
    if len(source) < frames:
        raise ValueError(f"{clip} has only {len(source)} frames at {fps} fps, {frames} asked for")
    pixels = frames * size.width * size.height
    points = []
    for spec in models:
        loaded = load_model(spec)
        with tempfile.TemporaryDirectory() as tmp:
            report = encode_file(clip, Path(tmp) / "x.acs", loaded, size, fps, intra_period, frames, device)
        points.append(RDPoint(clip.name, str(size), "adaptcast base", loaded.info.name, report.bpp, report.psnr))
        print(f"{clip.name} {size} {loaded.info.name}: {report.bpp:.4f} bpp {report.psnr:.2f} dB", file=sys.stderr)
    for codec in (X264_VERYFAST_ZEROLATENCY, X264_MEDIUM, X265_MEDIUM):
        for crf in CLASSICAL_CRFS:
            coded_bytes, decoded = code_frames(source, codec, crf, fps, intra_period)
            quality = float(np.mean([psnr(a, b) for a, b in zip(source, decoded)]))
            points.append(RDPoint(clip.name, str(size), codec.label, f"crf {crf}", coded_bytes * 8 / pixels, quality))
    return points


def markdown_table(points: list[RDPoint]) -> str:
    lines = ["| clip | size | codec | setting | bpp | RGB PSNR (dB) |", "|---|---|---|---|---|---|"]
    lines += [f"| {p.clip} | {p.size} | {p.codec} | {p.setting} | {p.bpp:.4f} | {p.psnr:.2f} |" for p in points]
    return "\n".join(lines)
