"""Argument types and argument groups that more than one command takes (the benchmarks' too).

A type refuses a bad value with argparse's own error, which names the option and exits with 2.
Modules with torch in them are imported inside the functions: a type runs only for a value given.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from adaptcast.shared.adapters.mode import AdaptMode

if TYPE_CHECKING:
    from adaptcast.shared.frames import FrameSize
    from adaptcast.shared.pipeline.stream import AdaptOptions

DEVICES = ("auto", "cpu", "cuda")


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def int_list(text: str) -> list[int]:
    """Comma-separated integers; an empty string is an empty list."""
    return [int(part) for part in text.split(",") if part]


def float_list(text: str) -> list[float]:
    """Comma-separated numbers."""
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def size(text: str) -> FrameSize:
    """`WxH` of frames to code: the codec's rule (shared/frames.py) is checked here."""
    from adaptcast.shared.frames import FrameSize, coded_size_problem

    try:
        parsed = FrameSize.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if problem := coded_size_problem(parsed.width, parsed.height):
        raise argparse.ArgumentTypeError(problem)
    return parsed


def size_list(text: str) -> list[FrameSize]:
    """Comma-separated sizes."""
    return [size(part) for part in text.split(",")]


def add_device(parser: argparse.ArgumentParser, default: str = "auto") -> None:
    parser.add_argument("--device", default=default, choices=DEVICES)


def add_fit_arguments(parser: argparse.ArgumentParser) -> None:
    """How adapters are fitted: encode --adapt and bench-adapt."""
    parser.add_argument("--fit-seconds", type=positive_float,
                        help="fitting time limit per segment, whichever of steps and time ends first "
                             "(encode's default: 90%% of a segment's duration, so fitting keeps up with the camera)")
    parser.add_argument("--lr", type=positive_float, default=1e-3, help="fitting learning rate")
    parser.add_argument("--method", choices=("lora", "full"), default="lora",
                        help="lora: low-rank adapters (ours); full: fine-tune every decoder weight and bias (the "
                             "baseline; it wants --lr 1e-4)")
    parser.add_argument("--ranks", type=lambda t: tuple(int(v) for v in t.split("/")), default=(16, 8, 8, 2),
                        help="LoRA rank of each synthesis layer, first to last")
    parser.add_argument("--decoders", type=lambda t: tuple(t.split(",")),
                        default=("img_decoder", "motion_decoder", "res_decoder"),
                        help="synthesis transforms to adapt (comma-separated)")


def adapt_options(args: argparse.Namespace, steps: int, default_seconds: float | None = None) -> AdaptOptions:
    """The fitting arguments (`add_fit_arguments`) as AdaptOptions; UsageError for ranks or decoders
    that the adapter's own checks refuse."""
    from adaptcast.shared.adapters.fitting import FitBudget
    from adaptcast.shared.adapters.lora import AdapterSpec
    from adaptcast.shared.errors import UsageError
    from adaptcast.shared.pipeline.stream import AdaptOptions

    seconds = args.fit_seconds if args.fit_seconds is not None else default_seconds
    try:  # AdapterSpec checks ranks and decoders together, as it does for a spec read from the wire
        spec = (AdapterSpec.full(args.decoders) if args.method == "full"
                else AdapterSpec(ranks=args.ranks, decoders=args.decoders))
    except ValueError as exc:
        raise UsageError(f"--method/--ranks/--decoders: {exc}") from None
    return AdaptOptions(mode=getattr(args, "mode", AdaptMode.SEGMENT), spec=spec,
                        budget=FitBudget(steps=steps, seconds=seconds, lr=args.lr))


def print_json(report: Any) -> None:
    """A report dataclass as one line of JSON (`--json`)."""
    print(json.dumps(asdict(report)))
