"""Bad input ends in one clear error line and a non-zero exit: never a traceback or a hang."""

from __future__ import annotations

import random

import pytest
import torch

from adaptcast.shared.codec.modelfile import ModelLibrary, load_model_file
from adaptcast.shared.errors import BitstreamError
from adaptcast.shared.pipeline.stream import decode_file
from tests.conftest import make_model_file, run_cli


@pytest.fixture(scope="module")
def loaded(model_file):
    return load_model_file(model_file)


def test_random_byte_flips_are_all_detected(stream_file, loaded, tmp_path):
    data = stream_file.read_bytes()
    rng = random.Random(7)
    for _trial in range(300):
        damaged = bytearray(data)
        for _ in range(rng.choice((1, 1, 2, 8))):
            damaged[rng.randrange(len(damaged))] ^= rng.randrange(1, 256)
        path = tmp_path / "damaged.acs"
        path.write_bytes(bytes(damaged))
        with pytest.raises(BitstreamError):
            decode_file(path, None, ModelLibrary.holding(loaded), torch.device("cpu"))


def test_every_truncation_is_detected(stream_file, loaded, tmp_path):
    data = stream_file.read_bytes()
    rng = random.Random(8)
    for length in sorted({0, 1, 4, 5, 6, len(data) - 1, *(rng.randrange(len(data)) for _ in range(150))}):
        path = tmp_path / "short.acs"
        path.write_bytes(data[:length])
        with pytest.raises(BitstreamError):
            decode_file(path, None, ModelLibrary.holding(loaded), torch.device("cpu"))


def test_damaged_stream_keeps_the_frames_before_the_damage(stream_file, loaded, tmp_path):
    data = stream_file.read_bytes()
    path = tmp_path / "tail-cut.acs"
    path.write_bytes(data[: len(data) - 200])
    output = tmp_path / "partial.y4m"
    with pytest.raises(BitstreamError, match="decoded and kept"):
        decode_file(path, output, ModelLibrary.holding(loaded), torch.device("cpu"))
    assert output.stat().st_size > 0


def _assert_one_line_error(result, command: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"adaptcast {command}: error:"), result.stderr


def test_cli_errors(stream_file, model_file, clip, tmp_path):
    wrong_magic = tmp_path / "magic.acs"
    wrong_magic.write_bytes(b"XXXX" + stream_file.read_bytes()[4:])
    wrong_version = tmp_path / "version.acs"
    wrong_version.write_bytes(stream_file.read_bytes()[:4] + b"\x09" + stream_file.read_bytes()[5:])
    truncated = tmp_path / "truncated.acs"
    truncated.write_bytes(stream_file.read_bytes()[:300])
    other_model = make_model_file(tmp_path / "other.safetensors", seed=2)
    bad_model = tmp_path / "bad.safetensors"
    bad_model.write_bytes(model_file.read_bytes()[:1000])

    cases = {
        "missing input": ("encode", "nope.mp4", "-o", str(tmp_path / "o.acs")),
        "unreadable input": ("encode", str(wrong_magic), "-o", str(tmp_path / "o.acs")),
        "missing stream": ("decode", "nope.acs", "--model", str(model_file)),
        "wrong magic": ("decode", str(wrong_magic), "--model", str(model_file)),
        "wrong version": ("decode", str(wrong_version), "--model", str(model_file)),
        "truncated": ("decode", str(truncated), "--model", str(model_file)),
        "other model": ("decode", str(stream_file), "--model", str(other_model)),
        "corrupt model": ("decode", str(stream_file), "--model", str(bad_model)),
        "unknown model": ("decode", str(stream_file), "--model", "no-such-model"),
    }
    for args in cases.values():
        result = run_cli(*args)
        _assert_one_line_error(result, args[0])
    assert "no model has sha256" in (error := run_cli(*cases["other model"]).stderr) and "(random-1)" in error


@pytest.mark.parametrize("size", ["0x0", "-32x32", "32", "axb", "33x32"])
def test_cli_rejects_bad_sizes(size, clip, tmp_path):
    result = run_cli("encode", str(clip), "-o", str(tmp_path / "o.acs"), f"--size={size}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--size" in result.stderr


def test_compressai_zoo_offline_fails_at_once_with_the_way_out(stream_file, tmp_path):
    """No network (an unreachable proxy stands in for it here): one line saying what to pass."""
    offline = {"TORCH_HOME": str(tmp_path), "https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}
    result = run_cli("decode", str(stream_file), "--model", "compressai:ssf2020:3", env=offline)
    _assert_one_line_error(result, "decode")
    assert "pass it as --model /path/to/ssf2020-mse-3-" in result.stderr


@pytest.mark.parametrize("option", ["--fps=0", "--fps=nan", "--fit-seconds=-1", "--refine-steps=-2", "--frames=0"])
def test_cli_rejects_bad_numbers(option, clip, tmp_path):
    result = run_cli("encode", str(clip), "-o", str(tmp_path / "o.acs"), option)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert option.split("=")[0] in result.stderr
