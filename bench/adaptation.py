"""What adaptation buys (`adaptcast bench-adapt`): base, segment mode and live mode on the same
frames, the adapter's share of the bits, the fitting time against the video's duration, the
cost of a fallback, and BD-rates of adapted against base across the models' qualities.
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import torch

from adaptcast.shared.adapters.lora import AdapterLayout, AdapterSpec
from adaptcast.shared.adapters.mode import AdaptMode
from adaptcast.shared.adapters.store import AdapterStore
from adaptcast.shared.adapters.update import AdapterUpdate, encode_update
from adaptcast.shared.codec.modelfile import ModelLibrary, load_model
from adaptcast.shared.frames import FrameSize
from adaptcast.shared.pipeline.stream import AdaptOptions, decode_file, encode_file
from adaptcast_bench.bdrate import bd_rate


@dataclass
class AdaptPoint:
    clip: str
    size: str
    model: str
    mode: str
    """base, segment, live, fallback (the segment-mode stream decoded without adapters), or
    refined (the base model with encoder-side latent refinement), or segment+refined (both)."""
    steps: int
    """Fitting steps per segment (0 for the base model)."""
    bpp: float
    adapter_share: float
    """Adapter bytes / all bytes."""
    psnr: float
    fit_seconds_per_segment: float
    realtime_factor: float
    """Fitting seconds / seconds of video: at most 1 keeps up with the camera."""


def adaptation_points(
    clip: Path, models: list[str], options: AdaptOptions, device: torch.device, *,
    size: FrameSize, fps: float, frames: int, segment_frames: int, steps: list[int], refine_steps: int = 0,
) -> list[AdaptPoint]:
    """Base, then segment mode, its fallback and live mode for every step budget, per model;
    with `refine_steps`, also encoder-side latent refinement alone and with segment-mode
    adaptation (at the first step budget)."""
    points = []

    def add(loaded, mode: str, n_steps: int, bpp: float, share: float, quality: float, per_segment: float) -> None:
        points.append(AdaptPoint(clip.name, str(size), loaded.info.name, mode, n_steps, bpp, share, quality,
                                 per_segment, per_segment / (segment_frames / fps)))
        print(f"{clip.name} {size} {loaded.info.name} {mode} {n_steps} steps: {bpp:.4f} bpp, {quality:.2f} dB, "
              f"adapter {share:.0%}, fit {per_segment:.2f} s/segment", file=sys.stderr)

    for spec in models:
        loaded = load_model(spec)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "x.acs"
            encode = partial(encode_file, clip, path, loaded, device, size=size, fps=fps,
                             segment_frames=segment_frames, max_frames=frames)
            report = encode()
            add(loaded, "base", 0, report.bpp, 0.0, report.psnr, 0.0)
            if refine_steps:
                report = encode(refine_steps=refine_steps)
                add(loaded, "refined", refine_steps, report.bpp, 0.0, report.psnr, 0.0)
                both = replace(options, mode=AdaptMode.SEGMENT, budget=replace(options.budget, steps=steps[0]))
                report = encode(adapt=both, refine_steps=refine_steps)
                per_segment = report.fit_seconds / max(1, report.segments)
                add(loaded, "segment+refined", steps[0], report.bpp, report.adapter_bytes / report.total_bytes,
                    report.psnr, per_segment)
            for n_steps in steps:
                budget = replace(options.budget, steps=n_steps)
                for mode in (AdaptMode.SEGMENT, AdaptMode.LIVE):
                    adapt = replace(options, mode=mode, budget=budget)
                    report = encode(adapt=adapt)
                    per_segment = report.fit_seconds / max(1, report.segments - (mode == AdaptMode.LIVE))
                    share = report.adapter_bytes / report.total_bytes
                    add(loaded, mode, n_steps, report.bpp, share, report.psnr, per_segment)
                    if mode == AdaptMode.SEGMENT:
                        fallback = decode_file(path, None, ModelLibrary.holding(loaded), device, reference=clip,
                                               use_adapters=False)
                        if fallback.psnr is None:
                            raise RuntimeError(f"{clip.name} {loaded.info.name}: no frames decoded")
                        add(loaded, "fallback", n_steps, report.bpp, share, fallback.psnr, 0.0)
    return points


def receiver_state_bytes(model_spec: str, spec: AdapterSpec) -> int:
    """A receiver's adapter memory for one stream holding as many versions as it keeps."""
    loaded = load_model(model_spec)
    store = AdapterStore("camera", loaded.model, loaded.info.sha256)
    layout = AdapterLayout(loaded.model, spec)
    for version in range(1, store.keep + 1):
        symbols = torch.zeros(layout.size, dtype=torch.int32)
        store.receive(encode_update(AdapterUpdate("camera", version, 0, loaded.info.sha256, spec, symbols)))
    store.weights_for(store.keep)
    return store.state_bytes()


def bd_rates(points: list[AdaptPoint]) -> list[tuple[str, str, str, int, float]]:
    """(clip, size, mode, steps, BD-rate against base) for each clip, size, adapted mode and budget."""
    rows = []
    for clip, size in sorted({(p.clip, p.size) for p in points}):
        same = [p for p in points if (p.clip, p.size) == (clip, size)]
        base = [p for p in same if p.mode == "base"]
        if len(base) < 2:
            continue
        for mode, n_steps in sorted({(p.mode, p.steps) for p in same if p.mode not in ("base", "fallback")}):
            test = [p for p in same if (p.mode, p.steps) == (mode, n_steps)]
            try:
                value = bd_rate([p.bpp for p in base], [p.psnr for p in base],
                                [p.bpp for p in test], [p.psnr for p in test])
            except ValueError:
                value = float("nan")
            rows.append((clip, size, mode, n_steps, value))
    return rows


def markdown(points: list[AdaptPoint]) -> str:
    lines = ["| clip | size | model | mode | steps | bpp (all bits) | adapter share | RGB PSNR (dB) | fit s/segment "
             "| real-time factor |", "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {p.clip} | {p.size} | {p.model} | {p.mode} | {p.steps} | {p.bpp:.4f} | {p.adapter_share:.1%} | "
              f"{p.psnr:.2f} | {p.fit_seconds_per_segment:.2f} | {p.realtime_factor:.2f} |" for p in points]
    rows = bd_rates(points)
    if rows:
        lines += ["", "BD-rate of adapted against base (PSNR, PCHIP; negative is better):", "",
                  "| clip | size | mode | steps | BD-rate |", "|---|---|---|---|---|"]
        lines += [f"| {clip} | {size} | {mode} | {n} | {value:+.1%} |" for clip, size, mode, n, value in rows]
    return "\n".join(lines)
