"""The benchmarks run end to end on real codecs (tiny sizes: these are smoke tests), and
`adaptcast bench` aggregates BD-rates the way it says it does."""

from __future__ import annotations

import json

import pytest
import torch

from adaptcast.shared.adapters.fitting import FitBudget
from adaptcast.shared.frames import FrameSize
from adaptcast.shared.pipeline.stream import AdaptOptions
from adaptcast.shared.video import VideoWriter, read_frames
from adaptcast_bench.adaptation import adaptation_points, bd_rates
from adaptcast_bench.classical import CLASSICAL_CODECS, code_frames
from adaptcast_bench.suite import ANCHORS, BASE, BASE_TOOLS, NEURAL_CONTENDERS, WITH_TOOLS, BenchPoint, bd_rate_rows
from tests.conftest import run_cli


@pytest.mark.parametrize("codec", CLASSICAL_CODECS, ids=lambda c: c.label)
def test_classical_codecs_give_every_frame_back_and_fewer_bits_at_lower_quality(codec, clip):
    frames = list(read_frames(clip, FrameSize(96, 64), max_frames=6))
    results = [code_frames(frames, codec, quality, 12.5, 3) for quality in (codec.qualities[0], codec.qualities[-1])]
    assert all(len(r.decoded) == len(frames) and r.decoded[0].shape == frames[0].shape for r in results)
    assert results[0].coded_bytes > results[1].coded_bytes > 0


def _point(clip: str, contender: str, bpp: float, quality: float) -> BenchPoint:
    return BenchPoint(clip, contender, "", 10, bpp, 0.0, 0.0, quality, 1.0, 1.0)


def test_bd_rates_are_computed_per_clip_then_averaged():
    anchor_rates, psnrs = [0.1, 0.2, 0.4], [30.0, 32.0, 34.0]
    points = []
    for clip, factor in (("a", 0.5), ("b", 2.0)):
        points += [_point(clip, BASE, r, q) for r, q in zip(anchor_rates, psnrs)]
        points += [_point(clip, "x264 veryfast zerolatency", r, q) for r, q in zip(anchor_rates, psnrs)]
        points += [_point(clip, "test", r * factor, q) for r, q in zip(anchor_rates, psnrs)]
    # a third clip where the test curve lies far above the anchor: no overlap, left out of the mean
    points += [_point("c", BASE, r, q) for r, q in zip(anchor_rates, psnrs)]
    points += [_point("c", "x264 veryfast zerolatency", r, q) for r, q in zip(anchor_rates, psnrs)]
    points += [_point("c", "test", r, q + 20) for r, q in zip(anchor_rates, psnrs)]
    rows = {(r.clip, r.contender, r.anchor): r for r in bd_rate_rows(points)}
    assert rows["a", "test", BASE].value == pytest.approx(-0.5)
    assert rows["b", "test", BASE].value == pytest.approx(1.0)
    assert rows["c", "test", BASE].value is None
    mean = rows["mean", "test", BASE]
    assert mean.value == pytest.approx(0.25) and mean.clips == 2


def test_bench_quick_writes_every_contender_with_bd_rates(tmp_path, clip):
    # a clip no other test codes: the bundled one mirrored, written through PyAV
    unseen = tmp_path / "mirrored.mp4"
    with VideoWriter(unseen, 12.5, FrameSize(320, 176)) as writer:
        for rgb in read_frames(clip, FrameSize(320, 176), max_frames=12):
            writer.write(rgb[:, ::-1].copy())
    out, report = tmp_path / "report", tmp_path / "R.json"
    done = run_cli("bench", "--quick", "--no-scale", "--json-out", str(report), "--out", str(out), str(unseen))
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(report.read_text())
    contenders = {p["contender"] for p in result["points"]}
    assert contenders == set(NEURAL_CONTENDERS) | {c.label for c in CLASSICAL_CODECS}
    for p in result["points"]:
        assert p["bpp"] > 0 and 5 < p["psnr"] < 100 and p["decode_fps"] > 0
        adapted = p["contender"] in NEURAL_CONTENDERS and p["contender"] not in (BASE, BASE_TOOLS)
        if p["contender"] not in WITH_TOOLS:  # with the tools the gate may keep every update off the wire
            assert (p["update_bpp"] > 0) == adapted
        assert (p["background_bpp"] > 0) == (p["contender"] in WITH_TOOLS)
        assert (p["realtime_factor"] is not None) == adapted
    means = {(r["contender"], r["anchor"]) for r in result["bd_rates"] if r["clip"] == "mean"}
    assert means == {(c, a) for c in contenders for a in ANCHORS if c != a}
    assert (out / "bench.md").read_text().count("| mirrored.mp4 |") == len(result["points"]) + len(means)
    assert (out / "rd-mirrored.png").read_bytes().startswith(b"\x89PNG")


def test_adaptation_points_and_bd_rates(model_file, clip, tmp_path):
    from tests.conftest import make_model_file

    second = make_model_file(tmp_path / "second.safetensors", seed=5)
    options = AdaptOptions(budget=FitBudget(steps=2, crop=64))
    points = adaptation_points(clip, [str(model_file), str(second)], options, torch.device("cpu"),
                               size=FrameSize(96, 64), fps=12.5, frames=6, segment_frames=3, steps=[1, 2],
                               refine_steps=2)
    assert [(p.mode, p.steps) for p in points[:9]] == [
        ("base", 0), ("refined", 2), ("segment+refined", 1), ("segment", 1), ("fallback", 1), ("live", 1),
        ("segment", 2), ("fallback", 2), ("live", 2)]
    assert all(p.adapter_share > 0 for p in points if p.mode in ("segment", "live"))
    rows = bd_rates(points)
    expected = [("live", 1), ("live", 2), ("refined", 2), ("segment", 1), ("segment", 2), ("segment+refined", 1)]
    assert [row[:4] for row in rows] == [(clip.name, "96x64", mode, n) for mode, n in expected]


def test_bench_capacity_replays_cameras_to_a_real_receiver(tmp_path):
    """`adaptcast bench-capacity` end to end at a small size: every replayed frame is shown or
    counted as dropped, by a receiver running late or a sender whose frames went stale (the
    machine may be busy), the adapters travel (swaps), and the report names the command and the
    figures."""
    out = tmp_path / "capacity.md"
    streams, frames = 2, 2 * 4 * 10  # 4 s at 10 fps each
    result = run_cli("bench-capacity", "--size", "160x96", "--seconds", "4", "--steps", "2", "--streams", str(streams),
                     "--workers", "1", "--out", str(out))
    assert result.returncode == 0, result.stderr
    [point] = json.loads(out.with_suffix(".json").read_text())
    assert point["streams"] == streams and point["frames_sent"] == frames
    dropped = point["dropped"]
    accounted = point["frames_shown"] + dropped.get("receiver late", 0) + dropped.get("sender stale", 0)
    # the receiver's late count is of records: each camera's end-of-stream record may be among them
    assert frames <= accounted <= frames + streams, point
    assert point["frames_shown"] > 0 and point["adapter_swaps"] >= 1 and point["fallbacks"] == 0
    assert point["wire_bytes_per_second"] > point["record_bytes_per_second"] > 0
    assert "bench-capacity" in out.read_text()
