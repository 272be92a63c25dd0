"""Entry points take their settings by name: a call cannot swap two numbers (a frame rate and a
segment length, a start and an end) without a TypeError."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import pytest

from adaptcast.receiver.export import export_archive
from adaptcast.receiver.workers import DecodePool
from adaptcast.sender.capture import CameraSource
from adaptcast.sender.encoder import EncoderSettings
from adaptcast.shared.adapters.fitting import StreamAdapter, fit_adapter
from adaptcast.shared.pipeline.stream import decode_file, encode_file
from adaptcast_bench.adaptation import adaptation_points
from adaptcast_bench.adapter_age import adapter_age_curve
from adaptcast_bench.gpu import run_gpu_checks

MAX_POSITIONAL = 6
"""At most this many parameters may be passed by position: what is worked on and with, not how."""


@pytest.mark.parametrize(
    ("function", "keyword_only"),
    [
        (encode_file, {"size", "fps", "segment_frames", "max_frames", "adapt", "quality"}),
        (decode_file, {"reference", "use_adapters", "progress"}),
        (export_archive, {"start", "end", "on_file", "memory_limit_bytes"}),
        (DecodePool, {"threads_per_worker", "other_models", "memory_limit_bytes", "quarantine_seconds"}),
        (StreamAdapter, {"snapshot_every", "quality"}),
        (fit_adapter, {"start", "seed", "quality"}),
        (EncoderSettings, {"mode", "adapt", "fit_steps", "tools", "quality", "rate"}),
        (CameraSource, {"loop", "connect_timeout_seconds", "reconnect_max_seconds", "queue_seconds", "timecode"}),
        (adaptation_points, {"size", "fps", "frames", "segment_frames", "steps"}),
        (adapter_age_curve, {"size", "fps", "frames", "segment_frames", "steps"}),
        (run_gpu_checks, {"device_name", "adapt_steps", "sizes", "checks", "quality"}),
    ],
    ids=lambda value: value.__name__ if callable(value) else "",
)
def test_settings_are_keyword_only(function: Callable[..., object], keyword_only: set[str]) -> None:
    parameters = inspect.signature(function).parameters.values()
    positional = [p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    named = {p.name for p in parameters if p.kind == p.KEYWORD_ONLY}
    assert len(positional) <= MAX_POSITIONAL, positional
    assert keyword_only <= named, keyword_only - named
