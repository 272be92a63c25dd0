"""Benchmarks of the whole system, real daemons and real transport: `bench-stream`,
`bench-republish`, `bench-capacity`, `bench-network`, `bench-soak` and `bench-fuzz`."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from adaptcast.commands import Command
from adaptcast.commands.arguments import int_list, non_negative_int, positive_float, positive_int, size, size_list
from adaptcast.shared.adapters.mode import AdaptMode
from adaptcast.shared.data import BUNDLED_CLIP
from adaptcast_bench.commands import write_report


def add_stream_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--modes", nargs="+", type=AdaptMode, choices=list(AdaptMode), default=list(AdaptMode))
    parser.add_argument("--size", type=size, default="320x240")
    parser.add_argument("--fps", type=positive_float, default=10.0)
    parser.add_argument("--segment-seconds", type=positive_float, default=2.0)
    parser.add_argument("--seconds", type=positive_float, default=40.0, help="measured time per mode (at most 60)")
    parser.add_argument("--cpu-hogs", type=int_list, default="0",
                        help="comma-separated numbers of processes spinning on the CPU beside the daemons, one run "
                             "each (0,1: a quiet machine, then one core kept busy)")
    parser.add_argument("--out", default="docs/streaming-bench.md", help="Markdown report (JSON beside it)")


def stream(args: argparse.Namespace) -> int:
    from adaptcast_bench.stream import markdown_table, measure_stream

    results = [measure_stream(mode, str(args.size), args.fps, args.segment_seconds, args.seconds, hogs)
               for hogs in args.cpu_hogs for mode in args.modes]
    write_report(args.out, "Streaming: glass-to-glass latency and bytes on the wire", markdown_table(results), results)
    return 0


def add_republish_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", type=size_list, default="320x240,640x360",
                        help="comma-separated sizes whose encoding cost is measured")
    parser.add_argument("--encode-seconds", type=positive_float, default=60.0, help="video encoded per size")
    parser.add_argument("--preset", default="veryfast")
    parser.add_argument("--bitrate-kbps", type=int, default=2000)
    parser.add_argument("--size", type=size, default="320x240", help="the streamed camera's size")
    parser.add_argument("--fps", type=positive_float, default=10.0)
    parser.add_argument("--clients", type=int_list, default="1,4",
                        help="comma-separated client counts, each run with that many RTSP and that many WHEP "
                             "clients at once ('' to skip)")
    parser.add_argument("--seconds", type=positive_float, default=20.0, help="measured time per client count")
    parser.add_argument("--out", default="docs/republish-bench.md", help="Markdown report (JSON beside it)")


def republish(args: argparse.Namespace) -> int:
    from adaptcast.shared.config import H264Config
    from adaptcast_bench.republish import markdown, measure_clients, measure_encode_cost

    config = H264Config(preset=args.preset, bitrate_kbps=args.bitrate_kbps)
    costs = [measure_encode_cost(each, args.fps, config, args.encode_seconds) for each in args.sizes]
    clients = measure_clients(args.clients, args.size, args.fps, args.seconds) if args.clients else []
    write_report(args.out, "Re-publication: H.264 encoding cost, RTSP and WHEP clients", markdown(costs, clients),
                 [*costs, *clients])
    return 0


def add_capacity_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clip", default=str(BUNDLED_CLIP), help="the camera (looped to --seconds and coded once)")
    parser.add_argument("--size", type=size, default="320x240")
    parser.add_argument("--fps", type=positive_float, default=10.0)
    parser.add_argument("--seconds", type=positive_float, default=30.0, help="replayed seconds per stream count")
    parser.add_argument("--steps", type=non_negative_int, default=20, help="fitting steps of the recorded adapters")
    parser.add_argument("--streams", type=int_list, default="1,2,3,4,5,6", help="stream counts to try")
    parser.add_argument("--workers", type=non_negative_int, default=os.cpu_count() or 1,
                        help="receiver decode workers (default: one per core)")
    parser.add_argument("--out", default="docs/capacity.md", help="Markdown report (JSON beside it)")


def capacity(args: argparse.Namespace) -> int:
    from adaptcast_bench.capacity import markdown_table, measure_capacity, record_clip

    with tempfile.TemporaryDirectory(prefix="adaptcast-capacity-") as folder:
        records = record_clip(Path(args.clip), args.size, args.fps, args.seconds, args.steps, Path(folder))
    points = [measure_capacity(records, streams, args.workers, args.fps) for streams in args.streams]
    write_report(args.out, "Streams per receiver", markdown_table(points), points)
    return 0


def add_network_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", type=size, default="320x240")
    parser.add_argument("--fps", type=positive_float, default=10.0)
    parser.add_argument("--seconds", type=positive_float, default=40.0,
                        help="measured time per scenario (after a partition: measured time once healed)")
    parser.add_argument("--partition-seconds", type=positive_float, default=30.0)
    parser.add_argument("--scenarios", type=lambda t: t.split(","),
                        help="comma-separated first words of the scenarios to run: clean, loss, delay, rate, "
                             "partition (default: all)")
    parser.add_argument("--logs", help="keep the daemons' logs and configuration here, a folder per scenario")
    parser.add_argument("--out", default="docs/reliability-network.md", help="Markdown report (JSON beside it)")


def network(args: argparse.Namespace) -> int:
    import dataclasses

    from adaptcast_bench.netfaults import default_settings, markdown_table, run_scenarios, standard_scenarios

    scenarios = standard_scenarios(args.seconds, args.partition_seconds)
    if args.scenarios:
        scenarios = [s for s in scenarios if s.name.split()[0] in args.scenarios]
    settings = dataclasses.replace(default_settings(), size=str(args.size), fps=args.fps)
    results = run_scenarios(scenarios, settings, Path(args.logs) if args.logs else None)
    write_report(args.out, "Network faults: loss, delay, a rate cap, a partition", markdown_table(results), results)
    return 0


def add_soak_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cameras", type=non_negative_int, default=4)
    parser.add_argument("--size", type=size, default="320x240")
    parser.add_argument("--fps", type=positive_float, default=2.5)
    parser.add_argument("--minutes", type=positive_float, default=60.0)
    parser.add_argument("--out", default="docs/reliability-soak.md", help="Markdown report (JSON beside it)")


def soak(args: argparse.Namespace) -> int:
    from adaptcast_bench.soak import markdown, run_soak

    result = run_soak(args.cameras, str(args.size), args.fps, args.minutes)
    write_report(args.out, "Soak: a long run of the whole system", markdown(result), [result])
    return 0


def add_fuzz_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clip", default=str(BUNDLED_CLIP),
                        help="the camera whose coded stream the fuzzer starts from")
    parser.add_argument("--size", type=size, default="160x96")
    parser.add_argument("--fps", type=positive_float, default=10.0)
    parser.add_argument("--seconds", type=positive_float, default=6.0, help="seconds of the clip coded (2 s segments)")
    parser.add_argument("--steps", type=positive_int, default=5, help="fitting steps of the coded adapters")
    parser.add_argument("--messages", type=positive_int, default=10000, help="fuzzed data-channel messages")
    parser.add_argument("--payloads", type=positive_int, default=1000,
                        help="corrupted adapter updates, and as many corrupted latents")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default="docs/reliability-fuzz.md", help="Markdown report (JSON beside it)")


def fuzz(args: argparse.Namespace) -> int:
    from adaptcast_bench.capacity import record_clip
    from adaptcast_bench.fuzz import markdown, run_fuzz

    with tempfile.TemporaryDirectory(prefix="adaptcast-fuzz-") as folder:
        records = record_clip(Path(args.clip), args.size, args.fps, args.seconds, args.steps, Path(folder))
    report = run_fuzz(records, args.messages, args.payloads, args.seed)
    write_report(args.out, "Reliability: a real receiver fuzzed over the real transport", markdown(report), [report])
    return 0 if report.receiver_alive and report.receiver_exit_code == 0 else 1


BENCH_STREAM = Command("bench-stream", "a receiver and a sender on loopback: latency and bytes on the wire",
                       add_stream_arguments, stream)
BENCH_REPUBLISH = Command("bench-republish", "RTSP and WHEP re-publication: H.264 encoding cost per camera, "
                          "glass-to-glass latency and frames at N clients (needs ffmpeg, and GStreamer's RTSP server "
                          "for the system Python)", add_republish_arguments, republish)
BENCH_CAPACITY = Command("bench-capacity", "streams per receiver: N replayed cameras, every frame on time?",
                         add_capacity_arguments, capacity)
BENCH_NETWORK = Command("bench-network", "sender and receiver in network namespaces: loss, delay, a rate cap and a "
                        "partition on the link between them (needs root)", add_network_arguments, network)
BENCH_SOAK = Command("bench-soak", "a long run: cameras from looped files through a real sender and receiver, "
                     "memory of every process sampled", add_soak_arguments, soak)
BENCH_FUZZ = Command("bench-fuzz", "a real receiver sent fuzzed messages and corrupted adapters and latents",
                     add_fuzz_arguments, fuzz)
