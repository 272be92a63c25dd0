"""Benchmarks of the codec on clips: `bench`, `bench-speed`, `bench-models`, `bench-adapt`,
`bench-adapter-age` and `bench-rate`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adaptcast.commands import Command
from adaptcast.commands.arguments import (
    adapt_options,
    add_device,
    add_fit_arguments,
    float_list,
    int_list,
    non_negative_int,
    positive_float,
    positive_int,
    size,
    size_list,
)
from adaptcast_bench.commands import write_report

if TYPE_CHECKING:
    from adaptcast_bench.models import ModelFamily


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("clips", nargs="*",
                        help="video files (default: the clips held out of training in ../shared/data/clips when it "
                             "exists, else the bundled clip)")
    parser.add_argument("--quick", action="store_true", help="a small configuration: a few minutes on 2 CPU cores")
    parser.add_argument("--size", type=size, help="frame size WxH (default 320x240)")
    parser.add_argument("--frames", type=positive_int, help="frames per clip (default 60, quick 8)")
    parser.add_argument("--intra-period", type=positive_int,
                        help="frames per segment, each starting with an I-frame (or, with the tools, from the "
                             "background) for every contender (default 20, quick 4)")
    parser.add_argument("--models", nargs="+", help="neural rate points (default: ssf-small-q1..q4, quick q1 and q4)")
    parser.add_argument("--neural", nargs="+", metavar="CONTENDER",
                        help="neural contenders to run, by name as the report gives them (default: all; the base "
                             "model always)")
    parser.add_argument("--steps", type=positive_int, help="fitting steps per segment (default 20, quick 3)")
    parser.add_argument("--fps", type=positive_float, help="frame rate to read clips at (default: each clip's own)")
    parser.add_argument("--scale", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure decoding capacity per core and fitting cost against resolution, "
                             "segment length and rank")
    add_device(parser)
    parser.add_argument("--out", default="bench-results", help="folder for bench.md, bench.json and the RD plots")
    parser.add_argument("--json-out", help="write the JSON here instead of into --out")


def bench(args: argparse.Namespace) -> int:
    import dataclasses
    import datetime
    import sys

    import torch

    from adaptcast.shared.device import pick_device
    from adaptcast_bench.bdrate import BD_RATE_METHOD
    from adaptcast_bench.report import BenchReport
    from adaptcast_bench.report import write_report as write_bench_report
    from adaptcast_bench.scale import QUICK_SCALE, ScaleConfig, decode_capacity, fitting_costs
    from adaptcast_bench.speed import machine_description
    from adaptcast_bench.suite import QUICK, BenchConfig, bd_rate_rows, default_clips, peak_memory, run_points

    overrides: dict[str, Any] = {key: value for key, value in (
        ("size", args.size), ("frames", args.frames), ("intra_period", args.intra_period),
        ("models", tuple(args.models) if args.models else None), ("steps", args.steps), ("fps", args.fps),
        ("neural", tuple(args.neural) if args.neural else None),
    ) if value is not None}
    config = dataclasses.replace(QUICK if args.quick else BenchConfig(), **overrides)
    clips = [Path(c) for c in args.clips] or default_clips()
    device = pick_device(args.device)
    points = run_points(clips, config, device)
    report = BenchReport(
        command="adaptcast " + " ".join(sys.argv[1:]), date=str(datetime.date.today()),
        machine=f"{machine_description()}, {torch.get_num_threads()} torch threads",
        device=str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        config={f.name: str(getattr(config, f.name)) for f in dataclasses.fields(config)} | {"clips": len(clips)},
        bd_rate_method=BD_RATE_METHOD, points=points, bd_rates=bd_rate_rows(points),
    )
    if args.scale:
        scale = QUICK_SCALE if args.quick else ScaleConfig()
        report.decode_capacity = decode_capacity(config.models[0], scale, "cpu", threads=1)
        if device.type == "cuda":
            report.decode_capacity += decode_capacity(config.models[0], scale, "cuda", threads=1)
        report.fitting_costs = fitting_costs(config.models[0], clips[0], config.size, scale, device)
    report.memory = peak_memory()
    written = write_bench_report(report, Path(args.out), Path(args.json_out) if args.json_out else None)
    print("\n".join(str(path) for path in written))
    return 0


def add_speed_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="bundled model name or model file (default: the bundled default)")
    parser.add_argument("--sizes", type=size_list, default="320x240,640x360,1280x720")
    parser.add_argument("--frames", type=positive_int, default=30)
    parser.add_argument("--segment-frames", type=positive_int, default=10)
    parser.add_argument("--threads", type=positive_int, default=2, help="CPU threads (torch and OpenMP)")
    add_device(parser, default="cpu")
    parser.add_argument("--out", default="docs/speed.md", help="Markdown report (JSON beside it)")


def speed(args: argparse.Namespace) -> int:
    from adaptcast_bench.speed import markdown_table, run_speed_benchmark

    results = run_speed_benchmark(args.model, args.sizes, args.device, args.frames, args.segment_frames, args.threads)
    write_report(args.out, "Encode and decode speed", markdown_table(results), results)
    return 0


def _family(text: str) -> ModelFamily:
    from adaptcast_bench.models import ModelFamily

    try:
        return ModelFamily.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_models_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("clips", nargs="*", help="clips (default: the held-out development clips)")
    parser.add_argument("--family", type=_family, action="append", required=True, metavar="NAME=POINT,POINT",
                        help="a rate curve: models, or MODEL@QUALITY points of a variable-rate model; the first "
                             "family is the anchor")
    parser.add_argument("--neural", nargs="+", default=["base + tools (ours)", "adaptcast base"],
                        help="contenders each family codes with")
    parser.add_argument("--size", type=size, default="320x240")
    parser.add_argument("--frames", type=positive_int, default=60)
    parser.add_argument("--intra-period", type=positive_int, default=20)
    parser.add_argument("--fps", type=positive_float, default=10.0)
    add_device(parser)
    parser.add_argument("--out", default="docs/models-bench.md", help="Markdown report (JSON beside it)")


def compare_models(args: argparse.Namespace) -> int:
    import dataclasses

    from adaptcast.shared.device import pick_device
    from adaptcast.shared.errors import UsageError
    from adaptcast_bench.models import compare_families, markdown
    from adaptcast_bench.suite import BenchConfig, default_clips

    if len(args.family) < 2:
        raise UsageError("give two or more --family: the first is the anchor")
    config = dataclasses.replace(BenchConfig(), size=args.size, frames=args.frames, intra_period=args.intra_period,
                                 fps=args.fps)
    clips = [Path(c) for c in args.clips] or default_clips()
    points, rows = compare_families(clips, args.family, config, pick_device(args.device), tuple(args.neural))
    setup = (f"{len(clips)} clips at {config.size}, {config.frames} frames, segments of {config.intra_period}, "
             f"{config.fps or 'native'} fps")
    write_report(args.out, "Base models against each other", markdown(points, rows, setup), rows)
    Path(args.out).with_suffix(".points.json").write_text(
        json.dumps([dataclasses.asdict(p) for p in points], indent=1))
    return 0


def add_adapt_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("clips", nargs="+")
    parser.add_argument("--models", nargs="*", help="models to measure (default: the bundled default)")
    parser.add_argument("--sizes", type=size_list, default="320x192")
    parser.add_argument("--fps", type=positive_float, help="frame rate (default: each clip's own)")
    parser.add_argument("--frames", type=positive_int, default=30)
    parser.add_argument("--segment-frames", type=positive_int, default=10, help="intra period of every contender")
    add_device(parser)
    parser.add_argument("--out", default="docs/adaptation.md", help="Markdown report (JSON beside it)")
    add_fit_arguments(parser)
    parser.add_argument("--steps", type=int_list, default="20",
                        help="fitting steps per segment; several (5,10,20) to see how the gain grows")
    parser.add_argument("--refine-steps", type=non_negative_int, default=0,
                        help="also measure encoder-side latent refinement with this many steps a frame")


def adapt(args: argparse.Namespace) -> int:
    from adaptcast.shared.codec.defaults import DEFAULT_MODEL
    from adaptcast.shared.device import pick_device
    from adaptcast.shared.video import probe_fps
    from adaptcast_bench.adaptation import adaptation_points, markdown, receiver_state_bytes

    options = adapt_options(args, args.steps[0])
    models = args.models or [DEFAULT_MODEL]
    points = []
    for clip in args.clips:
        fps = args.fps or probe_fps(clip)
        for clip_size in args.sizes:
            points += adaptation_points(Path(clip), models, options, pick_device(args.device), size=clip_size,
                                        fps=fps, frames=args.frames, segment_frames=args.segment_frames,
                                        steps=args.steps, refine_steps=args.refine_steps)
    state = receiver_state_bytes(models[0], options.spec)
    table = markdown(points) + f"\n\nReceiver memory for one stream's adapter state ({models[0]}, 4 versions held, " \
        f"weights of the version in use cached): {state / 2**20:.2f} MiB.\n"
    write_report(args.out, "Adaptation: base, segment and live modes, fallback", table, points)
    return 0


def add_adapter_age_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("clip", help="a long video of one fixed camera")
    parser.add_argument("--model", help="bundled model name or model file (default: the bundled default)")
    parser.add_argument("--size", type=size, default="320x240")
    parser.add_argument("--fps", type=positive_float, default=10.0)
    parser.add_argument("--frames", type=positive_int, default=600)
    parser.add_argument("--segment-frames", type=positive_int, default=20)
    parser.add_argument("--steps", type=positive_int, default=20, help="fitting steps per segment")
    add_device(parser)
    parser.add_argument("--out", default="docs/adapter-age.md", help="Markdown report (JSON beside it)")


def adapter_age(args: argparse.Namespace) -> int:
    import time

    from adaptcast.shared.codec.modelfile import load_model
    from adaptcast.shared.device import pick_device
    from adaptcast_bench.adapter_age import adapter_age_curve, markdown_table

    started = time.monotonic()
    points = adapter_age_curve(args.clip, load_model(args.model), pick_device(args.device), size=args.size,
                               fps=args.fps, frames=args.frames, segment_frames=args.segment_frames, steps=args.steps)
    write_report(args.out, "Adapter gain against the stream's age", markdown_table(points, started), points)
    return 0


def add_rate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("clips", nargs="*", help="clips (default: every development clip beside the checkout)")
    parser.add_argument("--targets", type=float_list, default="32,64", help="target bitrates in kbit/s, "
                                                                            "comma-separated")
    parser.add_argument("--seconds", type=positive_float, default=60.0, help="seconds of video per run (clips loop)")
    parser.add_argument("--size", type=size, default="320x240")
    parser.add_argument("--fps", type=positive_float, default=10.0)
    parser.add_argument("--segment-seconds", type=positive_float, default=2.0)
    parser.add_argument("--model", help="a variable-rate model (default: the bundled default)")
    parser.add_argument("--out", default="docs/rate-control-bench.md", help="Markdown report (JSON beside it)")


def rate(args: argparse.Namespace) -> int:
    from adaptcast.shared.errors import PathError
    from adaptcast_bench.ratecontrol import markdown_table, measure_rates
    from adaptcast_bench.suite import TEAM_CLIPS

    clips = [Path(c) for c in args.clips] or sorted(p for p in TEAM_CLIPS.glob("*.*") if p.suffix != ".md")
    if not clips:
        raise PathError(f"no clips given and none at {TEAM_CLIPS}")
    runs = [run for clip in clips
            for run in measure_rates(clip, args.targets, args.seconds, args.size, args.fps, args.segment_seconds,
                                     args.model)]
    write_report(args.out, "Rate control: a target bitrate held", markdown_table(runs), runs)
    return 0


BENCH = Command("bench", "every contender side by side: RD points, BD-rates, speed, scale figures",
                add_bench_arguments, bench)
BENCH_SPEED = Command("bench-speed", "encode/decode speed and memory of a model at several sizes",
                      add_speed_arguments, speed)
BENCH_MODELS = Command("bench-models", "base models against each other (BD-rate), on the same frames and GOPs",
                       add_models_arguments, compare_models)
BENCH_ADAPT = Command("bench-adapt", "what adaptation buys: base, segment, live, fallback; BD-rates",
                      add_adapt_arguments, adapt)
BENCH_ADAPTER_AGE = Command("bench-adapter-age", "adapter gain against the stream's age: warm-started fits segment "
                            "after segment against fits from scratch", add_adapter_age_arguments, adapter_age)
BENCH_RATE = Command("bench-rate", "whether cameras set to a target bitrate hold it (the sender's rate control)",
                     add_rate_arguments, rate)
