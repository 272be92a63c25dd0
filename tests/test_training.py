"""`train-base` trains, checkpoints, resumes, and fine-tunes from an existing model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from adaptcast.shared.codec.modelfile import load_model_file
from adaptcast.shared.codec.ssf import SSFWidths
from adaptcast.shared.codec.training import TrainConfig, train_base
from adaptcast.shared.errors import AdaptcastError


def _config(clip, output, **overrides) -> TrainConfig:
    settings = dict(videos=[clip], output=output, widths=SSFWidths(8, 16, 8), steps=3, batch=2, gop=2,
                    crop=128, max_width=256, max_frames_per_clip=20, device="cpu")
    return TrainConfig(**{**settings, **overrides})


def test_train_resume_and_fine_tune(clip, tmp_path):
    output = tmp_path / "m.safetensors"
    info = train_base(_config(clip, output))
    assert info.training["steps"] == 3 and output.with_suffix(".ckpt").exists()

    resumed = train_base(_config(clip, output, steps=5))
    assert resumed.training["steps"] == 5  # continued from step 3, not from scratch
    loaded = load_model_file(output)
    assert loaded.info.sha256 == resumed.sha256 and loaded.info.lmbda == 0.0067

    tuned = train_base(_config(clip, tmp_path / "tuned.safetensors", init=str(output), lmbda=0.02, steps=2))
    assert tuned.widths == SSFWidths(8, 16, 8) and tuned.lmbda == 0.02 and tuned.training["init"] == str(output)


def test_a_checkpoint_of_another_run_is_refused_with_what_to_do(clip, tmp_path):
    output = tmp_path / "m.safetensors"
    train_base(_config(clip, output, steps=1))
    with pytest.raises(AdaptcastError, match="another training run.*remove it"):
        train_base(_config(clip, output, widths=SSFWidths(8, 8, 8), steps=2))


def test_a_non_finite_batch_is_skipped_not_learned(clip, tmp_path, monkeypatch):
    import math

    import torch

    import adaptcast.shared.codec.training as training

    real = training.frame_bits
    calls = {"n": 0}

    def sometimes_infinite(likelihoods):
        bits = real(likelihoods)
        calls["n"] += 1
        if calls["n"] == 3:  # what a frame with a zero likelihood does (step 2's I-frame)
            bits = bits + math.inf
        return bits

    monkeypatch.setattr(training, "frame_bits", sometimes_infinite)
    info = train_base(_config(clip, tmp_path / "m.safetensors", steps=3))
    # 3 steps of 2 frames, and the skipped batch's 2 (a step waits for the device once, at its end)
    assert info.training["steps"] == 3 and calls["n"] == 8
    model = load_model_file(tmp_path / "m.safetensors").model
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_the_gpu_training_script_rehearses_on_the_cpu(clip, tmp_path):
    """deploy/gpu-training/train_gpu.sh end to end with REHEARSE=1: frame packs made here, the checks
    at tiny sizes, a few training steps of the variable-rate model, and its cross-device checks."""
    import json
    import os
    import subprocess

    from adaptcast.shared.codec.training import pack_frames
    from tests.conftest import REPO

    train_pack, eval_pack, out = tmp_path / "train.npz", tmp_path / "eval.npz", tmp_path / "out"
    pack_frames([clip], train_pack, max_width=256, frames_per_clip=16, windows=2)
    pack_frames([clip], eval_pack, max_width=320, frames_per_clip=6)
    wheels = tmp_path / "wheels"  # compressai is installed here: the script installs nothing
    wheels.mkdir()
    result = subprocess.run(
        [str(REPO / "deploy" / "gpu-training" / "train_gpu.sh"), str(wheels), str(train_pack), str(eval_pack),
         str(out), "0.2"], capture_output=True, text=True, timeout=600, cwd=tmp_path,
        env={**os.environ, "REHEARSE": "1", "OMP_NUM_THREADS": "2"},
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    checks = json.loads((out / "gpu-checks.json").read_text())
    assert checks["cross_device"]["checksum_failures"] == 0 and checks["speed"]["decode_fps"] > 0
    assert [gain["mode"] for gain in checks["adaptation"]] == ["segment", "live"]
    model = load_model_file(out / "ssf-small-vr.safetensors")
    assert model.info.variable_rate and model.info.training["steps"] == 3
    assert (out / "ssf-small-vr.log.jsonl").exists() and not (out / "ssf-small-vr.ckpt").exists()
    for quality in (0, 3):
        assert json.loads((out / f"cross-device-q{quality}.json").read_text())["cross_device"]["quality"] == quality


def test_a_variable_rate_model_trains_from_scratch_and_keeps_its_rate_points(clip, tmp_path):
    output = tmp_path / "vr.safetensors"
    info = train_base(_config(clip, output, rate_lambdas=[0.002, 0.004, 0.008], steps=2, gop=3))
    loaded = load_model_file(output)
    assert loaded.info.rate_lambdas == [0.002, 0.004, 0.008] and loaded.info.lmbda is None
    assert info.max_quality == 2.0 and abs(loaded.info.lambda_at(1.5) - (0.004 * 0.008) ** 0.5) < 1e-12
    gains = loaded.model.res_gains
    middle = gains.gain(torch.tensor([1.5]))
    assert torch.allclose(middle, (gains.gain(torch.tensor([1.0])) * gains.gain(torch.tensor([2.0]))).sqrt())


def test_the_schedule_decays_the_rate_and_grows_the_crops():
    from adaptcast.shared.codec.training import FINAL_LR_RATIO, Schedule

    config = TrainConfig(videos=[], frames=Path("pack.npz"), output=Path("m"), steps=100, lr=1e-3, crop=256,
                         crop_start=128)
    schedule = Schedule(config)
    assert schedule.lr(0.0) == 1e-3 and abs(schedule.lr(1.0) - FINAL_LR_RATIO * 1e-3) < 1e-12
    assert [schedule.crop(p) for p in (0.0, 0.25, 0.5, 1.0)] == [128, 192, 256, 256]
    assert schedule.progress(50, 0.0) == 0.5
