"""`adaptcast bench-models`: base models against each other, on the same frames and GOPs.

A family is one model's rate curve: single-rate models (one per rate point) or a variable-rate
model at several quality indexes. Every family codes every clip with the same contenders (the
base model alone, and with the surveillance coding tools, background bits included), the real
decoder measures what it gives back, and each family's BD-rate is given against the first
family, per clip and contender. This is the number that decides whether a new base model is
bundled (docs/models.md).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from adaptcast.shared.errors import VideoError
from adaptcast.shared.video import probe_fps, read_frames
from adaptcast_bench.bdrate import bd_rate
from adaptcast_bench.suite import BASE, BASE_TOOLS, BenchConfig, BenchPoint, RatePoint, neural_point, rd_curve


@dataclass(frozen=True)
class ModelFamily:
    name: str
    points: tuple[str, ...]
    """Rate points: model names, or MODEL@QUALITY of a variable-rate model."""

    @classmethod
    def parse(cls, text: str) -> ModelFamily:
        """`NAME=POINT,POINT,...`"""
        name, _, points = text.partition("=")
        specs = tuple(p for p in points.split(",") if p)
        if not name or len(specs) < 2:
            raise ValueError(f"a family is NAME=POINT,POINT[,...] with two or more rate points, got {text!r}")
        return cls(name, specs)


@dataclass
class FamilyRow:
    clip: str
    contender: str
    family: str
    anchor: str
    bd_rate: float | None
    """Fraction (-0.3: 30% fewer bits at equal PSNR); None where the curves do not overlap."""


def compare_families(
    clips: list[Path], families: list[ModelFamily], config: BenchConfig, device: torch.device,
    contenders: tuple[str, ...] = (BASE_TOOLS, BASE),
) -> tuple[list[BenchPoint], list[FamilyRow]]:
    """Every family's points (contender named `FAMILY: CONTENDER`) and BD-rates against the first family."""
    rate_points = {family.name: [RatePoint.load(spec) for spec in family.points] for family in families}
    runs = len(clips) * len(contenders) * sum(len(p) for p in rate_points.values())
    points: list[BenchPoint] = []
    with tqdm(total=runs, desc="bench-models", unit="run", file=sys.stderr) as bar, \
            tempfile.TemporaryDirectory() as tmp:
        for clip in clips:
            fps = config.fps or probe_fps(clip)
            frames = sum(1 for _ in read_frames(clip, config.size, fps, config.frames))
            if frames < 2:
                raise VideoError(f"{clip} gave {frames} frames at {fps:g} fps: a comparison needs at least 2")
            for family in families:
                for point in rate_points[family.name]:
                    for contender in contenders:
                        bar.set_postfix_str(f"{clip.name} {point.label} {contender}")
                        measured = neural_point(clip, contender, point, config, fps, frames, device, Path(tmp))
                        measured.contender = f"{family.name}: {contender}"
                        points.append(measured)
                        bar.update()
    return points, family_rows(points, [f.name for f in families], contenders)


def family_rows(points: list[BenchPoint], families: list[str], contenders: tuple[str, ...]) -> list[FamilyRow]:
    anchor = families[0]
    rows: list[FamilyRow] = []
    for contender in contenders:
        for family in families[1:]:
            values = []
            for clip in sorted({p.clip for p in points}):
                try:
                    value: float | None = bd_rate(*rd_curve(points, clip, f"{anchor}: {contender}"),
                                                  *rd_curve(points, clip, f"{family}: {contender}"))
                except ValueError:
                    value = None
                rows.append(FamilyRow(clip, contender, family, anchor, value))
                if value is not None:
                    values.append(value)
            rows.append(FamilyRow("mean", contender, family, anchor, statistics.fmean(values) if values else None))
    return rows


def markdown(points: list[BenchPoint], rows: list[FamilyRow], header: str) -> str:
    lines = [header, "", "## BD-rate against the first family (negative: fewer bits at equal PSNR)", "",
             "| clip | contender | family | against | BD-rate |", "|---|---|---|---|---|"]
    for row in rows:
        value = f"{row.bd_rate * 100:+.1f}%" if row.bd_rate is not None else "no overlap"
        lines.append(f"| {row.clip} | {row.contender} | {row.family} | {row.anchor} | {value} |")
    lines += ["", "## Points", "", "| clip | family: contender | rate point | bpp | background bpp | PSNR (dB) |",
              "|---|---|---|---|---|---|"]
    for p in points:
        lines.append(f"| {p.clip} | {p.contender} | {p.setting} | {p.bpp:.4f} | {p.background_bpp:.4f} "
                     f"| {p.psnr:.2f} |")
    return "\n".join(lines) + "\n"
