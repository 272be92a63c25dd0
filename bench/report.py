"""What `adaptcast bench` writes: every point as JSON, the tables as Markdown, RD curves as PNG."""

from __future__ import annotations

import json
import re
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: benchmarks run on machines without a display
import matplotlib.pyplot as plt  # noqa: E402

from adaptcast_bench.scale import CAMERA_FPS, DecodeCapacity, FitCost  # noqa: E402
from adaptcast_bench.suite import ANCHORS, NEURAL_CONTENDERS, BDRateRow, BenchPoint  # noqa: E402


@dataclass
class BenchReport:
    command: str
    date: str
    machine: str
    device: str
    config: dict
    bd_rate_method: str
    points: list[BenchPoint]
    bd_rates: list[BDRateRow]
    decode_capacity: list[DecodeCapacity] = field(default_factory=list)
    fitting_costs: list[FitCost] = field(default_factory=list)
    memory: dict = field(default_factory=dict)


def write_report(report: BenchReport, folder: Path, json_path: Path | None = None) -> list[Path]:
    """Write bench.json (or `json_path`), bench.md and one rd-<clip>.png per clip into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    json_path = json_path or folder / "bench.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(asdict(report), indent=1) + "\n")
    plots = [plot_rd(report.points, clip, folder) for clip in dict.fromkeys(p.clip for p in report.points)]
    markdown_path = folder / "bench.md"
    markdown_path.write_text(markdown(report, [p.name for p in plots]))
    return [json_path, markdown_path, *plots]


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-")


def plot_rd(points: list[BenchPoint], clip: str, folder: Path) -> Path:
    """Every contender on the left; the neural ones alone on the right, where they are told apart."""
    figure, (every, neural) = plt.subplots(1, 2, figsize=(13, 5), dpi=100)
    for contender in dict.fromkeys(p.contender for p in points):
        curve = sorted((p.bpp, p.psnr) for p in points if p.clip == clip and p.contender == contender)
        ours = "ours" in contender
        style = dict(marker="o" if ours else ".", linewidth=2 if ours else 1,
                     linestyle="-" if contender in NEURAL_CONTENDERS else "--", label=contender)
        for axes in (every, neural) if contender in NEURAL_CONTENDERS else (every,):
            axes.plot(*zip(*curve), **style)
    frames = next(p.frames for p in points if p.clip == clip)
    for axes, title in ((every, f"{clip}, {frames} frames"), (neural, "neural contenders only")):
        axes.set_xscale("log")
        axes.set_xlabel("bits per pixel (all bits, adapters included)")
        axes.set_ylabel("RGB PSNR (dB)")
        axes.set_title(title)
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=8)
    figure.tight_layout()
    path = folder / f"rd-{_slug(Path(clip).stem)}.png"
    figure.savefig(path)
    plt.close(figure)
    return path


def _percent(value: float | None) -> str:
    return f"{value:+.1%}" if value is not None else "no overlap"


def _optional(value: float | None, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if value is not None else "-"


def markdown(report: BenchReport, plot_names: list[str]) -> str:
    config = ", ".join(f"{key} {value}" for key, value in report.config.items())
    lines = [
        f"Command: `{report.command}`  ",
        f"Machine: {report.machine}; device: {report.device}  ",
        f"Date: {report.date}  ",
        f"Configuration: {config}",
        "",
        f"BD-rate: {report.bd_rate_method}; computed per clip, then averaged over the clips where the curves "
        "overlap (negative is better).",
        "",
        "| contender | " + " | ".join(f"BD-rate vs {anchor} (clips)" for anchor in ANCHORS) + " |",
        "|---|" + "---|" * len(ANCHORS),
    ]
    means = [row for row in report.bd_rates if row.clip == "mean"]
    for contender in dict.fromkeys(row.contender for row in means):
        cells = []
        for anchor in ANCHORS:
            row = next((r for r in means if r.contender == contender and r.anchor == anchor), None)
            cells.append("anchor" if row is None else f"{_percent(row.value)} ({row.clips})")
        lines.append(f"| {contender} | " + " | ".join(cells) + " |")
    lines += ["", "Per clip:", "", "| clip | contender | anchor | BD-rate |", "|---|---|---|---|"]
    lines += [f"| {r.clip} | {r.contender} | {r.anchor} | {_percent(r.value)} |"
              for r in report.bd_rates if r.clip != "mean"]
    lines += ["", "Speed (median over each contender's points, all in this one process):", "",
              "| contender | encode fps | decode fps | fit s/segment | fit real-time factor |", "|---|---|---|---|---|"]
    for contender in dict.fromkeys(p.contender for p in report.points):
        chosen = [p for p in report.points if p.contender == contender]
        fits = [p.fit_seconds_per_segment for p in chosen if p.fit_seconds_per_segment is not None]
        factors = [p.realtime_factor for p in chosen if p.realtime_factor is not None]
        lines.append(f"| {contender} | {statistics.median(p.encode_fps for p in chosen):.1f} | "
                     f"{statistics.median(p.decode_fps for p in chosen):.1f} | "
                     f"{_optional(statistics.median(fits) if fits else None)} | "
                     f"{_optional(statistics.median(factors) if factors else None)} |")
    lines += [
        "", "Every point:", "",
        "| clip | contender | setting | bpp | update bpp | background bpp | RGB PSNR (dB) | encode fps | decode fps "
        "| fit s/segment | fit real-time factor |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {p.clip} | {p.contender} | {p.setting} | {p.bpp:.4f} | {p.update_bpp:.4f} | {p.background_bpp:.4f} | "
        f"{p.psnr:.2f} | "
        f"{p.encode_fps:.1f} | {p.decode_fps:.1f} | {_optional(p.fit_seconds_per_segment)} | "
        f"{_optional(p.realtime_factor)} |"
        for p in report.points
    ]
    if report.decode_capacity:
        lines += ["", f"Decoding capacity (base model, one process per size, streams at {CAMERA_FPS:g} fps, "
                      "I-frames included, one frame at a time):", "",
                  "| size | device | threads | decode fps | streams |", "|---|---|---|---|---|"]
        lines += [f"| {c.size} | {c.device} | {c.threads} | {c.decode_fps:.1f} | {c.streams:.2f} |"
                  for c in report.decode_capacity]
    if report.fitting_costs:
        lines += ["", "Fitting cost:", "",
                  "| factor | setting | adapter parameters | s/step | s/segment at the step budget | segment memory |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {c.factor} | {c.setting} | {c.parameters:,} | {c.seconds_per_step:.3f} | "
                  f"{c.seconds_per_segment:.2f} | {c.segment_bytes / 2**20:.1f} MiB |" for c in report.fitting_costs]
    if report.memory:
        memory = ", ".join(f"{key.removesuffix('_bytes').replace('_', ' ')} "
                           f"{value / 2**20:.0f} MiB" for key, value in report.memory.items() if value is not None)
        lines += ["", f"Memory of the whole benchmark process: {memory}."]
    lines += ["", *[f"![RD curves]({name})" for name in plot_names]]
    return "\n".join(lines) + "\n"
