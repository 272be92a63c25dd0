"""`adaptcast train-base` and `adaptcast pack-frames`: training base models (shared/codec/training.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from adaptcast.commands import Command
from adaptcast.commands.arguments import add_device, float_list

if TYPE_CHECKING:
    from adaptcast.shared.codec.ssf import SSFWidths


def _widths(text: str) -> SSFWidths:
    from adaptcast.shared.codec.ssf import SSFWidths

    try:
        mid, latent, hyper = (int(v) for v in text.split("/"))
        return SSFWidths(mid, latent, hyper)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"widths must look like 32/64/48: {exc}") from None


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("videos", nargs="*", help="training videos (any container PyAV reads)")
    parser.add_argument("-o", "--output", required=True, help="model file to write (.safetensors)")
    parser.add_argument("--frames", help="train on this frame pack (adaptcast pack-frames) instead of videos")
    parser.add_argument("--lambda", dest="lmbda", type=float, default=0.0067, help="loss = lambda*255^2*MSE + bpp")
    parser.add_argument("--rate-lambdas", type=float_list,
                        help="train a variable-rate model with these rate points (comma-separated lambdas)")
    parser.add_argument("--widths", type=_widths, default="32/64/48",
                        help="mid/latent/hyper channels (CompressAI: 128/192/192)")
    parser.add_argument("--init", help="start from this model (fine-tune) instead of random weights")
    parser.add_argument("--steps", type=int, default=10000)
    parser.add_argument("--max-minutes", type=float, help="stop (and save) after this wall time")
    parser.add_argument("--schedule-minutes", type=float,
                        help="run the learning-rate and crop schedules over this wall time instead of --steps")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--gop", type=int, default=3, help="frames per training GOP (I + P-frames)")
    parser.add_argument("--crop", type=int, default=128, help="crop side (a multiple of 64)")
    parser.add_argument("--crop-start", type=int, help="grow crops from this side to --crop over the first half")
    parser.add_argument("--max-width", type=int, default=640, help="scale wider videos down to this")
    parser.add_argument("--lr", type=float, default=5e-4)
    add_device(parser)
    parser.add_argument("--name", help="model name in the metadata (default: the output's stem)")


def train(args: argparse.Namespace) -> int:
    from adaptcast.shared.codec.training import TrainConfig, train_base

    config = TrainConfig(
        videos=[Path(v) for v in args.videos], output=Path(args.output), lmbda=args.lmbda,
        rate_lambdas=args.rate_lambdas, frames=Path(args.frames) if args.frames else None,
        widths=args.widths, init=args.init, steps=args.steps, max_minutes=args.max_minutes,
        schedule_minutes=args.schedule_minutes, batch=args.batch, gop=args.gop, crop=args.crop,
        crop_start=args.crop_start, lr=args.lr, max_width=args.max_width, device=args.device, name=args.name or "",
    )
    info = train_base(config)
    print(json.dumps({"model": str(args.output), "sha256": info.sha256, **info.training}))
    return 0


def add_pack_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("videos", nargs="+")
    parser.add_argument("-o", "--output", required=True, help="frame pack to write (.npz)")
    parser.add_argument("--max-width", type=int, default=640, help="scale wider videos down to this (and to half)")
    parser.add_argument("--frames-per-clip", type=int, default=60)
    parser.add_argument("--windows", type=int, default=1, help="take the frames as this many runs spread over each "
                                                                 "clip")
    parser.add_argument("--min-side", type=int, default=128, help="leave out scales with a side smaller than this")


def pack(args: argparse.Namespace) -> int:
    from adaptcast.shared.codec.training import pack_frames

    size = pack_frames([Path(v) for v in args.videos], Path(args.output), args.max_width, args.frames_per_clip,
                       args.windows, args.min_side)
    print(json.dumps({"pack": args.output, "bytes": size}))
    return 0


TRAIN_BASE = Command("train-base", "train or fine-tune a base model on video files or a frame pack",
                     add_train_arguments, train)
PACK_FRAMES = Command("pack-frames", "decode training videos once into a frame pack (for train-base --frames)",
                      add_pack_arguments, pack)
