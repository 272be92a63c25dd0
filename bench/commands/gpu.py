"""`gpu-checks`: what a GPU run checks before it trains (deploy/gpu-training)."""

from __future__ import annotations

import argparse
from pathlib import Path

from adaptcast.commands import Command
from adaptcast.commands.arguments import add_device

REHEARSAL_SIDES = (160, 96)
"""Frame size of a rehearsal on a CPU (--rehearse)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--eval-pack", required=True, help="a frame pack of evaluation frames (adaptcast pack-frames)")
    parser.add_argument("--model", help="the model to check (default: the bundled default)")
    parser.add_argument("--out", required=True, help="JSON file to write the figures to")
    add_device(parser, default="cuda")
    parser.add_argument("--adapt-steps", type=int, default=200,
                        help="adapter steps per segment in the adaptation check")
    parser.add_argument("--checks", default="cross_device,speed,adaptation", help="comma-separated checks to run")
    parser.add_argument("--quality", type=float, default=0.0, help="quality index of the cross-device check")
    parser.add_argument("--rehearse", action="store_true", help="tiny sizes: rehearse the checks on a CPU")


def run(args: argparse.Namespace) -> int:
    from adaptcast.shared.frames import FrameSize
    from adaptcast_bench.gpu import CheckSizes, run_gpu_checks

    tiny = FrameSize(*REHEARSAL_SIDES)
    sizes = CheckSizes(tiny, tiny, tiny, frames=4) if args.rehearse else CheckSizes()
    run_gpu_checks(Path(args.eval_pack), args.model, Path(args.out), device_name=args.device,
                   adapt_steps=args.adapt_steps, sizes=sizes, checks=args.checks, quality=args.quality)
    return 0


GPU_CHECKS = Command("gpu-checks", "what a GPU run checks before it trains (deploy/gpu-training)", add_arguments, run)
