"""Training and fine-tuning of base models from video files (`adaptcast train-base`)."""

from __future__ import annotations

import logging
import math
import platform
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from shared.codec.modelfile import LoadedModel, ModelInfo, load_model, save_model
from shared.codec.ssf import ScaleSpaceFlow, SSFWidths, SynthesisWeights
from shared.device import pick_device
from shared.errors import AdaptcastError
from shared.video import FrameSize, read_frames

log = logging.getLogger(__name__)

MAX_SKIPPED_STEPS = 20
"""Non-finite losses in a row after which training stops instead of spinning."""


@dataclass
class TrainConfig:
    """Everything a training run needs; recorded in the model's metadata."""

    videos: list[Path]
    output: Path
    lmbda: float = 0.0067
    widths: SSFWidths = field(default_factory=lambda: SSFWidths(32, 64, 48))
    init: str | None = None
    """Start from this model (fine-tuning) instead of random weights."""
    steps: int = 10000
    max_minutes: float | None = None
    batch: int = 8
    gop: int = 3
    crop: int = 128
    lr: float = 5e-4
    max_width: int = 640
    """Clips wider than this are scaled down before cropping (and also used at half width)."""
    max_frames_per_clip: int = 2000
    checkpoint_every_s: float = 300.0
    seed: int = 0
    device: str = "auto"
    name: str = ""

    def __post_init__(self) -> None:
        if not self.videos:
            raise AdaptcastError("train-base needs at least one video")
        if self.lmbda <= 0 or self.steps <= 0 or self.batch <= 0 or self.gop < 1 or self.lr <= 0:
            raise AdaptcastError("lambda, steps, batch, gop and lr must be positive")
        if self.crop <= 0 or self.crop % 128:
            raise AdaptcastError(f"crop must be a positive multiple of 128, got {self.crop}")


class ClipFrames:
    """Every training clip decoded into memory, at up to two scales, as uint8 arrays."""

    def __init__(self, videos: list[Path], max_width: int, crop: int, max_frames: int) -> None:
        self.clips: list[np.ndarray] = []
        for video in videos:
            first = next(read_frames(video, max_frames=1), None)
            if first is None:
                raise AdaptcastError(f"{video} has no frames")
            height, width = first.shape[:2]
            scale = min(1.0, max_width / width)
            for factor in (scale, scale / 2):
                size = FrameSize(2 * round(width * factor / 2), 2 * round(height * factor / 2))
                if min(size.width, size.height) < crop:
                    continue
                frames = np.stack(list(read_frames(video, size, max_frames=max_frames)))
                self.clips.append(frames)
                log.info("training clip %s at %s: %d frames", video.name, size, len(frames))
        if not self.clips:
            raise AdaptcastError(f"no clip is at least {crop}x{crop} pixels")

    def sample(self, rng: random.Random, batch: int, gop: int, crop: int) -> list[torch.Tensor]:
        """A batch of GOPs: random clip, start, temporal stride (1-2), crop and mirror."""
        gops = []
        for _ in range(batch):
            clip = self.clips[rng.randrange(len(self.clips))]
            stride = rng.choice((1, 2)) if len(clip) > 2 * gop else 1
            start = rng.randrange(max(1, len(clip) - stride * (gop - 1)))
            top = rng.randrange(clip.shape[1] - crop + 1)
            left = rng.randrange(clip.shape[2] - crop + 1)
            frames = clip[start : start + stride * gop : stride, top : top + crop, left : left + crop]
            if len(frames) < gop:  # a clip shorter than a GOP repeats its last frame
                frames = np.concatenate([frames, np.repeat(frames[-1:], gop - len(frames), 0)])
            if rng.random() < 0.5:
                frames = frames[:, :, ::-1]
            gops.append(torch.from_numpy(np.ascontiguousarray(frames)))
        stacked = torch.stack(gops).permute(1, 0, 4, 2, 3).float().div_(255.0)  # G x B x 3 x H x W
        return list(stacked)


def rate_distortion(
    model: ScaleSpaceFlow,
    frames: list[torch.Tensor],
    lmbda: float,
    weights: SynthesisWeights | None = None,
    extra_bits: torch.Tensor | float = 0.0,
) -> dict[str, torch.Tensor]:
    """Loss = lmbda * 255^2 * MSE + bits per pixel, both averaged over the GOP's frames.

    `weights` and `extra_bits` are an adapter being fitted and the bits it costs.
    """
    out = model(frames, weights)
    batch, _, height, width = frames[0].shape
    pixels = batch * height * width * len(frames)
    bits = extra_bits + sum(
        torch.log(likelihoods).sum() / -math.log(2)
        for frame in out["likelihoods"]
        for part in frame.values()
        for likelihoods in part.values()
    )
    mse = torch.stack([torch.mean((x_hat - x) ** 2) for x_hat, x in zip(out["x_hat"], frames)]).mean()
    bpp = bits / pixels
    return {"loss": lmbda * 255**2 * mse + bpp, "mse": mse, "bpp": bpp}


