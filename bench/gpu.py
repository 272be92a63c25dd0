"""The checks a GPU machine runs before it trains (`adaptcast gpu-checks`, deploy/gpu-training).

Three questions that only a GPU answers, on frames from a frame pack (such a machine may have
no PyAV): does a stream encoded on the GPU decode on a CPU (the symbols identical, and how far
the float rounding of the two devices moves the reconstruction); how fast a 1280x720 stream
decodes and an adapter fits there; and what adaptation gains at a GPU's step budget, the
setting the method was made for.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from adaptcast.shared.adapters.fitting import FitBudget, StreamAdapter
from adaptcast.shared.adapters.lora import AdapterSpec
from adaptcast.shared.adapters.mode import AdaptMode
from adaptcast.shared.codec.framecodec import FrameDecoder, FrameEncoder
from adaptcast.shared.codec.modelfile import LoadedModel, load_model
from adaptcast.shared.codec.ssf import FRAME_MULTIPLE, SynthesisWeights
from adaptcast.shared.codec.training import ClipFrames
from adaptcast.shared.device import pick_device
from adaptcast.shared.errors import AdaptcastError, BitstreamError
from adaptcast.shared.frames import FrameSize, padded_size, psnr, to_tensor
from adaptcast_bench.speed import timed


@dataclass
class CrossDevice:
    model: str
    frames: int
    size: str
    quality: float
    checksum_failures: int
    """Frames whose symbols the CPU decoder read differently from the GPU encoder's (0 expected)."""
    psnr_gpu: float
    """Mean PSNR of the encoder's (GPU) reconstruction against the source."""
    psnr_cpu: float
    """Mean PSNR of the CPU decoder's frames against the source."""
    max_frame_psnr_gap: float
    """The largest |PSNR(GPU) - PSNR(CPU)| of one frame: what float rounding moves."""
    gpu_vs_cpu_psnr: float
    """PSNR of the CPU decoder's frames against the GPU encoder's (inf when identical)."""


@dataclass
class Speed:
    size: str
    decode_fps: float
    """1 / median seconds per P-frame, on the GPU."""
    encode_fps: float
    fit_steps_per_s_crop256: float
    fit_steps_per_s_whole: float


@dataclass
class AdaptationGain:
    mode: AdaptMode
    """segment: fitted on the frames it then codes; live: fitted on the segment before."""
    size: str
    steps: int
    fit_seconds: float
    base_bits: int
    base_psnr: float
    adapted_bits: int
    """The segment's latents with the adapter, plus the update's bits."""
    update_bits: int
    adapted_psnr: float
    rd_saving: float
    """Share of the rate-distortion cost (lambda * 255^2 * MSE + bpp) the adapter saves."""


def _frames(pack: ClipFrames, size: FrameSize, count: int) -> list[np.ndarray]:
    """`count` frames of the pack's first clip, resized to `size` (area averaging, as read_frames)."""
    clip = pack.clips[0][:count]
    x = clip.permute(0, 3, 1, 2).float()
    mode = "area" if size.width <= clip.shape[2] else "bilinear"
    x = F.interpolate(x, size=(size.height, size.width), mode=mode)
    return list(x.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())


def cross_device(model: str | None, frames: list[np.ndarray], device: torch.device, quality: float = 0.0
                 ) -> CrossDevice:
    """Encode on `device`, decode on the CPU, each with its own copy of the model."""
    size = FrameSize(frames[0].shape[1], frames[0].shape[0])
    loaded = load_model(model)
    encoder = FrameEncoder(loaded.model, size, device)
    encoder.quality = quality
    coded = [encoder.encode(rgb, i, keyframe=i == 0) for i, rgb in enumerate(frames)]
    decoder = FrameDecoder(load_model(model).model, size, torch.device("cpu"))
    decoder.quality = quality
    failures, gaps, gpu, cpu, cross = 0, [], [], [], []
    for rgb, (record, encoded) in zip(frames, coded):
        try:
            decoded = decoder.decode(record)
        except BitstreamError:
            failures += 1
            decoder.reference = encoder.reference  # resume as a receiver would after a keyframe
            continue
        gpu.append(psnr(rgb, encoded))
        cpu.append(psnr(rgb, decoded))
        gaps.append(abs(gpu[-1] - cpu[-1]))
        cross.append(psnr(encoded, decoded))
    return CrossDevice(loaded.info.name, len(frames), str(size), quality, failures,
                       statistics.fmean(gpu or [0.0]), statistics.fmean(cpu or [0.0]), max(gaps or [0.0]),
                       min(cross or [float("inf")]))


def speed(loaded: LoadedModel, frames: list[np.ndarray], device: torch.device) -> Speed:
    size = FrameSize(frames[0].shape[1], frames[0].shape[0])
    encoder = FrameEncoder(loaded.model, size, device)
    decoder = FrameDecoder(loaded.model, size, device)
    records, encode_times, decode_times = [], [], []
    for i, rgb in enumerate(frames):
        (record, _), seconds = timed(device, encoder.encode, rgb, i, keyframe=i == 0)
        records.append(record)
        encode_times.append(seconds)
    for record in records:
        _, seconds = timed(device, decoder.decode, record)
        decode_times.append(seconds)
    tensors = [to_tensor(rgb, encoder.padded, device) for rgb in frames]
    fit_rates = []
    for crop in (256, None):
        adapter = StreamAdapter("speed", loaded.model, loaded.info.sha256, AdapterSpec(),
                                loaded.info.required_lambda(0.0), FitBudget(steps=3, crop=crop))
        adapter.fit(tensors)  # warm-up
        adapter.budget = FitBudget(steps=20, crop=crop)
        _, seconds = timed(device, adapter.fit, tensors)
        fit_rates.append(20 / seconds)
    return Speed(str(size), 1 / statistics.median(decode_times[1:]), 1 / statistics.median(encode_times[1:]),
                 *fit_rates)


