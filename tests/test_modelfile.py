"""Model files: safetensors plus metadata, the SHA-256 identity, and the bundled models."""

from __future__ import annotations

import json

import pytest
import torch

from adaptcast.shared.codec.modelfile import DEFAULT_MODEL, bundled_models, load_model, load_model_file
from adaptcast.shared.errors import ModelError
from tests.conftest import run_cli


def test_round_trip_keeps_weights_metadata_and_entropy_tables(model_file):
    first, second = load_model_file(model_file), load_model_file(model_file)
    assert first.info == second.info and len(first.info.sha256) == 64
    for (name, a), b in zip(first.model.state_dict().items(), second.model.state_dict().values()):
        assert torch.equal(a, b), name
    tables = first.model.img_hyperprior.gaussian_conditional._quantized_cdf
    assert tables.numel() > 0


def test_tampered_weights_are_refused(model_file, tmp_path):
    data = bytearray(model_file.read_bytes())
    data[-3] ^= 0x40
    tampered = tmp_path / "tampered.safetensors"
    tampered.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="SHA-256"):
        load_model_file(tampered)


def test_a_file_without_metadata_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(ModelError, match="not an adaptcast model"):
        load_model(path)


def test_bundled_models_load_and_are_listed():
    bundled = bundled_models()
    assert len(bundled) >= 4
    assert DEFAULT_MODEL in {p.stem for p in bundled}
    assert sum(p.stat().st_size for p in bundled) <= 60 * 2**20
    result = run_cli("models", "--json")
    assert result.returncode == 0, result.stderr
    listed = [json.loads(line) for line in result.stdout.splitlines()]
    assert {m["name"] for m in listed} == {p.stem for p in bundled}
    for model in listed:
        assert (model["lmbda"] or 0) > 0 or len(model["rate_lambdas"]) >= 2
        assert model["training"]["steps"] > 0 and len(model["sha256"]) == 64


def test_half_precision_keeps_small_buffers(model_file):
    """float16 would flush the 1e-9 likelihood bound to zero, and training then meets log(0)."""
    model = load_model_file(model_file).model
    bounds = [b for name, b in model.named_buffers() if name.endswith("likelihood_lower_bound.bound")]
    assert bounds and all(float(b) == pytest.approx(1e-9) for b in bounds)
