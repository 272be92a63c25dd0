"""The `adaptcast` command line: one entry point, one subcommand per job.

The commands are built in (adaptcast.commands) or come from other installed distributions
through entry points of the group `adaptcast.commands` (the benchmarks: `pip install ./bench`).
An entry point is loaded only when its command runs, or when the whole list is shown.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import re
import sys
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata

from adaptcast import __version__
from adaptcast.commands import (
    ENTRY_POINT_GROUP,
    Command,
    decode,
    demo,
    encode,
    export,
    hash_password,
    models,
    receiver,
    sender,
    train,
)
from adaptcast.shared.errors import AdaptcastError
from adaptcast.shared.lifecycle import die_with_parent_from_environment

BUILT_IN: tuple[Command, ...] = (
    models.COMMAND, encode.COMMAND, decode.COMMAND, sender.COMMAND, receiver.COMMAND, hash_password.COMMAND,
    demo.COMMAND, export.COMMAND, train.TRAIN_BASE, train.PACK_FRAMES,
)
BENCH_INSTALL = "pip install ./bench"
"""Where the benchmark commands come from: the adaptcast-bench distribution beside this one."""


def comes_with_bench(name: str) -> bool:
    """The names the benchmark commands take (adaptcast-bench's entry points keep to them)."""
    return name == "bench" or name.startswith("bench-") or name == "gpu-checks"


@dataclass(frozen=True)
class Registry:
    """The commands there are: built in, and found (not yet loaded) through entry points."""

    built_in: dict[str, Command]
    plugins: dict[str, metadata.EntryPoint]

    @classmethod
    def installed(cls) -> Registry:
        built_in = {command.name: command for command in BUILT_IN}
        plugins = {point.name: point for point in metadata.entry_points(group=ENTRY_POINT_GROUP)
                   if point.name not in built_in}
        return cls(built_in, plugins)

    def __contains__(self, name: str) -> bool:
        return name in self.built_in or name in self.plugins

    def commands(self, chosen: str | None) -> Iterable[Command]:
        """What the parser needs for `chosen`: every built-in command, and the plugin `chosen` alone
        when it is one; every plugin when no known command is chosen (the list is shown)."""
        yield from self.built_in.values()
        if chosen in self.built_in:
            return
        for name, point in self.plugins.items():
            if chosen in self.plugins and name != chosen:
                continue
            command = point.load()
            if not isinstance(command, Command) or command.name != name:
                raise TypeError(f"entry point {point.value} of group {ENTRY_POINT_GROUP} is not Command {name!r}")
            yield command


def build_parser(commands: Iterable[Command]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adaptcast", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail, and show errors with "
                                                                       "their traceback")
    parser.add_argument("--version", action="version", version=f"adaptcast {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in commands:
        subparser = sub.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(subparser)
        subparser.set_defaults(run=command.run)
    return parser


def _command_name(argv: list[str]) -> str | None:
    """The subcommand named in `argv`: the first word that is not an option (the top level's
    options take no values)."""
    return next((word for word in argv if not word.startswith("-")), None)


TORCH_JIT_DEPRECATION = "`torch.jit.script` is deprecated"
"""CompressAI scripts a helper with torch.jit when it is imported, and torch deprecates that: not ours
to act on."""


def quiet_known_warnings() -> None:
    """Ignore TORCH_JIT_DEPRECATION in this process and, through PYTHONWARNINGS, in every process it
    starts (spawned decode workers import CompressAI again)."""
    entry = f"ignore:{TORCH_JIT_DEPRECATION}:FutureWarning"
    inherited = os.environ.get("PYTHONWARNINGS", "")
    if entry not in inherited.split(","):  # a child of another adaptcast process has it already
        os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [inherited, entry]))
    warnings.filterwarnings("ignore", message=re.escape(TORCH_JIT_DEPRECATION), category=FutureWarning)


def main(argv: list[str] | None = None) -> int:
    """Run one command. Only the project's own errors (AdaptcastError) are a user's: one line and exit
    code 2 (with -v, the traceback); anything else is a bug and shows as one."""
    quiet_known_warnings()
    argv = sys.argv[1:] if argv is None else argv
    registry = Registry.installed()
    chosen = _command_name(argv)
    if chosen is not None and chosen not in registry and comes_with_bench(chosen):
        print(f"adaptcast: error: {chosen} is a benchmark command: it comes with `{BENCH_INSTALL}`", file=sys.stderr)
        return 2
    args = build_parser(registry.commands(chosen)).parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for chatty in ("aioice", "aiortc"):  # a line per ICE candidate pair is not an operator's event
        logging.getLogger(chatty).setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    try:
        die_with_parent_from_environment()  # the demo's daemons are killed when the demo is
        code: int = args.run(args)
        return code
    except AdaptcastError as exc:
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
