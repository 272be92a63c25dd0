"""Adapted streams end to end: both modes decode exactly, and fallbacks stay in their segment."""

from __future__ import annotations

import pytest
import torch

from adaptcast.shared.adapters.fitting import FitBudget
from adaptcast.shared.adapters.mode import AdaptMode
from adaptcast.shared.codec.bitstream import AdapterRecord, SegmentStart, StreamWriter, read_records
from adaptcast.shared.codec.modelfile import ModelLibrary, load_model_file
from adaptcast.shared.frames import FrameSize
from adaptcast.shared.pipeline.stream import AdaptOptions, decode_file, encode_file

SIZE = FrameSize(128, 96)


def _encode(model_file, clip, path, mode: AdaptMode):
    adapt = AdaptOptions(mode=mode, budget=FitBudget(steps=3, lr=2e-3, crop=64))
    return encode_file(clip, path, load_model_file(model_file), torch.device("cpu"), size=SIZE, fps=12.5,
                       segment_frames=4, max_frames=12, adapt=adapt)


@pytest.fixture(scope="module", params=[AdaptMode.SEGMENT, AdaptMode.LIVE])
def adapted(request, model_file, clip, tmp_path_factory):
    path = tmp_path_factory.mktemp("adapted") / f"{request.param}.acs"
    return request.param, path, _encode(model_file, clip, path, request.param)


def test_adapted_stream_decodes_to_the_encoders_reconstruction(adapted, model_file, clip):
    mode, path, report = adapted
    assert report.adapter_bytes > 0 and report.fit_seconds > 0
    assert report.latent_bytes + report.adapter_bytes < report.total_bytes
    with open(path, "rb") as file:
        versions = [r.adapter_version for r in read_records(file) if isinstance(r, SegmentStart)]
    assert versions == ([1, 2, 3] if mode == AdaptMode.SEGMENT else [0, 1, 2])
    decoded = decode_file(path, None, ModelLibrary([model_file]), torch.device("cpu"), reference=clip)
    assert decoded.fallback_segments == 0
    assert decoded.psnr == pytest.approx(report.psnr, abs=1e-9)


def test_no_adapters_decodes_every_segment_with_the_base(adapted, model_file, clip):
    mode, path, report = adapted
    decoded = decode_file(path, None, ModelLibrary([model_file]), torch.device("cpu"), reference=clip,
                          use_adapters=False)
    assert decoded.frames == report.frames
    assert decoded.fallback_segments == (3 if mode == AdaptMode.SEGMENT else 2)


def test_a_lost_adapter_update_costs_only_its_segments(adapted, model_file, clip, tmp_path):
    """Drop version 2's update: segment(s) needing it fall back, the rest decode exactly."""
    mode, path, report = adapted
    with open(path, "rb") as file:
        records = list(read_records(file))
    lost = [r for r in records if isinstance(r, AdapterRecord)][1]
    damaged = tmp_path / "lost.acs"
    with open(damaged, "wb") as file:
        writer = StreamWriter(file)
        for record in records:
            if record is not lost:
                writer.write(record)
    decoded = decode_file(damaged, None, ModelLibrary([model_file]), torch.device("cpu"), reference=clip)
    assert decoded.frames == report.frames
    # version 3 is an increment on the lost version 2: its chain is broken too, until a snapshot
    assert decoded.fallback_segments == (2 if mode == AdaptMode.SEGMENT else 1)


def test_cli_adapt_and_no_adapters(model_file, clip, tmp_path):
    import json

    from tests.conftest import run_cli

    stream = tmp_path / "a.acs"
    encoded = run_cli("encode", str(clip), "-o", str(stream), "--size", "96x64", "--frames", "6",
                      "--segment-frames", "3", "--model", str(model_file), "--adapt", "--mode", "live",
                      "--steps", "2", "--ranks", "4/4/4/2", "--no-adapter-gate", "--json")
    assert encoded.returncode == 0, encoded.stderr
    enc = json.loads(encoded.stdout)
    assert enc["adapter_bytes"] > 0 and enc["fit_seconds"] > 0 and enc["adapter_updates_declined"] == 0
    assert enc["latent_bytes"] + enc["adapter_bytes"] < enc["total_bytes"]
    decoded = {}
    for flag in ("--adapters", "--no-adapters"):
        result = run_cli("decode", str(stream), "--model", str(model_file), "--reference", str(clip), flag, "--json")
        assert result.returncode == 0, result.stderr
        decoded[flag] = json.loads(result.stdout)
    assert decoded["--adapters"]["fallback_segments"] == 0
    assert decoded["--adapters"]["psnr"] == pytest.approx(enc["psnr"], abs=0.01)
    assert decoded["--no-adapters"]["fallback_segments"] == 1  # live mode: the first segment is the base's


def test_latent_refinement_needs_nothing_new_at_the_decoder(model_file, clip, tmp_path):
    loaded = load_model_file(model_file)
    plain, refined = tmp_path / "plain.acs", tmp_path / "refined.acs"
    cpu = torch.device("cpu")
    base = encode_file(clip, plain, loaded, cpu, size=SIZE, fps=12.5, segment_frames=4, max_frames=8)
    report = encode_file(clip, refined, loaded, cpu, size=SIZE, fps=12.5, segment_frames=4, max_frames=8,
                         refine_steps=12)
    assert refined.read_bytes() != plain.read_bytes()
    decoded = decode_file(refined, None, ModelLibrary.holding(loaded), torch.device("cpu"), reference=clip)
    assert decoded.psnr == pytest.approx(report.psnr, abs=1e-9) and decoded.fallback_segments == 0
    assert all(p.grad is None for p in loaded.model.parameters())  # the shared model is untouched
    assert base.frames == report.frames == 8


def test_the_adapter_age_curve_judges_each_fit_on_the_next_segment(model_file, clip):
    from adaptcast_bench.adapter_age import adapter_age_curve

    points = adapter_age_curve(str(clip), load_model_file(model_file), torch.device("cpu"), size=FrameSize(96, 64),
                               fps=12.5, frames=9, segment_frames=3, steps=1)
    assert [p.segment for p in points] == [1, 2] and [p.age_seconds for p in points] == [3 / 12.5, 6 / 12.5]
    assert all(p.base_cost > 0 and p.warm_update_bytes > 0 and -1 < p.warm_gain < 1 for p in points)
