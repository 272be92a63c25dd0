"""Encode and decode speed of a base model at several frame sizes (`adaptcast bench-speed`).

Each size runs in its own process so that the peak memory reported is that size's alone.
Figures are medians of per-frame times; the first keyframe is a warm-up and not counted.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ParamSpec, TypeVar

import torch

from adaptcast.shared.codec.framecodec import FrameDecoder, FrameEncoder
from adaptcast.shared.codec.modelfile import load_model
from adaptcast.shared.data import BUNDLED_CLIP
from adaptcast.shared.device import pick_device
from adaptcast.shared.frames import FrameSize
from adaptcast.shared.video import read_frames

P = ParamSpec("P")
R = TypeVar("R")


@dataclass
class SpeedResult:
    size: str
    device: str
    threads: int
    frames: int
    encode_fps: float
    """1 / median seconds per frame."""
    decode_fps: float
    encode_fps_mean: float
    """Frames / total seconds, keyframes included."""
    decode_fps_mean: float
    parameters: int
    peak_rss_bytes: int
    peak_gpu_bytes: int | None
    model: str


def timed(device: torch.device, call: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> tuple[R, float]:
    """`call(*args, **kwargs)`'s result and the seconds it took, the device's queued work included.

    The arguments are passed rather than closed over, so that a loop's variables are the ones of the
    iteration that times them."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = call(*args, **kwargs)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def measure(model_spec: str | None, size: FrameSize, device_name: str, frames: int, segment: int,
            clip: Path = BUNDLED_CLIP) -> SpeedResult:
    device = pick_device(device_name)
    loaded = load_model(model_spec)
    source = list(read_frames(clip, size, max_frames=frames))
    while len(source) < frames:  # a short clip is played again
        source += source[: frames - len(source)]
    encoder = FrameEncoder(loaded.model, size, device)
    decoder = FrameDecoder(loaded.model, size, device)
    encoder.encode(source[0], 0, True)  # warm-up: allocator, kernels, tables
    encoder.reference = None
    records, encode_times, decode_times = [], [], []
    for i, rgb in enumerate(source):
        (record, _), seconds = timed(device, encoder.encode, rgb, i, i % segment == 0)
        records.append(record)
        encode_times.append(seconds)
    decoder.decode(records[0])
    decoder.reference = None
    for record in records:
        _, seconds = timed(device, decoder.decode, record)
        decode_times.append(seconds)
    return SpeedResult(
        size=str(size), device=str(device) if device.type == "cpu" else torch.cuda.get_device_name(),
        threads=torch.get_num_threads(), frames=frames,
        encode_fps=1 / statistics.median(encode_times), decode_fps=1 / statistics.median(decode_times),
        encode_fps_mean=frames / sum(encode_times), decode_fps_mean=frames / sum(decode_times),
        parameters=sum(p.numel() for p in loaded.model.parameters()),
        peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        peak_gpu_bytes=torch.cuda.max_memory_allocated() if device.type == "cuda" else None,
        model=loaded.info.name,
    )


def run_speed_benchmark(model_spec: str | None, sizes: list[FrameSize], device: str, frames: int,
                        segment: int, threads: int) -> list[SpeedResult]:
    """Measure each size in a fresh process with `threads` torch threads."""
    results = []
    for size in sizes:
        command = [sys.executable, "-m", "adaptcast_bench.speed", json.dumps(
            {"model": model_spec, "size": str(size), "device": device, "frames": frames, "segment": segment})]
        env_threads = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **env_threads}, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"speed run at {size} failed: {done.stderr.strip().splitlines()[-1:]}")
        results.append(SpeedResult(**json.loads(done.stdout.strip().splitlines()[-1])))
        print(f"{size}: encode {results[-1].encode_fps:.1f} fps, decode {results[-1].decode_fps:.1f} fps",
              file=sys.stderr)
    return results


def markdown_table(results: list[SpeedResult]) -> str:
    lines = [
        "| size | device | threads | encode fps (median) | decode fps (median) | encode fps (mean, with I-frames) "
        "| decode fps (mean) | parameters | peak RSS | peak GPU memory |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        gpu = f"{r.peak_gpu_bytes / 2**20:.0f} MiB" if r.peak_gpu_bytes else "-"
        lines.append(
            f"| {r.size} | {r.device} | {r.threads} | {r.encode_fps:.1f} | {r.decode_fps:.1f} | "
            f"{r.encode_fps_mean:.1f} | {r.decode_fps_mean:.1f} | {r.parameters / 1e6:.2f} M | "
            f"{r.peak_rss_bytes / 2**20:.0f} MiB | {gpu} |"
        )
    return "\n".join(lines)


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"


if __name__ == "__main__":
    params = json.loads(sys.argv[1])
    result = measure(params["model"], FrameSize.parse(params["size"]), params["device"], params["frames"],
                     params["segment"])
    print(json.dumps(asdict(result)))
