"""Does an adapter keep getting better as a camera's stream ages? (`adaptcast bench-adapter-age`)

A fixed camera sees the same scene for hours, so fitting need not stop at a segment's deadline:
each fit starts from the last (a warm start), and the adapter may improve with every segment it
has seen. This measures it on a long clip: segment after segment, an adapter is fitted on
segment k, warm-started from the one fitted on k-1, and judged on segment k+1, the one it would
code in live mode, by the model's rate-distortion cost (lambda x 255^2 x MSE + bits per pixel,
quantized latents, the segment's first GOP) against the base model's. Beside it, an adapter fitted
from scratch on each segment with the same steps: what the stream's age adds.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import torch

from adaptcast.shared.adapters.fitting import FitBudget, StreamAdapter
from adaptcast.shared.adapters.lora import AdapterSpec
from adaptcast.shared.codec.modelfile import LoadedModel
from adaptcast.shared.codec.ssf import FRAME_MULTIPLE
from adaptcast.shared.frames import FrameSize, padded_size, to_tensor
from adaptcast.shared.video import read_frames


@dataclass
class AgePoint:
    segment: int
    """The segment judged (the adapter was fitted on the one before)."""
    age_seconds: float
    """Seconds of video the warm-started adapter has been fitted on."""
    base_cost: float
    """Rate-distortion cost per pixel of the segment's first GOP with the base model."""
    warm_gain: float
    """Cost saved by the warm-started adapter, as a share of the base model's cost."""
    fresh_gain: float
    """Cost saved by an adapter fitted from scratch on the segment before."""
    warm_update_bytes: int
    """The warm-started version's update (an increment on the one before, or a snapshot)."""


def adapter_age_curve(clip: str, loaded: LoadedModel, device: torch.device, *, size: FrameSize, fps: float,
                      frames: int, segment_frames: int, steps: int) -> list[AgePoint]:
    """Fit segment after segment (warm and from scratch) and judge each adapter on the next segment."""
    padded = padded_size(size, FRAME_MULTIPLE)
    video = [to_tensor(rgb, padded, device) for rgb in read_frames(clip, size, fps, frames)]
    segments = [video[i : i + segment_frames] for i in range(0, len(video) - segment_frames + 1, segment_frames)]
    if len(segments) < 2:
        raise ValueError(f"{clip} gave {len(video)} frames: at least two segments of {segment_frames} are needed")
    model = loaded.model.to(device)

    def adapter() -> StreamAdapter:
        return StreamAdapter("age", model, loaded.info.sha256, AdapterSpec(), loaded.info.required_lambda(),
                             FitBudget(steps=steps), quality=loaded.info.coding_quality(None))

    warm = adapter()
    points = []
    for k in range(1, len(segments)):
        update, _ = warm.fit(segments[k - 1])
        assert update is not None, "fit keeps every version when not told how many frames it will serve"
        fresh = adapter()
        fresh.fit(segments[k - 1])
        base_cost = warm.rd_cost(segments[k], None)
        point = AgePoint(k, k * segment_frames / fps, base_cost,
                         1 - warm.rd_cost(segments[k], warm.weights) / base_cost,
                         1 - fresh.rd_cost(segments[k], fresh.weights) / base_cost, len(update))
        points.append(point)
        print(f"segment {k} ({point.age_seconds:.0f} s): warm {point.warm_gain:+.1%}, fresh {point.fresh_gain:+.1%}, "
              f"update {point.warm_update_bytes} B", file=sys.stderr)
    return points


def markdown_table(points: list[AgePoint], started: float) -> str:
    lines = ["| segment judged | stream age (s) | base cost | gain, warm-started | gain, from scratch "
             "| warm update (bytes) |", "|---|---|---|---|---|---|"]
    lines += [f"| {p.segment} | {p.age_seconds:.0f} | {p.base_cost:.3f} | {p.warm_gain:+.1%} | {p.fresh_gain:+.1%} | "
              f"{p.warm_update_bytes} |" for p in points]
    thirds = [points[i * len(points) // 3 : (i + 1) * len(points) // 3] for i in range(3)]
    means = [(sum(p.warm_gain for p in t) / len(t), sum(p.fresh_gain for p in t) / len(t)) for t in thirds if t]
    lines += ["", "Mean gain by third of the stream (warm-started / from scratch): "
              + "; ".join(f"{w:+.1%} / {f:+.1%}" for w, f in means)
              + f". Measured in {time.monotonic() - started:.0f} s."]
    return "\n".join(lines)
