"""Choosing the torch device from `--device auto|cpu|cuda`, and the CPU cores torch may use."""

from __future__ import annotations

import os

import torch

from adaptcast.shared.errors import AdaptcastError


def pick_device(name: str) -> torch.device:
    """`auto` is CUDA when present, else the CPU; `cuda` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise AdaptcastError("--device cuda was asked for, but no CUDA device is available")
    if name not in ("cpu", "cuda"):
        raise AdaptcastError(f"device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (a container's cpuset), not the host's count."""
    return len(os.sched_getaffinity(0))
