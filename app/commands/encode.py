"""`adaptcast encode`: a video file into an .acs stream."""

from __future__ import annotations

import argparse
from pathlib import Path

from adaptcast.commands import Command
from adaptcast.commands.arguments import (
    adapt_options,
    add_device,
    add_fit_arguments,
    non_negative_int,
    positive_float,
    positive_int,
    print_json,
    size,
)
from adaptcast.shared.adapters.mode import AdaptMode
from adaptcast.shared.codec.defaults import DEFAULT_FIT_STEPS

REALTIME_FIT_SHARE = 0.9
"""By default fitting keeps up with the camera: it may take this share of a segment's duration."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="video file (any container PyAV reads)")
    parser.add_argument("-o", "--output", required=True, help="stream file to write (.acs)")
    parser.add_argument("--size", type=size, help="frame size WxH (default: the source's)")
    parser.add_argument("--fps", type=positive_float, help="frame rate (default: the source's)")
    parser.add_argument("--frames", type=positive_int, help="stop after this many frames")
    parser.add_argument("--segment-frames", type=positive_int, default=10,
                        help="frames per segment (each starts with an I-frame, or from the background)")
    parser.add_argument("--model", help="bundled model name, model file, or compressai:ssf2020:Q")
    parser.add_argument("--quality", type=float, help="quality index of a variable-rate model (0: its lowest "
                                                      "rate; default: the middle of its range)")
    add_device(parser)
    parser.add_argument("--skip", action=argparse.BooleanOptionalAction, default=True,
                        help="skip P-frames whose coding does not pay by the model's rate-distortion loss "
                             "(default: on)")
    parser.add_argument("--background", action=argparse.BooleanOptionalAction, default=True,
                        help="start segments from a background picture sent rarely, not from an I-frame "
                             "(default: on)")
    parser.add_argument("--adapter-gate", action=argparse.BooleanOptionalAction, default=True,
                        help="with --adapt: send a new adapter version only when it is estimated to save more "
                             "than its update costs on the frames it will code (default: on)")
    parser.add_argument("--background-refine-steps", type=non_negative_int, default=100,
                        help="latent refinement steps when coding a background")
    parser.add_argument("--background-lambda-scale", type=positive_float, default=4.0,
                        help="a background is refined towards lambda times this (higher quality than a frame)")
    parser.add_argument("--adapt", action=argparse.BooleanOptionalAction, default=False,
                        help="fit a LoRA adapter of the decoder to each segment and send it (default: off)")
    parser.add_argument("--mode", type=AdaptMode, choices=list(AdaptMode), default=AdaptMode.SEGMENT,
                        help="segment: fit on a segment and code it with that adapter; live: code with the last "
                             "segment's")
    parser.add_argument("--steps", type=positive_int, default=DEFAULT_FIT_STEPS, help="fitting steps per segment")
    parser.add_argument("--refine-steps", type=non_negative_int, default=0,
                        help="gradient steps refining each frame's latent at the encoder (0: off)")
    parser.add_argument("--reconstruction", help="also write the encoder's reconstruction (what a decoder "
                                                 "shows; .y4m is exact) to this video")
    add_fit_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object with the figures")


def run(args: argparse.Namespace) -> int:
    from adaptcast.shared.codec.background import BackgroundSettings
    from adaptcast.shared.codec.modelfile import load_model
    from adaptcast.shared.codec.tools import CodingTools
    from adaptcast.shared.device import pick_device
    from adaptcast.shared.errors import PathError
    from adaptcast.shared.pipeline.stream import encode_file
    from adaptcast.shared.video import coded_source_size, probe_fps

    if not Path(args.input).exists():
        raise PathError(f"input {args.input} does not exist")
    device = pick_device(args.device)
    frame_size = args.size or coded_source_size(args.input)
    fps = args.fps or probe_fps(args.input)
    loaded = load_model(args.model)
    adapt = (adapt_options(args, args.steps, default_seconds=REALTIME_FIT_SHARE * args.segment_frames / fps)
             if args.adapt else None)
    background = (BackgroundSettings(refine_steps=args.background_refine_steps,
                                     lambda_scale=args.background_lambda_scale)
                  if args.background else None)
    tools = CodingTools(skip=args.skip, background=background, adapter_gate=args.adapter_gate)
    report = encode_file(args.input, args.output, loaded, device, size=frame_size, fps=fps,
                         segment_frames=args.segment_frames, max_frames=args.frames, adapt=adapt,
                         refine_steps=args.refine_steps, tools=tools, reconstruction=args.reconstruction,
                         quality=args.quality)
    if args.json:
        print_json(report)
    else:
        print(f"{report.frames} frames, {report.total_bytes} bytes, {report.bpp:.4f} bpp, "
              f"{report.psnr:.2f} dB, {report.frames / report.encode_seconds:.1f} fps, "
              f"{report.skipped_frames} skipped, {report.backgrounds} backgrounds ({report.background_bytes} bytes)")
    return 0


COMMAND = Command("encode", "encode a video file into an .acs stream", add_arguments, run)
