"""The one-hour soak (`pytest -m soak`; `adaptcast bench-soak` writes the figures to
docs/reliability-soak.md): four cameras from looped files through a real sender and receiver.
ADAPTCAST_SOAK_MINUTES shortens it for a try."""

from __future__ import annotations

import os

import pytest

from adaptcast_bench.soak import run_soak

pytestmark = pytest.mark.soak


def test_an_hour_of_four_cameras_keeps_memory_and_frames():
    minutes = float(os.environ.get("ADAPTCAST_SOAK_MINUTES", "60"))
    result = run_soak(cameras=4, size="320x240", fps=2.5, minutes=minutes)
    assert result.worker_restarts == 0 and result.reconnects == 0
    assert result.frames_shown >= 0.95 * result.frames_captured
    warm = next((s for s in result.samples if s.minute >= min(10.0, minutes / 2)), result.samples[0])
    end = result.samples[-1]
    for process, rss in end.rss_bytes.items():  # after warm-up, no process keeps growing
        assert rss <= 1.1 * warm.rss_bytes.get(process, rss), (process, warm.rss_bytes, end.rss_bytes)
