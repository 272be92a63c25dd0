"""Training and fine-tuning of base models (`adaptcast train-base`).

A run reads its frames once (decoded from videos, or from a frame pack made beforehand by
`pack_frames`, which is what a GPU machine without PyAV reads), then trains with crops that grow
and a learning rate that decays over the run, and checkpoints so that a stopped run resumes
where it stopped. A variable-rate model draws a quality index per training GOP, so every rate
point (and every index between them) is trained with its own lambda. Each frame's loss is
back-propagated as soon as it is computed (references are detached), so a long GOP costs no
more memory than a short one.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from tqdm import tqdm

from adaptcast.shared.codec.loss import frame_bits
from adaptcast.shared.codec.modelfile import ModelInfo, load_model, save_model
from adaptcast.shared.codec.ssf import ScaleSpaceFlow, SSFWidths, interpolate_levels
from adaptcast.shared.device import pick_device
from adaptcast.shared.errors import AdaptcastError
from adaptcast.shared.frames import RgbFrame

log = logging.getLogger(__name__)

MAX_SKIPPED_STEPS = 20
"""Non-finite losses in a row after which training stops instead of spinning."""
CROP_MULTIPLE = 64
"""Training crops are multiples of this, so that every latent and hyper-latent is whole."""
FINAL_LR_RATIO = 0.05
"""The cosine schedule's last learning rate, as a share of the first."""


@dataclass
class TrainConfig:
    """Everything a training run needs; recorded in the model's metadata."""

    videos: list[Path]
    output: Path
    lmbda: float = 0.0067
    rate_lambdas: list[float] | None = None
    """Train a variable-rate model with these rate points (quality index i trains at
    rate_lambdas[i]); None trains a single-rate model at `lmbda`."""
    widths: SSFWidths = field(default_factory=lambda: SSFWidths(32, 64, 48))
    init: str | None = None
    """Start from this model (fine-tuning) instead of random weights; a single-rate model can
    start a variable-rate one."""
    frames: Path | None = None
    """A frame pack (`pack_frames`) to train on instead of decoding `videos`."""
    steps: int = 10000
    max_minutes: float | None = None
    schedule_minutes: float | None = None
    """Run the learning-rate and crop schedules over this wall time instead of over `steps`
    (a fixed-time run, such as a rented GPU's)."""
    batch: int = 8
    gop: int = 3
    crop: int = 128
    crop_start: int | None = None
    """Crops grow from this to `crop` over the first half of the run (None: `crop` throughout)."""
    lr: float = 5e-4
    max_width: int = 640
    """Clips wider than this are scaled down before cropping (and also used at half width)."""
    max_frames_per_clip: int = 2000
    checkpoint_every_s: float = 300.0
    log_every: int = 25
    """Steps between lines of the loss curve (OUTPUT.log.jsonl)."""
    seed: int = 0
    device: str = "auto"
    name: str = ""

    def __post_init__(self) -> None:
        if not self.videos and self.frames is None:
            raise AdaptcastError("train-base needs at least one video or a frame pack")
        if self.lmbda <= 0 or self.steps <= 0 or self.batch <= 0 or self.gop < 1 or self.lr <= 0:
            raise AdaptcastError("lambda, steps, batch, gop and lr must be positive")
        if self.rate_lambdas is not None and (
            len(self.rate_lambdas) < 2 or sorted(self.rate_lambdas) != list(self.rate_lambdas)
            or self.rate_lambdas[0] <= 0
        ):
            raise AdaptcastError("rate lambdas must be two or more increasing positive values, "
                                 f"got {self.rate_lambdas}")
        for name in ("crop", "crop_start"):
            value = getattr(self, name)
            if value is not None and (value <= 0 or value % CROP_MULTIPLE):
                raise AdaptcastError(f"{name} must be a positive multiple of {CROP_MULTIPLE}, got {value}")
        if self.crop_start is not None and self.crop_start > self.crop:
            raise AdaptcastError(f"crop_start ({self.crop_start}) is larger than crop ({self.crop})")