def _code_segment(loaded: LoadedModel, frames: list[np.ndarray], weights: SynthesisWeights | None,
                  device: torch.device) -> tuple[int, float, float]:
    """Bits, mean PSNR and mean squared error (0..1 scale) of a segment coded I, P, P... with `weights`."""
    size = FrameSize(frames[0].shape[1], frames[0].shape[0])
    encoder = FrameEncoder(loaded.model, size, device)
    encoder.weights = weights
    bits, psnrs, errors = 0, [], []
    for i, rgb in enumerate(frames):
        record, decoded = encoder.encode(rgb, i, keyframe=i == 0)
        bits += len(record.string) * 8
        psnrs.append(psnr(rgb, decoded))
        errors.append(float(np.mean((rgb.astype(np.float64) - decoded) ** 2)) / 255**2)
    return bits, statistics.fmean(psnrs), statistics.fmean(errors)


def adaptation_gain(loaded: LoadedModel, frames: list[np.ndarray], steps: int, mode: AdaptMode, device: torch.device
                    ) -> AdaptationGain:
    """Segment mode fits on `frames` and codes them; live mode fits on the first half and codes
    the second, as a live sender fits on one segment and serves the next."""
    half = len(frames) // 2
    fit_on, coded = (frames, frames) if mode == AdaptMode.SEGMENT else (frames[:half], frames[half:])
    lmbda = loaded.info.required_lambda(0.0)
    adapter = StreamAdapter("gain", loaded.model, loaded.info.sha256, AdapterSpec(), lmbda,
                            FitBudget(steps=steps, gop=3, crop=256))
    padded = padded_size(FrameSize(frames[0].shape[1], frames[0].shape[0]), FRAME_MULTIPLE)
    tensors = [to_tensor(rgb, padded, device) for rgb in fit_on]
    started = time.perf_counter()
    update, _ = adapter.fit(tensors)
    fit_seconds = time.perf_counter() - started
    assert update is not None, "fit keeps every version when not told how many frames it will serve"
    base_bits, base_psnr, base_mse = _code_segment(loaded, coded, None, device)
    bits, adapted_psnr, adapted_mse = _code_segment(loaded, coded, adapter.weights, device)
    update_bits = len(update) * 8
    pixels = coded[0].shape[0] * coded[0].shape[1] * len(coded)
    base_cost = lmbda * 255**2 * base_mse + base_bits / pixels
    adapted_cost = lmbda * 255**2 * adapted_mse + (bits + update_bits) / pixels
    return AdaptationGain(mode, f"{coded[0].shape[1]}x{coded[0].shape[0]}", steps, round(fit_seconds, 2),
                          base_bits, base_psnr, bits + update_bits, update_bits, adapted_psnr,
                          1 - adapted_cost / base_cost)


@dataclass(frozen=True)
class CheckSizes:
    """Frame sizes of the checks: the GPU's by default, tiny ones for a CPU rehearsal."""

    cross_device: FrameSize = FrameSize(640, 360)
    speed: FrameSize = FrameSize(1280, 720)
    adaptation: FrameSize = FrameSize(640, 360)
    frames: int = 12


CHECKS = ("cross_device", "speed", "adaptation")


def run_gpu_checks(eval_pack: Path, model: str | None, out: Path, *, device_name: str = "cuda", adapt_steps: int = 200,
                   sizes: CheckSizes = CheckSizes(), checks: str = ",".join(CHECKS), quality: float = 0.0) -> dict:
    """All three checks; the figures are printed, and written to `out` as JSON. On the CPU
    (`device_name` cpu) they only rehearse: their figures mean nothing there."""
    device = pick_device(device_name)
    pack = ClipFrames.from_pack(eval_pack)
    loaded = load_model(model)
    torch.backends.cudnn.benchmark = True
    report: dict = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                    "torch": torch.__version__, "model": loaded.info.name}
    wanted = checks.split(",")
    if not wanted or any(name not in CHECKS for name in wanted):
        raise AdaptcastError(f"checks are a comma-separated choice of {', '.join(CHECKS)}, got {checks!r}")
    runs = {
        "cross_device": lambda: asdict(cross_device(model, _frames(pack, sizes.cross_device, sizes.frames), device,
                                                    quality)),
        "speed": lambda: asdict(speed(loaded, _frames(pack, sizes.speed, sizes.frames), device)),
        "adaptation": lambda: [asdict(adaptation_gain(loaded, _frames(pack, sizes.adaptation, sizes.frames),
                                                      adapt_steps, mode, device))
                               for mode in (AdaptMode.SEGMENT, AdaptMode.LIVE)],
    }
    for name in wanted:
        check = runs[name]
        started = time.perf_counter()
        report[name] = check()
        report[f"{name}_seconds"] = round(time.perf_counter() - started, 1)
        print(json.dumps({name: report[name]}), flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return report
