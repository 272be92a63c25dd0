"""`train-base` trains, checkpoints, resumes, and fine-tunes from an existing model."""

from __future__ import annotations

import pytest

from shared.codec.modelfile import load_model_file
from shared.codec.ssf import SSFWidths
from shared.codec.training import TrainConfig, train_base
from shared.errors import AdaptcastError


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

    import shared.codec.training as training

    real = training.rate_distortion
    calls = {"n": 0}

    def sometimes_infinite(*args, **kwargs):
        terms = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:  # what a batch with a zero likelihood does
            terms["loss"] = terms["loss"] + math.inf
        return terms

    monkeypatch.setattr(training, "rate_distortion", sometimes_infinite)
    info = train_base(_config(clip, tmp_path / "m.safetensors", steps=3))
    assert info.training["steps"] == 3 and calls["n"] == 4
    model = load_model_file(tmp_path / "m.safetensors").model
    assert all(torch.isfinite(p).all() for p in model.parameters())
