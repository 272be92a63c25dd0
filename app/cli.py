"""The `adaptcast` command line: one entry point, one subcommand per job."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import re
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from adaptcast.shared.adapters.mode import AdaptMode
from adaptcast.shared.codec.defaults import DEFAULT_FIT_STEPS
from adaptcast.shared.data import BUNDLED_CLIP
from adaptcast.shared.errors import AdaptcastError
from adaptcast.shared.lifecycle import die_with_parent_from_environment

if TYPE_CHECKING:  # heavy modules (torch, CompressAI) load only for the commands that need them
    from adaptcast.shared.codec.ssf import SSFWidths
    from adaptcast.shared.frames import FrameSize
    from adaptcast.shared.pipeline.stream import AdaptOptions

log = logging.getLogger("adaptcast")


def _cmd_models(args: argparse.Namespace) -> int:
    from adaptcast.shared.codec.modelfile import DEFAULT_MODEL, bundled_models, load_model_file

    for path in bundled_models():
        info = load_model_file(path).info
        default = " (default)" if path.stem == DEFAULT_MODEL else ""
        if args.json:
            print(json.dumps({"name": path.stem, "default": bool(default), **json.loads(info.to_json())}))
            continue
        w = info.widths
        init = info.training.get("init")
        origin = f" (fine-tuned from {Path(init).stem})" if init else ""
        rate = (f"variable rate, quality 0..{info.max_quality:g} (lambda {', '.join(map(str, info.rate_lambdas))})"
                if info.variable_rate else f"lambda {info.lmbda}")
        print(f"{path.stem}{default}: ssf2020 widths {w.mid}/{w.latent}/{w.hyper}, {rate}, "
              f"{info.training.get('steps', '?')} steps{origin}, sha256 {info.sha256[:16]}")
    return 0


def _cmd_train_base(args: argparse.Namespace) -> int:
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


def _cmd_pack_frames(args: argparse.Namespace) -> int:
    from adaptcast.shared.codec.training import pack_frames

    size = pack_frames([Path(v) for v in args.videos], Path(args.output), args.max_width, args.frames_per_clip,
                       args.windows, args.min_side)
    print(json.dumps({"pack": args.output, "bytes": size}))
    return 0


def _cmd_gpu_checks(args: argparse.Namespace) -> int:
    from adaptcast.shared.frames import FrameSize
    from adaptcast_bench.gpu import CheckSizes, run_gpu_checks

    tiny = FrameSize(160, 96)
    sizes = CheckSizes(tiny, tiny, tiny, frames=4) if args.rehearse else CheckSizes()
    run_gpu_checks(Path(args.eval_pack), args.model, Path(args.out), device_name=args.device,
                   adapt_steps=args.adapt_steps, sizes=sizes, checks=args.checks, quality=args.quality)
    return 0


def _lambdas_arg(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated lambdas, got {text!r}") from None


def _size_arg(text: str) -> FrameSize:
    from adaptcast.shared.frames import FrameSize

    try:
        return FrameSize.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _widths_arg(text: str) -> SSFWidths:
    from adaptcast.shared.codec.ssf import SSFWidths

    try:
        mid, latent, hyper = (int(v) for v in text.split("/"))
        return SSFWidths(mid, latent, hyper)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"widths must look like 32/64/48: {exc}") from None


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _print_json(report: object) -> None:
    from dataclasses import asdict

    print(json.dumps(asdict(report)))


def _coding_tools(args: argparse.Namespace):  # -> CodingTools (imported late, like torch)
    from adaptcast.shared.codec.background import BackgroundSettings
    from adaptcast.shared.codec.tools import CodingTools

    background = (BackgroundSettings(refine_steps=args.background_refine_steps,
                                     lambda_scale=args.background_lambda_scale)
                  if args.background else None)
    return CodingTools(skip=args.skip, background=background, adapter_gate=args.adapter_gate)


def _cmd_encode(args: argparse.Namespace) -> int:
    from adaptcast.shared.codec.modelfile import load_model
    from adaptcast.shared.device import pick_device
    from adaptcast.shared.frames import FrameSize
    from adaptcast.shared.pipeline.stream import encode_file
    from adaptcast.shared.video import probe_fps, read_frames

    if not Path(args.input).exists():
        raise AdaptcastError(f"input {args.input} does not exist")
    device = pick_device(args.device)
    size = args.size
    if size is None:
        first = next(read_frames(args.input, max_frames=1), None)
        if first is None:
            raise AdaptcastError(f"{args.input} has no frames")
        size = FrameSize(first.shape[1] // 2 * 2, first.shape[0] // 2 * 2)
    fps = args.fps or probe_fps(args.input)
    loaded = load_model(args.model)
    # By default fitting keeps up with the camera: it may use 90% of a segment's duration.
    realtime = 0.9 * args.segment_frames / fps
    adapt = _adapt_options(args, args.steps, default_seconds=realtime) if args.adapt else None
    report = encode_file(args.input, args.output, loaded, device, size=size, fps=fps,
                         segment_frames=args.segment_frames, max_frames=args.frames, adapt=adapt,
                         refine_steps=args.refine_steps, tools=_coding_tools(args),
                         reconstruction=args.reconstruction, quality=args.quality)
    if args.json:
        _print_json(report)
    else:
        print(f"{report.frames} frames, {report.total_bytes} bytes, {report.bpp:.4f} bpp, "
              f"{report.psnr:.2f} dB, {report.frames / report.encode_seconds:.1f} fps, "
              f"{report.skipped_frames} skipped, {report.backgrounds} backgrounds ({report.background_bytes} bytes)")
    return 0


def _cmd_decode(args: argparse.Namespace) -> int:
    from adaptcast.shared.codec.modelfile import ModelLibrary
    from adaptcast.shared.device import pick_device
    from adaptcast.shared.pipeline.stream import decode_file

    models = ModelLibrary([args.model] if args.model else [])
    report = decode_file(args.input, args.output, models, pick_device(args.device), reference=args.reference,
                         use_adapters=args.adapters)
    if args.json:
        _print_json(report)
    else:
        quality = f", {report.psnr:.2f} dB" if report.psnr is not None else ""
        print(f"{report.frames} frames{quality}, {report.frames / report.decode_seconds:.1f} fps")
    return 0


def _write_report(path: str, title: str, table: str, rows: list) -> None:
    """Write a Markdown report (with command, machine and date) and the rows as JSON beside it."""
    import datetime
    from dataclasses import asdict

    from adaptcast_bench.speed import machine_description

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        f"# {title}\n\n"
        f"Command: `adaptcast {' '.join(sys.argv[1:])}`  \n"
        f"Machine: {machine_description()}  \nDate: {datetime.date.today()}\n\n{table}\n"
    )
    out.with_suffix(".json").write_text(json.dumps([asdict(r) for r in rows], indent=1))
    print(table)


def _cmd_bench_speed(args: argparse.Namespace) -> int:
    from adaptcast_bench.speed import markdown_table, run_speed_benchmark

    results = run_speed_benchmark(args.model, args.sizes, args.device, args.frames, args.segment_frames, args.threads)
    _write_report(args.out, "Encode and decode speed", markdown_table(results), results)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    import dataclasses
    import datetime

    import torch

    from adaptcast.shared.device import pick_device
    from adaptcast_bench.bdrate import BD_RATE_METHOD
    from adaptcast_bench.report import BenchReport, write_report
    from adaptcast_bench.scale import QUICK_SCALE, ScaleConfig, decode_capacity, fitting_costs
    from adaptcast_bench.speed import machine_description
    from adaptcast_bench.suite import QUICK, BenchConfig, bd_rate_rows, default_clips, peak_memory, run_points

    overrides = {key: value for key, value in (
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
    written = write_report(report, Path(args.out), Path(args.json_out) if args.json_out else None)
    print("\n".join(str(path) for path in written))
    return 0


def _cmd_bench_rate(args: argparse.Namespace) -> int:
    from adaptcast_bench.ratecontrol import markdown_table, measure_rates
    from adaptcast_bench.suite import TEAM_CLIPS

    clips = [Path(c) for c in args.clips] or sorted(p for p in TEAM_CLIPS.glob("*.*") if p.suffix != ".md")
    if not clips:
        raise ValueError(f"no clips given and none at {TEAM_CLIPS}")
    runs = [run for clip in clips
            for run in measure_rates(clip, args.targets, args.seconds, args.size, args.fps, args.segment_seconds,
                                     args.model)]
    _write_report(args.out, "Rate control: a target bitrate held", markdown_table(runs), runs)
    return 0


def _cmd_bench_models(args: argparse.Namespace) -> int:
    import dataclasses

    from adaptcast.shared.device import pick_device
    from adaptcast_bench.models import ModelFamily, compare_families, markdown
    from adaptcast_bench.suite import BenchConfig, default_clips

    families = [ModelFamily.parse(text) for text in args.family]
    if len(families) < 2:
        raise ValueError("give two or more --family: the first is the anchor")
    config = dataclasses.replace(BenchConfig(), size=args.size, frames=args.frames, intra_period=args.intra_period,
                                 fps=args.fps)
    clips = [Path(c) for c in args.clips] or default_clips()
    points, rows = compare_families(clips, families, config, pick_device(args.device), tuple(args.neural))
    setup = (f"{len(clips)} clips at {config.size}, {config.frames} frames, segments of {config.intra_period}, "
             f"{config.fps or 'native'} fps")
    table = markdown(points, rows, setup)
    _write_report(args.out, "Base models against each other", table, rows)
    Path(args.out).with_suffix(".points.json").write_text(
        json.dumps([dataclasses.asdict(p) for p in points], indent=1))
    return 0


def _cmd_bench_stream(args: argparse.Namespace) -> int:
    from adaptcast_bench.stream import markdown_table, measure_stream

    results = [measure_stream(mode, str(args.size), args.fps, args.segment_seconds, args.seconds, hogs)
               for hogs in args.cpu_hogs for mode in args.modes]
    _write_report(args.out, "Streaming: glass-to-glass latency and bytes on the wire", markdown_table(results), results)
    return 0


def _cmd_bench_republish(args: argparse.Namespace) -> int:
    from adaptcast.shared.config import H264Config
    from adaptcast_bench.republish import markdown, measure_clients, measure_encode_cost

    config = H264Config(preset=args.preset, bitrate_kbps=args.bitrate_kbps)
    costs = [measure_encode_cost(size, args.fps, config, args.encode_seconds) for size in args.sizes]
    clients = measure_clients(args.clients, args.size, args.fps, args.seconds) if args.clients else []
    _write_report(args.out, "Re-publication: H.264 encoding cost, RTSP and WHEP clients", markdown(costs, clients),
                  [*costs, *clients])
    return 0


def _cmd_bench_capacity(args: argparse.Namespace) -> int:
    import tempfile

    from adaptcast_bench.capacity import markdown_table, measure_capacity, record_clip

    with tempfile.TemporaryDirectory(prefix="adaptcast-capacity-") as folder:
        records = record_clip(Path(args.clip), args.size, args.fps, args.seconds, args.steps, Path(folder))
    points = [measure_capacity(records, streams, args.workers, args.fps) for streams in args.streams]
    _write_report(args.out, "Streams per receiver", markdown_table(points), points)
    return 0


def _cmd_bench_network(args: argparse.Namespace) -> int:
    import dataclasses

    from adaptcast_bench.netfaults import default_settings, markdown_table, run_scenarios, standard_scenarios

    scenarios = standard_scenarios(args.seconds, args.partition_seconds)
    if args.scenarios:
        scenarios = [s for s in scenarios if s.name.split()[0] in args.scenarios]
    settings = dataclasses.replace(default_settings(), size=str(args.size), fps=args.fps)
    results = run_scenarios(scenarios, settings, Path(args.logs) if args.logs else None)
    _write_report(args.out, "Network faults: loss, delay, a rate cap, a partition", markdown_table(results), results)
    return 0


def _cmd_bench_soak(args: argparse.Namespace) -> int:
    from adaptcast_bench.soak import markdown, run_soak

    result = run_soak(args.cameras, str(args.size), args.fps, args.minutes)
    _write_report(args.out, "Soak: a long run of the whole system", markdown(result), [result])
    return 0


def _cmd_bench_fuzz(args: argparse.Namespace) -> int:
    import tempfile

    from adaptcast_bench.capacity import record_clip
    from adaptcast_bench.fuzz import markdown, run_fuzz

    with tempfile.TemporaryDirectory(prefix="adaptcast-fuzz-") as folder:
        records = record_clip(Path(args.clip), args.size, args.fps, args.seconds, args.steps, Path(folder))
    report = run_fuzz(records, args.messages, args.payloads, args.seed)
    _write_report(args.out, "Reliability: a real receiver fuzzed over the real transport", markdown(report), [report])
    return 0 if report.receiver_alive and report.receiver_exit_code == 0 else 1


def _cmd_bench_adapt(args: argparse.Namespace) -> int:
    from adaptcast.shared.codec.modelfile import DEFAULT_MODEL
    from adaptcast.shared.device import pick_device
    from adaptcast.shared.video import probe_fps
    from adaptcast_bench.adaptation import adaptation_points, markdown, receiver_state_bytes

    options = _adapt_options(args, args.steps[0])
    models = args.models or [DEFAULT_MODEL]
    points = []
    for clip in args.clips:
        fps = args.fps or probe_fps(clip)
        for size in args.sizes:
            points += adaptation_points(Path(clip), models, options, pick_device(args.device), size=size, fps=fps,
                                        frames=args.frames, segment_frames=args.segment_frames, steps=args.steps,
                                        refine_steps=args.refine_steps)
    state = receiver_state_bytes(models[0], options.spec)
    table = markdown(points) + f"\n\nReceiver memory for one stream's adapter state ({models[0]}, 4 versions held, " \
        f"weights of the version in use cached): {state / 2**20:.2f} MiB.\n"
    _write_report(args.out, "Adaptation: base, segment and live modes, fallback", table, points)
    return 0


def _cmd_bench_adapter_age(args: argparse.Namespace) -> int:
    import time

    from adaptcast.shared.codec.modelfile import load_model
    from adaptcast.shared.device import pick_device
    from adaptcast_bench.adapter_age import adapter_age_curve, markdown_table

    started = time.monotonic()
    points = adapter_age_curve(args.clip, load_model(args.model), pick_device(args.device), size=args.size,
                               fps=args.fps, frames=args.frames, segment_frames=args.segment_frames, steps=args.steps)
    _write_report(args.out, "Adapter gain against the stream's age", markdown_table(points, started), points)
    return 0


def _cmd_sender(args: argparse.Namespace) -> int:
    import asyncio

    from adaptcast.sender.daemon import run_sender
    from adaptcast.shared.config import load_sender_config

    asyncio.run(run_sender(load_sender_config(args.config)))
    return 0


def _cmd_receiver(args: argparse.Namespace) -> int:
    import asyncio

    from adaptcast.receiver.daemon import run_receiver
    from adaptcast.shared.config import load_receiver_config

    asyncio.run(run_receiver(load_receiver_config(args.config)))
    return 0


def _cmd_hash_password(args: argparse.Namespace) -> int:
    """The password comes from the terminal (asked twice) or from standard input, never from the
    command line, where other users see it in the process list and the shell keeps it."""
    import getpass

    from adaptcast.shared.passwords import hash_password

    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            raise AdaptcastError("the two passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if len(password) < 8:
        raise AdaptcastError("the password needs at least 8 characters")
    print(hash_password(password))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from adaptcast.demo import run_demo

    return run_demo(args.source, args.duration, args.archive, args.port)


def _cmd_export(args: argparse.Namespace) -> int:
    from adaptcast.receiver.export import export_archive, parse_time
    from adaptcast.shared.config import WORKER_MEMORY_MB
    from adaptcast.shared.device import pick_device

    start = parse_time(args.start) if args.start else None
    end = parse_time(args.end) if args.end else None
    log = logging.getLogger("adaptcast.export")

    def progress(name: str, pid: int) -> None:
        log.info("camera %s: decoding %s (decoder pid %d)", args.camera, name, pid)

    report = export_archive(Path(args.archive), args.camera, Path(args.output), [args.model] if args.model else [],
                            pick_device(args.device), start=start, end=end, on_file=progress,
                            memory_limit_bytes=(args.memory_mb or WORKER_MEMORY_MB) << 20)
    print(f"{report.frames} frames from {report.files} files ({report.first} to {report.last}), "
          f"{report.fallback_segments} segments decoded with the base model")
    for name in report.corrupt:
        print(f"damaged file skipped: {name}", file=sys.stderr)
    return 0


def _add_fit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fit-seconds", type=_positive_float,
                   help="fitting time limit per segment, whichever of steps and time ends first "
                        "(encode's default: 90%% of a segment's duration, so fitting keeps up with the camera)")
    p.add_argument("--lr", type=_positive_float, default=1e-3, help="fitting learning rate")
    p.add_argument("--method", choices=("lora", "full"), default="lora",
                   help="lora: low-rank adapters (ours); full: fine-tune every decoder weight and bias (the baseline; "
                        "it wants --lr 1e-4)")
    p.add_argument("--ranks", type=lambda t: tuple(int(v) for v in t.split("/")), default=(16, 8, 8, 2),
                   help="LoRA rank of each synthesis layer, first to last")
    p.add_argument("--decoders", type=lambda t: tuple(t.split(",")), default=("img_decoder", "motion_decoder", "res_decoder"),
                   help="synthesis transforms to adapt (comma-separated)")


def _adapt_options(args: argparse.Namespace, steps: int, default_seconds: float | None = None) -> AdaptOptions:
    from adaptcast.shared.adapters.fitting import FitBudget
    from adaptcast.shared.adapters.lora import AdapterSpec
    from adaptcast.shared.pipeline.stream import AdaptOptions

    seconds = args.fit_seconds if args.fit_seconds is not None else default_seconds
    spec = AdapterSpec.full(args.decoders) if args.method == "full" else AdapterSpec(ranks=args.ranks,
                                                                                       decoders=args.decoders)
    return AdaptOptions(mode=getattr(args, "mode", AdaptMode.SEGMENT), spec=spec,
                        budget=FitBudget(steps=steps, seconds=seconds, lr=args.lr))


def _add_clip_benchmark_args(p: argparse.ArgumentParser, out: str) -> None:
    p.add_argument("clips", nargs="+")
    p.add_argument("--models", nargs="*", help="models to measure (default: the bundled default)")
    p.add_argument("--sizes", type=lambda t: [_size_arg(s) for s in t.split(",")], default="320x192")
    p.add_argument("--fps", type=_positive_float, help="frame rate (default: each clip's own)")
    p.add_argument("--frames", type=_positive_int, default=30)
    p.add_argument("--segment-frames", type=_positive_int, default=10, help="intra period of every contender")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--out", default=out, help="Markdown report (JSON beside it)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adaptcast", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="list the bundled base models")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("encode", help="encode a video file into an .acs stream")
    p.add_argument("input", help="video file (any container PyAV reads)")
    p.add_argument("-o", "--output", required=True, help="stream file to write (.acs)")
    p.add_argument("--size", type=_size_arg, help="frame size WxH (default: the source's)")
    p.add_argument("--fps", type=_positive_float, help="frame rate (default: the source's)")
    p.add_argument("--frames", type=_positive_int, help="stop after this many frames")
    p.add_argument("--segment-frames", type=_positive_int, default=10,
                   help="frames per segment (each starts with an I-frame, or from the background)")
    p.add_argument("--model", help="bundled model name, model file, or compressai:ssf2020:Q")
    p.add_argument("--quality", type=float, help="quality index of a variable-rate model (0: its lowest rate; "
                                                 "default: the middle of its range)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--skip", action=argparse.BooleanOptionalAction, default=True,
                   help="skip P-frames whose coding does not pay by the model's rate-distortion loss (default: on)")
    p.add_argument("--background", action=argparse.BooleanOptionalAction, default=True,
                   help="start segments from a background picture sent rarely, not from an I-frame (default: on)")
    p.add_argument("--adapter-gate", action=argparse.BooleanOptionalAction, default=True,
                   help="with --adapt: send a new adapter version only when it is estimated to save more than "
                        "its update costs on the frames it will code (default: on)")
    p.add_argument("--background-refine-steps", type=_non_negative_int, default=100,
                   help="latent refinement steps when coding a background")
    p.add_argument("--background-lambda-scale", type=_positive_float, default=4.0,
                   help="a background is refined towards lambda times this (higher quality than a frame)")
    p.add_argument("--adapt", action=argparse.BooleanOptionalAction, default=False,
                   help="fit a LoRA adapter of the decoder to each segment and send it (default: off)")
    p.add_argument("--mode", type=AdaptMode, choices=list(AdaptMode), default=AdaptMode.SEGMENT,
                   help="segment: fit on a segment and code it with that adapter; live: code with the last segment's")
    p.add_argument("--steps", type=_positive_int, default=DEFAULT_FIT_STEPS, help="fitting steps per segment")
    p.add_argument("--refine-steps", type=_non_negative_int, default=0,
                   help="gradient steps refining each frame's latent at the encoder (0: off)")
    p.add_argument("--reconstruction", help="also write the encoder's reconstruction (what a decoder shows; "
                   ".y4m is exact) to this video")
    _add_fit_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object with the figures")
    p.set_defaults(func=_cmd_encode)

    p = sub.add_parser("decode", help="decode an .acs stream into a video file")
    p.add_argument("input", help="stream file (.acs)")
    p.add_argument("-o", "--output", help="video to write (.mp4, .mkv or .y4m)")
    p.add_argument("--reference", help="original video: report the mean RGB PSNR against it")
    p.add_argument("--adapters", action=argparse.BooleanOptionalAction, default=True,
                   help="--no-adapters decodes every segment with the base model (the fallback path)")
    p.add_argument("--model", help="a model file or compressai:ssf2020:Q to search besides the bundled models "
                                   "(the stream names its model by SHA-256)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--json", action="store_true", help="print one JSON object with the figures")
    p.set_defaults(func=_cmd_decode)

    p = sub.add_parser("bench-speed", help="encode/decode speed and memory of a model at several sizes")
    p.add_argument("--model", help="bundled model name or model file (default: the bundled default)")
    p.add_argument("--sizes", type=lambda t: [_size_arg(s) for s in t.split(",")],
                   default="320x240,640x360,1280x720")
    p.add_argument("--frames", type=_positive_int, default=30)
    p.add_argument("--segment-frames", type=_positive_int, default=10)
    p.add_argument("--threads", type=_positive_int, default=2, help="CPU threads (torch and OpenMP)")
    p.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    p.add_argument("--out", default="docs/speed.md", help="Markdown report (JSON beside it)")
    p.set_defaults(func=_cmd_bench_speed)

    p = sub.add_parser("bench", help="every contender side by side: RD points, BD-rates, speed, scale figures")
    p.add_argument("clips", nargs="*",
                   help="video files (default: the clips held out of training in ../shared/data/clips when it "
                        "exists, else the bundled clip)")
    p.add_argument("--quick", action="store_true", help="a small configuration: a few minutes on 2 CPU cores")
    p.add_argument("--size", type=_size_arg, help="frame size WxH (default 320x240)")
    p.add_argument("--frames", type=_positive_int, help="frames per clip (default 60, quick 8)")
    p.add_argument("--intra-period", type=_positive_int,
                   help="frames per segment, each starting with an I-frame (or, with the tools, from the "
                        "background) for every contender (default 20, quick 4)")
    p.add_argument("--models", nargs="+", help="neural rate points (default: ssf-small-q1..q4, quick q1 and q4)")
    p.add_argument("--neural", nargs="+", metavar="CONTENDER",
                   help="neural contenders to run, by name as the report gives them (default: all; the base "
                        "model always)")
    p.add_argument("--steps", type=_positive_int, help="fitting steps per segment (default 20, quick 3)")
    p.add_argument("--fps", type=_positive_float, help="frame rate to read clips at (default: each clip's own)")
    p.add_argument("--scale", action=argparse.BooleanOptionalAction, default=True,
                   help="also measure decoding capacity per core and fitting cost against resolution, "
                        "segment length and rank")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--out", default="bench-results", help="folder for bench.md, bench.json and the RD plots")
    p.add_argument("--json-out", help="write the JSON here instead of into --out")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("bench-stream", help="a receiver and a sender on loopback: latency and bytes on the wire")
    p.add_argument("--modes", nargs="+", type=AdaptMode, choices=list(AdaptMode), default=list(AdaptMode))
    p.add_argument("--size", type=_size_arg, default="320x240")
    p.add_argument("--fps", type=_positive_float, default=10.0)
    p.add_argument("--segment-seconds", type=_positive_float, default=2.0)
    p.add_argument("--seconds", type=_positive_float, default=40.0, help="measured time per mode (at most 60)")
    p.add_argument("--cpu-hogs", type=lambda t: [int(v) for v in t.split(",")], default="0",
                   help="comma-separated numbers of processes spinning on the CPU beside the daemons, one run "
                        "each (0,1: a quiet machine, then one core kept busy)")
    p.add_argument("--out", default="docs/streaming-bench.md", help="Markdown report (JSON beside it)")
    p.set_defaults(func=_cmd_bench_stream)

    p = sub.add_parser("bench-republish", help="RTSP and WHEP re-publication: H.264 encoding cost per camera, "
                                              "glass-to-glass latency and frames at N clients (needs ffmpeg, and "
                                              "GStreamer's RTSP server for the system Python)")
    p.add_argument("--sizes", type=lambda t: [_size_arg(v) for v in t.split(",")], default="320x240,640x360",
                   help="comma-separated sizes whose encoding cost is measured")
    p.add_argument("--encode-seconds", type=_positive_float, default=60.0, help="video encoded per size")
    p.add_argument("--preset", default="veryfast")
    p.add_argument("--bitrate-kbps", type=int, default=2000)
    p.add_argument("--size", type=_size_arg, default="320x240", help="the streamed camera's size")
    p.add_argument("--fps", type=_positive_float, default=10.0)
    p.add_argument("--clients", type=lambda t: [int(v) for v in t.split(",") if v], default="1,4",
                   help="comma-separated client counts, each run with that many RTSP and that many WHEP clients "
                        "at once ('' to skip)")
    p.add_argument("--seconds", type=_positive_float, default=20.0, help="measured time per client count")
    p.add_argument("--out", default="docs/republish-bench.md", help="Markdown report (JSON beside it)")
    p.set_defaults(func=_cmd_bench_republish)

    p = sub.add_parser("bench-capacity", help="streams per receiver: N replayed cameras, every frame on time?")
    p.add_argument("--clip", default=str(BUNDLED_CLIP), help="the camera (looped to --seconds and coded once)")
    p.add_argument("--size", type=_size_arg, default="320x240")
    p.add_argument("--fps", type=_positive_float, default=10.0)
    p.add_argument("--seconds", type=_positive_float, default=30.0, help="replayed seconds per stream count")
    p.add_argument("--steps", type=_non_negative_int, default=20, help="fitting steps of the recorded adapters")
    p.add_argument("--streams", type=lambda t: [int(v) for v in t.split(",")], default="1,2,3,4,5,6",
                   help="stream counts to try")
    p.add_argument("--workers", type=_non_negative_int, default=os.cpu_count() or 1,
                   help="receiver decode workers (default: one per core)")
    p.add_argument("--out", default="docs/capacity.md", help="Markdown report (JSON beside it)")
    p.set_defaults(func=_cmd_bench_capacity)

    p = sub.add_parser("bench-network", help="sender and receiver in network namespaces: loss, delay, a rate cap "
                                            "and a partition on the link between them (needs root)")
    p.add_argument("--size", type=_size_arg, default="320x240")
    p.add_argument("--fps", type=_positive_float, default=10.0)
    p.add_argument("--seconds", type=_positive_float, default=40.0,
                   help="measured time per scenario (after a partition: measured time once healed)")
    p.add_argument("--partition-seconds", type=_positive_float, default=30.0)
    p.add_argument("--scenarios", type=lambda t: t.split(","),
                   help="comma-separated first words of the scenarios to run: clean, loss, delay, rate, partition "
                        "(default: all)")
    p.add_argument("--logs", help="keep the daemons' logs and configuration here, a folder per scenario")
    p.add_argument("--out", default="docs/reliability-network.md", help="Markdown report (JSON beside it)")
    p.set_defaults(func=_cmd_bench_network)

    p = sub.add_parser("bench-soak", help="a long run: cameras from looped files through a real sender and "
                       "receiver, memory of every process sampled")
    p.add_argument("--cameras", type=_non_negative_int, default=4)
    p.add_argument("--size", type=_size_arg, default="320x240")
    p.add_argument("--fps", type=_positive_float, default=2.5)
    p.add_argument("--minutes", type=_positive_float, default=60.0)
    p.add_argument("--out", default="docs/reliability-soak.md", help="Markdown report (JSON beside it)")
    p.set_defaults(func=_cmd_bench_soak)

    p = sub.add_parser("bench-fuzz", help="a real receiver sent fuzzed messages and corrupted adapters and latents")
    p.add_argument("--clip", default=str(BUNDLED_CLIP), help="the camera whose coded stream the fuzzer starts from")
    p.add_argument("--size", type=_size_arg, default="160x96")
    p.add_argument("--fps", type=_positive_float, default=10.0)
    p.add_argument("--seconds", type=_positive_float, default=6.0, help="seconds of the clip coded (2 s segments)")
    p.add_argument("--steps", type=_positive_int, default=5, help="fitting steps of the coded adapters")
    p.add_argument("--messages", type=_positive_int, default=10000, help="fuzzed data-channel messages")
    p.add_argument("--payloads", type=_positive_int, default=1000,
                   help="corrupted adapter updates, and as many corrupted latents")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default="docs/reliability-fuzz.md", help="Markdown report (JSON beside it)")
    p.set_defaults(func=_cmd_bench_fuzz)

    p = sub.add_parser("bench-adapt", help="what adaptation buys: base, segment, live, fallback; BD-rates")
    _add_clip_benchmark_args(p, "docs/adaptation.md")
    _add_fit_args(p)
    p.add_argument("--steps", type=lambda t: [int(v) for v in t.split(",")], default="20",
                   help="fitting steps per segment; several (5,10,20) to see how the gain grows")
    p.add_argument("--refine-steps", type=_non_negative_int, default=0,
                   help="also measure encoder-side latent refinement with this many steps a frame")
    p.set_defaults(func=_cmd_bench_adapt)

    p = sub.add_parser("bench-adapter-age", help="adapter gain against the stream's age: warm-started fits "
                       "segment after segment against fits from scratch")
    p.add_argument("clip", help="a long video of one fixed camera")
    p.add_argument("--model", help="bundled model name or model file (default: the bundled default)")
    p.add_argument("--size", type=_size_arg, default="320x240")
    p.add_argument("--fps", type=_positive_float, default=10.0)
    p.add_argument("--frames", type=_positive_int, default=600)
    p.add_argument("--segment-frames", type=_positive_int, default=20)
    p.add_argument("--steps", type=_positive_int, default=20, help="fitting steps per segment")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--out", default="docs/adapter-age.md", help="Markdown report (JSON beside it)")
    p.set_defaults(func=_cmd_bench_adapter_age)

    p = sub.add_parser("sender", help="run the sender daemon: capture, fit, encode and stream every camera")
    p.add_argument("--config", required=True, help="sender YAML file (deploy/config/sender.example.yaml)")
    p.set_defaults(func=_cmd_sender)

    p = sub.add_parser("receiver", help="run the receiver daemon: WHIP endpoint, decoding, live view, archive")
    p.add_argument("--config", required=True, help="receiver YAML file (deploy/config/receiver.example.yaml)")
    p.set_defaults(func=_cmd_receiver)

    p = sub.add_parser("hash-password", help="hash a viewer's password for the receiver's `viewers:` (reads it "
                                             "from the terminal or standard input)")
    p.set_defaults(func=_cmd_hash_password)

    p = sub.add_parser("demo", help="a receiver and a sender on loopback streaming one camera; prints the URLs")
    p.add_argument("--source", help="camera: a video file, rtsp:// URL, /dev/videoN or testpattern "
                                    "(default: the bundled clip, looped)")
    p.add_argument("--duration", type=_positive_float, help="stop after this many seconds (default: run until Ctrl-C)")
    p.add_argument("--archive", help="keep the received stream in this folder (camera name demo)")
    p.add_argument("--port", type=int, default=8080, help="receiver port (a free one is taken if it is busy)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("export", help="decode a camera's archive (or a time range of it) to a video file")
    p.add_argument("--archive", required=True, help="the receiver's archive folder")
    p.add_argument("--camera", required=True)
    p.add_argument("--start", help="ISO 8601 time (UTC unless it says otherwise)")
    p.add_argument("--end", help="ISO 8601 time (UTC unless it says otherwise)")
    p.add_argument("-o", "--output", required=True, help="video to write (.mp4, .mkv or .y4m)")
    p.add_argument("--model", help="a model file to search besides the bundled models (the archive names its "
                                   "model by SHA-256)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--memory-mb", type=_positive_int,
                   help="address space the decoding child process may take on the CPU beyond what it holds with "
                        "the model loaded, in MiB (default: the receiver's default worker_memory_mb)")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("train-base", help="train or fine-tune a base model on video files or a frame pack")
    p.add_argument("videos", nargs="*", help="training videos (any container PyAV reads)")
    p.add_argument("-o", "--output", required=True, help="model file to write (.safetensors)")
    p.add_argument("--frames", help="train on this frame pack (adaptcast pack-frames) instead of videos")
    p.add_argument("--lambda", dest="lmbda", type=float, default=0.0067, help="loss = lambda*255^2*MSE + bpp")
    p.add_argument("--rate-lambdas", type=_lambdas_arg,
                   help="train a variable-rate model with these rate points (comma-separated lambdas)")
    p.add_argument("--widths", type=_widths_arg, default="32/64/48",
                   help="mid/latent/hyper channels (CompressAI: 128/192/192)")
    p.add_argument("--init", help="start from this model (fine-tune) instead of random weights")
    p.add_argument("--steps", type=int, default=10000)
    p.add_argument("--max-minutes", type=float, help="stop (and save) after this wall time")
    p.add_argument("--schedule-minutes", type=float,
                   help="run the learning-rate and crop schedules over this wall time instead of --steps")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--gop", type=int, default=3, help="frames per training GOP (I + P-frames)")
    p.add_argument("--crop", type=int, default=128, help="crop side (a multiple of 64)")
    p.add_argument("--crop-start", type=int, help="grow crops from this side to --crop over the first half")
    p.add_argument("--max-width", type=int, default=640, help="scale wider videos down to this")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--name", help="model name in the metadata (default: the output's stem)")
    p.set_defaults(func=_cmd_train_base)

    p = sub.add_parser("bench-models", help="base models against each other (BD-rate), on the same frames and GOPs")
    p.add_argument("clips", nargs="*", help="clips (default: the held-out development clips)")
    p.add_argument("--family", action="append", required=True, metavar="NAME=POINT,POINT",
                   help="a rate curve: models, or MODEL@QUALITY points of a variable-rate model; the first "
                        "family is the anchor")
    p.add_argument("--neural", nargs="+", default=["base + tools (ours)", "adaptcast base"],
                   help="contenders each family codes with")
    p.add_argument("--size", type=_size_arg, default="320x240")
    p.add_argument("--frames", type=_positive_int, default=60)
    p.add_argument("--intra-period", type=_positive_int, default=20)
    p.add_argument("--fps", type=_positive_float, default=10.0)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--out", default="docs/models-bench.md", help="Markdown report (JSON beside it)")
    p.set_defaults(func=_cmd_bench_models)

    p = sub.add_parser("bench-rate", help="whether cameras set to a target bitrate hold it (the sender's rate control)")
    p.add_argument("clips", nargs="*", help="clips (default: every development clip beside the checkout)")
    p.add_argument("--targets", type=lambda t: [float(v) for v in t.split(",")], default="32,64",
                   help="target bitrates in kbit/s, comma-separated")
    p.add_argument("--seconds", type=_positive_float, default=60.0, help="seconds of video per run (clips loop)")
    p.add_argument("--size", type=_size_arg, default="320x240")
    p.add_argument("--fps", type=_positive_float, default=10.0)
    p.add_argument("--segment-seconds", type=_positive_float, default=2.0)
    p.add_argument("--model", help="a variable-rate model (default: the bundled default)")
    p.add_argument("--out", default="docs/rate-control-bench.md", help="Markdown report (JSON beside it)")
    p.set_defaults(func=_cmd_bench_rate)

    p = sub.add_parser("gpu-checks", help="what a GPU run checks before it trains (deploy/gpu-training)")
    p.add_argument("--eval-pack", required=True, help="a frame pack of evaluation frames (adaptcast pack-frames)")
    p.add_argument("--model", help="the model to check (default: the bundled default)")
    p.add_argument("--out", required=True, help="JSON file to write the figures to")
    p.add_argument("--device", default="cuda", choices=("auto", "cpu", "cuda"))
    p.add_argument("--adapt-steps", type=int, default=200, help="adapter steps per segment in the adaptation check")
    p.add_argument("--checks", default="cross_device,speed,adaptation", help="comma-separated checks to run")
    p.add_argument("--quality", type=float, default=0.0, help="quality index of the cross-device check")
    p.add_argument("--rehearse", action="store_true", help="tiny sizes: rehearse the checks on a CPU")
    p.set_defaults(func=_cmd_gpu_checks)

    p = sub.add_parser("pack-frames", help="decode training videos once into a frame pack (for train-base --frames)")
    p.add_argument("videos", nargs="+")
    p.add_argument("-o", "--output", required=True, help="frame pack to write (.npz)")
    p.add_argument("--max-width", type=int, default=640, help="scale wider videos down to this (and to half)")
    p.add_argument("--frames-per-clip", type=int, default=60)
    p.add_argument("--windows", type=int, default=1, help="take the frames as this many runs spread over each clip")
    p.add_argument("--min-side", type=int, default=128, help="leave out scales with a side smaller than this")
    p.set_defaults(func=_cmd_pack_frames)
    return parser


TORCH_JIT_DEPRECATION = "`torch.jit.script` is deprecated"
"""CompressAI scripts a helper with torch.jit when it is imported, and torch deprecates that: not ours
to act on."""


def quiet_known_warnings() -> None:
    """Ignore TORCH_JIT_DEPRECATION in this process and, through PYTHONWARNINGS, in every process it
    starts (spawned decode workers import CompressAI again)."""
    os.environ["PYTHONWARNINGS"] = ",".join(
        filter(None, [os.environ.get("PYTHONWARNINGS"), f"ignore:{TORCH_JIT_DEPRECATION}:FutureWarning"]))
    warnings.filterwarnings("ignore", message=re.escape(TORCH_JIT_DEPRECATION), category=FutureWarning)


def main(argv: list[str] | None = None) -> int:
    quiet_known_warnings()
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for chatty in ("aioice", "aiortc"):  # a line per ICE candidate pair is not an operator's event
        logging.getLogger(chatty).setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        die_with_parent_from_environment()  # the demo's daemons are killed when the demo is
        return func(args)
    except (AdaptcastError, ValueError) as exc:  # ValueError: a setting our validation refused
        if args.verbose:
            raise
        print(f"adaptcast {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        # The interpreter's exit would spend seconds collecting the objects that importing torch and
        # CompressAI made (3 s on a loaded 2-core box, for each daemon, one after the other in the demo's stop)
        gc.freeze()


if __name__ == "__main__":
    sys.exit(main())