class ClipFrames:
    """Every training clip in memory as a uint8 tensor (frames x height x width x 3), on the
    training device once `to` has moved them there: a GPU then crops its batches itself, instead
    of waiting for one CPU thread to cut them."""

    def __init__(self, clips: list[npt.NDArray[np.uint8]], names: list[str]) -> None:
        if not clips:
            raise AdaptcastError("no training clip")
        self.clips = [torch.from_numpy(clip) for clip in clips]
        self.names = names

    def to(self, device: torch.device) -> ClipFrames:
        self.clips = [clip.to(device) for clip in self.clips]
        return self

    @classmethod
    def from_videos(
        cls, videos: list[Path], max_width: int, min_side: int, max_frames: int, windows: int = 1
    ) -> ClipFrames:
        """Decode each video at up to `max_width` and at half that (scales that keep a side of at
        least `min_side` pixels): the decoded-frame cache that keeps steps off the video decoder.

        With `windows` > 1, `max_frames` are taken as that many runs of consecutive frames spread
        over the whole clip, each kept as a clip of its own (no GOP spans two runs): more of a
        scene's moments in the same bytes.
        """
        from adaptcast.shared.frames import FrameSize
        from adaptcast.shared.video import read_frames

        clips, names = [], []
        for video in videos:
            first = next(read_frames(video, max_frames=1), None)
            if first is None:
                raise AdaptcastError(f"{video} has no frames")
            height, width = first.shape[:2]
            scale = min(1.0, max_width / width)
            for factor in (scale, scale / 2):
                size = FrameSize(2 * round(width * factor / 2), 2 * round(height * factor / 2))
                if min(size.width, size.height) < min_side:
                    continue
                frames = list(read_frames(video, size, max_frames=None if windows > 1 else max_frames))
                for index, run in enumerate(_spread_windows(frames, max_frames, windows)):
                    clips.append(np.stack(run))
                    names.append(f"{video.name}@{size}#{index}")
                    log.info("training clip %s at %s: %d frames", names[-1], size, len(run))
        if not clips:
            raise AdaptcastError(f"no clip is at least {min_side}x{min_side} pixels")
        return cls(clips, names)

    @classmethod
    def from_pack(cls, path: Path) -> ClipFrames:
        try:
            with np.load(path) as pack:
                names = [str(name) for name in pack["names"]]
                clips = [pack[f"clip{i}"] for i in range(len(names))]
        except (OSError, KeyError, ValueError) as exc:
            raise AdaptcastError(f"cannot read frame pack {path}: {exc}") from None
        if any(clip.dtype != np.uint8 or clip.ndim != 4 or clip.shape[-1] != 3 for clip in clips):
            raise AdaptcastError(f"{path}: a frame pack holds uint8 arrays of frames x height x width x 3")
        return cls(clips, names)

    def save(self, path: Path) -> None:
        """Write the frames as a frame pack (compressed .npz, read by `from_pack`)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {f"clip{i}": clip.cpu().numpy() for i, clip in enumerate(self.clips)}
        np.savez_compressed(path, names=np.array(self.names), **arrays)

    def usable(self, crop: int) -> list[torch.Tensor]:
        return [clip for clip in self.clips if min(clip.shape[1:3]) >= crop]

    def sample(self, rng: random.Random, batch: int, gop: int, crop: int) -> list[torch.Tensor]:
        """A batch of GOPs: random clip, start, temporal stride (1-2), crop and mirror."""
        clips = self.usable(crop)
        if not clips:
            raise AdaptcastError(f"no training clip is at least {crop}x{crop} pixels")
        gops = []
        for _ in range(batch):
            clip = clips[rng.randrange(len(clips))]
            stride = rng.choice((1, 2)) if len(clip) > 2 * gop else 1
            start = rng.randrange(max(1, len(clip) - stride * (gop - 1)))
            top = rng.randrange(clip.shape[1] - crop + 1)
            left = rng.randrange(clip.shape[2] - crop + 1)
            frames = clip[start : start + stride * gop : stride, top : top + crop, left : left + crop]
            if len(frames) < gop:  # a clip shorter than a GOP repeats its last frame
                frames = torch.cat([frames, frames[-1:].expand(gop - len(frames), -1, -1, -1)])
            if rng.random() < 0.5:
                frames = frames.flip(2)
            gops.append(frames)
        stacked = torch.stack(gops).permute(1, 0, 4, 2, 3).float().div_(255.0)  # G x B x 3 x H x W
        return list(stacked)


def _spread_windows(frames: list[RgbFrame], count: int, windows: int) -> list[list[RgbFrame]]:
    """`count` frames as `windows` runs of consecutive frames, evenly spread over `frames`."""
    if len(frames) <= count or windows <= 1:
        return [frames[:count]]
    run = count // windows
    starts = np.linspace(0, len(frames) - run, windows).astype(int)
    return [frames[start : start + run] for start in starts]


def pack_frames(
    videos: list[Path], path: Path, max_width: int, frames_per_clip: int, windows: int = 1, min_side: int = 128
) -> int:
    """Decode `videos` once into a frame pack that `train-base --frames` reads; return its bytes.

    A pack is what a machine without PyAV (a rented GPU) trains on, and a cache that spares a
    CPU run the decoding.
    """
    ClipFrames.from_videos(videos, max_width, min_side, frames_per_clip, windows).save(path)
    return path.stat().st_size


def train_gop(
    model: ScaleSpaceFlow, frames: list[torch.Tensor], lambdas: torch.Tensor, quality: torch.Tensor | None
) -> dict[str, float] | None:
    """Back-propagate one batch of GOPs frame by frame (per-element lambdas and quality indexes);
    return the mean loss, MSE and bpp, or None (gradients left to be zeroed) when a frame's loss
    is not finite."""
    batch, _, height, width = frames[0].shape
    totals = torch.zeros(3, device=frames[0].device)
    for x, (x_hat, likelihoods) in zip(frames, model.code_gop(frames, quality=quality, detach_references=True)):
        mse = torch.mean((x_hat - x) ** 2, dim=(1, 2, 3))
        bpp = frame_bits(likelihoods) / (height * width)
        loss = torch.mean(lambdas * 255**2 * mse + bpp) / len(frames)
        loss.backward()
        totals += torch.stack([loss, mse.mean() / len(frames), bpp.mean() / len(frames)]).detach()
    loss, mse, bpp = totals.tolist()  # one wait for the device a step, not three a frame
    if not math.isfinite(loss):
        return None
    return {"loss": loss, "mse": mse, "bpp": bpp}


def _initial_model(config: TrainConfig) -> tuple[ScaleSpaceFlow, SSFWidths]:
    if not config.init:
        return ScaleSpaceFlow(config.widths, rate_lambdas=config.rate_lambdas), config.widths
    loaded = load_model(config.init)
    widths = loaded.info.widths
    if config.rate_lambdas and loaded.model.rate_lambdas != config.rate_lambdas:
        if loaded.model.rate_lambdas:
            raise AdaptcastError(f"--init {config.init} has rate points {loaded.model.rate_lambdas}, not "
                                 f"{config.rate_lambdas}")
        # A single-rate model starts a variable-rate one: its weights, gains at sqrt(lambda) ratios.
        model = ScaleSpaceFlow(widths, rate_lambdas=config.rate_lambdas, init_lambda=loaded.info.lmbda)
        missing, unexpected = model.load_state_dict(loaded.model.state_dict(), strict=False)
        if unexpected or any("_gains." not in name for name in missing):
            raise AdaptcastError(f"--init {config.init} does not fit the variable-rate architecture")
        return model, widths
    if not config.rate_lambdas and loaded.model.rate_lambdas:
        raise AdaptcastError(f"--init {config.init} is variable-rate: give its rate points (--rate-lambdas)")
    return loaded.model, widths


class Schedule:
    """Learning rate (cosine decay) and crop (growing over the first half) at a point of the run."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config

    def progress(self, step: int, elapsed_s: float) -> float:
        if self.config.schedule_minutes:
            return min(1.0, elapsed_s / (self.config.schedule_minutes * 60))
        return min(1.0, step / self.config.steps)

    def lr(self, progress: float) -> float:
        cosine = 0.5 * (1 + math.cos(math.pi * progress))
        return self.config.lr * (FINAL_LR_RATIO + (1 - FINAL_LR_RATIO) * cosine)

    def crop(self, progress: float) -> int:
        start = self.config.crop_start or self.config.crop
        grown = start + (self.config.crop - start) * min(1.0, 2 * progress)
        return int(grown // CROP_MULTIPLE * CROP_MULTIPLE)


def _quality_draw(rng: random.Random, levels: int, batch: int, device: torch.device) -> torch.Tensor:
    """A quality index per batch element, uniform over the whole range (not just rate points),
    so that every index a rate controller may pick is trained."""
    return torch.tensor([rng.uniform(0, levels - 1) for _ in range(batch)], device=device)


def _lambdas_at(rate_lambdas: list[float], quality: torch.Tensor) -> torch.Tensor:
    return torch.exp(interpolate_levels(torch.log(torch.tensor(rate_lambdas, device=quality.device)), quality))


def _checkpoint_path(output: Path) -> Path:
    return output.with_suffix(".ckpt")


def curve_path(output: Path) -> Path:
    """Where a run writes its loss curve: a JSON line every `log_every` steps."""
    return output.with_suffix(".log.jsonl")


def train_base(config: TrainConfig) -> ModelInfo:
    """Train (or fine-tune) a base model; resumes from `OUTPUT.ckpt` when one exists."""
    device = pick_device(config.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    rng = random.Random(config.seed)
    torch.manual_seed(config.seed)
    schedule = Schedule(config)
    min_crop = config.crop_start or config.crop
    data = (ClipFrames.from_pack(config.frames) if config.frames else
            ClipFrames.from_videos(config.videos, config.max_width, min_crop, config.max_frames_per_clip)).to(device)
    model, widths = _initial_model(config)
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
            raise AdaptcastError(f"{checkpoint} was saved by another training run (other widths, rate points "
                                 "or --init); remove it to start over, or give another output") from None
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
    deadline = time.monotonic() + config.max_minutes * 60 if config.max_minutes else math.inf
    skipped = 0
    window: list[dict[str, float]] = []
    window_started = (step, time.monotonic())
    progress_bar = tqdm(total=config.steps, initial=step, desc="train-base", file=sys.stderr, dynamic_ncols=True,
                        disable=None)  # no progress bar in a log file: the loss curve is there
    with curve_path(config.output).open("a") as curve:
        while step < config.steps and time.monotonic() < deadline:
            progress = schedule.progress(step, elapsed)
            lr, crop = schedule.lr(progress), schedule.crop(progress)
            for group in optimizer.param_groups:
                group["lr"] = lr
            frames = [f.to(device, non_blocking=True) for f in data.sample(rng, config.batch, config.gop, crop)]
            if config.rate_lambdas:
                quality = _quality_draw(rng, len(config.rate_lambdas), config.batch, device)
                lambdas = _lambdas_at(config.rate_lambdas, quality)
            else:
                quality, lambdas = None, torch.full((config.batch,), config.lmbda, device=device)
            optimizer.zero_grad()
            aux_optimizer.zero_grad()
            terms = train_gop(model, frames, lambdas, quality)
            if terms is None:
                # One non-finite batch must not poison the weights and Adam's moments: skip it.
                skipped += 1
                log.warning("step %d: non-finite loss, batch skipped (%d in a row)", step, skipped)
                if skipped >= MAX_SKIPPED_STEPS:
                    raise AdaptcastError(f"training diverged: {skipped} non-finite losses in a row at step {step}")
                continue
            skipped = 0
            torch.nn.utils.clip_grad_norm_(net_params, 1.0)
            optimizer.step()
            model.aux_loss().backward()
            aux_optimizer.step()
            step += 1
            elapsed = time.monotonic() - started
            window.append(terms)
            psnr = -10 * math.log10(max(terms["mse"], 1e-10))
            progress_bar.set_postfix(loss=f"{terms['loss']:.3f}", psnr=f"{psnr:.2f}", bpp=f"{terms['bpp']:.3f}")
            progress_bar.update()
            if len(window) >= config.log_every:
                now = time.monotonic()
                mean = {key: sum(t[key] for t in window) / len(window) for key in window[0]}
                curve.write(json.dumps({
                    "step": step, "elapsed_s": round(elapsed, 1), "lr": lr, "crop": crop,
                    "steps_per_s": round((step - window_started[0]) / (now - window_started[1]), 3),
                    "loss": round(mean["loss"], 5), "psnr": round(-10 * math.log10(max(mean["mse"], 1e-10)), 3),
                    "bpp": round(mean["bpp"], 5),
                }) + "\n")
                curve.flush()
                window, window_started = [], (step, now)
            if time.monotonic() - last_checkpoint > config.checkpoint_every_s:
                save_checkpoint()
                last_checkpoint = time.monotonic()
    progress_bar.close()
    save_checkpoint()

    info = ModelInfo(
        name=config.name or config.output.stem,
        widths=widths,
        lmbda=None if config.rate_lambdas else config.lmbda,
        rate_lambdas=list(config.rate_lambdas or []),
        quality=config.output.stem,
        training={
            "command": " ".join(["adaptcast"] + sys.argv[1:]),
            "data": [v.name for v in config.videos] if not config.frames else [config.frames.name] + data.names,
            "init": config.init,
            "steps": step,
            "wall_seconds": round(elapsed),
            "batch": config.batch, "gop": config.gop, "crop": config.crop, "crop_start": config.crop_start,
            "lr": config.lr,
            "machine": f"{platform.machine()} {torch.get_num_threads()} threads, {device}"
            + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else ""),
        },
    )
    return save_model(model, info, config.output)
