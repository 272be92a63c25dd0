"""Fixtures shared by the tests: a small random model file, the bundled clip, a coded stream."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from adaptcast.shared.codec.modelfile import ModelInfo, load_model_file, save_model
from adaptcast.shared.codec.ssf import ScaleSpaceFlow, SSFWidths
from adaptcast.shared.frames import FrameSize
from adaptcast.shared.pipeline.stream import encode_file

REPO = Path(__file__).resolve().parent.parent
CLIP = REPO / "shared" / "data" / "parking-aisle-10s.mp4"


def make_model_file(path: Path, seed: int, widths: SSFWidths = SSFWidths(8, 16, 8)) -> Path:
    """A randomly initialised model saved through the real model-file path."""
    torch.manual_seed(seed)
    save_model(ScaleSpaceFlow(widths), ModelInfo(name=f"random-{seed}", widths=widths, lmbda=0.01), path)
    return path


@pytest.fixture(scope="session")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model_file(tmp_path_factory.mktemp("models") / "tiny.safetensors", seed=1)


@pytest.fixture(scope="session")
def clip() -> Path:
    return CLIP


@pytest.fixture(scope="session")
def stream_file(tmp_path_factory: pytest.TempPathFactory, model_file: Path) -> Path:
    """Six frames of the bundled clip at 96x64 in two segments."""
    path = tmp_path_factory.mktemp("streams") / "small.acs"
    encode_file(CLIP, path, load_model_file(model_file), torch.device("cpu"), size=FrameSize(96, 64), fps=12.5,
                segment_frames=3, max_frames=6)
    return path


def run_cli(*args: str, threads: int | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `adaptcast` in a fresh process, as a user would."""
    env = {**os.environ, **(env or {})}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return subprocess.run(
        [sys.executable, "-m", "adaptcast", *args], capture_output=True, text=True, env=env, timeout=600, cwd=REPO
    )