def _checkpoint_path(output: Path) -> Path:
    return output.with_suffix(".ckpt")


def train_base(config: TrainConfig) -> ModelInfo:
    """Train (or fine-tune) a base model; resumes from `OUTPUT.ckpt` when one exists."""
    device = pick_device(config.device)
    rng = random.Random(config.seed)
    torch.manual_seed(config.seed)
    data = ClipFrames(config.videos, config.max_width, config.crop, config.max_frames_per_clip)
    if config.init:
        loaded: LoadedModel = load_model(config.init)
        model, widths = loaded.model, loaded.info.widths
    else:
        model, widths = ScaleSpaceFlow(config.widths), config.widths
    model.to(device).train()
    aux_params = [p for n, p in model.named_parameters() if n.endswith(".quantiles")]
    net_params = [p for n, p in model.named_parameters() if not n.endswith(".quantiles")]
    optimizer = torch.optim.Adam(net_params, lr=config.lr)
    aux_optimizer = torch.optim.Adam(aux_params, lr=1e-3)

    step, elapsed = 0, 0.0
    config.output.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = _checkpoint_path(config.output)
    if checkpoint.exists():
        state = torch.load(checkpoint, map_location=device, weights_only=True)
        try:
            model.load_state_dict(state["model"])
        except RuntimeError:
            raise AdaptcastError(f"{checkpoint} was saved by another training run (other widths, or another "
                                 "--init); remove it to start over, or give another output") from None
        optimizer.load_state_dict(state["optimizer"])
        aux_optimizer.load_state_dict(state["aux_optimizer"])
        step, elapsed = state["step"], state["elapsed"]
        rng.seed(config.seed + step)
        log.info("resuming %s from step %d", checkpoint, step)

    def save_checkpoint() -> None:
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "aux_optimizer": aux_optimizer.state_dict(), "step": step, "elapsed": elapsed},
                   checkpoint)

    started = time.monotonic() - elapsed
    last_checkpoint = time.monotonic()
    deadline = started + config.max_minutes * 60 if config.max_minutes else math.inf
    skipped = 0
    progress = tqdm(total=config.steps, initial=step, desc="train-base", file=sys.stderr, dynamic_ncols=True)
    while step < config.steps and time.monotonic() < deadline:
        frames = [f.to(device) for f in data.sample(rng, config.batch, config.gop, config.crop)]
        optimizer.zero_grad()
        aux_optimizer.zero_grad()
        terms = rate_distortion(model, frames, config.lmbda)
        if not torch.isfinite(terms["loss"]):
            # One non-finite batch must not poison the weights and Adam's moments: skip it.
            skipped += 1
            log.warning("step %d: non-finite loss, batch skipped (%d in a row)", step, skipped)
            if skipped >= MAX_SKIPPED_STEPS:
                raise AdaptcastError(f"training diverged: {skipped} non-finite losses in a row at step {step}")
            continue
        skipped = 0
        terms["loss"].backward()
        torch.nn.utils.clip_grad_norm_(net_params, 1.0)
        optimizer.step()
        model.aux_loss().backward()
        aux_optimizer.step()
        step += 1
        elapsed = time.monotonic() - started
        psnr = -10 * math.log10(max(terms["mse"].item(), 1e-10))
        progress.set_postfix(loss=f"{terms['loss'].item():.3f}", psnr=f"{psnr:.2f}", bpp=f"{terms['bpp'].item():.3f}")
        progress.update()
        if time.monotonic() - last_checkpoint > config.checkpoint_every_s:
            save_checkpoint()
            last_checkpoint = time.monotonic()
    progress.close()
    save_checkpoint()

    info = ModelInfo(
        name=config.name or config.output.stem,
        widths=widths,
        lmbda=config.lmbda,
        quality=config.output.stem,
        training={
            "command": " ".join(["adaptcast"] + sys.argv[1:]),
            "data": [v.name for v in config.videos],
            "init": config.init,
            "steps": step,
            "wall_seconds": round(elapsed),
            "batch": config.batch, "gop": config.gop, "crop": config.crop, "lr": config.lr,
            "machine": f"{platform.machine()} {torch.get_num_threads()} threads, {device}"
            + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else ""),
        },
    )
    return save_model(model, info, config.output)
