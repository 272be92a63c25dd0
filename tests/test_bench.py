"""The benchmark commands run end to end on real codecs (tiny sizes: these are smoke tests)."""

from __future__ import annotations

import torch

from shared.adapters.fitting import FitBudget
from shared.bench.adaptation import adaptation_points, bd_rates
from shared.bench.rd import rd_points
from shared.codec.stream import AdaptOptions
from shared.video import FrameSize


def test_rd_points_cover_every_contender(model_file, clip):
    points = rd_points(clip, FrameSize(96, 64), 12.5, 6, 3, [str(model_file)], torch.device("cpu"))
    codecs = {p.codec for p in points}
    assert codecs == {"adaptcast base", "x264 veryfast zerolatency", "x264 medium", "x265 medium"}
    assert all(p.bpp > 0 and 5 < p.psnr < 100 for p in points)


def test_adaptation_points_and_bd_rates(model_file, clip, tmp_path):
    from tests.conftest import make_model_file

    second = make_model_file(tmp_path / "second.safetensors", seed=5)
    options = AdaptOptions(budget=FitBudget(steps=2, crop=64))
    points = adaptation_points(clip, FrameSize(96, 64), 12.5, 6, 3, [str(model_file), str(second)], options,
                               [1, 2], torch.device("cpu"), refine_steps=2)
    assert [(p.mode, p.steps) for p in points[:9]] == [
        ("base", 0), ("refined", 2), ("segment+refined", 1), ("segment", 1), ("fallback", 1), ("live", 1),
        ("segment", 2), ("fallback", 2), ("live", 2)]
    assert all(p.adapter_share > 0 for p in points if p.mode in ("segment", "live"))
    rows = bd_rates(points)
    expected = [("live", 1), ("live", 2), ("refined", 2), ("segment", 1), ("segment", 2), ("segment+refined", 1)]
    assert [row[:4] for row in rows] == [(clip.name, "96x64", mode, n) for mode, n in expected]
